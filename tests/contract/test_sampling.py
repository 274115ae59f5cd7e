"""Reference sampler: official greedy runs, guidance schedule, Gumbel-max, noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rar_deploy import guidance_schedule, reference_generate, sampling_noise
from rar_deploy.contract.sampling import guidance_rows
from rar_deploy.errors import RARDeployError
from rar_deploy.model.guidance import apply_guidance, gumbel_max

GUIDED_LOGITS_TOL = 1e-4
FLOAT32_EPS = float(np.finfo(np.float32).eps)
RUNS = {"const": (4.0, 0.0), "powcos": (16.0, 2.75)}


@pytest.mark.parametrize("run", RUNS)
def test_greedy_generation_reproduces_official(official_generator, golden, run):
    scale, pow = RUNS[run]
    result = reference_generate(official_generator, golden["labels"], scale, pow, temperature=0.0, keep_logits=True)
    np.testing.assert_array_equal(result.tokens.numpy(), golden[f"greedy_tokens_{run}"])
    np.testing.assert_allclose(result.logits.numpy(), golden[f"cfg_logits_{run}"], rtol=0, atol=GUIDED_LOGITS_TOL)


@pytest.mark.parametrize("run", RUNS)
def test_guidance_schedule_equals_official(golden, run):
    scale, pow = RUNS[run]
    # The official code evaluates the schedule in float32; the golden file stores it in float64. The
    # float32 rounding of the cosine term is amplified by (g - 1): allow a few float32 ulps of g.
    tolerance = 4 * FLOAT32_EPS * scale
    np.testing.assert_allclose(guidance_schedule(16, scale, pow), golden[f"cfg_scale_{run}"], rtol=0, atol=tolerance)


def test_zero_pow_means_constant_guidance():
    assert np.all(guidance_schedule(256, 7.0, 0.0) == np.float32(7.0))


def test_gumbel_max_draws_from_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    temperature = 0.7
    draws = 40000
    uniform = torch.from_numpy(sampling_noise(0, 1, draws, 4)[0])
    tokens = gumbel_max(logits.expand(draws, -1), uniform, temperature)
    freq = torch.bincount(tokens, minlength=4).double() / draws
    expected = torch.softmax(logits[0].double() / temperature, -1)
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)


def test_temperature_zero_is_argmax_and_per_row():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 2.9]])
    uniform = torch.full((2, 3), 0.5)
    uniform[:, 0] = 1 - 2**-23  # huge Gumbel bonus for token 0 when sampling
    assert gumbel_max(logits, uniform, 0.0).tolist() == [1, 0]
    assert gumbel_max(logits, uniform, torch.tensor([0.0, 1.0])).tolist() == [1, 0]
    assert gumbel_max(logits, uniform, torch.tensor([1.0, 0.0])).tolist() == [0, 0]


def test_noise_is_open_interval_and_per_image():
    noise = sampling_noise(3, 4, 16, 1024)
    assert noise.dtype == np.float32 and noise.min() > 0 and noise.max() < 1
    np.testing.assert_array_equal(sampling_noise(3, 2, 16, 1024, first_image=2), noise[2:])
    assert not np.array_equal(noise[0], noise[1])


def test_same_noise_same_tokens_and_batch_independent(official_generator):
    labels = [3, 500, 999]
    noise = sampling_noise(11, 3, 16, 1024)
    full = reference_generate(official_generator, labels, 4.0, 1.0, temperature=1.0, noise=noise).tokens
    again = reference_generate(official_generator, labels, 4.0, 1.0, temperature=1.0, seed=11).tokens
    alone = reference_generate(official_generator, labels[2:], 4.0, 1.0, temperature=1.0, noise=noise[2:]).tokens
    assert torch.equal(full, again)
    assert torch.equal(full[2:], alone)


def test_zero_guidance_scale_samples_without_guidance(official_generator, golden):
    labels = torch.from_numpy(golden["labels"])
    result = reference_generate(official_generator, labels, 0.0, 0.0, temperature=0.0, keep_logits=True)
    first = official_generator.logits(labels, result.tokens[:, :0])[:, 0]
    torch.testing.assert_close(result.logits[:, 0], first, rtol=0, atol=1e-5)


@pytest.mark.parametrize("labels, message", [([1000], "out of range"), ([-1], "out of range"), ([], "no class labels")])
def test_bad_class_labels(official_generator, labels, message):
    with pytest.raises(RARDeployError, match=message):
        reference_generate(official_generator, labels, 4.0, 0.0, temperature=0.0)


MASK64 = 2**64 - 1


def _splitmix64(x: int) -> int:
    """The published SplitMix64 output function, in plain Python integers (an independent path)."""
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


@pytest.mark.parametrize("seed, image", [(0, 0), (7, 3), (2**63 - 1, 12)])
def test_noise_follows_its_specification(seed, image):
    """The contract's noise: image i's stream is SplitMix64 keyed by splitmix64(splitmix64(seed) ^ i), value
    t * V + v is its (t * V + v)-th output, u = ((bits >> 41) + 0.5) / 2**23."""
    vocab, steps = 1024, 3
    noise = sampling_noise(seed, 1, steps, vocab, first_image=image)[0]
    key = _splitmix64(_splitmix64(seed) ^ image)
    for t, v in [(0, 0), (0, 1), (1, 5), (2, 1023)]:
        bits = _splitmix64((key + (t * vocab + v) * 0x9E3779B97F4A7C15) & MASK64)
        assert noise[t, v] == np.float32(((bits >> 41) + 0.5) / 2**23), (t, v)


def test_guidance_schedule_follows_its_specification():
    """float64 with the C library's cos and pow, rounded to float32 (what a C++ runtime computes too)."""
    import math

    schedule = guidance_schedule(256, 15.5, 2.5)
    for t in (0, 1, 100, 255):
        value = (15.5 - 1) * ((1 - math.cos(math.pi * (t / 256) ** 2.5)) * 0.5) + 1
        assert schedule[t] == np.float32(value)


def test_guidance_rows_and_the_unguided_identity():
    labels = np.array([3, 7])
    assert guidance_rows(labels, True, 1000).tolist() == [3, 7, 1000, 1000]
    assert guidance_rows(labels, False, 1000).tolist() == [3, 7]
    logits = torch.randn(2, 5)
    assert torch.equal(apply_guidance(logits, torch.tensor([4.0, 9.0]), 2), logits)  # no guidance rows: exactly c
    rows = torch.randn(4, 5)
    expected = rows[2:] + (rows[:2] - rows[2:]) * torch.tensor([[4.0], [9.0]])
    assert torch.equal(apply_guidance(rows, torch.tensor([4.0, 9.0]), 2), expected)
