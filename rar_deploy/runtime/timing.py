"""Timing a generation by stages: marks in a backend's memory (CUDA events on GPU, read once at the end with no
synchronisation inside the loop; perf_counter on CPU), and the summary rar-bench and its baseline report."""

from __future__ import annotations

import resource

import numpy as np

DRIFT_WINDOW = 20  # step drift compares the last 20 decode steps with the first 20 (models of 40+ steps)


class StageClock:
    """Marks between stages in a backend's memory: CUDA events on GPU (read once at the end, no
    synchronisation inside the loop), wall clock on CPU."""

    def __init__(self, memory) -> None:
        self.memory = memory
        self.marks: list = []

    def mark(self) -> None:
        self.marks.append(self.memory.mark())

    def intervals_ms(self) -> list[float]:
        self.memory.synchronize()
        return [self.memory.elapsed_ms(a, b) for a, b in zip(self.marks, self.marks[1:])]


def stage_summary(start_ms: float, prefill_ms: float, steps_ms: list[float], decoder_ms: float, batch: int) -> dict:
    """The stages of one timed generation of `batch` images: the start (inputs uploaded), the prefill, the steps
    after it and the decoder, in ms."""
    steps = np.array(steps_ms)
    window = DRIFT_WINDOW
    total = start_ms + prefill_ms + steps.sum() + decoder_ms
    return {
        "batch": batch, "start_ms": start_ms, "prefill_ms": prefill_ms, "step_mean_ms": float(steps.mean()),
        "step_p50_ms": float(np.percentile(steps, 50)), "step_p99_ms": float(np.percentile(steps, 99)),
        "step_drift": float(steps[-window:].mean() / steps[:window].mean()) if len(steps) >= 2 * window else None,
        "steps": int(len(steps)),
        "decoder_ms": decoder_ms, "total_ms_per_image": float(total / batch),
        "images_per_s": float(batch * 1e3 / total),
    }


def memory_usage(memory) -> dict:
    """Peak host RSS, and the device memory in use where the memory can tell."""
    usage = {"peak_host_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if hasattr(memory, "used_bytes"):
        usage["device_mib"] = memory.used_bytes() / 2**20
    return usage
