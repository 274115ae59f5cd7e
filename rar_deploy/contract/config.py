"""Model configurations: read off checkpoint tensors, or named presets of the released models."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from rar_deploy.errors import CheckpointError


@dataclass(frozen=True)
class SamplingDefaults:
    """Published sampling settings of a model size (RAR paper / official demo)."""

    temperature: float
    guidance_scale: float
    guidance_pow: float


@dataclass(frozen=True)
class VARSamplingDefaults:
    """VAR's published sampling settings (its FID evaluation: cfg 1.5, top-k 900, top-p 0.96; the official demo
    draws with cfg 4): t = cfg * scale / (K - 1) at scale `scale` of K."""

    guidance_scale: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    temperature: float = 1.0


VAR_DEMO_GUIDANCE_SCALE = 4.0


@dataclass(frozen=True)
class RARConfig:
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
    def from_state_dict(cls, state: Mapping[str, Any], path: object = "the checkpoint") -> "RARConfig":
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
class RARTokenizerConfig:
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
    def from_state_dict(cls, state: Mapping[str, Any], path: object = "the checkpoint") -> "RARTokenizerConfig":
        shapes = _Shapes(state, "tokenizer", path)
        base, channel_mult = shapes.decoder_widths()
        return cls(
            hidden_channels=base,
            channel_mult=channel_mult,
            num_res_blocks=shapes.count("decoder.up.0.block.", 4),
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

    def decoder_widths(self, base: int | None = None) -> tuple[int, tuple[int, ...]]:
        """(base channels, channel_mult) of a decoder's up levels (`decoder.up.i.block.0.conv1`); base:
        level 0's width unless given."""
        levels = self.count("decoder.up.", 2)
        widths = [self.dim(f"decoder.up.{i}.block.0.conv1.weight", 0, rank=4) for i in range(levels)]
        base = base or widths[0]
        if any(w % base for w in widths):
            raise CheckpointError(f"{self.path}: decoder level widths {widths} are not multiples of {base}")
        return base, tuple(w // base for w in widths)

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


GENERATOR_PRESETS: dict[str, RARConfig] = {
    "tiny": RARConfig(hidden_size=32, depth=2, num_heads=2, mlp_size=128, image_seq_len=16),
    # the trained demo model (rar_deploy/training): ten classes of shapes, 64 x 64 images of 8 x 8 tokens
    "demo": RARConfig(hidden_size=192, depth=4, num_heads=3, mlp_size=768, image_seq_len=64, codebook_size=1024,
                      num_classes=10),
    "rar_b": RARConfig(hidden_size=768, depth=24, num_heads=16, mlp_size=3072),
    "rar_l": RARConfig(hidden_size=1024, depth=24, num_heads=16, mlp_size=4096),
    "rar_xl": RARConfig(hidden_size=1280, depth=32, num_heads=16, mlp_size=5120),
    "rar_xxl": RARConfig(hidden_size=1408, depth=40, num_heads=16, mlp_size=6144),
}

TOKENIZER_PRESETS: dict[str, RARTokenizerConfig] = {
    "tiny": RARTokenizerConfig(hidden_channels=32, channel_mult=(1, 1, 1, 1, 2), z_channels=32),
    "demo": RARTokenizerConfig(hidden_channels=32, channel_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=32,
                               codebook_size=1024),
    "maskgit-vqgan-imagenet-f16-256": RARTokenizerConfig(),
}

SAMPLING_DEFAULTS: dict[str, SamplingDefaults] = {
    # the demo model's, chosen by its yardsticks (README, "The demo model"): the lowest proxy FID of the sweep
    "demo": SamplingDefaults(temperature=0.9, guidance_scale=2.0, guidance_pow=0.0),
    "rar_b": SamplingDefaults(temperature=1.0, guidance_scale=16.0, guidance_pow=2.75),
    "rar_l": SamplingDefaults(temperature=1.02, guidance_scale=15.5, guidance_pow=2.5),
    "rar_xl": SamplingDefaults(temperature=1.02, guidance_scale=6.9, guidance_pow=1.5),
    "rar_xxl": SamplingDefaults(temperature=1.02, guidance_scale=8.0, guidance_pow=1.2),
}


# -- VAR (Visual AutoRegressive modeling, next-scale prediction; official code FoundationVision/VAR) ----------------

VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # the released 256x256 models: 680 tokens over 10 scales


@dataclass(frozen=True)
class VARConfig:
    """Shape of a VAR generator, read off the official state dict."""

    depth: int
    embed_dim: int
    num_heads: int
    mlp_size: int
    patch_nums: tuple[int, ...] = VAR_PATCH_NUMS
    codebook_size: int = 4096
    vae_channels: int = 32
    num_classes: int = 1000
    attn_l2_norm: bool = True

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def seq_len(self) -> int:
        """Tokens of all scales: the KV cache's length."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def preset_name(self) -> str | None:
        return next((name for name, preset in VAR_PRESETS.items() if preset == self), None)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def scale_ranges(self) -> list[tuple[int, int]]:
        """[begin, end) of each scale's tokens in the sequence."""
        ranges, begin = [], 0
        for pn in self.patch_nums:
            ranges.append((begin, begin + pn * pn))
            begin += pn * pn
        return ranges

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], path: object = "the checkpoint") -> "VARConfig":
        """Depth, width, heads (from scale_mul_1H11, else 64 per head as released), MLP, the scales (from
        lvl_1L, each scale's level repeated pn*pn times), V, Cvae and classes."""
        shapes = _Shapes(state, "VAR generator", path)
        width = shapes.dim("class_emb.weight", 1, rank=2)
        l2_norm = "blocks.0.attn.scale_mul_1H11" in state
        heads = shapes.dim("blocks.0.attn.scale_mul_1H11", 1, rank=4) if l2_norm else max(width // 64, 1)
        shapes.dim("lvl_1L", 1, rank=2)
        levels = [int(v) for v in state["lvl_1L"].reshape(-1).tolist()]
        counts = [levels.count(k) for k in range(max(levels) + 1)]
        patch_nums = tuple(math.isqrt(n) for n in counts)
        if any(pn * pn != n for pn, n in zip(patch_nums, counts)) or levels != sorted(levels):
            raise CheckpointError(f"{path}: lvl_1L does not describe square scales in order (tokens per level "
                                  f"{counts}): not an official VAR generator")
        return cls(
            depth=shapes.count("blocks.", 1),
            embed_dim=width,
            num_heads=heads,
            mlp_size=shapes.dim("blocks.0.ffn.fc1.weight", 0, rank=2),
            patch_nums=patch_nums,
            codebook_size=shapes.dim("head.weight", 0, rank=2),
            vae_channels=shapes.dim("word_embed.weight", 1, rank=2),
            num_classes=shapes.dim("class_emb.weight", 0, rank=2, offset=1),
            attn_l2_norm=l2_norm,
        )


@dataclass(frozen=True)
class VARTokenizerConfig:
    """Shape of VAR's multi-scale VQVAE (decoder, quantiser embedding and Phi convolutions; the encoder of
    the released file is never used)."""

    hidden_channels: int = 160
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    vae_channels: int = 32
    codebook_size: int = 4096
    num_phi: int = 4  # share_quant_resi: Phi convolutions shared over the scales
    quant_resi: float = 0.5  # Phi(h) = (1 - r) h + r conv(h); not stored in the checkpoint

    @property
    def upsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], path: object = "the checkpoint") -> "VARTokenizerConfig":
        shapes = _Shapes(state, "VAR VQVAE", path)
        base, channel_mult = shapes.decoder_widths(shapes.dim("decoder.conv_out.weight", 1, rank=4))
        return cls(
            hidden_channels=base,
            channel_mult=channel_mult,
            num_res_blocks=shapes.count("decoder.up.0.block.", 4) - 1,
            vae_channels=shapes.dim("quantize.embedding.weight", 1, rank=2),
            codebook_size=shapes.dim("quantize.embedding.weight", 0, rank=2),
            num_phi=shapes.count("quantize.quant_resi.qresi_ls.", 3),
        )


VAR_PRESETS: dict[str, VARConfig] = {
    # the shape of the official code's golden tiny model (tests/data/official_var_tiny): 4 scales, 30 tokens
    "var_tiny": VARConfig(depth=2, embed_dim=64, num_heads=2, mlp_size=256, patch_nums=(1, 2, 3, 4), codebook_size=64,
                          vae_channels=8),
    **{f"var_d{d}": VARConfig(depth=d, embed_dim=64 * d, num_heads=d, mlp_size=256 * d) for d in (16, 20, 24, 30)},
}
VAR_TOKENIZER_PRESETS: dict[str, VARTokenizerConfig] = {
    "var_tiny": VARTokenizerConfig(hidden_channels=32, vae_channels=8, codebook_size=64),
    "vae_ch160v4096z32": VARTokenizerConfig(),
}


# the names before VAR joined (both are RAR's): kept importable
GeneratorConfig, TokenizerConfig = RARConfig, RARTokenizerConfig
