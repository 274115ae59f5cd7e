"""VAR (issue 12): our runtime (rar-export's fp32 folder, VARPipeline on ONNX Runtime) against the official
`autoregressive_infer_cfg` in the same process, on a VAR-d16-sized random model, CPU, whole generation
with the decoder; plus a greedy check that both draw the same image.

    python benchmarks/var_official.py --official-repo /path/to/FoundationVision/VAR [--workdir /tmp/var-bench]

The official modules make the random model (their own initialisation for VAR; the VQVAE, which the official
code leaves uninitialised when built this way, gets normal(0, 0.02) weights); our loaders read the saved
state dicts. Sampling: the FID setting (cfg 1.5, top_k 900, top_p 0.96); each side its own random numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from rar_deploy.export.exporter import ExportRequest, export_artifacts
from rar_deploy.runtime import VARPipeline, VARSampling
from rar_deploy.tools.engine_build import BatchProfile


def official_model(repo: str, depth: int, workdir: Path) -> tuple[object, object, Path, Path]:
    sys.path.insert(0, repo)
    hub = types.ModuleType("huggingface_hub")  # the official models import only a mixin from it
    hub.PyTorchModelHubMixin = object
    sys.modules.setdefault("huggingface_hub", hub)
    from models import build_vae_var

    torch.manual_seed(0)
    vae, var = build_vae_var(device="cpu", depth=depth, flash_if_available=False, fused_if_available=False)
    for name, tensor in vae.state_dict().items():
        if tensor.is_floating_point() and "ema_vocab" not in name:
            tensor.normal_(0, 0.02)
    var_path, vae_path = workdir / f"var_d{depth}.pth", workdir / "vae.pth"
    torch.save(var.state_dict(), var_path)
    torch.save(vae.state_dict(), vae_path)
    return var.eval(), vae.eval(), var_path, vae_path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official-repo", required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/var-bench"))
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import onnxruntime as ort

    args.workdir.mkdir(parents=True, exist_ok=True)
    official, _, var_path, vae_path = official_model(args.official_repo, 16, args.workdir)
    request = ExportRequest(str(var_path), str(vae_path), out=args.workdir / "artifacts", precision="fp32",
                            engine=False, profile=BatchProfile(1, 4, 8), force=True)
    folder = export_artifacts(request, progress=print).out
    pipeline = VARPipeline.from_artifacts(folder)

    def ours(labels: list[int], cfg: float, top_k: int, top_p: float, temperature: float, seed: int) -> np.ndarray:
        sampling = VARSampling(guidance_scale=cfg, top_k=top_k, top_p=top_p, temperature=temperature)
        return pipeline.generate(labels, sampling=sampling, seed=seed).images

    def theirs(labels: list[int], cfg: float, top_k: int, top_p: float) -> np.ndarray:
        with torch.no_grad():
            return official.autoregressive_infer_cfg(len(labels), torch.tensor(labels), g_seed=0, cfg=cfg,
                                                     top_k=top_k, top_p=top_p).numpy()

    official_uint8 = np.floor(theirs([207, 360], 4.0, 1, 0.0).transpose(0, 2, 3, 1) * 255)
    greedy = np.abs(ours([207, 360], 4.0, 1, 0.0, 0.0, 0).astype(np.int64) - official_uint8).max()
    print(f"model var_d16 (random), torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"{torch.get_num_threads()} threads; greedy (top_k 1, cfg 4) uint8 images, max difference: {greedy} levels")
    print("| batch | official autoregressive_infer_cfg s | ours (VARPipeline, onnxruntime) s | speed-up |\n"
          "| --- | --- | --- | --- |")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        labels = [(207 + 97 * i) % 1000 for i in range(batch)]
        times = {"official": [], "ours": []}
        for _ in range(args.repeats + 1):  # the first of each is a warm-up
            start = time.perf_counter()
            theirs(labels, 1.5, 900, 0.96)
            times["official"].append(time.perf_counter() - start)
            start = time.perf_counter()
            ours(labels, 1.5, 900, 0.96, 1.0, len(times["ours"]))
            times["ours"].append(time.perf_counter() - start)
        official_s, ours_s = (statistics.median(times[k][1:]) for k in ("official", "ours"))
        print(f"| {batch} | {official_s:.2f} | {ours_s:.2f} | {official_s / ours_s:.2f}x |")


if __name__ == "__main__":
    main()
