"""Weight-only quantized step graphs on the CPU: a RAR-B-sized random model exported with float32, float16, int8
and int4 weights (float32 activations for the quantized ones; then again with --int8-activations, ONNX Runtime's
fast kernels), each timed by rar-bench's loop at batch 1, 4 and 16 on ONNX Runtime, and the official-style eager
loop (float32) once, all in one process so that ratios are comparable. Bytes per step are the exported
initializers as stored (int4 packed), so GB/s is what a step reads.

    python benchmarks/quantized_weights.py [--workdir /tmp/rar-bench] [--preset rar_b] [--batch-sizes 1,4,16]
        [--variants fp32,fp16,int8,int4,int8-fast,int4-fast,int4-g32-fast] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ensure_artifacts, markdown_table

from rar_deploy.runtime import Artifacts
from rar_deploy.tools.bench import bench_results

# name -> (activations, weights, int4 block size (None: the export's default, 128 where it divides every width),
# --int8-activations: ONNX Runtime's fast MatMulNBits kernels)
VARIANTS = {"fp32": ("fp32", "float", None, False), "fp16": ("fp16", "float", None, False),
            "int8": ("fp32", "int8", None, False), "int4": ("fp32", "int4", None, False),
            "int8-fast": ("fp32", "int8", None, True), "int4-fast": ("fp32", "int4", None, True),
            "int4-g32-fast": ("fp32", "int4", 32, True)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rar-bench"))
    parser.add_argument("--preset", default="rar_b")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="the first is the speed-ups' reference")
    parser.add_argument("--no-baseline", action="store_true", help="skip the eager float32 loop (minutes at RAR-L)")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    progress = lambda message: print(message, flush=True)  # noqa: E731
    results = []
    for name in args.variants.split(","):
        precision, weights, group_size, fast = VARIANTS[name]
        artifacts = Artifacts.load(ensure_artifacts(args.workdir, args.preset, precision, weights=weights,
                                                    group_size=group_size))
        baseline = not results and not args.no_baseline
        run = bench_results(artifacts, ["onnxruntime"], sizes, "cpu", baseline, None, None, progress=progress,
                            int8_activations=fast)
        run["label"] = ((precision if weights == "float" else weights)
                        + ("" if group_size is None else f", blocks of {group_size}")
                        + (", int8 activations" if fast else ""))
        results.append(run)
    (args.workdir / f"quantized_{args.preset}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(markdown_table(results))
    print(weights_table(results))


def weights_table(results: list[dict]) -> str:
    """Per batch: step p50, bytes a step reads, GB/s, and the speed-up over the float32 folder."""
    float32 = {run["batch"]: run for run in results[0]["runs"] if run["backend"] == "onnxruntime"}  # the first
    lines = ["| weights | activations | batch | step p50 ms | MB / step | GB/s | step speed-up vs fp32 | "
             "ms / image | image speed-up vs fp32 |", "|" + " --- |" * 9]
    for result in results:
        for run in result["runs"]:
            if run["backend"] != "onnxruntime":
                continue
            base = float32[run["batch"]]
            lines.append(f"| {result['label']} | "
                         f"{result['precision']} | {run['batch']} | {run['step_p50_ms']:.2f} | "
                         f"{run['step_bytes'] / 1e6:.1f} | {run['step_gb_per_s']:.1f} | "
                         f"{base['step_p50_ms'] / run['step_p50_ms']:.2f}x | {run['total_ms_per_image']:.0f} | "
                         f"{base['total_ms_per_image'] / run['total_ms_per_image']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
