"""`rar-export`'s job: checkpoints -> verified ONNX graphs (+ engines) + manifest, written atomically."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime
import torch

from ..checkpoint import load_generator, load_tokenizer, require_file, resolve_checkpoint, sha256_of
from ..engines import (
    RTX_DEFAULT_CAPABILITIES,
    BatchProfile,
    build_engine,
    find_tensorrt,
    parse_compute_capabilities,
    require_tensorrt,
)
from ..errors import ExportError
from ..files import Output, atomic_directory, atomic_file
from ..manifest import GRAPH_NAMES, build_manifest, is_artifact_directory, write_manifest
from .graphs import graph_specs
from .onnx_export import OPSET, cast_models, export_graph, graph_exports, needs_external_data
from .verify import TOLERANCES, failures, verify_decoder_graph, verify_generator_graphs

VERIFY_STEPS = 8  # teacher-forced decode steps checked at export time (all of them for N <= 9)


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


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    parity: dict | None
    seconds: float


def export_artifacts(request: ExportRequest, progress: Callable[[str], None] = print) -> ExportResult:
    """Everything `rar-export` does. Nothing appears at `request.out` unless all of it succeeded."""
    start = time.perf_counter()
    trt, capabilities = _check_request(request, progress)
    ckpt, tokenizer_path = resolve_checkpoint(request.ckpt), resolve_checkpoint(request.tokenizer)
    require_file(ckpt), require_file(tokenizer_path)
    output = Output(request.out, "--out", request.force, owned=is_artifact_directory, owner="rar-export",
                    inputs=(ckpt, tokenizer_path, *filter(None, [request.timing_cache])))
    output.check()

    with atomic_directory(output, report=progress) as tmp:
        progress(f"loading {ckpt} and {tokenizer_path}")
        generator, tokenizer = load_generator(ckpt), load_tokenizer(tokenizer_path)
        _check_compatible(generator.config, tokenizer.config, tokenizer_path)
        cast_gen, cast_tok = cast_models(generator, tokenizer, request.precision)
        cache_dtype = "float16" if request.precision == "fp16" else "float32"
        specs = graph_specs(generator, tokenizer, cache_dtype)
        exports = graph_exports(cast_gen, cast_tok, request.profile.max)
        graphs = {}
        for name in GRAPH_NAMES:
            external = request.external_data or needs_external_data(exports[name])
            progress(f"exporting {name}.onnx ({request.precision}{', external weights' if external else ''})")
            export_graph(exports[name], tmp / f"{name}.onnx", external)
            graphs[name] = {"file": f"{name}.onnx", "external_data": f"{name}.onnx.data" if external else None,
                            "inputs": [s.to_dict() for s in specs[name]["inputs"]],
                            "outputs": [s.to_dict() for s in specs[name]["outputs"]]}
        del exports, cast_gen, cast_tok

        parity = None
        if request.verify:
            progress(f"verifying in ONNX Runtime against the float32 reference (batch 3, {request.precision})")
            parity = _verify(generator, tokenizer, tmp, request.precision, np.dtype(cache_dtype))
            (tmp / "parity.json").write_text(json.dumps(parity, indent=1) + "\n")
            if parity["failures"]:
                overflow = request.precision == "fp16" and any("inf/nan" in f for f in parity["failures"])
                raise ExportError("export verification failed: " + "; ".join(parity["failures"][:3])
                                  + (" (float16 overflow: export with --fp32)" if overflow else ""))

        engines = {}
        if trt is not None:
            (tmp / "engines").mkdir()
            timing_cache = tmp / "engines" / "timing.cache"
            if request.timing_cache and request.timing_cache.exists():
                shutil.copyfile(request.timing_cache, timing_cache)
            for name in GRAPH_NAMES:
                engines[name] = build_engine(trt, tmp / f"{name}.onnx", tmp / "engines" / f"{name}.plan",
                                             graphs[name]["inputs"], request.profile, timing_cache,
                                             request.opt_level, capabilities, progress)
            if request.timing_cache and timing_cache.exists():
                with atomic_file(Output(request.timing_cache, "--timing-cache", force=True,
                                        owned=lambda existing: existing.is_file())) as shared:
                    shutil.copyfile(timing_cache, shared)

        manifest = build_manifest(
            generator=generator.config, tokenizer=tokenizer.config, precision=request.precision,
            checkpoints={kind: {"file": path.name, "path": str(path.resolve()), "sha256": sha256_of(path)}
                         for kind, path in (("generator", ckpt), ("tokenizer", tokenizer_path))},
            graphs=graphs, cache_dtype=cache_dtype, engines=engines,
            batch_profile=[request.profile.min, request.profile.opt, request.profile.max],
            tools={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                   "opset": OPSET, "exporter": "torch.onnx.export(dynamo=True)",
                   "tensorrt": {"version": trt.version, "flavour": trt.flavour} if trt else None},
        )
        write_manifest(manifest, tmp)
    return ExportResult(request.out, manifest, parity, time.perf_counter() - start)


def _check_request(request: ExportRequest, progress: Callable[[str], None]):
    """The options that need no checkpoint: TensorRT, its targets, the batch profile, the timing cache."""
    request.profile.validate()
    trt = require_tensorrt() if request.engine else (find_tensorrt() if request.engine is None else None)
    capabilities = request.compute_capabilities
    if trt is not None and trt.flavour == "tensorrt-rtx":
        capabilities = parse_compute_capabilities(trt, capabilities)
        if request.timing_cache:
            progress(f"note: TensorRT-RTX has no timing cache (it tunes on the GPU at run time): --timing-cache "
                     f"{request.timing_cache} is not used")
    elif trt is not None and request.compute_capabilities != RTX_DEFAULT_CAPABILITIES:
        progress("note: --compute-capability applies to TensorRT-RTX; standard TensorRT builds for this machine's GPU")
    if request.timing_cache and request.timing_cache.is_dir():
        raise ExportError(f"--timing-cache {request.timing_cache} is a folder: name a file")
    return trt, capabilities


def _check_compatible(generator, tokenizer, tokenizer_path: Path) -> None:
    if tokenizer.codebook_size != generator.codebook_size:
        raise ExportError(f"tokenizer {tokenizer_path} has a codebook of {tokenizer.codebook_size} entries but "
                          f"the generator predicts {generator.codebook_size} tokens: pass the tokenizer it was "
                          "trained with")
    if generator.grid_size ** 2 != generator.image_seq_len:
        raise ExportError(f"image_seq_len {generator.image_seq_len} is not a square token grid")


def _verify(generator, tokenizer, directory: Path, precision: str, cache_dtype: np.dtype) -> dict:
    paths = {name: directory / f"{name}.onnx" for name in GRAPH_NAMES}
    steps = min(VERIFY_STEPS, generator.config.image_seq_len - 1)
    report = {"precision": precision, "backend": "onnxruntime-cpu", "reference": "pytorch float32",
              "batch": 3, "tolerances": TOLERANCES[precision]}
    report["graphs"] = {**verify_generator_graphs(generator, paths, cache_dtype, steps),
                        **verify_decoder_graph(tokenizer, paths["vq_decoder"], generator.config.image_seq_len)}
    report["failures"] = failures(report["graphs"], precision)
    return report
