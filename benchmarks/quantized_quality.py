"""What weight-only quantization costs in quality, on the trained demo model (the only model here whose
distributions mean something): each export against the float32 one, same process.

Per export (int8 and int4 again with --int8-activations, ONNX Runtime's fast kernels): teacher-forced
KL(float32 || export) per token and top-1 agreement on the 1000 held-out token
sequences (unguided, T = 1), greedy (temperature 0, published guidance) token agreement on 100 images, and the
yardsticks of 50 images per class at the published sampling values: class accuracy and proxy FID.

    python benchmarks/quantized_quality.py [--workdir /tmp/rar-quality] [--weights DIR] [--variants LABEL,...]

Round-to-nearest and GPTQ (rar-export --calibration gptq, pip install 'rar-deploy[calibrate]') exports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from rar_deploy.runtime import RARPipeline, RARSampling
from rar_deploy.training.demo_model import SHIPPED
from rar_deploy.training.yardsticks import Yardsticks, as_dict

# (precision, weights, int4 group, calibration); the first is the reference of every other
VARIANTS = (("fp32", "float", None, "rtn"), ("fp16", "float", None, "rtn"), ("fp32", "int8", None, "rtn"),
            ("fp16", "int8", None, "rtn"), ("fp32", "int4", 64, "rtn"), ("fp32", "int4", 32, "rtn"),
            ("fp16", "int4", 64, "rtn"), ("fp32", "int8", None, "gptq"), ("fp32", "int4", 64, "gptq"),
            ("fp32", "int4", 32, "gptq"), ("fp16", "int4", 64, "gptq"), ("fp32", "fp8", None, "rtn"),
            ("fp16", "fp8", None, "rtn"))
FAST = (("fp32", "int8", None, "rtn"), ("fp32", "int4", 64, "rtn"), ("fp32", "int4", 64, "gptq"))  # + int8 activations
PER_CLASS, GREEDY_PER_CLASS = 50, 10


def label(precision: str, weights: str, group: int | None, calibration: str) -> str:
    return f"{precision}-{weights}{group or ''}" + ("-gptq" if calibration == "gptq" else "")


def export(workdir: Path, precision: str, weights: str, group: int | None, calibration: str, source: Path) -> Path:
    out = workdir / f"demo-{label(precision, weights, group, calibration)}"
    if not (out / "manifest.json").exists():
        subprocess.run(["rar-export", "--ckpt", str(source / "rar_demo.bin"), "--tokenizer",
                        str(source / "maskgit-vqgan-demo.bin"), "--out", str(out), f"--{precision}", "--weights",
                        weights, *(["--group-size", str(group)] if group else []), "--calibration", calibration,
                        "--no-engine", "--max-batch", "100", "--force"], check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rar-quality"))
    parser.add_argument("--weights", type=Path, default=SHIPPED)
    parser.add_argument("--variants", help="comma-separated labels to measure (e.g. fp32-int4-64-gptq) [default: all]")
    args = parser.parse_args()
    chosen = [VARIANTS[0]] + [v for v in VARIANTS[1:] if args.variants is None or label(*v) in args.variants.split(",")]
    source = args.workdir / "checkpoints"
    if not (source / "rar_demo.bin").exists():
        subprocess.run(["rar-deploy", "make-checkpoint", "--preset", "demo", "--weights", str(args.weights),
                        "--out", str(source)], check=True)
    folders = {variant: export(args.workdir, *variant, source) for variant in chosen}
    reference = RARPipeline.from_artifacts(folders[VARIANTS[0]], "onnxruntime")
    greedy = RARSampling(temperature=0.0)
    greedy_labels = np.repeat(np.arange(10), GREEDY_PER_CLASS).tolist()
    reference_greedy = reference.generate(greedy_labels, sampling=greedy, seed=0).tokens
    rows = []
    runs = [(variant, False) for variant in chosen] + [(variant, True) for variant in FAST if variant in chosen]
    for (precision, weights, group, calibration), fast in runs:
        folder = folders[(precision, weights, group, calibration)]
        print(f"measuring {folder.name}" + (" with int8 activations" if fast else ""), flush=True)
        pipeline = RARPipeline.from_artifacts(folder, "onnxruntime", int8_activations=fast)
        yardsticks = Yardsticks(pipeline, args.weights)
        quality, _ = yardsticks.generated(None, PER_CLASS)
        divergence = yardsticks.divergence(reference)
        tokens = pipeline.generate(greedy_labels, sampling=greedy, seed=0).tokens
        rows.append({"precision": precision, "weights": weights, "group_size": group, "calibration": calibration,
                     "int8_activations": fast,
                     "step_graph_bytes": json.loads((folder / "manifest.json").read_text())["graphs"][
                         "decode_step"]["weight_bytes"],
                     "greedy_token_agreement": float((tokens == reference_greedy).mean()),
                     "greedy_images_identical": float((tokens == reference_greedy).all(1).mean()),
                     **{f"quality_{k}": v for k, v in as_dict(quality).items()},
                     **{f"divergence_{k}": v for k, v in as_dict(divergence).items()}})
        print(json.dumps(rows[-1]), flush=True)
    (args.workdir / "quantized_quality.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"real held-out images: class accuracy {yardsticks.real_accuracy:.3f}")
    print("| activations | weights | step graph MB | KL nats/token (mean, p99) | teacher-forced top-1 = fp32 | "
          "greedy tokens = fp32 | greedy images = fp32 | class accuracy | proxy FID |")
    print("|" + " --- |" * 9)
    for r in rows:
        name = r["weights"] + (f" g{r['group_size']}" if r["group_size"] else "")
        name += ", GPTQ" if r["calibration"] == "gptq" else ""
        name += ", int8 activations" if r["int8_activations"] else ""
        print(f"| {r['precision']} | {name} | {r['step_graph_bytes'] / 1e6:.2f} | {r['divergence_kl_nats']:.4f}, "
              f"{r['divergence_kl_p99_nats']:.4f} | {r['divergence_top1_agreement']:.3f} | "
              f"{r['greedy_token_agreement']:.3f} | {r['greedy_images_identical']:.2f} | "
              f"{r['quality_accuracy']:.3f} | {r['quality_proxy_fid']:.2f} |")


if __name__ == "__main__":
    main()
