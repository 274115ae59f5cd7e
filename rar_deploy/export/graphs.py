"""The three deployment graphs as nn.Modules around the reference model (DEPLOYMENT.md contract).

Per-image inputs; the 2B guidance rows (B conditional, then B with the null class) are built inside;
sampling happens inside by Gumbel-max from input noise. The KV cache is static [L, 2B, H, S, Dh]; the
decode step reads it and outputs only this step's keys and values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model.generator import RARGenerator
from ..model.tokenizer import VQDecoder
from ..sampling import apply_guidance, gumbel_max


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype, and shape with symbolic dims as strings."""

    name: str
    dtype: str  # numpy name: int64, float32, float16, uint8
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def _guidance_rows(class_labels: torch.Tensor, null_class: int) -> torch.Tensor:
    return torch.cat([class_labels, torch.full_like(class_labels, null_class)])


class PrefillGraph(nn.Module):
    """class_labels [B], guidance_scale [B], temperature [B], noise [B, V] ->
    tokens [B], logits [B, V] (guided, float32), keys/values of positions 0-1 [L, 2B, H, 2, Dh]."""

    input_names = ("class_labels", "guidance_scale", "temperature", "noise")
    output_names = ("tokens", "logits", "keys", "values")

    def __init__(self, generator: RARGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, class_labels, guidance_scale, temperature, noise):
        rows = _guidance_rows(class_labels, self.generator.config.null_class)
        logits, keys, values = self.generator.prefill(rows)
        guided = apply_guidance(logits, guidance_scale)
        return gumbel_max(guided, noise, temperature), guided, keys, values


class DecodeStepGraph(nn.Module):
    """tokens [B] (token t-1), step [B] (t in 1..N-1), class_labels [B], per layer i the cache views
    k_cache.i / v_cache.i [2B, H, S, Dh], guidance_scale [B], temperature [B], noise [B, V] ->
    tokens [B] (token t), logits [B, V], keys/values of this step [L, 2B, H, 1, Dh] (written at t+1).

    One cache input per layer because slicing a layer out of one [L, ...] input is a copy in ONNX
    (Gather/Slice); a runtime keeps one [L, 2B, H, S, Dh] buffer and binds each layer's view.
    """

    output_names = ("next_tokens", "logits", "keys", "values")

    def __init__(self, generator: RARGenerator) -> None:
        super().__init__()
        self.generator = generator
        layers = range(generator.config.depth)
        self.input_names = ("tokens", "step", "class_labels", *(f"k_cache.{i}" for i in layers),
                            *(f"v_cache.{i}" for i in layers), "guidance_scale", "temperature", "noise")

    def forward(self, tokens, step, class_labels, k_cache: list, v_cache: list, guidance_scale, temperature, noise,
                modulation: tuple | None = None):
        """`modulation` (eager runtimes only, never exported): this step's rows of adaln_tables."""
        rows = _guidance_rows(class_labels, self.generator.config.null_class)
        logits, keys, values = self.generator.decode_step(
            tokens.repeat(2), step.repeat(2), rows, k_cache, v_cache, modulation
        )
        guided = apply_guidance(logits, guidance_scale)
        return gumbel_max(guided, noise, temperature), guided, keys, values


class VQDecoderGraph(nn.Module):
    """tokens [B, N] -> images [B, 3, H, W] float32 clamped to [0, 1], and images_uint8 [B, H, W, 3]
    with the official truncation (floor of x * 255), ready for PIL or a PNG writer."""

    input_names = ("tokens",)
    output_names = ("images", "images_uint8")

    def __init__(self, tokenizer: VQDecoder) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, tokens):
        images = self.tokenizer(tokens).clamp(0.0, 1.0)
        # floor, then cast: the official truncation whatever rounding a backend's cast uses. The cast is
        # the last op because TensorRT accepts uint8 only at the network's edges.
        images_uint8 = torch.floor(images.permute(0, 2, 3, 1) * 255).to(torch.uint8)
        return images, images_uint8


def graph_specs(generator: RARGenerator, tokenizer: VQDecoder, cache_dtype: str) -> dict[str, dict]:
    """Inputs and outputs of each graph, with symbolic batch dims: the manifest's contract."""
    c = generator.config
    vocab, layers, heads, head_dim = c.codebook_size, c.depth, c.num_heads, c.head_dim
    side = c.grid_size * tokenizer.config.upsample_factor
    channels = tokenizer.config.num_channels
    per_image = [TensorSpec("guidance_scale", "float32", ("batch",)),
                 TensorSpec("temperature", "float32", ("batch",)),
                 TensorSpec("noise", "float32", ("batch", vocab))]

    def kv(positions) -> list[TensorSpec]:
        shape = (layers, "2*batch", heads, positions, head_dim)
        return [TensorSpec("keys", cache_dtype, shape), TensorSpec("values", cache_dtype, shape)]

    sampled = [TensorSpec("logits", "float32", ("batch", vocab))]
    cache_view = ("2*batch", heads, c.cache_len, head_dim)
    caches = [TensorSpec(f"{kv}_cache.{i}", cache_dtype, cache_view) for kv in "kv" for i in range(layers)]
    return {
        "prefill": {
            "inputs": [TensorSpec("class_labels", "int64", ("batch",)), *per_image],
            "outputs": [TensorSpec("tokens", "int64", ("batch",)), *sampled, *kv(2)],
        },
        "decode_step": {
            "inputs": [TensorSpec("tokens", "int64", ("batch",)), TensorSpec("step", "int64", ("batch",)),
                       TensorSpec("class_labels", "int64", ("batch",)), *caches, *per_image],
            "outputs": [TensorSpec("next_tokens", "int64", ("batch",)), *sampled, *kv(1)],
        },
        "vq_decoder": {
            "inputs": [TensorSpec("tokens", "int64", ("batch", c.image_seq_len))],
            "outputs": [TensorSpec("images", "float32", ("batch", channels, side, side)),
                        TensorSpec("images_uint8", "uint8", ("batch", side, side, channels))],
        },
    }
