"""Where a decode step's time goes on ONNX Runtime (CPU): one generation of each folder with ONNX Runtime's
profiler on the step graph, its node times summed per operator type, as a share of the step. Shows what a
quantized folder still computes in float (attention, norms, the adaLN application, the head) once its MatMuls are
MatMulNBits.

    python benchmarks/step_profile.py FOLDER[:int8] [FOLDER[:int8] ...] [--batch 1] [--top 8]

`:int8` runs the folder with --int8-activations (ONNX Runtime's integer MatMulNBits kernels).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from rar_deploy.runtime import open_pipeline


def profile_step(folder: Path, int8_activations: bool, batch: int) -> dict[str, float]:
    """Microseconds per step of each operator type of the step graph, averaged over two generations of a session
    opened with the backend's own options plus profiling (the first of them warms it up), after an unprofiled
    one."""
    pipeline = open_pipeline(folder, backend="onnxruntime", device="cpu", int8_activations=int8_activations)
    pipeline.generate(list(range(batch)), seed=1)  # warm-up, unprofiled
    step = pipeline.artifacts.family.step_graph
    unprofiled = pipeline.backend.sessions[step]
    options = unprofiled.get_session_options()
    options.enable_profiling = True
    options.profile_file_prefix = f"/tmp/step_profile_{folder.name}"
    session = pipeline.artifacts.onnxruntime_session(step, options, unprofiled.get_providers())
    pipeline.backend.sessions[step] = session
    pipeline.generate(list(range(batch)), seed=1)  # once more, so the profiled session is warm
    pipeline.generate(list(range(batch)), seed=2)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    per_op["(run overhead)"] = sum(e["dur"] for e in events if e.get("name") == "model_run") - sum(per_op.values())
    return {op: us / runs for op, us in per_op.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    print("| folder | step us | " + " | ".join(f"op {i + 1}" for i in range(args.top)) + " |")
    print("|" + " --- |" * (args.top + 2))
    for spec in args.folders:
        folder, _, mode = spec.partition(":")
        per_op = profile_step(Path(folder), mode == "int8", args.batch)
        total = sum(per_op.values())
        ranked = sorted(per_op.items(), key=lambda item: -item[1])[:args.top]
        cells = [f"{op} {us:.0f} ({us / total:.0%})" for op, us in ranked]
        print(f"| {Path(folder).name}{' int8 act.' if mode == 'int8' else ''} | {total:.0f} | "
              + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
