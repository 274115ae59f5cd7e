"""The reference sampler: the official `generate` (raster order, KV cache) on the reference model, in
float32 PyTorch. Every export and every backend is checked against it; it is itself checked against the
official implementation's golden outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from rar_deploy.contract.checks import check_class_labels, check_sampling
from rar_deploy.contract.graphs import family_graph_specs
from rar_deploy.contract.sampling import guidance_rows, guidance_schedule, is_guided, sampling_noise
from rar_deploy.errors import RARDeployError
from rar_deploy.model.generator import RARGenerator
from rar_deploy.model.guidance import apply_guidance, gumbel_max
from rar_deploy.model.kv_cache import StaticKVCache
from rar_deploy.model.var import VARCache, guided_logits


@dataclass
class Generation:
    tokens: torch.Tensor  # int64 [B, N]
    logits: torch.Tensor | None  # float32 [B, N, V] guided logits of every step, when kept


@torch.no_grad()
def reference_generate(
    generator: RARGenerator,
    class_labels: Sequence[int] | torch.Tensor,
    guidance_scale: float,
    guidance_pow: float,
    temperature: float,
    noise: np.ndarray | torch.Tensor | None = None,
    seed: int = 0,
    keep_logits: bool = False,
) -> Generation:
    """The official `generate`, drawing by Gumbel-max from `noise` ([B, N, V] uniform; from `seed` when
    None). guidance_scale 0 means no guidance (conditional rows only), as officially."""
    config = generator.config
    labels = check_class_labels(class_labels, config.num_classes)
    guidance_scale, guidance_pow, temperature = check_sampling(guidance_scale, guidance_pow, temperature)
    batch, steps = labels.shape[0], config.image_seq_len
    if noise is None:
        noise = sampling_noise(seed, batch, steps, config.codebook_size)
    noise = torch.as_tensor(noise, dtype=torch.float32)
    if noise.shape != (batch, steps, config.codebook_size):
        raise RARDeployError(f"noise has shape {tuple(noise.shape)}, expected {(batch, steps, config.codebook_size)}")
    rows = torch.from_numpy(guidance_rows(labels, is_guided(guidance_scale), config.null_class))
    scales = torch.from_numpy(guidance_schedule(steps, guidance_scale, guidance_pow))
    cache = StaticKVCache.allocate(config, rows.shape[0], dtype=generator.embeddings.weight.dtype)

    tokens, kept = [], []
    logits, keys, values = generator.prefill(rows)
    cache.write(keys, values, 0)
    for t in range(steps):
        if t > 0:
            step = torch.full_like(rows, t)
            logits, keys, values = generator.decode_step(tokens[-1].repeat(rows.shape[0] // batch), step, rows,
                                                         cache.keys, cache.values)
            cache.write(keys, values, t + 1)
        step_logits = apply_guidance(logits, scales[t], batch) if is_guided(guidance_scale) else logits
        tokens.append(gumbel_max(step_logits, noise[:, t], temperature))
        if keep_logits:
            kept.append(step_logits)
    return Generation(torch.stack(tokens, dim=1), torch.stack(kept, dim=1) if keep_logits else None)



@torch.no_grad()
def _output_names(generator, tokenizer, float_dtype: str, graph: str) -> list[str]:
    """A graph's outputs in order, as the contract names them."""
    family = "var" if graph.startswith("var_") else "rar"
    return [spec.name for spec in family_graph_specs(family, generator, tokenizer, float_dtype)[graph]["outputs"]]


def reference_record(generator: RARGenerator, tokenizer, float_dtype: str, batch: int = 2, seed: int = 0,
                     guidance_scale: float | None = None, guidance_pow: float | None = None) -> dict[str, np.ndarray]:
    """Inputs and float32 reference outputs of every parity check, small enough to ship inside an artifact
    folder (`reference.npz`) so that `rar-parity` runs on a target without torch or checkpoints:

    - each graph once on inputs drawn from `seed` (graph inputs stored in the graph's own dtype `float_dtype`);
    - a guided generation at the model size's sampling defaults, temperature 1, from (seed, image) noise:
      its tokens (free-running check) and the guided logits of every step along them (teacher-forced check);
    - an unguided generation (guidance scale 0) from the same noise;
    - the decoder's uint8 images of the guided tokens.
    """
    from rar_deploy.model.graphs import ConditionGraph, DecodeStepGraph, VQDecoderGraph
    from rar_deploy.model.tokenizer import images_to_uint8

    c = generator.config
    defaults = c.sampling_defaults
    scale = defaults.guidance_scale if guidance_scale is None else guidance_scale
    pow_ = defaults.guidance_pow if guidance_pow is None else guidance_pow
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c.num_classes, batch)
    record: dict[str, np.ndarray] = {
        "seed": np.int64(seed), "labels": labels, "guidance_scale": np.float32(scale),
        "guidance_pow": np.float32(pow_), "temperature": np.float32(1.0),
    }

    # condition: one row, two positions (the table's first and a random one)
    cond_labels = torch.from_numpy(labels[:1])
    positions = torch.tensor([[0], [int(rng.integers(1, c.cache_len))]])
    record.update({"condition.class_labels": cond_labels.numpy(), "condition.positions": positions.numpy(),
                   "condition.condition": ConditionGraph(generator)(cond_labels, positions).numpy()})

    # decode_step: one image (guided rows) at a random position, over the reference's own cache prefix
    ids = torch.from_numpy(rng.integers(0, c.codebook_size, (1, c.image_seq_len)))
    position = int(rng.integers(2, min(c.cache_len, 9)))
    rows = torch.from_numpy(guidance_rows(labels[:1], True, c.null_class))
    _, keys, values = generator.forward_prefix(rows, ids.repeat(2, 1)[:, : position - 2])  # positions 0 .. p-1
    condition = generator.condition(rows, torch.full((1, 2), position)).to(getattr(torch, float_dtype))
    prefix = {"k": keys.to(condition.dtype), "v": values.to(condition.dtype)}
    step_inputs = {"tokens": ids[:, position - 2], "position": torch.tensor([position]), "condition": condition,
                   "guidance_scale": torch.tensor([float(scale)]), "temperature": torch.ones(1),
                   "noise": torch.from_numpy(sampling_noise(seed, 1, 1, c.codebook_size)[:, 0])}
    record.update({f"decode_step.{name}": value.numpy() for name, value in step_inputs.items()})
    record.update({"decode_step.k_prefix": prefix["k"].numpy(), "decode_step.v_prefix": prefix["v"].numpy()})
    cache = {kv: torch.zeros(c.depth, 2, c.num_heads, c.cache_len, c.head_dim) for kv in "kv"}
    for kv in "kv":
        cache[kv][..., :position, :] = prefix[kv].float()
    outputs = DecodeStepGraph(generator)(step_inputs["tokens"], step_inputs["position"], condition.float(),
                                         list(cache["k"]), list(cache["v"]), step_inputs["guidance_scale"],
                                         step_inputs["temperature"], step_inputs["noise"])
    record.update({f"decode_step.expected.{name}": out.float().numpy()
                   for name, out in zip(_output_names(c, tokenizer.config, float_dtype, "decode_step"), outputs)})

    # vq_decoder: one image of random tokens
    record["vq_decoder.tokens"] = ids.numpy()
    record["vq_decoder.images"] = VQDecoderGraph(tokenizer)(ids)[0].numpy()

    # whole generations
    noise = sampling_noise(seed, batch, c.image_seq_len, c.codebook_size)
    guided = reference_generate(generator, labels, scale, pow_, 1.0, noise=noise, keep_logits=True)
    unguided = reference_generate(generator, labels, 0.0, pow_, 1.0, noise=noise, keep_logits=True)
    record.update({"tokens": guided.tokens.numpy(), "guided_logits": guided.logits.numpy(),
                   "unguided_tokens": unguided.tokens.numpy(), "unguided_logits": unguided.logits.numpy(),
                   "images_uint8": images_to_uint8(tokenizer.decode(guided.tokens)).numpy()})
    return record


def var_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The official top-k then top-p filtering (removed logits become -inf)."""
    if top_k > 0:
        k = min(top_k, logits.shape[-1])
        logits = logits.masked_fill(logits < logits.topk(k, dim=-1).values.amin(dim=-1, keepdim=True), -torch.inf)
    if top_p > 0:
        ordered, order = logits.sort(dim=-1)
        remove = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        remove[..., -1:] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), -torch.inf)
    return logits


@dataclass
class VARGeneration:
    tokens: torch.Tensor  # [B, L], all scales
    guided_logits: torch.Tensor  # [B, L, V]
    images: torch.Tensor  # [B, 3, H, W] in [0, 1]
    f_hats: torch.Tensor  # [K + 1, B, Cvae, P, P]: f_hat before each scale, and after the last
    cache: VARCache  # keys and values of every scale, 2B rows


@torch.no_grad()
def var_reference_generate(generator, vqvae, class_labels: Sequence[int], cfg: float, top_k: int = 0,
                           top_p: float = 0.0, temperature: float = 1.0, uniform: torch.Tensor | None = None,
                           on_scale: Callable[[], None] = lambda: None) -> VARGeneration:
    """The official `autoregressive_infer_cfg` loop with the sampler made explicit: Gumbel-max over the
    filtered guided logits from caller noise `uniform` [B, L, V] in (0, 1), as RAR's (`gumbel_max`; the
    official draws from the same distribution with torch.multinomial). uniform None or temperature 0:
    greedy (the official top_k=1). on_scale: called after each scale (rar-bench's baseline times them)."""
    c = generator.config
    device = generator.class_emb.weight.device
    labels = torch.as_tensor(check_class_labels(class_labels, c.num_classes), device=device)
    b = len(labels)
    both = torch.cat((labels, torch.full_like(labels, c.null_class)))
    cache = VARCache(c.depth)
    size = c.patch_nums[-1]
    f_hat = torch.zeros(b, c.vae_channels, size, size, device=device)
    x = generator.first_scale_input(both)
    tokens, guided, f_hats = [], [], [f_hat]
    for scale, (begin, end) in enumerate(c.scale_ranges()):
        logits = generator.run(x, both, cache, None)
        logits = guided_logits(logits, cfg * scale / (c.num_scales - 1))
        filtered = var_filter(logits, top_k, top_p)
        chosen = (filtered.argmax(dim=-1) if uniform is None else
                  gumbel_max(filtered.flatten(0, 1), uniform[:, begin:end].flatten(0, 1), temperature).view(b, -1))
        tokens.append(chosen)
        guided.append(logits)
        f_hat = vqvae.quantize.add_scale(f_hat, chosen, scale, c.patch_nums)
        f_hats.append(f_hat)
        on_scale()
        if scale + 1 < c.num_scales:
            nxt = c.patch_nums[scale + 1]
            x = generator.scale_input(torch.nn.functional.interpolate(f_hat, size=(nxt, nxt), mode="area"),
                                      scale + 1).repeat(2, 1, 1)
    return VARGeneration(torch.cat(tokens, dim=1), torch.cat(guided, dim=1), vqvae.decode_fhat(f_hat),
                         torch.stack(f_hats), cache)


@torch.no_grad()
def var_reference_record(generator, vqvae, float_dtype: str, batch: int = 2, seed: int = 0,
                         guidance_scale: float | None = None) -> dict[str, np.ndarray]:
    """VAR's reference record (reference.npz), float32, at the published sampling defaults (cfg 1.5, top-k 900,
    top-p 0.96, T 1) from (seed, image) noise:

    - var_step once: image 0 at the middle scale over the reference's own cache prefix (inputs stored in the
      graph's dtype `float_dtype`, expected outputs from the graph module on them in float32);
    - var_decoder once on the generation's last f_hat;
    - the sampled generation: tokens, guided logits of every scale and f_hat before each scale (teacher forcing);
    - a greedy generation (temperature 0) from the same labels: its tokens.
    """
    from rar_deploy.contract.config import VARSamplingDefaults
    from rar_deploy.contract.graphs import VAR_STEP_COMPARED
    from rar_deploy.contract.sampling import var_guidance
    from rar_deploy.model.var_graphs import VARDecoderGraph, VARScaleStepGraph, scale_constants

    c, defaults = generator.config, VARSamplingDefaults()
    scale = defaults.guidance_scale if guidance_scale is None else guidance_scale
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c.num_classes, batch)
    noise = torch.from_numpy(sampling_noise(seed, batch, c.seq_len, c.codebook_size))
    run = var_reference_generate(generator, vqvae, labels.tolist(), scale, defaults.top_k, defaults.top_p,
                                 defaults.temperature, noise)
    greedy = var_reference_generate(generator, vqvae, labels.tolist(), scale, defaults.top_k, defaults.top_p, 0.0)
    record: dict[str, np.ndarray] = {
        "seed": np.int64(seed), "labels": labels, "guidance_scale": np.float32(scale),
        "top_k": np.int64(defaults.top_k), "top_p": np.float32(defaults.top_p),
        "temperature": np.float32(defaults.temperature), "tokens": run.tokens.numpy(),
        "guided_logits": run.guided_logits.numpy(), "f_hats": run.f_hats.numpy(),
        "greedy_tokens": greedy.tokens.numpy(), "greedy_logits": greedy.guided_logits.numpy(),
        "images_uint8": VARDecoderGraph(vqvae)(run.f_hats[-1])[1].numpy(),
    }

    k = c.num_scales // 2
    (begin, end), const = c.scale_ranges()[k], scale_constants(c, vqvae.config.num_phi)[k]
    dtype = getattr(torch, float_dtype)
    rows = torch.tensor([0, batch])  # image 0's conditional and unconditional rows
    prefix = {kv: torch.stack([layer[rows, :, :begin] for layer in getattr(run.cache, kv)]).to(dtype)
              for kv in ("keys", "values")}
    step_inputs = {"class_labels": torch.from_numpy(labels[:1]), "f_hat": run.f_hats[k, :1], **const,
                   "guidance": torch.from_numpy(var_guidance(c.num_scales, scale)[k:k + 1]),
                   "top_k": torch.tensor([defaults.top_k]), "top_p": torch.tensor([defaults.top_p]),
                   "temperature": torch.ones(1),
                   "noise": noise[:1, begin:end].reshape(1, *const["positions"].shape, -1)}
    record.update({f"var_step.{name}": value.numpy() for name, value in step_inputs.items()})
    record.update({"var_step.k_prefix": prefix["keys"].numpy(), "var_step.v_prefix": prefix["values"].numpy()})
    cache = {kv: torch.zeros(c.depth, 2, c.num_heads, c.seq_len, c.head_dim) for kv in prefix}
    for kv in cache:
        cache[kv][..., :begin, :] = prefix[kv].float()
    outputs = VARScaleStepGraph(generator, vqvae)(*step_inputs.values(), list(cache["keys"]), list(cache["values"]))
    record.update({f"var_step.expected.{name}": out.float().numpy()
                   for name, out in zip(_output_names(c, vqvae.config, float_dtype, "var_step"), outputs)
                   if name in VAR_STEP_COMPARED})
    record["var_decoder.f_hat"] = run.f_hats[-1, :1].numpy()
    record["var_decoder.images"] = VARDecoderGraph(vqvae)(run.f_hats[-1, :1])[0].numpy()
    return record
