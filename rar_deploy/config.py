"""Model configurations: read off checkpoint tensors, or named presets of the released models."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping

import torch

from .errors import CheckpointError


@dataclass(frozen=True)
class SamplingDefaults:
    """Published sampling settings of a model size (RAR paper / official demo)."""

    temperature: float
    guidance_scale: float
    guidance_pow: float


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of a RAR generator. Everything here can be read off the official state dict."""

    hidden_size: int
    depth: int
    num_heads: int
    mlp_size: int
    image_seq_len: int = 256
    codebook_size: int = 1024
    num_classes: int = 1000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def cache_len(self) -> int:
        """Positions the KV cache ever holds: cls, class, and N-1 image tokens."""
        return self.image_seq_len + 1

    @property
    def null_class(self) -> int:
        """Class label of the unconditional rows of classifier-free guidance."""
        return self.num_classes

    @property
    def embedding_rows(self) -> int:
        return self.codebook_size + 1 + self.num_classes + 1

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.image_seq_len)

    @property
    def preset_name(self) -> str | None:
        for name, preset in GENERATOR_PRESETS.items():
            if preset == self:
                return name
        return None

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        """The published settings of this size; models that are not a released size get RAR-B's."""
        return SAMPLING_DEFAULTS.get(self.preset_name or "", SAMPLING_DEFAULTS["rar_b"])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "GeneratorConfig":
        """Read depth, width, heads (via the qk-norm size), MLP, N, V and classes off the tensors."""
        _require(state, "generator", ["embeddings.weight", "blocks.0.attn.q_norm.weight",
                                      "blocks.0.mlp.fc1.weight", "lm_head.weight", "pos_embed"])
        hidden = state["embeddings.weight"].shape[1]
        head_dim = state["blocks.0.attn.q_norm.weight"].shape[0]
        codebook = state["lm_head.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        if hidden % head_dim:
            raise CheckpointError(f"hidden size {hidden} is not a multiple of the qk-norm size {head_dim}")
        return cls(
            hidden_size=hidden,
            depth=depth,
            num_heads=hidden // head_dim,
            mlp_size=state["blocks.0.mlp.fc1.weight"].shape[0],
            image_seq_len=state["pos_embed"].shape[1] - 1024,
            codebook_size=codebook,
            num_classes=state["embeddings.weight"].shape[0] - codebook - 2,
        )


@dataclass(frozen=True)
class TokenizerConfig:
    """Shape of the MaskGIT-VQGAN decoder (the encoder of the released file is never used)."""

    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = 1024
    num_channels: int = 3

    @property
    def num_resolutions(self) -> int:
        return len(self.channel_mult)

    @property
    def upsample_factor(self) -> int:
        return 2 ** (self.num_resolutions - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "TokenizerConfig":
        _require(state, "tokenizer", ["decoder.conv_in.weight", "decoder.conv_out.weight",
                                      "quantize.embedding.weight", "decoder.up.0.block.0.conv1.weight"])
        levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.up."))
        blocks = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("decoder.up.0.block."))
        _require(state, "tokenizer", [f"decoder.up.{i}.block.0.conv1.weight" for i in range(levels)])
        widths = [state[f"decoder.up.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
        base = widths[0]
        if any(w % base for w in widths):
            raise CheckpointError(f"decoder level widths {widths} are not multiples of level 0's")
        return cls(
            hidden_channels=base,
            channel_mult=tuple(w // base for w in widths),
            num_res_blocks=blocks,
            z_channels=state["decoder.conv_in.weight"].shape[1],
            codebook_size=state["quantize.embedding.weight"].shape[0],
            num_channels=state["decoder.conv_out.weight"].shape[0],
        )


def _require(state: Mapping[str, torch.Tensor], what: str, keys: list[str]) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"cannot read the {what} configuration: missing {', '.join(missing)}")


GENERATOR_PRESETS: dict[str, GeneratorConfig] = {
    "tiny": GeneratorConfig(hidden_size=32, depth=2, num_heads=2, mlp_size=128, image_seq_len=16),
    "rar_b": GeneratorConfig(hidden_size=768, depth=24, num_heads=16, mlp_size=3072),
    "rar_l": GeneratorConfig(hidden_size=1024, depth=24, num_heads=16, mlp_size=4096),
    "rar_xl": GeneratorConfig(hidden_size=1280, depth=32, num_heads=16, mlp_size=5120),
    "rar_xxl": GeneratorConfig(hidden_size=1408, depth=40, num_heads=16, mlp_size=6144),
}

TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    "tiny": TokenizerConfig(hidden_channels=32, channel_mult=(1, 1, 1, 1, 2), z_channels=32),
    "maskgit-vqgan-imagenet-f16-256": TokenizerConfig(),
}

SAMPLING_DEFAULTS: dict[str, SamplingDefaults] = {
    "rar_b": SamplingDefaults(temperature=1.0, guidance_scale=16.0, guidance_pow=2.75),
    "rar_l": SamplingDefaults(temperature=1.02, guidance_scale=15.5, guidance_pow=2.5),
    "rar_xl": SamplingDefaults(temperature=1.02, guidance_scale=6.9, guidance_pow=1.5),
    "rar_xxl": SamplingDefaults(temperature=1.02, guidance_scale=8.0, guidance_pow=1.2),
}
