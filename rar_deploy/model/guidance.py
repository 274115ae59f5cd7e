"""Classifier-free guidance and Gumbel-max sampling in torch: one definition for the graph modules and
the reference sampler."""

from __future__ import annotations

import torch


def apply_guidance(logits: torch.Tensor, scale: torch.Tensor | float, batch: int) -> torch.Tensor:
    """Logits of R rows -> guided [batch, V]: u + (c - u) * s, the conditional rows c first and the
    unconditional rows u last, as the official code. `scale` is one value or one per image. With R = batch
    (no guidance rows) u is c and the result is c exactly."""
    if isinstance(scale, torch.Tensor) and scale.dim() == 1:
        scale = scale[:, None]
    # Row indices, not chunk() or slices: they keep torch.export's symbolic shapes plain ([batch, V]).
    image = torch.arange(batch, device=logits.device)
    cond, uncond = logits[image], logits[image + (logits.shape[0] - batch)]
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
