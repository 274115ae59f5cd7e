"""Exporter choice (issue 3): the same three graphs of a random tiny RAR exported by torch's dynamo
exporter (torch.export) and by the TorchScript exporter, each then put through what rar-export
demands: onnx.checker + strict shape inference, the export-time verification against the float32
reference in ONNX Runtime (batch 3), and a strongly typed TensorRT-RTX build.

    python3 benchmarks/exporter_choice.py [--preset tiny|rar_b] [--precision fp16] [--workdir DIR]

It also counts the nodes of each graph and times the decode step in ONNX Runtime (CPU, median of 20).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from rar_deploy import GENERATOR_PRESETS, TOKENIZER_PRESETS
from rar_deploy.demo import random_generator, random_tokenizer
from rar_deploy.engines import BatchProfile, build_engine, find_tensorrt
from rar_deploy.export.graphs import graph_specs
from rar_deploy.export.onnx_export import OPSET, cast_models, check_onnx, export_graph, graph_exports
from rar_deploy.export.verify import cache_feeds, failures, ort_session, verify_decoder_graph, verify_generator_graphs
from rar_deploy.contract import GRAPH_NAMES


def export_torchscript(graph, path: Path) -> None:
    """torch.onnx.export(dynamo=False): dynamic axes by name; the cache's 2*batch becomes a free dim."""
    module = graph.module.eval()
    names = list(module.input_names)
    axes = {name: {0: "2*batch" if "cache" in name else "batch"} for name in names}
    axes.update({name: {0: "batch"} for name in module.output_names})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, graph.args, str(path), dynamo=False, opset_version=OPSET, input_names=names,
                          output_names=list(module.output_names), dynamic_axes=axes)


def try_stage(results: dict, stage: str, action) -> bool:
    start = time.perf_counter()
    try:
        detail = action()
    except Exception as exc:  # a stage's failure is the measurement
        results[stage] = f"FAILED: {str(exc).splitlines()[0][:160]}"
        return False
    results[stage] = f"ok ({time.perf_counter() - start:.1f} s{', ' + detail if detail else ''})"
    return True


def decode_step_ms(path: Path, config, cache_dtype: np.dtype, batch: int, runs: int = 20) -> float:
    """Median ORT time of one decode step at step N/2 over a zero cache."""
    session = ort_session(path)
    shape = (config.depth, 2 * batch, config.num_heads, config.cache_len, config.head_dim)
    feeds = {"tokens": np.zeros(batch, np.int64), "step": np.full(batch, config.image_seq_len // 2),
             "class_labels": np.arange(batch),
             **cache_feeds(np.zeros(shape, cache_dtype), np.zeros(shape, cache_dtype)),
             "guidance_scale": np.full(batch, 4.0, np.float32), "temperature": np.ones(batch, np.float32),
             "noise": np.full((batch, config.codebook_size), 0.5, np.float32)}
    session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(exporter: str, preset: str, precision: str, out: Path) -> dict:
    generator = random_generator(GENERATOR_PRESETS[preset], seed=0)
    tokenizer_preset = "tiny" if preset == "tiny" else "maskgit-vqgan-imagenet-f16-256"
    tokenizer = random_tokenizer(TOKENIZER_PRESETS[tokenizer_preset], seed=0)
    cast_gen, cast_tok = cast_models(generator, tokenizer, precision)
    exports = graph_exports(cast_gen, cast_tok, max_batch=8)
    paths = {name: out / f"{name}.onnx" for name in GRAPH_NAMES}
    results: dict[str, str] = {}

    def export_all() -> str:
        for name in GRAPH_NAMES:
            if exporter == "dynamo":
                export_graph(exports[name], paths[name], external_data=False)
            else:
                export_torchscript(exports[name], paths[name])
        return ""

    if not try_stage(results, "export", export_all):
        return results

    def check_all() -> str:
        for path in paths.values():
            check_onnx(path)
        return ""

    try_stage(results, "onnx checker + shape inference", check_all)
    results["nodes (prefill / decode_step / vq_decoder)"] = " / ".join(
        str(len(onnx.load(str(p), load_external_data=False).graph.node)) for p in paths.values())
    cache_dtype = np.dtype("float16" if precision == "fp16" else "float32")
    for batch in (1, 4):
        try_stage(results, f"ORT decode step, batch {batch}",
                  lambda: f"median {decode_step_ms(paths['decode_step'], generator.config, cache_dtype, batch):.2f} ms")

    def verify() -> str:
        report = {**verify_generator_graphs(generator, paths, cache_dtype, steps=8),
                  **verify_decoder_graph(tokenizer, paths["vq_decoder"], generator.config.image_seq_len)}
        found = failures(report, precision)
        if found:
            raise RuntimeError("; ".join(found[:2]))
        return f"worst logits error {report['teacher_forced']['logits']['max_rel_to_peak']:.2g} of peak"

    try_stage(results, "ORT verification (batch 3)", verify)
    trt = find_tensorrt()
    if trt is None:
        results["TensorRT build"] = "skipped: no TensorRT or TensorRT-RTX"
        return results
    specs = graph_specs(generator, tokenizer, cache_dtype.name)

    def build() -> str:
        for name in GRAPH_NAMES:
            build_engine(trt, paths[name], out / f"{name}.plan", [s.to_dict() for s in specs[name]["inputs"]],
                         BatchProfile(1, 2, 8), out / "timing.cache")
        return f"{trt.flavour} {trt.version}, strongly typed"

    try_stage(results, "TensorRT build", build)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny", choices=sorted(GENERATOR_PRESETS))
    parser.add_argument("--precision", default="fp16", choices=["fp32", "fp16"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rar-exporter-choice"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    table = {}
    for exporter in ("dynamo", "torchscript"):
        (args.workdir / exporter).mkdir(parents=True)
        table[exporter] = measure(exporter, args.preset, args.precision, args.workdir / exporter)
    stages = list(dict.fromkeys(stage for results in table.values() for stage in results))
    print(f"| stage ({args.preset}, {args.precision}, torch {torch.__version__}) | " + " | ".join(table) + " |")
    print("|" + " --- |" * (len(table) + 1))
    for stage in stages:
        print(f"| {stage} | " + " | ".join(table[e].get(stage, "-") for e in table) + " |")


if __name__ == "__main__":
    main()
