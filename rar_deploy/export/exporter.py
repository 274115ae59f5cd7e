"""`rar-export`'s job: checkpoints -> verified ONNX graphs (+ engines) + manifest, written atomically."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime
import torch

from rar_deploy.contract.config import VARConfig
from rar_deploy.contract.graphs import FAMILY_GRAPHS, OPTIONAL_GRAPHS
from rar_deploy.contract.integrity import file_record, sha256_of
from rar_deploy.contract.manifest import (
    FLOAT_DTYPES,
    PARITY_FILE,
    RECORD_FILE,
    build_manifest,
    exported_files,
    write_manifest,
)
from rar_deploy.contract.weights import WeightQuantization, weight_quantization
from rar_deploy.errors import ExportError
from rar_deploy.export.onnx_export import (
    FAMILY_EXPORTS,
    OPSET,
    cast_models,
    export_graph,
    release_cast_copy,
    release_memory,
)
from rar_deploy.export.quantize_graph import quantize_graph
from rar_deploy.export.verify import reference_for_export, verify_export
from rar_deploy.model.calibration import calibrate, calibrate_inputs, check_calibration
from rar_deploy.model.checkpoint import load_models, require_file, resolve_checkpoint
from rar_deploy.model.quantized import quantize_generator, quantize_inputs, resolve_weights
from rar_deploy.outputs import Output, atomic_directory
from rar_deploy.runtime.families import FAMILIES
from rar_deploy.tools.engine_build import (
    RTX_DEFAULT_CAPABILITIES,
    BatchProfile,
    BuildOptions,
    build_engines,
    check_build,
    find_tensorrt,
    require_tensorrt,
)

VERIFY_STEPS = 8  # teacher-forced image tokens checked at export time (all of them for N <= 8)


@dataclass
class ExportRequest:
    ckpt: str
    tokenizer: str
    out: Path
    precision: str = "fp16"
    engine: bool | None = None  # None: build when a TensorRT is importable
    profile: BatchProfile = field(default_factory=lambda: BatchProfile(1, 8, 64))
    verify: bool = True
    force: bool = False
    opt_level: int = 3
    compute_capabilities: tuple[str, ...] = RTX_DEFAULT_CAPABILITIES
    external_data: bool = False  # force weights into .onnx.data even below 2 GB
    timing_cache: Path | None = None  # a TensorRT timing cache shared across exports: read, then updated
    weights: str | None = None  # None or "float": the precision's; "int8" | "int4": weight-only; "fp8": W8A8
    group_size: int | None = None  # int4 block [default: the largest of 128, 64, 32 dividing every width]
    calibration: str = "rtn"  # "rtn": round to nearest; "gptq": GPTQ on the model's own generations (ModelOpt)
    parallel_decoding: bool = False  # also RAR's decode_block graph (speculative Jacobi decoding, rar-generate
    #                                  --parallel-window)


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    parity: dict | None
    seconds: float


def export_artifacts(request: ExportRequest, progress: Callable[[str], None] = print) -> ExportResult:
    """Everything `rar-export` does. Nothing appears at `request.out` unless all of it succeeded."""
    start = time.perf_counter()
    trt = require_tensorrt() if request.engine else (find_tensorrt() if request.engine is None else None)
    build = check_build(trt, BuildOptions(request.profile, request.opt_level, request.compute_capabilities,
                                          request.timing_cache), progress, fp8=request.weights == "fp8")
    # the flags alone, before anything is read
    check_calibration(request.calibration, weight_quantization(request.weights, request.group_size, widths={}))
    if request.parallel_decoding and request.weights not in (None, "float"):
        raise ExportError(f"--parallel-decoding with --weights {request.weights}: the decode_block graph is exported "
                          "in the float weights of the precision only (for now); drop one of them")
    ckpt = require_file(resolve_checkpoint(request.ckpt))  # first: a wrong --ckpt is named before any tokenizer
    tokenizer_path = require_file(resolve_checkpoint(request.tokenizer))
    output = Output(request.out, "--out", request.force, written=exported_files, owner="rar-export",
                    inputs=(ckpt, tokenizer_path, *filter(None, [request.timing_cache])))
    output.check()

    with atomic_directory(output, report=progress) as tmp:
        progress(f"loading {ckpt} and {tokenizer_path}")
        generator, tokenizer = load_models(ckpt, tokenizer_path)
        _check_compatible(generator.config, tokenizer.config, tokenizer_path)
        if request.parallel_decoding and not OPTIONAL_GRAPHS[FAMILY_EXPORTS[type(generator)][0]]:
            raise ExportError(f"--parallel-decoding applies to RAR checkpoints, and {ckpt} is a VAR model (one step "
                              "per scale already samples a whole scale): drop it")
        quantization = resolve_weights(generator, request.weights, request.group_size)
        quantized, float_record, calibration = {}, None, None
        if quantization is not None:  # from here on the generator is the quantized reference
            if request.verify:  # the float model's, to measure the quantization's own cost
                float_record = reference_for_export(None, generator, tokenizer, request.precision, progress,
                                                    "float weights' reference record")
            if request.calibration == "gptq":
                calibration = calibrate(generator, tokenizer, quantization, progress=progress)
            elif quantization.quantizes_activations:
                calibration = calibrate_inputs(generator, tokenizer, progress=progress)
            progress(f"quantizing the step graph's weights ({quantization.description}, "
                     f"{'GPTQ' if request.calibration == 'gptq' else 'round to nearest'})")
            quantized = quantize_generator(generator, quantization, _scale_dtype(request), calibration)
        configs = generator.config, tokenizer.config
        graphs = _export_graphs(generator, tokenizer, tmp, request, progress)
        weights = None
        if quantization is not None:
            weights = _quantize_step_graph(tmp, graphs, generator, quantized, quantization, request, progress,
                                           calibration.record if calibration else None)
            if quantization.quantizes_activations:  # the reference from here on: fp8 inputs too (after the export)
                quantize_inputs(generator, {name: w.input_scale for name, w in quantized.items()})
        del quantized, calibration
        checkpoints = {kind: {"file": path.name, "path": str(path.resolve()), "sha256": sha256_of(path)}
                       for kind, path in (("generator", ckpt), ("tokenizer", tokenizer_path))}
        tools = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                 "opset": OPSET, "exporter": "torch.onnx.export(dynamo=True)",
                 "tensorrt": None}

        def write() -> dict:
            """The manifest of what `tmp` holds now (the engines add themselves)."""
            listed = [graph["file"] for graph in graphs.values()]
            listed += [graph["external_data"] for graph in graphs.values() if graph["external_data"]]
            listed += [name for name in (RECORD_FILE, PARITY_FILE) if (tmp / name).exists()]
            manifest = build_manifest(
                generator=configs[0], tokenizer=configs[1], precision=request.precision, checkpoints=checkpoints,
                graphs=graphs, files={name: file_record(tmp / name) for name in listed}, engines={},
                batch_profile=[request.profile.min, request.profile.opt, request.profile.max], tools=tools,
                weights=weights)
            write_manifest(manifest, tmp)
            return manifest

        record = None
        if request.verify:
            record = reference_for_export(tmp, generator, tokenizer, request.precision, progress)
        del generator, tokenizer  # from here on the record is the reference; the graphs need the memory
        release_memory()
        manifest = write()
        parity = None
        if record is not None:
            parity = verify_export(tmp, record, progress)
            if float_record is not None:  # reported, not enforced: what the quantization itself costs
                parity["float32_weights"] = verify_export(tmp, float_record, progress)
            (tmp / PARITY_FILE).write_text(json.dumps(parity, indent=1) + "\n")
            manifest = write()  # now listing parity.json too
            if parity["failures"]:
                overflow = request.precision == "fp16" and any("inf/nan" in f for f in parity["failures"])
                raise ExportError("export verification failed: " + "; ".join(parity["failures"][:3])
                                  + (" (float16 overflow: export with --fp32)" if overflow else ""))
            del record, float_record
            release_memory()
        if trt is not None:
            manifest = build_engines(trt, tmp, manifest, build, progress)
    return ExportResult(request.out, manifest, parity, time.perf_counter() - start)


def _export_graphs(generator, tokenizer, directory: Path, request: ExportRequest,
                   progress: Callable[[str], None]) -> dict[str, dict]:
    """Every graph in the export precision, one at a time; the manifest's entry of each."""
    cast_gen, cast_tok = cast_models(generator, tokenizer, request.precision)
    family, graph_exports = FAMILY_EXPORTS[type(generator)]
    exports = graph_exports(cast_gen, cast_tok, request.profile.max)
    names = FAMILY_GRAPHS[family] + (OPTIONAL_GRAPHS[family] if request.parallel_decoding else ())
    graphs = {}
    for name in exports.keys() - set(names):
        del exports[name]
    for name in names:
        progress(f"exporting {name}.onnx ({request.precision})")
        exported = export_graph(exports.pop(name), directory / f"{name}.onnx", request.external_data)
        external = f"{name}.onnx.data" if exported.external_data else None
        graphs[name] = {"file": f"{name}.onnx", "external_data": external, "weight_bytes": exported.weight_bytes,
                        "table_bytes": exported.table_bytes}
    release_cast_copy(generator, cast_gen), release_cast_copy(tokenizer, cast_tok)
    release_memory()
    return graphs


def _quantize_step_graph(directory: Path, graphs: dict[str, dict], generator, quantized: dict,
                         quantization: WeightQuantization, request: ExportRequest,
                         progress: Callable[[str], None], calibration: dict | None) -> dict:
    """The step graph rewritten to read its quantized weights through DequantizeLinear; the manifest's `weights`."""
    step = FAMILIES[FAMILY_EXPORTS[type(generator)][0]].step_graph
    graph = graphs[step]
    progress(f"storing {len(quantized)} weights of {step}.onnx as {quantization.description}")
    rewritten = quantize_graph(directory / graph["file"], quantized, quantization, _scale_dtype(request),
                               external_data=graph["external_data"] is not None)
    graph["weight_bytes"] = rewritten.weight_bytes
    return quantization.to_manifest({step: rewritten.tensors}, FLOAT_DTYPES[request.precision], calibration)


def _scale_dtype(request: ExportRequest) -> type:
    """The quantization scales' numpy type: the export's activation precision."""
    return np.dtype(FLOAT_DTYPES[request.precision]).type


def _check_compatible(generator, tokenizer, tokenizer_path: Path) -> None:
    if tokenizer.codebook_size != generator.codebook_size:
        raise ExportError(f"tokenizer {tokenizer_path} has a codebook of {tokenizer.codebook_size} entries but "
                          f"the generator predicts {generator.codebook_size} tokens: pass the tokenizer it was "
                          "trained with")
    if isinstance(generator, VARConfig):
        if generator.num_scales < 2:
            raise ExportError(f"the generator predicts {generator.num_scales} scale: VAR models have two or more")
        if tokenizer.vae_channels != generator.vae_channels:
            raise ExportError(f"VQVAE {tokenizer_path} has {tokenizer.vae_channels} latent channels but the generator "
                              f"reads {generator.vae_channels}: pass the VQVAE it was trained with")
    elif generator.grid_size ** 2 != generator.image_seq_len:
        raise ExportError(f"image_seq_len {generator.image_seq_len} is not a square token grid")
