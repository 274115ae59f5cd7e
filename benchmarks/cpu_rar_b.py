"""CPU scenario: a RAR-B-sized random model, batch 1 and 4: ONNX Runtime fp32 and fp16, torch eager
(fp32), and the official-style eager loop (fp32), all in one process so that ratios are comparable.

    python benchmarks/cpu_rar_b.py [--workdir /tmp/rar-bench] [--batch-sizes 1,4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ensure_artifacts, save

from rar_deploy.runtime import Artifacts
from rar_deploy.tools.bench import bench_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rar-bench"))
    parser.add_argument("--batch-sizes", default="1,4")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    fp32 = Artifacts.load(ensure_artifacts(args.workdir, "rar_b", "fp32"))
    fp16 = Artifacts.load(ensure_artifacts(args.workdir, "rar_b", "fp16"))
    progress = lambda message: print(message, flush=True)  # noqa: E731
    results = [bench_results(fp32, ["onnxruntime", "torch"], sizes, "cpu", True, None, None, progress=progress),
               bench_results(fp16, ["onnxruntime"], sizes, "cpu", False, None, None, progress=progress)]
    save(results, args.workdir / "cpu_rar_b.json")


if __name__ == "__main__":
    main()
