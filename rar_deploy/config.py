"""Model configurations: read off checkpoint tensors, or named presets of the released models."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

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
    def from_state_dict(cls, state: Mapping[str, Any], path: object = "the checkpoint") -> "GeneratorConfig":
        """Read depth, width, heads (via the qk-norm size), MLP, N, V and classes off the tensors."""
        shapes = _Shapes(state, "generator", path)
        hidden = shapes.dim("embeddings.weight", 1, rank=2)
        head_dim = shapes.dim("blocks.0.attn.q_norm.weight", 0, rank=1)
        codebook = shapes.dim("lm_head.weight", 0, rank=2)
        if hidden % head_dim:
            raise CheckpointError(f"{path}: hidden size {hidden} (embeddings.weight) is not a multiple of the qk-norm "
                                  f"size {head_dim} (blocks.0.attn.q_norm.weight): not an official RAR generator")
        return cls(
            hidden_size=hidden,
            depth=shapes.count("blocks.", 1),
            num_heads=hidden // head_dim,
            mlp_size=shapes.dim("blocks.0.mlp.fc1.weight", 0, rank=2),
            image_seq_len=shapes.dim("pos_embed", 1, rank=3, offset=1024),
            codebook_size=codebook,
            num_classes=shapes.dim("embeddings.weight", 0, rank=2, offset=codebook + 2),
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
    def from_state_dict(cls, state: Mapping[str, Any], path: object = "the checkpoint") -> "TokenizerConfig":
        shapes = _Shapes(state, "tokenizer", path)
        levels = shapes.count("decoder.up.", 2)
        blocks = shapes.count("decoder.up.0.block.", 4)
        widths = [shapes.dim(f"decoder.up.{i}.block.0.conv1.weight", 0, rank=4) for i in range(levels)]
        base = widths[0]
        if any(w % base for w in widths):
            raise CheckpointError(f"{path}: decoder level widths {widths} are not multiples of level 0's")
        return cls(
            hidden_channels=base,
            channel_mult=tuple(w // base for w in widths),
            num_res_blocks=blocks,
            z_channels=shapes.dim("decoder.conv_in.weight", 1, rank=4),
            codebook_size=shapes.dim("quantize.embedding.weight", 0, rank=2),
            num_channels=shapes.dim("decoder.conv_out.weight", 0, rank=4),
        )


class _Shapes:
    """Dimensions read off a state dict, with errors that name the tensor and the file."""

    def __init__(self, state: Mapping[str, Any], what: str, path: object) -> None:
        self.state, self.what, self.path = state, what, path

    def dim(self, key: str, axis: int, rank: int, offset: int = 0) -> int:
        """state[key].shape[axis] - offset, which must be at least 1."""
        if key not in self.state:
            raise CheckpointError(f"cannot read the {self.what} configuration from {self.path}: missing {key}")
        shape = tuple(self.state[key].shape)
        if len(shape) != rank or shape[axis] - offset < 1:
            expected = f"{rank} dimensions" + (f" with dim {axis} above {offset}" if offset else "")
            raise CheckpointError(f"{self.path}: {key} has shape {shape}, expected {expected}: not an official "
                                  f"RAR {self.what} checkpoint")
        return int(shape[axis] - offset)

    def count(self, prefix: str, field: int) -> int:
        """1 + the largest index at dot-separated `field` of the keys starting with `prefix` (blocks, levels)."""
        indices = []
        for key in self.state:
            if key.startswith(prefix):
                parts = key.split(".")
                if len(parts) <= field or not parts[field].isdigit():
                    raise CheckpointError(f"{self.path}: unexpected key {key} (no index after {prefix!r})")
                indices.append(int(parts[field]))
        if not indices:
            raise CheckpointError(f"cannot read the {self.what} configuration from {self.path}: no {prefix}* keys")
        return 1 + max(indices)


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
