"""What the three trainings share: images as tensors, seeded batches, the learning-rate schedule and a progress
line every so often."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

Progress = Callable[[str], None]


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [0, 1] (what the tokenizer's encoder takes)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)


def cosine_rate(step: int, steps: int, peak: float, warmup: int = 0) -> float:
    """Linear warm-up to `peak`, then a cosine down to 0 at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


class Reporter:
    """A progress line every `every` steps: the step, the running mean of each loss, the time so far."""

    def __init__(self, name: str, steps: int, progress: Progress | None, every: int = 100) -> None:
        self.name, self.steps, self.progress, self.every = name, steps, progress, every
        self.sums: dict[str, float] = {}
        self.count = 0
        self.start = time.perf_counter()
        self.last: dict[str, float] = {}

    def add(self, step: int, **losses: float) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            self.last = {key: value / self.count for key, value in self.sums.items()}
            if self.progress:
                shown = "  ".join(f"{key} {value:.4f}" for key, value in self.last.items())
                self.progress(f"{self.name} {step + 1}/{self.steps}  {shown}  {self.seconds:.0f} s")
            self.sums, self.count = {}, 0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
