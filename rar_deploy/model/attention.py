"""Attention kernels of the generator: full causal (teacher forcing, prefill) and one step over a
static KV cache. Scores are accumulated and soft-maxed in float32 whatever the activation dtype."""

from __future__ import annotations

import torch


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v: [R, H, P, Dh] -> [R, H, P, Dh], position p attends to positions <= p."""
    p = q.shape[-2]
    scores = ((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)).float()
    future = torch.ones(p, p, dtype=torch.bool, device=q.device).triu(1)
    probs = scores.masked_fill(future, float("-inf")).softmax(-1)
    return probs.to(v.dtype) @ v


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """One new position per row over a static cache, without copying the cache.

    q, k, v: [R, H, 1, Dh] for the new position; k_cache, v_cache: [R, H, S, Dh];
    valid: [R, S] bool, True where a cache position holds an earlier token of that row.
    The new key is scored separately and joined to the cache scores ([R, H, 1, S+1] floats), so the
    cache itself is only read.
    """
    q = q * q.shape[-1] ** -0.5
    cache_scores = (q @ k_cache.transpose(-1, -2)).float()
    cache_scores = cache_scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    self_score = (q * k).sum(-1, keepdim=True).float()
    probs = torch.cat([cache_scores, self_score], dim=-1).softmax(-1).to(v.dtype)
    seq = k_cache.shape[-2]
    return probs[..., :seq] @ v_cache + probs[..., seq:] * v


def block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """P consecutive new positions per row over a static cache: each attends to the row's valid cache positions
    and, causally, to the new positions up to itself. q, k, v: [R, H, P, Dh]; k_cache, v_cache: [R, H, S, Dh];
    valid: [R, S] bool. Like cached_attention, the cache is only read (scores [R, H, P, S + P] in float32)."""
    q = q * q.shape[-1] ** -0.5
    block = q.shape[-2]
    cache_scores = (q @ k_cache.transpose(-1, -2)).float().masked_fill(~valid[:, None, None, :], float("-inf"))
    future = torch.ones(block, block, dtype=torch.bool, device=q.device).triu(1)
    block_scores = (q @ k.transpose(-1, -2)).float().masked_fill(future, float("-inf"))
    probs = torch.cat([cache_scores, block_scores], dim=-1).softmax(-1).to(v.dtype)
    seq = k_cache.shape[-2]
    return probs[..., :seq] @ v_cache + probs[..., seq:] @ v
