"""The reference model against the OFFICIAL implementation's golden outputs, and its own paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rar_deploy import GENERATOR_PRESETS, TOKENIZER_PRESETS, RARGenerator, StaticKVCache, VQDecoder
from rar_deploy.model.checkpoint import expected_shapes
from rar_deploy.model.demo import random_generator

GOLDEN_LOGITS_TOL = 1e-4  # issue 2: official vs ours, float32
STEP_VS_FULL_TOL = 1e-5  # static-cache step path vs teacher-forced full forward


def test_teacher_forced_logits_match_official(official_generator, golden):
    labels, ids = torch.from_numpy(golden["labels"]), torch.from_numpy(golden["ids"])
    null = torch.full_like(labels, official_generator.config.null_class)
    cond = official_generator.logits(labels, ids).numpy()
    uncond = official_generator.logits(null, ids).numpy()
    assert cond.shape == golden["logits_cond"].shape
    np.testing.assert_allclose(cond, golden["logits_cond"], rtol=0, atol=GOLDEN_LOGITS_TOL)
    np.testing.assert_allclose(uncond, golden["logits_uncond"], rtol=0, atol=GOLDEN_LOGITS_TOL)


def test_tokenizer_decode_matches_official(official_tokenizer, golden):
    tokens = torch.from_numpy(golden["greedy_tokens_const"])
    raw = official_tokenizer.decode(tokens, clamp=False).numpy()
    np.testing.assert_allclose(raw, golden["images_const_unclamped"], rtol=0, atol=GOLDEN_LOGITS_TOL)
    clamped = official_tokenizer.decode(tokens).numpy()
    np.testing.assert_allclose(clamped, golden["images_const"], rtol=0, atol=GOLDEN_LOGITS_TOL)


def _teacher_forced_by_steps(generator: RARGenerator, labels: torch.Tensor, ids: torch.Tensor,
                             per_row_steps: bool) -> torch.Tensor:
    cache = StaticKVCache.allocate(generator.config, labels.shape[0])
    logits, keys, values = generator.prefill(labels)
    cache.write(keys, values, 0)
    out = [logits]
    for t in range(1, ids.shape[1]):
        step = torch.full_like(labels, t)
        logits, keys, values = generator.decode_step(ids[:, t - 1], step, labels, cache.keys, cache.values)
        cache.write(keys, values, step + 1 if per_row_steps else t + 1)
        out.append(logits)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("per_row_steps", [False, True])
def test_static_cache_steps_equal_full_forward(per_row_steps):
    generator = random_generator(GENERATOR_PRESETS["tiny"], seed=3)
    labels = torch.tensor([5, 999, 1000])  # 1000 is the null class
    ids = torch.randint(0, 1024, (3, 16), generator=torch.Generator().manual_seed(0))
    full = generator.logits(labels, ids)[:, :16]
    stepped = _teacher_forced_by_steps(generator, labels, ids, per_row_steps)
    torch.testing.assert_close(stepped, full, rtol=0, atol=STEP_VS_FULL_TOL)


def test_rows_at_different_steps_share_a_batch():
    generator = random_generator(GENERATOR_PRESETS["tiny"], seed=4)
    labels = torch.tensor([1, 2])
    ids = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(1))
    full = generator.logits(labels, ids)
    _, keys, values = generator.forward_prefix(labels, ids)
    cache = StaticKVCache.allocate(generator.config, 2)
    cache.keys[:, :, :, :17], cache.values[:, :, :, :17] = keys[..., :17, :], values[..., :17, :]
    step = torch.tensor([3, 11])  # row 0 predicts token 3, row 1 token 11
    logits, _, _ = generator.decode_step(ids[[0, 1], step - 1], step, labels, cache.keys, cache.values)
    torch.testing.assert_close(logits, full[[0, 1], step], rtol=0, atol=STEP_VS_FULL_TOL)


def test_per_class_modulation_equals_per_row():
    """Training's forward (adaLN modulations once per distinct class, gathered for the rows) against the default."""
    generator = random_generator(GENERATOR_PRESETS["tiny"], seed=6)
    labels = torch.tensor([3, 1000, 3, 8, 1000])  # repeated classes and the null class, out of order
    ids = torch.randint(0, 1024, (5, 16), generator=torch.Generator().manual_seed(3))
    expected = generator.forward_prefix(labels, ids)
    gathered = generator.forward_prefix(labels, ids, per_class_modulation=True)
    for got, want in zip(gathered, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=STEP_VS_FULL_TOL)


@pytest.mark.parametrize("unguided", [False, True])
def test_condition_rows_and_conditioned_steps_equal_the_official_path(unguided):
    """The deployed path (condition rows computed ahead, the prefill as positions 0 and 1 of the step)
    against the full causal forward of the official computation, every position, rows at mixed positions."""
    generator = random_generator(GENERATOR_PRESETS["tiny"], seed=5)
    labels = torch.tensor([7, 1000] if not unguided else [7, 3])
    ids = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(2))
    full = generator.logits(labels, ids)  # [2, 17, V]; output p - 1 comes from position p
    table = generator.condition(labels, torch.arange(17)[:, None].expand(17, 2))
    cache = StaticKVCache.allocate(generator.config, 2)
    for p in range(17):
        positions = torch.full((2,), p)
        tokens = ids[:, p - 2] if p >= 2 else torch.zeros(2, dtype=torch.int64)
        logits, keys, values = generator.decode_step_conditioned(tokens, positions, table[p], cache.keys,
                                                                 cache.values)
        cache.write(keys, values, p)
        if p >= 1:
            torch.testing.assert_close(logits, full[:, p - 1], rtol=0, atol=STEP_VS_FULL_TOL)
    mixed = torch.tensor([3, 11])  # each row at its own position, over the filled cache
    rows = torch.arange(2)
    logits, _, _ = generator.decode_step_conditioned(ids[rows, mixed - 2], mixed, table[mixed, rows], cache.keys,
                                                     cache.values)
    torch.testing.assert_close(logits, full[rows, mixed - 1], rtol=0, atol=STEP_VS_FULL_TOL)


def _official_shapes(official_dir, name):
    spec = json.loads((official_dir / "official_state_dict_shapes.json").read_text())[name]
    return {k: tuple(v["shape"]) for k, v in spec.items()}


@pytest.mark.parametrize("preset", ["rar_b", "rar_l", "rar_xl", "rar_xxl"])
def test_generator_state_dict_equals_official(official_dir, preset):
    with torch.device("meta"):
        module = RARGenerator(GENERATOR_PRESETS[preset])
    assert expected_shapes(module) == _official_shapes(official_dir, preset)


def test_tokenizer_state_dict_equals_official_decoder(official_dir):
    official = _official_shapes(official_dir, "maskgit-vqgan-imagenet-f16-256")
    with torch.device("meta"):
        module = VQDecoder(TOKENIZER_PRESETS["maskgit-vqgan-imagenet-f16-256"])
    assert expected_shapes(module) == {k: v for k, v in official.items() if not k.startswith("encoder.")}


def test_parameter_counts_match_the_released_sizes(official_dir):
    expected = {"rar_b": 260.9e6, "rar_l": 461.7e6, "rar_xl": 955.4e6, "rar_xxl": 1498.5e6}
    for preset, count in expected.items():
        with torch.device("meta"):
            params = sum(p.numel() for p in RARGenerator(GENERATOR_PRESETS[preset]).parameters())
        assert abs(params - count) < 0.05e6, preset
