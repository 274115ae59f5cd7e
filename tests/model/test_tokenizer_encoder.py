"""The MaskGIT-VQGAN encoder: the official file's keys and shapes, and tokens that are the nearest codebook rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from rar_deploy.contract.config import TOKENIZER_PRESETS
from rar_deploy.model.checkpoint import read_state_dict
from rar_deploy.model.tokenizer import VQTokenizer

SHAPES = Path(__file__).resolve().parents[1] / "data" / "official_tiny" / "official_state_dict_shapes.json"


def test_the_whole_tokenizer_has_exactly_the_released_files_keys_and_shapes():
    released = json.loads(SHAPES.read_text())["maskgit-vqgan-imagenet-f16-256"]
    ours = VQTokenizer(TOKENIZER_PRESETS["maskgit-vqgan-imagenet-f16-256"]).state_dict()
    assert {k: list(v.shape) for k, v in ours.items()} == {k: v["shape"] for k, v in released.items()}


def test_the_official_tiny_file_loads_whole_and_its_tokens_are_the_nearest_codebook_rows(official_dir):
    state = read_state_dict(official_dir / "tiny_vq.bin")
    tokenizer = VQTokenizer(TOKENIZER_PRESETS["tiny"])
    tokenizer.load_state_dict(state, strict=True)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer.encode(images)
    assert tokens.shape == (2, 16)
    latents = tokenizer.encoder(images).detach().double().numpy()  # [2, z, 4, 4]
    codebook = state["quantize.embedding.weight"].double().numpy()
    flat = latents.transpose(0, 2, 3, 1).reshape(-1, latents.shape[1])
    distances = ((flat[:, None, :] - codebook[None]) ** 2).sum(-1)  # the direct formula, in float64
    np.testing.assert_array_equal(tokens.reshape(-1).numpy(), distances.argmin(1))
