"""The baseline of rar-bench: the official `generate()` loop's cost structure on our reference modules (the
prefix re-embedded and the KV cache grown by torch.cat every step), same guidance and the same noise as
the pipelines; for VAR, the official `autoregressive_infer_cfg` loop (reference.var_reference_generate: the
cache grown by torch.cat, F.interpolate between scales). Needs torch (the export extra)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rar_deploy.contract.sampling import guidance_rows, guidance_schedule, sampling_noise
from rar_deploy.model.generator import RARGenerator
from rar_deploy.model.guidance import apply_guidance, gumbel_max
from rar_deploy.model.tokenizer import VQDecoder
from rar_deploy.model.torch_backend import TorchMemory
from rar_deploy.runtime.timing import StageClock, memory_usage, stage_summary


class OfficialStyleLoop:
    """The official `generate()` loop on our reference modules: the prefix is re-embedded and the
    KV cache concatenated every step; same guidance and the same Gumbel-max noise as the pipelines."""

    def __init__(self, generator: RARGenerator, tokenizer: VQDecoder) -> None:
        self.generator, self.tokenizer = generator, tokenizer

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, schedule: torch.Tensor, temperature: torch.Tensor,
                 noise: torch.Tensor, on_step: Callable[[], None] = lambda: None,
                 steps: int | None = None) -> torch.Tensor:
        """Tokens [B, steps] (all N by default); noise [N, B, V]."""
        g, c = self.generator, self.generator.config
        rows = torch.from_numpy(guidance_rows(labels.cpu().numpy(), True, c.null_class)).to(labels.device)
        ids = rows.new_zeros((rows.shape[0], 0))
        caches: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * c.depth

        def attend(layer: int, q, k, v):
            if caches[layer] is not None:
                k = torch.cat([caches[layer][0], k], dim=-2)
                v = torch.cat([caches[layer][1], v], dim=-2)
            caches[layer] = (k, v)
            scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
            if q.shape[-2] > 1:
                scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
            return scores.float().softmax(-1).to(v.dtype) @ v

        tokens = []
        for t in range(steps or c.image_seq_len):
            positions = torch.arange(t + 2, device=rows.device)
            emb = g.embeddings(torch.cat([rows[:, None] + c.codebook_size + 1, ids], dim=1))
            x = torch.cat([g.cls_token.expand(rows.shape[0], -1, -1), emb], dim=1) + g.position_features(positions)
            cond = g.conditioning(rows, positions)
            if t > 0:
                x, cond = x[:, -1:], cond[:, -1:]
            x, _, _ = g.run_blocks(x, cond, attend)
            logits = apply_guidance(g.head(x[:, -1], cond[:, -1]), schedule[t], labels.shape[0])
            token = gumbel_max(logits, noise[t], temperature)
            tokens.append(token)
            ids = torch.cat([ids, token.repeat(2)[:, None]], dim=1)
            on_step()
        return torch.stack(tokens, dim=1)


def bench_baseline(loop: OfficialStyleLoop, artifacts, batch: int, memory: TorchMemory, warmup_steps: int = 3,
                   seed: int = 0) -> dict:
    """The same measurement as tools.bench.bench_pipeline, of the official-style loop."""
    device = memory.device
    c, defaults = artifacts.config, artifacts.sampling_defaults
    labels = (torch.arange(batch) % c.num_classes).to(device)
    schedule = guidance_schedule(c.image_seq_len, defaults.guidance_scale, defaults.guidance_pow)
    schedule = torch.from_numpy(schedule).to(device)
    noise = torch.from_numpy(np.ascontiguousarray(
        sampling_noise(seed, batch, c.image_seq_len, c.codebook_size).transpose(1, 0, 2))).to(device)
    temperature = torch.full((batch,), defaults.temperature, device=device)
    loop.generate(labels, schedule, temperature, noise, steps=1 + warmup_steps)
    loop.tokenizer.decode(torch.zeros((batch, c.image_seq_len), dtype=torch.int64, device=device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = StageClock(memory)
    clock.mark()
    tokens = loop.generate(labels, schedule, temperature, noise, clock.mark)
    decode_start = time.perf_counter()
    loop.tokenizer.decode(tokens).cpu()
    decoder_ms = (time.perf_counter() - decode_start) * 1e3
    intervals = clock.intervals_ms()
    tables = ("embeddings.weight", "pos_embed", "target_aware_pos_embed", "timesteps_embeddings")
    generator_bytes = sum(p.numel() * p.element_size() for name, p in loop.generator.named_parameters()
                          if name not in tables)
    summary = stage_summary(0.0, intervals[0], intervals[1:], decoder_ms, batch)
    return {**summary, "step_bytes": generator_bytes, "step_gb_per_s": generator_bytes / summary["step_p50_ms"] / 1e6,
            **memory_usage(memory)}


def baseline_checkpoints(artifacts, ckpt: str | None, tokenizer: str | None) -> tuple[Path, Path]:
    """The checkpoints the artifacts were exported from (SHA-256 checked), found before any timing."""
    from rar_deploy.model.checkpoint import exported_checkpoint

    return (exported_checkpoint(artifacts.manifest, "generator", ckpt),
            exported_checkpoint(artifacts.manifest, "tokenizer", tokenizer))


def bench_baselines(artifacts, checkpoints: tuple[Path, Path], batch_sizes: list[int], device: str | None,
                    warmup_steps: int, progress: Callable[[str], None]) -> list[dict]:
    """The family's official loop at every batch size, fp16 on CUDA for fp16 artifacts, else float32."""
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if target.type == "cuda" and artifacts.precision == "fp16" else torch.float32
    return FAMILY_BASELINES[artifacts.family.name](artifacts, checkpoints, batch_sizes, TorchMemory(target), dtype,
                                                   warmup_steps, progress)


def _rar_baselines(artifacts, checkpoints: tuple[Path, Path], batch_sizes: list[int], memory: TorchMemory,
                   dtype: torch.dtype, warmup_steps: int, progress: Callable[[str], None]) -> list[dict]:
    from rar_deploy.model.checkpoint import load_rar_generator, load_rar_tokenizer
    from rar_deploy.model.layers import cast_for_inference

    target = memory.device
    generator = cast_for_inference(load_rar_generator(checkpoints[0]), dtype).to(target)
    decoder = cast_for_inference(load_rar_tokenizer(checkpoints[1]), dtype).to(target)
    loop, runs = OfficialStyleLoop(generator, decoder), []
    for batch in batch_sizes:
        progress(f"baseline (official-style eager loop), batch {batch}")
        runs.append({"backend": "baseline", "device": str(target), "dtype": str(dtype),
                     **bench_baseline(loop, artifacts, batch, memory, warmup_steps)})
    return runs


def _var_baselines(artifacts, checkpoints: tuple[Path, Path], batch_sizes: list[int], memory: TorchMemory,
                   dtype: torch.dtype, warmup_steps: int, progress: Callable[[str], None]) -> list[dict]:
    """float32 weights under autocast, as the official demo runs VAR."""
    from rar_deploy.model.checkpoint import load_var_generator, load_var_tokenizer

    target, runs = memory.device, []
    generator, vqvae = load_var_generator(checkpoints[0]).to(target), load_var_tokenizer(checkpoints[1]).to(target)
    for batch in batch_sizes:
        progress(f"baseline (official autoregressive_infer_cfg loop), batch {batch}")
        with torch.autocast(target.type, dtype=dtype, enabled=dtype == torch.float16):
            runs.append({"backend": "baseline", "device": str(target), "dtype": str(dtype),
                         **bench_var_baseline(generator, vqvae, artifacts, batch, memory)})
    return runs


def bench_var_baseline(generator, vqvae, artifacts, batch: int, memory: TorchMemory, seed: int = 0) -> dict:
    """The measurement of tools.bench.bench_pipeline, of the official loop: one warm-up generation, then one
    timed (scale 0 as the prefill, scales 1 .. K-1 as the steps, the decoder)."""
    from rar_deploy.model.reference import var_reference_generate

    inputs = artifacts.family.published_inputs(artifacts.config, artifacts.sampling_defaults, batch, seed)
    args = (generator, vqvae, inputs.labels.tolist(), float(inputs.guidance_scale[0]), inputs.top_k, inputs.top_p,
            float(inputs.temperature[0]), torch.from_numpy(inputs.noise).to(memory.device))
    var_reference_generate(*args)
    clock = StageClock(memory)
    clock.mark()
    var_reference_generate(*args, on_scale=clock.mark)
    clock.mark()  # after the decoder
    intervals = clock.intervals_ms()
    summary = stage_summary(0.0, intervals[0], intervals[1:-1], intervals[-1], batch)
    weights = sum(p.numel() * p.element_size() for name, p in generator.named_parameters()
                  if name not in ("class_emb.weight", "pos_1LC", "lvl_embed.weight"))
    return {**summary, "step_bytes": weights, "step_gb_per_s": weights / summary["step_p50_ms"] / 1e6,
            **memory_usage(memory)}


FAMILY_BASELINES = {"rar": _rar_baselines, "var": _var_baselines}
