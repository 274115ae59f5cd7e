"""Error statistics between a backend's outputs and the reference, in one report format."""

from __future__ import annotations

import numpy as np


def error_stats(actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """max/mean abs error, error relative to the reference's peak, cosine, and non-finite counts."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"shape {a.shape} != expected {e.shape}")
    diff = np.abs(a - e)
    peak = float(np.abs(e).max()) or 1.0
    denom = float(np.linalg.norm(a) * np.linalg.norm(e)) or 1.0
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "max_rel_to_peak": float(diff.max() / peak),
        "cosine": float((a * e).sum() / denom),
        "nonfinite": int((~np.isfinite(a)).sum()),
    }


def top1_agreement(actual_logits: np.ndarray, expected_logits: np.ndarray) -> float:
    """Fraction of rows whose argmax agrees."""
    return float(np.mean(np.argmax(actual_logits, -1) == np.argmax(expected_logits, -1)))
