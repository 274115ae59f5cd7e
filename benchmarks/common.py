"""Shared by the benchmark scenarios: random checkpoints and exports made on demand, markdown tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def ensure_artifacts(workdir: Path, preset: str, precision: str, engine: bool = False, weights: str = "float",
                     group_size: int | None = None) -> Path:
    """<workdir>/<preset>-<precision>[-<weights>[-g<group_size>]], exported from a random <preset> checkpoint made
    once."""
    ckpt_dir = workdir / "checkpoints"
    generator = ckpt_dir / f"{preset}.bin"
    if not generator.exists():
        subprocess.run(["rar-deploy", "make-checkpoint", "--preset", preset, "--out", str(ckpt_dir)], check=True)
    out = workdir / (f"{preset}-{precision}" + ("" if weights == "float" else f"-{weights}")
                     + ("" if group_size is None else f"-g{group_size}"))
    if not (out / "manifest.json").exists():
        subprocess.run(["rar-export", "--ckpt", str(generator), "--tokenizer",
                        str(ckpt_dir / "maskgit-vqgan-imagenet-f16-256.bin"), "--out", str(out), f"--{precision}",
                        "--weights", weights, *([] if group_size is None else ["--group-size", str(group_size)]),
                        "--engine" if engine else "--no-engine", "--force"], check=True)
    return out


def markdown_table(results: list[dict]) -> str:
    """Runs of several `bench_results` (one process) as one table, speed-ups against the baseline."""
    rows = [run | {"precision": r["precision"]} for r in results for run in r["runs"]]
    base = {run["batch"]: run for run in rows if run["backend"] == "baseline"}
    lines = ["| backend | precision | device | batch | condition window | prefill ms | step mean ms | step p50 ms | "
             "step p99 ms | drift | decoder ms | ms / image | images/s | peak RSS MiB | speed-up vs baseline |",
             "|" + " --- |" * 15]
    for run in rows:
        ratio = base[run["batch"]]["total_ms_per_image"] / run["total_ms_per_image"] if run["batch"] in base else None
        precision = "fp32" if run["backend"] == "baseline" and "float32" in run.get("dtype", "") else run["precision"]
        drift = "-" if run["step_drift"] is None else f"{run['step_drift']:.2f}"
        lines.append(f"| {run['backend']} | {precision} | {run['device']} | {run['batch']} | "
                     f"{run.get('condition_window', '-')} | {run['prefill_ms']:.1f} | "
                     f"{run['step_mean_ms']:.1f} | {run['step_p50_ms']:.1f} | {run['step_p99_ms']:.1f} | "
                     f"{drift} | {run['decoder_ms']:.0f} | {run['total_ms_per_image']:.0f} | "
                     f"{run['images_per_s']:.3f} | {run['peak_host_rss_mib']:.0f} | "
                     f"{f'{ratio:.2f}x' if ratio else '-'} |")
    return "\n".join(lines)


def save(results: list[dict], path: Path) -> None:
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown_table(results), file=sys.stdout)
