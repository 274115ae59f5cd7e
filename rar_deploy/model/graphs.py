"""The three deployment graphs as nn.Modules around the reference model (contract.graph_specs says
their inputs and outputs).

condition: everything that depends only on (class, position), the input embedding and every adaLN
output, computed for all positions once per generation (or for the current one per step); the
decode step holds every other weight, so the generator's weights live in exactly one graph each.
decode_step: one sequence position per row (the prefill is positions 0 and 1), reading a static KV
cache and returning only this position's keys and values; guidance over the rows and Gumbel-max
sampling inside. vq_decoder: tokens to images.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rar_deploy.model.generator import RARGenerator
from rar_deploy.model.guidance import apply_guidance, gumbel_max
from rar_deploy.model.tokenizer import VQDecoder


class EmbeddingRows(nn.Module):
    """Rows [start, stop) of an embedding table, looked up by their ids in the whole table: each graph
    holds only the rows it reads (class rows in condition, token rows in decode_step)."""

    def __init__(self, table: nn.Embedding, start: int, stop: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(table.weight[start:stop], requires_grad=False)
        self.start = start

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids - self.start if self.start else ids, self.weight)


def _with_embedding_rows(generator: RARGenerator, start: int, stop: int) -> RARGenerator:
    """The same generator (shared weights) whose embedding table holds only rows [start, stop)."""
    view = copy.copy(generator)
    view._modules = dict(generator._modules)
    view.embeddings = EmbeddingRows(generator.embeddings, start, stop)
    return view


class ConditionGraph(nn.Module):
    """class_labels [R] (guidance rows), positions [P, R] -> condition [P, R, C]."""


    def __init__(self, generator: RARGenerator) -> None:
        super().__init__()
        c = generator.config
        self.generator = _with_embedding_rows(generator, c.codebook_size + 1, c.embedding_rows)

    def forward(self, class_labels, positions):
        return self.generator.condition(class_labels, positions)


class DecodeStepGraph(nn.Module):
    """tokens [B] (image token p - 2), position [B] (p in 0..N, per image), condition [P, R, C], per layer i
    the cache views k_cache.i / v_cache.i [R, H, S, Dh], guidance_scale [B], temperature [B], noise [B, V]
    -> next_tokens [B] (image token p - 1), guided logits [B, V], keys/values of position p [L, R, H, 1, Dh].

    Row r reads condition[p mod P, r]: P = N + 1 holds every position, P = 1 the current one, P = W the
    window of W positions starting at a multiple of W that holds p.
    One cache input per layer because slicing a layer out of one [L, ...] input is a copy in ONNX.
    """

    def __init__(self, generator: RARGenerator) -> None:
        super().__init__()
        self.generator = _with_embedding_rows(generator, 0, generator.config.codebook_size)

    def forward(self, tokens, position, condition, k_cache: list, v_cache: list, guidance_scale, temperature, noise):
        rows, batch = condition.shape[1], tokens.shape[0]
        row = torch.arange(rows, device=tokens.device)
        image = torch.where(row >= batch, row - batch, row)  # R = 2B (guided) or B: row r shows image r mod B
        row_tokens, row_positions = tokens[image], position[image]
        window = condition.shape[0]  # row p mod P: the table (P = N + 1), one position (P = 1), or a window
        row_condition = condition[row_positions - torch.div(row_positions, window, rounding_mode="floor") * window, row]
        logits, keys, values = self.generator.decode_step_conditioned(row_tokens, row_positions, row_condition,
                                                                      k_cache, v_cache)
        guided = apply_guidance(logits, guidance_scale, guidance_scale.shape[0])
        return gumbel_max(guided, noise, temperature), guided, keys, values


class DecodeBlockGraph(nn.Module):
    """The decode step over P consecutive positions per image (speculative Jacobi decoding checks a window of
    drafts in one call; the prefill is one call at positions 0 and 1): tokens [B, P] (image tokens p - 2),
    position [B] (the block's first position, per image), condition [T, R, C], the cache views, guidance_scale
    [B, P], temperature [B], noise [B, P, V] -> next_tokens [B, P] (image tokens p - 1, sampled from each
    position's guided logits), guided logits [B, P, V], keys/values of the P positions [L, R, H, P, Dh].

    Row r, position p reads condition[p mod T, r] (the runtime passes the whole table, T = N + 1). Position p
    attends to the cache below the block's first position and to the block up to itself.
    """

    def __init__(self, generator: RARGenerator) -> None:
        super().__init__()
        self.generator = _with_embedding_rows(generator, 0, generator.config.codebook_size)

    def forward(self, tokens, position, condition, k_cache: list, v_cache: list, guidance_scale, temperature, noise):
        rows, (batch, block) = condition.shape[1], tokens.shape
        row = torch.arange(rows, device=tokens.device)
        image = torch.where(row >= batch, row - batch, row)
        row_first = position[image]
        positions = row_first[:, None] + torch.arange(block, device=tokens.device)
        table = condition.shape[0]
        index = positions - torch.div(positions, table, rounding_mode="floor") * table
        logits, keys, values = self.generator.decode_block_conditioned(
            tokens[image], row_first, condition[index, row[:, None]], k_cache, v_cache)
        guided = apply_guidance(logits, guidance_scale[..., None], batch)
        per_position = temperature[:, None].expand(batch, block).reshape(-1)
        sampled = gumbel_max(guided.flatten(0, 1), noise.flatten(0, 1), per_position).view(batch, block)
        return sampled, guided, keys, values


class VQDecoderGraph(nn.Module):
    """tokens [B, N] -> images [B, 3, H, W] float32 clamped to [0, 1], and images_uint8 [B, H, W, 3]
    with the official truncation (floor of x * 255), ready for PIL or a PNG writer."""


    def __init__(self, tokenizer: VQDecoder) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, tokens):
        images = self.tokenizer(tokens).clamp(0.0, 1.0)
        return images, uint8_images(images)


def uint8_images(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, H, W, 3] uint8. Floor, then cast: the official truncation whatever
    rounding a backend's cast uses; the cast is the last op because TensorRT accepts uint8 only at the
    network's edges."""
    return torch.floor(images.permute(0, 2, 3, 1) * 255).to(torch.uint8)


# graph name -> its module from (generator, tokenizer)
RAR_GRAPH_MODULES = {"condition": lambda generator, tokenizer: ConditionGraph(generator),
                     "decode_step": lambda generator, tokenizer: DecodeStepGraph(generator),
                     "decode_block": lambda generator, tokenizer: DecodeBlockGraph(generator),
                     "vq_decoder": lambda generator, tokenizer: VQDecoderGraph(tokenizer)}
