"""Randomly initialised checkpoints in the official format, for demos and tests without the hub."""

from __future__ import annotations

import filecmp
import math
import os
from pathlib import Path

import torch
from torch import nn

from rar_deploy.contract.config import (
    GENERATOR_PRESETS,
    TOKENIZER_PRESETS,
    VAR_PRESETS,
    VAR_TOKENIZER_PRESETS,
    RARConfig,
    RARTokenizerConfig,
)
from rar_deploy.errors import RARDeployError
from rar_deploy.model.generator import RARGenerator
from rar_deploy.model.layers import NORM_TYPES
from rar_deploy.model.tokenizer import VQDecoder
from rar_deploy.outputs import Output, any_file, atomic_file

# Released sizes decode with the released tokenizer's shape; the tiny model with the tiny one.
_TOKENIZER_FOR = {"tiny": "tiny"}
_DEFAULT_TOKENIZER = "maskgit-vqgan-imagenet-f16-256"
_TOKENIZER_FILES = {"tiny": "maskgit-vqgan-tiny.bin", _DEFAULT_TOKENIZER: f"{_DEFAULT_TOKENIZER}.bin"}


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Give every parameter a non-trivial random value (adaLN included, unlike the training init).

    Matrices get std 1/sqrt(fan_in) so activations stay O(1); embeddings and learned positions N(0, 1);
    norm weights 1 + N(0, 0.1); biases N(0, 0.02).
    """
    generator = torch.Generator().manual_seed(seed)
    norm_params = {id(p) for m in module.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()}
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if id(param) in norm_params:
                param.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.02 * noise)
            elif name.endswith("bias"):
                param.copy_(0.02 * noise)
            elif param.dim() >= 2 and isinstance(_owner(module, name), (nn.Linear, nn.Conv2d)):
                param.copy_(noise / math.sqrt(param[0].numel()))
            else:
                param.copy_(noise)
    return module


def _owner(module: nn.Module, param_name: str) -> nn.Module:
    return module.get_submodule(param_name.rpartition(".")[0]) if "." in param_name else module


def random_generator(config: RARConfig, seed: int = 0) -> RARGenerator:
    return randomize(RARGenerator(config), seed).eval().requires_grad_(False)


def random_tokenizer(config: RARTokenizerConfig, seed: int = 0) -> VQDecoder:
    decoder = randomize(VQDecoder(config), seed).eval().requires_grad_(False)
    # Centre the output in [0, 1] so that demo pictures show texture rather than clamped black.
    decoder.decoder.conv_out.weight.mul_(0.25)
    decoder.decoder.conv_out.bias.add_(0.5)
    return decoder


class _WriteErrorKept:
    """A file whose failed write keeps its OSError: torch.save reports one as a RuntimeError of its own."""

    def __init__(self, file) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def save_state_dict(module: nn.Module, path: Path) -> Path:
    """torch.save the state dict, byte for byte the same for the same weights. A file already at `path`
    is kept when it is identical and refused when it is not (it may be somebody's real checkpoint)."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_file():
        raise RARDeployError(f"{path} exists and is not a file: choose another --out")
    with atomic_file(Output(path, force=True, written=any_file, directory=False)) as tmp:
        with open(tmp, "wb") as f:  # a file object: the zip's inner folder is then "archive", not the temp name
            writer = _WriteErrorKept(f)
            try:
                torch.save(module.state_dict(), writer)
            except RuntimeError:
                if writer.error is not None:
                    raise writer.error from None  # the write's own error (a full disk), not torch's re-wording
                raise
        if path.exists() and not filecmp.cmp(tmp, path, shallow=False):
            raise RARDeployError(f"{path} exists and holds other weights: remove it yourself or choose another --out")
    return path


def make_demo_checkpoints(preset: str, out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `<out>/rar_<preset>.bin` and its tokenizer (or, for VAR presets, `<out>/<preset>.pth` and its
    VQVAE); returns both paths."""
    if preset in VAR_PRESETS:
        return _make_var_checkpoints(preset, Path(out_dir), seed)
    if preset == "demo":
        raise RARDeployError("the demo preset is the trained demo model, not random weights: "
                             "rar_deploy.training.demo_model.write_demo_checkpoints writes it")
    if preset not in GENERATOR_PRESETS:
        raise RARDeployError(f"unknown preset {preset!r}: choose one of {', '.join(GENERATOR_PRESETS)}, "
                             f"{', '.join(VAR_PRESETS)}")
    out_dir = Path(out_dir)
    tokenizer_name = _TOKENIZER_FOR.get(preset, _DEFAULT_TOKENIZER)
    generator_path = out_dir / (f"{preset}.bin" if preset.startswith("rar_") else f"rar_{preset}.bin")
    tokenizer_path = out_dir / _TOKENIZER_FILES[tokenizer_name]
    save_state_dict(random_generator(GENERATOR_PRESETS[preset], seed), generator_path)
    save_state_dict(random_tokenizer(TOKENIZER_PRESETS[tokenizer_name], seed + 1), tokenizer_path)
    return generator_path, tokenizer_path


def _make_var_checkpoints(preset: str, out_dir: Path, seed: int) -> tuple[Path, Path]:
    """A random VAR generator in the official format (`var_d16.pth` layout) and its VQVAE: the released one's
    shape (`vae_ch160v4096z32.pth`), or the tiny one's (`vae_tiny.pth`) for var_tiny."""
    from rar_deploy.model.var import VARVQVAE, VARGenerator, block_causal_mask, scale_levels

    vae_name = "var_tiny" if preset == "var_tiny" else "vae_ch160v4096z32"
    generator_path = out_dir / f"{preset}.pth"
    vae_path = out_dir / ("vae_tiny.pth" if preset == "var_tiny" else "vae_ch160v4096z32.pth")
    generator = randomize(VARGenerator(VAR_PRESETS[preset]), seed).eval().requires_grad_(False)
    generator.lvl_1L.copy_(scale_levels(generator.config).view(1, -1))  # buffers the official code derives
    generator.attn_bias_for_masking.copy_(block_causal_mask(generator.config))
    vqvae = randomize(VARVQVAE(VAR_TOKENIZER_PRESETS[vae_name]), seed + 1).eval().requires_grad_(False)
    save_state_dict(generator, generator_path)
    save_state_dict(vqvae, vae_path)
    return generator_path, vae_path
