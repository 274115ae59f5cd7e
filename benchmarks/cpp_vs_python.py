"""The C++ runtime (cpp/ rar_generate) against the Python runtime on the same artifacts, ONNX Runtime on
the CPU, alternating per batch size in one run: decode step and ms per image (the decoder included).

    python benchmarks/cpp_vs_python.py --rar-generate build/cpp/rar_generate --artifacts rar_b-fp32 --batch-sizes 1,4
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

from rar_deploy.runtime import RARPipeline
from rar_deploy.tools.bench import bench_pipeline


def cpp(executable: Path, artifacts: Path, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        result = subprocess.run([str(executable), "--artifacts", str(artifacts), "--class-labels",
                                 ",".join(str(i) for i in range(batch)), "--batch-size", str(batch),
                                 "--out", f"{work}/out"], capture_output=True, text=True, check=True)
    numbers = dict(re.findall(r"(start|prefill|steps|decoder) ([0-9.e+]+) ms", result.stdout))
    steps = int(re.search(r"(\d+) steps", result.stdout).group(1))
    total = sum(float(v) for v in numbers.values())
    return {"step_ms": float(numbers["steps"]) / steps, "ms_per_image": total / batch}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rar-generate", type=Path, required=True)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--batch-sizes", default="1,4")
    args = parser.parse_args()
    pipeline = RARPipeline.from_artifacts(args.artifacts, "onnxruntime")
    print("| batch | step ms, Python | C++ | ms / image, Python | C++ | C++ / Python (per image) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        cpp(args.rar_generate, args.artifacts, batch)  # warm the page cache and ONNX Runtime's files
        native = cpp(args.rar_generate, args.artifacts, batch)
        python = bench_pipeline(pipeline, batch)
        print(f"| {batch} | {python['step_mean_ms']:.1f} | {native['step_ms']:.1f} | "
              f"{python['total_ms_per_image']:.0f} | {native['ms_per_image']:.0f} | "
              f"{native['ms_per_image'] / python['total_ms_per_image']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
