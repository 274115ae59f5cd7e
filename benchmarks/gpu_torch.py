"""GPU scenario (issue 5): RAR-B and RAR-L sized random models, fp16, torch backend on CUDA with CUDA
graphs at batch 1, 8 and 64, the tensorrt backend where TensorRT is installed, and the official-style
eager loop (fp16, same GPU) in the same process.
The printed table goes to benchmarks/RESULTS.md with the device, date and command.

    PYTHONPATH=. python3 benchmarks/gpu_torch.py [--workdir /tmp/rar-bench-gpu] [--presets rar_b,rar_l]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ensure_artifacts, save

from rar_deploy.runtime import Artifacts
from rar_deploy.runtime.engines import find_tensorrt
from rar_deploy.tools.bench import bench_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rar-bench-gpu"))
    parser.add_argument("--presets", default="rar_b,rar_l")
    parser.add_argument("--batch-sizes", default="1,8,64")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    tensorrt = find_tensorrt() is not None  # then the engines are built and timed too
    results = []
    for preset in args.presets.split(","):
        artifacts = Artifacts.load(ensure_artifacts(args.workdir, preset, "fp16", engine=tensorrt))
        backends = ["torch"] + (["tensorrt"] if tensorrt else [])
        results.append(bench_results(artifacts, backends, sizes, "cuda", True, None, None,
                                     progress=lambda message: print(message, flush=True)))
    save(results, args.workdir / "gpu_torch.json")


if __name__ == "__main__":
    main()
