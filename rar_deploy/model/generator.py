"""The RAR generator, numerically equal to the official `modeling/rar.py` at inference (raster order).

Parameter names and shapes are exactly those of the official module, so released checkpoints load
with `load_state_dict(strict=True)`. Class labels are plain ids in [0, num_classes]; the id
`num_classes` is the null class of classifier-free guidance.

Sequence layout: index 0 the learned cls token, 1 the class, 2 + j image token j.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from rar_deploy.contract.config import RARConfig
from rar_deploy.model.attention import block_attention, cached_attention, causal_attention
from rar_deploy.model.layers import LayerNorm, modulate

# attend(layer, q, k, v) -> attention output; lets one block definition serve every cache strategy.
AttendFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = LayerNorm(self.head_dim)
        self.k_norm = LayerNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[R, P, D] -> q, k, v as [R, H, P, Dh], with qk-norm applied."""
        rows, positions, _ = x.shape
        qkv = self.qkv(x).reshape(rows, positions, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """[R, H, P, Dh] -> output projection [R, P, D]."""
        rows, _, positions, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(rows, positions, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with adaLN modulation from the per-position condition."""

    def __init__(self, config: RARConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, config.num_heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, config.mlp_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, attend: Callable[..., torch.Tensor],
        modulation: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the new residual stream and this block's keys and values [R, H, P, Dh].

        `modulation`: adaLN_modulation(c) computed ahead (it depends only on class and position).
        """
        if modulation is None:
            modulation = self.adaLN_modulation(c)
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=-1)
        q, k, v = self.attn.heads(modulate(self.norm1(x), shift1, scale1))
        x = x + gate1 * self.attn.merge(attend(q, k, v))
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x, k, v


class FinalLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_final = LayerNorm(dim, affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, modulation: torch.Tensor | None = None) -> torch.Tensor:
        if modulation is None:
            modulation = self.adaLN_modulation(c)
        scale, shift = modulation.chunk(2, dim=-1)  # scale first, unlike the blocks
        return modulate(self.norm_final(x), shift, scale)


class RARGenerator(nn.Module):
    def __init__(self, config: RARConfig) -> None:
        super().__init__()
        self.config = config
        n, dim = config.image_seq_len, config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1024, dim))
        self.target_aware_pos_embed = nn.Parameter(torch.zeros(1, n + 1024, dim))
        self.timesteps_embeddings = nn.Parameter(torch.zeros(1, n + 100, dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.embeddings = nn.Embedding(config.embedding_rows, dim)
        self.adaln_before_head = FinalLayer(dim)
        self.lm_head = nn.Linear(dim, config.codebook_size)

    # -- features that depend only on (class, position) -------------------------------------------
    def conditioning(self, class_labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """c_i = class embedding + timestep embedding of position i: [R] x [P] or [R, P] -> [R, P, D]."""
        class_emb = self.embeddings(class_labels + self.config.codebook_size + 1)
        return class_emb[:, None] + self.timesteps_embeddings[0, positions]

    def position_features(self, positions: torch.Tensor) -> torch.Tensor:
        """pos_embed[i] + ta(i), where ta(i) = target_aware_pos_embed[i + 1] for 1 <= i <= N, else 0."""
        in_range = (positions >= 1) & (positions <= self.config.image_seq_len)
        target_aware = self.target_aware_pos_embed[0, positions + 1] * in_range[..., None]
        return self.pos_embed[0, positions] + target_aware.to(self.pos_embed.dtype)

    # -- building blocks of every path -------------------------------------------------------------
    def run_blocks(
        self, x: torch.Tensor, c: torch.Tensor | None, attend: AttendFn,
        modulation: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All blocks; returns the stream and stacked keys and values [L, R, H, P, Dh]."""
        keys, values = [], []
        for layer, block in enumerate(self.blocks):
            ahead = None if modulation is None else modulation[layer]
            x, k, v = block(x, c, lambda q, k, v, layer=layer: attend(layer, q, k, v), ahead)
            keys.append(k)
            values.append(v)
        return x, torch.stack(keys), torch.stack(values)

    def head(self, x: torch.Tensor, c: torch.Tensor | None, modulation: torch.Tensor | None = None) -> torch.Tensor:
        """Final adaLN and lm_head; logits in float32."""
        return self.lm_head(self.adaln_before_head(x, c, modulation)).float()

    def condition(self, class_labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Everything that depends only on (class, position), for `decode_step_conditioned`.

        class_labels [R], positions [P, R] -> [P, R, C], each row laid out as contract.condition_layout:
        the input embedding of the position (cls token at 0, class embedding at 1, the position terms
        alone from 2 on, where the step adds the token embedding), then every block's adaLN output, then
        the head's. C = (6L + 3) D.
        """
        class_embedding = self.embeddings(class_labels + self.config.codebook_size + 1).expand(*positions.shape, -1)
        c = class_embedding + self.timesteps_embeddings[0, positions]
        features = self.position_features(positions)
        cls = self.cls_token[0, 0].expand_as(features)
        first = torch.where(positions[..., None] == 0, cls, class_embedding) + features
        inputs = torch.where(positions[..., None] <= 1, first, features)
        modulation = [block.adaLN_modulation(c) for block in self.blocks] + [self.adaln_before_head.adaLN_modulation(c)]
        return torch.cat([inputs, *modulation], dim=-1)

    def decode_step_conditioned(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        condition: torch.Tensor,
        k_cache: torch.Tensor | list[torch.Tensor],
        v_cache: torch.Tensor | list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sequence position p per row from its `condition` row [R, C]: logits [R, V] (of image token
        p - 1) and this position's keys and values [L, R, H, 1, Dh]. tokens [R]: image token p - 2 (ignored
        for p <= 1); the cache holds positions 0 .. p - 1 of each row. The prefill is p = 0, then p = 1."""
        d, layers = self.config.hidden_size, self.config.depth
        positions = positions[:, None]
        inputs = condition[:, None, :d]
        x = torch.where(positions[..., None] >= 2, self.embeddings(tokens)[:, None] + inputs, inputs)
        blocks = condition[:, None, d:d + 6 * d * layers].unflatten(-1, (layers, 6 * d)).movedim(-2, 0)
        seq = torch.arange(k_cache[0].shape[-2], device=tokens.device)
        valid = seq[None, :] < positions

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return cached_attention(q, k, v, k_cache[layer], v_cache[layer], valid)

        x, keys, values = self.run_blocks(x, None, attend, blocks)
        return self.head(x[:, 0], None, condition[:, d + 6 * d * layers:]), keys, values

    def decode_block_conditioned(
        self,
        tokens: torch.Tensor,
        first: torch.Tensor,
        condition: torch.Tensor,
        k_cache: torch.Tensor | list[torch.Tensor],
        v_cache: torch.Tensor | list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """P consecutive sequence positions first .. first + P - 1 per row from their `condition` rows [R, P, C]:
        logits [R, P, V] (of image tokens p - 1) and their keys and values [L, R, H, P, Dh]. tokens [R, P]: image
        token p - 2 at each position (ignored for p <= 1); the cache holds positions 0 .. first - 1 of each row.
        decode_step_conditioned is the case P = 1, kept as its own graph so that the sequential step stays as
        exported before (a block's attention and sums run on other shapes, so they round otherwise)."""
        d, layers = self.config.hidden_size, self.config.depth
        positions = first[:, None] + torch.arange(tokens.shape[1], device=tokens.device)
        inputs = condition[..., :d]
        x = torch.where(positions[..., None] >= 2, self.embeddings(tokens) + inputs, inputs)
        blocks = condition[..., d:d + 6 * d * layers].unflatten(-1, (layers, 6 * d)).movedim(-2, 0)
        seq = torch.arange(k_cache[0].shape[-2], device=tokens.device)
        valid = seq[None, :] < first[:, None]

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return block_attention(q, k, v, k_cache[layer], v_cache[layer], valid)

        x, keys, values = self.run_blocks(x, None, attend, blocks)
        return self.head(x, None, condition[..., d + 6 * d * layers:]), keys, values

    def forward_prefix(
        self, class_labels: torch.Tensor, tokens: torch.Tensor, per_class_modulation: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal forward over [cls, class, tokens]: logits [R, n+1, V] and keys/values of all n+2.

        `per_class_modulation`: the adaLN modulations computed once per distinct class of the batch and gathered
        for its rows (they depend on class and position alone): the same values at a fraction of the cost when
        many rows share a class, as in training; not for export (torch.unique)."""
        rows, n = tokens.shape
        positions = torch.arange(n + 2, device=tokens.device)
        ids = torch.cat([class_labels[:, None] + self.config.codebook_size + 1, tokens], dim=1)
        x = torch.cat([self.cls_token.expand(rows, -1, -1), self.embeddings(ids)], dim=1)
        x = x + self.position_features(positions)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return causal_attention(q, k, v)

        if per_class_modulation:
            classes, row_class = torch.unique(class_labels, return_inverse=True)
            c_classes = self.conditioning(classes, positions)
            modulation = [block.adaLN_modulation(c_classes)[row_class] for block in self.blocks]
            x, keys, values = self.run_blocks(x, None, attend, modulation)
            head_modulation = self.adaln_before_head.adaLN_modulation(c_classes[:, 1:])[row_class]
            return self.head(x[:, 1:], None, head_modulation), keys, values
        c = self.conditioning(class_labels, positions)
        x, keys, values = self.run_blocks(x, c, attend)
        return self.head(x[:, 1:], c[:, 1:]), keys, values

    # -- public inference API ----------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, class_labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, n+1, V] float32; output i predicts image token i.

        Equal to the official `forward_fn(tokens, condition, is_sampling=True)` without KV cache.
        """
        return self.forward_prefix(class_labels, tokens)[0]

    def prefill(self, class_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positions 0 and 1: logits of image token 0 [R, V] and keys/values [L, R, H, 2, Dh]."""
        empty = class_labels.new_zeros((class_labels.shape[0], 0))
        logits, keys, values = self.forward_prefix(class_labels, empty)
        return logits[:, 0], keys, values

    def decode_step(
        self,
        tokens: torch.Tensor,
        step: torch.Tensor,
        class_labels: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feed image token t-1 at sequence position t+1 and return the logits of token t [R, V].

        tokens, step, class_labels: [R]; step t in 1..N-1 per row. k_cache, v_cache: static
        [L, R, H, S, Dh] (or a list of L [R, H, S, Dh] views), holding positions 0..t of each row
        (later positions are ignored). Returns this step's keys and values [L, R, H, 1, Dh]; the caller
        writes them at t+1. The official computation: the adaLN modulation inside every block.
        """
        positions = (step + 1)[:, None]
        x = self.embeddings(tokens)[:, None] + self.position_features(positions)
        c = self.conditioning(class_labels, positions)
        seq = torch.arange(k_cache[0].shape[-2], device=tokens.device)
        valid = seq[None, :] < positions

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return cached_attention(q, k, v, k_cache[layer], v_cache[layer], valid)

        x, keys, values = self.run_blocks(x, c, attend)
        return self.head(x[:, 0], c[:, 0]), keys, values
