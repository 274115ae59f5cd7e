"""Sampling shared by the reference sampler and every graph: guidance schedule, noise, Gumbel-max."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .arguments import check_class_labels, check_sampling
from .errors import RARDeployError
from .model.generator import RARGenerator
from .model.kv_cache import StaticKVCache

_NOISE_BITS = 23  # (k + 0.5) / 2**23 is exact in float32 and lies strictly inside (0, 1)


def guidance_scale_at(step: int, num_steps: int, scale: float, pow: float) -> float:
    """Official schedule: (g - 1) * (1 - cos(pi * (t / N) ** pow)) / 2 + 1, in float32; 0 ** 0 = 1."""
    scale_pow = torch.ones(1) * pow
    scale_step = (1 - torch.cos(((step / num_steps) ** scale_pow) * torch.pi)) * 1 / 2
    return float(((scale - 1) * scale_step + 1).item())


def guidance_schedule(num_steps: int, scale: float, pow: float) -> np.ndarray:
    """The guidance scale of every step t = 0 .. N-1, float32 [N]."""
    return np.array([guidance_scale_at(t, num_steps, scale, pow) for t in range(num_steps)], dtype=np.float32)


def sampling_noise(seed: int, num_images: int, num_steps: int, vocab: int, first_image: int = 0) -> np.ndarray:
    """Uniform noise in (0, 1), float32 [B, N, V]. Image i's noise depends only on (seed, i), so an
    image is the same whatever the batch it is generated in."""
    noise = np.empty((num_images, num_steps, vocab), dtype=np.float32)
    for row in range(num_images):
        rng = np.random.default_rng([seed, first_image + row])
        bits = rng.integers(0, 2**_NOISE_BITS, size=(num_steps, vocab), dtype=np.int32)
        noise[row] = (bits.astype(np.float32) + 0.5) * np.float32(2.0**-_NOISE_BITS)
    return noise


def apply_guidance(logits: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """[2B, V] rows (conditional first) -> guided [B, V]: u + (c - u) * s, as the official code."""
    half = logits.shape[0] // 2  # slicing, not chunk(): chunk makes torch.export specialise the batch
    cond, uncond = logits[:half], logits[half:]
    if isinstance(scale, torch.Tensor) and scale.dim() == 1:
        scale = scale[:, None]
    return uncond + (cond - uncond) * scale


def gumbel_max(logits: torch.Tensor, uniform: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """Draw from softmax(logits / T) as argmax(logits / T - log(-log(u))); T = 0 is greedy argmax.

    logits, uniform: [B, V] float32; temperature: scalar or [B]. Returns int64 [B].
    """
    temperature = torch.as_tensor(temperature, dtype=torch.float32, device=logits.device)
    temperature = temperature.expand(logits.shape[0])[:, None]
    gumbel = -torch.log(-torch.log(uniform))
    sampled = torch.argmax(logits / temperature.clamp_min(1e-30) + gumbel, dim=-1)
    greedy = torch.argmax(logits, dim=-1)
    return torch.where(temperature[:, 0] > 0, sampled, greedy)


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
    """The official `generate` (raster order, KV cache), drawing by Gumbel-max from `noise`
    ([B, N, V] uniform; from `seed` when None). guidance_scale 0 means no guidance, as officially."""
    config = generator.config
    labels = torch.from_numpy(check_class_labels(class_labels, config.num_classes))
    guidance_scale, guidance_pow, temperature = check_sampling(guidance_scale, guidance_pow, temperature)
    batch, steps = labels.shape[0], config.image_seq_len
    if noise is None:
        noise = sampling_noise(seed, batch, steps, config.codebook_size)
    noise = torch.as_tensor(noise, dtype=torch.float32)
    if noise.shape != (batch, steps, config.codebook_size):
        raise RARDeployError(f"noise has shape {tuple(noise.shape)}, expected {(batch, steps, config.codebook_size)}")
    guided = guidance_scale != 0
    rows = torch.cat([labels, torch.full_like(labels, config.null_class)]) if guided else labels
    scales = torch.from_numpy(guidance_schedule(steps, guidance_scale, guidance_pow))
    dtype = generator.embeddings.weight.dtype
    cache = StaticKVCache.allocate(config, rows.shape[0], dtype=dtype)

    tokens, kept = [], []
    logits, keys, values = generator.prefill(rows)
    cache.write(keys, values, 0)
    for t in range(steps):
        if t > 0:
            step = torch.full_like(rows, t)
            logits, keys, values = generator.decode_step(tokens[-1].repeat(rows.shape[0] // batch), step, rows,
                                                         cache.keys, cache.values)
            cache.write(keys, values, t + 1)
        step_logits = apply_guidance(logits, scales[t]) if guided else logits
        tokens.append(gumbel_max(step_logits, noise[:, t], temperature))
        if keep_logits:
            kept.append(step_logits)
    return Generation(torch.stack(tokens, dim=1), torch.stack(kept, dim=1) if keep_logits else None)
