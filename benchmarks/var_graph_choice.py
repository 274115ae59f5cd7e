"""VAR (issue 12): one scale-step graph for every scale (dynamic token count) or one graph per scale (static)?
Measures, on a random model with the released scales and d16's width (fewer blocks, to keep ten exports small):
file size of the graphs, and ONNX Runtime CPU time per scale of each choice, batch 1 and 4, both driven by the
runtime's VARLoop (the per-scale choice through a backend that runs scale k's graph for var_step).

    python benchmarks/var_graph_choice.py [--depth 4] [--workdir /tmp/var-choice]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from rar_deploy.contract.config import VAR_TOKENIZER_PRESETS, VARConfig
from rar_deploy.export.exporter import ExportRequest, export_artifacts
from rar_deploy.export.onnx_export import GraphExport, export_graph, var_graph_exports
from rar_deploy.model.demo import randomize, save_state_dict
from rar_deploy.model.var import VARVQVAE, VARGenerator, block_causal_mask, scale_levels
from rar_deploy.model.var_graphs import VARScaleStepGraph, scale_constants
from rar_deploy.runtime import Artifacts
from rar_deploy.runtime.backends import OnnxRuntimeBackend
from rar_deploy.runtime.loops import VARLoop, drive
from rar_deploy.tools.engine_build import BatchProfile


def per_scale_exports(generator, vqvae, max_batch: int) -> list[GraphExport]:
    """The dynamic export's module and arguments at each scale, with only the batch dynamic."""
    dynamic = var_graph_exports(generator, vqvae, max_batch)["var_step"]
    c, exports = generator.config, []
    for const in scale_constants(c, vqvae.quantize):
        pn = const["down"].shape[0]
        args = list(dynamic.args)
        args[2:6] = const["positions"], const["phi_index"], const["down"], const["up"]
        args[10] = torch.rand(2, pn, pn, c.codebook_size)
        shapes = [None if i in (2, 4, 5) else shape for i, shape in enumerate(dynamic.dynamic_shapes)]
        shapes[10] = {0: dynamic.dynamic_shapes[0][0]}
        exports.append(GraphExport(VARScaleStepGraph(generator, vqvae), tuple(args), tuple(shapes),
                                   {"2*batch": "rows"}))
    return exports


class PerScaleBackend(OnnxRuntimeBackend):
    """ONNX Runtime with one var_step graph per scale: the call's scale is read off its positions' shape."""

    def __init__(self, artifacts: Artifacts, paths: list[Path]) -> None:
        super().__init__(artifacts)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.per_scale = {scale["side"]: ort.InferenceSession(str(path), options)
                          for scale, path in zip(artifacts.manifest["scales"], paths)}

    def run(self, graph: str, feeds, outputs) -> None:
        if graph == "var_step":
            self.sessions[graph] = self.per_scale[feeds["positions"].shape[0]]
        super().run(graph, feeds, outputs)


def time_scales(loop: VARLoop, batch: int, repeats: int) -> list[float]:
    """Median ms of each scale's step over `repeats` generations after a warm-up."""
    artifacts = loop.backend.artifacts
    inputs = artifacts.family.published_inputs(loop.config, artifacts.sampling_defaults, batch)
    times: list[list[float]] = [[] for _ in loop.scales]
    for _ in range(repeats + 1):
        marks = []
        drive(loop, inputs, lambda loop: marks.append(time.perf_counter()))
        for k in range(len(loop.scales)):
            times[k].append((marks[k + 1] - marks[k]) * 1e3)
    return [statistics.median(t[1:]) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/var-choice"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    config = VARConfig(depth=args.depth, embed_dim=1024, num_heads=16, mlp_size=4096)
    generator = randomize(VARGenerator(config), 0).eval()
    generator.lvl_1L.copy_(scale_levels(config).view(1, -1))
    generator.attn_bias_for_masking.copy_(block_causal_mask(config))
    vqvae = randomize(VARVQVAE(VAR_TOKENIZER_PRESETS["vae_ch160v4096z32"]), 1).eval()
    ckpt, vae = save_state_dict(generator, args.workdir / "var.pth"), save_state_dict(vqvae, args.workdir / "vae.pth")
    request = ExportRequest(str(ckpt), str(vae), out=args.workdir / "artifacts", precision="fp32", engine=False,
                            profile=BatchProfile(1, 4, 8), verify=False, force=True)
    artifacts = Artifacts.load(export_artifacts(request, progress=print).out)
    static_paths = []
    for k, spec in enumerate(per_scale_exports(generator, vqvae, 8)):
        static_paths.append(args.workdir / f"var_step_scale{k}.onnx")
        export_graph(spec, static_paths[-1], False)
    dynamic, static = VARLoop(OnnxRuntimeBackend(artifacts)), VARLoop(PerScaleBackend(artifacts, static_paths))
    size = lambda paths: sum(p.stat().st_size for p in paths) / 2**20  # noqa: E731
    print(f"model: depth {config.depth}, width {config.embed_dim}, scales {config.patch_nums}")
    print(f"files: one dynamic graph {size([artifacts.graph_path('var_step')]):.1f} MiB; ten per-scale graphs "
          f"{size(static_paths):.1f} MiB")
    for batch in (1, 4):
        t_dyn, t_sta = time_scales(dynamic, batch, args.repeats), time_scales(static, batch, args.repeats)
        np.testing.assert_array_equal(dynamic.tokens(), static.tokens())  # the same computation
        print(f"batch {batch}: scale side | dynamic ms | per-scale ms | dynamic / per-scale")
        for pn, a, b in zip(config.patch_nums, t_dyn, t_sta):
            print(f"  {pn:>3} | {a:8.2f} | {b:8.2f} | {a / b:.2f}")
        print(f"  all scales: dynamic {sum(t_dyn):.1f} ms, per-scale {sum(t_sta):.1f} ms, "
              f"ratio {sum(t_dyn) / sum(t_sta):.2f}")


if __name__ == "__main__":
    main()
