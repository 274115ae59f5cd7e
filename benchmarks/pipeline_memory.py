"""Host memory of a loaded pipeline (ONNX Runtime on the CPU): peak RSS of a fresh process that opens an
artifact folder and generates one image, for two checkouts of rar-deploy and their own exports.

    python benchmarks/pipeline_memory.py --before /tmp/before OLD_DIR --after . NEW_DIR [--after ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

PROBE = """
import resource, sys
from rar_deploy import RARPipeline
pipeline = RARPipeline.from_artifacts(sys.argv[1], "onnxruntime")
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pipeline.generate([1], seed=0)
print(loaded / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_mib(code: str, artifacts: str) -> tuple[float, float]:
    result = subprocess.run([sys.executable, "-c", PROBE, artifacts], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": code})
    loaded, generated = result.stdout.split()
    return float(loaded), float(generated)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", nargs=2, action="append", metavar=("CODE", "ARTIFACTS"), default=[])
    parser.add_argument("--after", nargs=2, action="append", metavar=("CODE", "ARTIFACTS"), default=[])
    args = parser.parse_args()
    print("| code | artifacts | peak RSS after loading MiB | after one image (batch 1) MiB |")
    print("| --- | --- | --- | --- |")
    for label, runs in (("before", args.before), ("after", args.after)):
        for code, artifacts in runs:
            loaded, generated = peak_mib(code, artifacts)
            name = os.path.basename(artifacts.rstrip("/"))
            print(f"| {label} | {name} | {loaded:.0f} | {generated:.0f} |", flush=True)


if __name__ == "__main__":
    main()
