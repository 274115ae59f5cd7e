"""Two checkouts of rar-deploy measured in one run, batch size by batch size, alternating: the decode step
and ms per image of `rar-bench` on artifacts each exported by its own code from the same checkpoint.

    git worktree add /tmp/before <commit>          # the code to compare with, e.g. the last landed commit
    python benchmarks/before_after.py --before /tmp/before --before-artifacts OLD_DIR --after-artifacts NEW_DIR \
        --batch-sizes 1,4,16 --backend onnxruntime

Each measurement is a separate `rar-bench --json` process (the two versions cannot share one), run with
the same Python; ratios are after / before of the same batch size, taken minutes apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(code: Path, artifacts: Path, backend: str, batch: int) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(code)}
    command = [sys.executable, "-c", "from rar_deploy.cli import bench_command; bench_command()",
               "--artifacts", str(artifacts), "--backend", backend, "--batch-sizes", str(batch), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
    return json.loads(result.stdout[result.stdout.index("{"):])["runs"][0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--before-artifacts", type=Path, required=True)
    parser.add_argument("--after-artifacts", type=Path, required=True)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--batch-sizes", default="1,4,16")
    args = parser.parse_args()
    print("| batch | step p50 ms before | after | speed-up | ms / image before | after | speed-up | after: condition |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        before = bench(args.before, args.before_artifacts, args.backend, batch)
        after = bench(ROOT, args.after_artifacts, args.backend, batch)
        window = after["condition_window"]
        mode = "table" if window > after["steps"] + 1 else f"window of {window}"
        print(f"| {batch} | {before['step_p50_ms']:.1f} | {after['step_p50_ms']:.1f} | "
              f"{before['step_p50_ms'] / after['step_p50_ms']:.2f}x | {before['total_ms_per_image']:.0f} | "
              f"{after['total_ms_per_image']:.0f} | {before['total_ms_per_image'] / after['total_ms_per_image']:.2f}x "
              f"| {mode} |", flush=True)


if __name__ == "__main__":
    main()
