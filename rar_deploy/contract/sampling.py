"""What the runtime owns in sampling, specified exactly so that any language reproduces it (no torch):
the guidance rows, the guidance schedule and the noise from which the graphs draw by Gumbel-max."""

from __future__ import annotations

import math

import numpy as np

_NOISE_BITS = 23  # (k + 0.5) / 2**23 is exact in float32 and lies strictly inside (0, 1)
_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment and its two multipliers
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def guidance_rows(class_labels: np.ndarray, guided: bool, null_class: int) -> np.ndarray:
    """Rows of the generator batch: with guidance the B labels then B null classes, without the B labels."""
    labels = np.asarray(class_labels, dtype=np.int64)
    return np.concatenate([labels, np.full_like(labels, null_class)]) if guided else labels


def is_guided(guidance_scale: float) -> bool:
    """A guidance scale of 0 means no guidance at all (conditional rows only), as in the official code."""
    return guidance_scale != 0


def guidance_scale_at(step: int, num_steps: int, scale: float, pow: float) -> float:
    """The official schedule (g - 1) * (1 - cos(pi * (t / N) ** pow)) / 2 + 1 with 0 ** 0 = 1, evaluated
    in float64 by the C library (math.cos / math.pow, as C's cos / pow) and rounded to float32."""
    ramp = math.pow(step / num_steps, pow)
    return float(np.float32((scale - 1) * ((1 - math.cos(math.pi * ramp)) * 0.5) + 1))


def guidance_schedule(num_steps: int, scale: float, pow: float) -> np.ndarray:
    """The guidance scale of every step t = 0 .. N-1, float32 [N]."""
    return np.array([guidance_scale_at(t, num_steps, scale, pow) for t in range(num_steps)], dtype=np.float32)


def var_guidance(num_scales: int, guidance_scale: float) -> np.ndarray:
    """The official schedule, t = cfg * k / (K - 1) for scales k = 0 .. K-1 (float64, rounded to float32)."""
    return scale_guidance([[k, num_scales - 1] for k in range(num_scales)], np.array([guidance_scale]))[:, 0]


def scale_guidance(fractions: list[list[int]], guidance_scales: np.ndarray) -> np.ndarray:
    """The guidance t [K, B] of every scale (its manifest `guidance_fraction` [n, d]) and image (its cfg):
    cfg * n / d in float64, rounded to float32."""
    cfg = np.asarray(guidance_scales, np.float64)
    return np.stack([cfg * n / d for n, d in fractions]).astype(np.float32)


def _splitmix64(state: np.ndarray) -> np.ndarray:
    """SplitMix64's output for `state` (uint64, arithmetic modulo 2**64): mix(state + gamma). In place."""
    z = np.add(state, _GAMMA, out=state)
    shifted = np.empty_like(z)
    for shift, multiplier in ((30, _MIX1), (27, _MIX2)):
        z ^= np.right_shift(z, np.uint64(shift), out=shifted)
        z *= multiplier
    z ^= np.right_shift(z, np.uint64(31), out=shifted)
    return z


def sampling_noise(seed: int, num_images: int, num_steps: int, vocab: int, first_image: int = 0,
                   first_step: int = 0) -> np.ndarray:
    """Uniform noise in (0, 1), float32 [B, N, V], counter-based so that image i depends on (seed, i) alone (and
    steps first_step .. first_step + N - 1 of its stream can be drawn without the others).

    Image i's stream is SplitMix64 seeded with key = splitmix64(splitmix64(seed) ^ i); value c = t * V + v
    (step t, token v) is its c-th output: bits = splitmix64(key + c * gamma), u = ((bits >> 41) + 0.5) / 2**23.
    """
    images = np.arange(first_image, first_image + num_images, dtype=np.uint64)
    keys = _splitmix64(_splitmix64(np.array([seed], dtype=np.uint64)) ^ images)
    counters = np.arange(first_step * vocab, (first_step + num_steps) * vocab, dtype=np.uint64) * _GAMMA
    noise = np.empty((num_images, num_steps * vocab), dtype=np.float32)
    for row, key in enumerate(keys):
        bits = _splitmix64(counters + key) >> np.uint64(64 - _NOISE_BITS)
        np.multiply(bits, 2.0**-_NOISE_BITS, out=noise[row], casting="unsafe")
        noise[row] += np.float32(2.0 ** -(_NOISE_BITS + 1))
    return noise.reshape(num_images, num_steps, vocab)
