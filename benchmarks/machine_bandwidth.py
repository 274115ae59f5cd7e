"""This machine's memory bandwidth as a decode step sees it: streaming 1 GiB of float32 through a BLAS
matrix-vector product on every core (the shape of a batch-1 step), median of 10.

    python benchmarks/machine_bandwidth.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def main() -> None:
    matrix = np.random.default_rng(0).standard_normal((1 << 14, 1 << 14), dtype=np.float32)  # 1 GiB
    vector = np.ones(1 << 14, np.float32)
    matrix @ vector
    times = []
    for _ in range(10):
        start = time.perf_counter()
        matrix @ vector
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(f"{matrix.nbytes / seconds / 1e9:.1f} GB/s (1 GiB float32 matrix-vector product, median of 10: "
          f"{seconds * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
