"""Building TensorRT engines (rar-export, rar-build): compute capabilities and strongly typed engines from the
ONNX graphs through one code path for standard TensorRT and TensorRT-RTX. Finding TensorRT and checking
engines before a run is the runtime's (`rar_deploy/runtime/engines.py`)."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Callable

from rar_deploy.contract.graphs import profile_dims, resolve_shape, var_profile_dims, with_block_dims
from rar_deploy.errors import ExportError
from rar_deploy.outputs import any_file, atomic_file
from rar_deploy.runtime.engines import TensorRT, find_tensorrt
from rar_deploy.runtime.gpu import cuda_capability, device_name

# TensorRT-RTX builds ahead of time for named compute capabilities (with no GPU present it cannot use
# CURRENT). What 1.7 offers; it has no SM90, so Hopper (H100, H200) needs standard TensorRT.
RTX_TARGETS = {
    "SM75": "Turing: RTX 20xx, T4",
    "SM80": "Ampere: A100, A30",
    "SM86": "Ampere: RTX 30xx, A10, A40",
    "SM89": "Ada: RTX 40xx, L4, L40",
    "SM120": "Blackwell: RTX 50xx, RTX PRO 6000",
    "SM121": "Blackwell: GB10 (DGX Spark)",
}
RTX_DEFAULT_CAPABILITIES = ("SM80", "SM86", "SM89", "SM120")


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    def dims(self, model: dict) -> list[dict[str, int]]:
        """The [min, opt, max] symbolic dims of this profile for a manifest's `model` (RAR's or VAR's)."""
        if "patch_nums" in model:
            return var_profile_dims(self.min, self.opt, self.max, model["patch_nums"][-1])
        return profile_dims(self.min, self.opt, self.max, model["image_seq_len"] + 1)

    def validate(self) -> "BatchProfile":
        if not 1 <= self.min <= self.opt <= self.max:
            raise ExportError(f"batch profile must satisfy 1 <= min <= opt <= max, got "
                              f"min {self.min}, opt {self.opt}, max {self.max}")
        return self


def require_tensorrt() -> TensorRT:
    trt = find_tensorrt()
    if trt is None:
        raise ExportError("no TensorRT found: install standard TensorRT (`pip install .[tensorrt]` on a CUDA machine) "
                          "or TensorRT-RTX (`pip install .[rtx]`), or pass --no-engine")
    return trt


def parse_compute_capabilities(trt: TensorRT, names: tuple[str, ...]) -> tuple[str, ...]:
    """TensorRT-RTX build targets as its enum names: accepts SM89, sm89, 89 or 8.9."""
    offered = [name for name in trt.module.ComputeCapability.__members__ if name.startswith("SM")]
    parsed = []
    for name in names:
        text = str(name).strip().upper().removeprefix("SM").replace(".", "")
        canonical = f"SM{text}"
        if canonical not in offered:
            here = cuda_capability()
            raise ExportError(f"--compute-capability {name} is not a TensorRT-RTX {trt.version} build target: choose "
                              f"from {', '.join(offered)}" + (f" (this machine's GPU is {here})" if here else ""))
        parsed.append(canonical)
    return tuple(dict.fromkeys(parsed))


def describe_targets(capabilities: list[str]) -> str:
    """'SM80 (Ampere: A100, A30), ...' for the export summary."""
    return ", ".join(f"{c} ({RTX_TARGETS[c]})" if c in RTX_TARGETS else c for c in capabilities)


def build_engine(
    trt: TensorRT,
    onnx_path: Path,
    plan_path: Path,
    inputs: list[dict],
    profile: BatchProfile,
    model: dict,
    timing_cache: Path,
    opt_level: int = 3,
    compute_capabilities: tuple[str, ...] = RTX_DEFAULT_CAPABILITIES,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Parse, build and serialise one engine; returns what the manifest records about it."""
    t = trt.module
    logger = _make_logger(t)
    builder = t.Builder(logger)
    network = builder.create_network(1 << int(t.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = t.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.builder_optimization_level = opt_level
    trt_profile = builder.create_optimization_profile()
    engine_dims = profile.dims(model)
    if any("block" in spec["shape"] for spec in inputs):  # decode_block
        engine_dims = with_block_dims(engine_dims, model["image_seq_len"] + 1)
    for spec in inputs:
        trt_profile.set_shape(spec["name"], *(resolve_shape(spec["shape"], dims) for dims in engine_dims))
    config.add_optimization_profile(trt_profile)
    capabilities = _set_compute_capabilities(trt, config, compute_capabilities)
    uses_timing_cache = trt.flavour != "tensorrt-rtx"  # RTX tunes at runtime; its timing cache is a no-op
    if uses_timing_cache:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    if progress:
        progress(f"building {plan_path.name} ({trt.flavour} {trt.version})")
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        reason = " | ".join(logger.errors[-3:] or logger.warnings[-3:]) or "TensorRT logged no reason"
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name}: {reason}")
    with atomic_file(plan_path) as tmp:
        tmp.write_bytes(bytes(plan))
    if uses_timing_cache:
        with atomic_file(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "file": f"engines/{plan_path.name}",
        "tensorrt_version": trt.version,
        "flavour": trt.flavour,
        "device": device_name(),
        "compute_capabilities": capabilities,
        "profile": {"batch": [profile.min, profile.opt, profile.max], "dims": engine_dims},
        "opt_level": opt_level,
        "timing_cache": f"engines/{timing_cache.name}" if uses_timing_cache else None,
        "build_seconds": round(time.perf_counter() - start, 2),
        "io": network_io(network, trt_profile),
    }


@dataclass(frozen=True)
class BuildOptions:
    """How engines are built: batch profile, builder optimisation level, TensorRT-RTX targets, and a timing
    cache shared across builds (read first, updated after)."""

    profile: BatchProfile = BatchProfile(1, 8, 64)
    opt_level: int = 3
    compute_capabilities: tuple[str, ...] = RTX_DEFAULT_CAPABILITIES
    timing_cache: Path | None = None


FP8_FIRST_TARGET = 89  # FP8 GEMMs: Ada (SM89), Hopper, Blackwell


def check_build(trt: TensorRT | None, options: BuildOptions, progress: Callable[[str], None],
                fp8: bool = False) -> BuildOptions:
    """The build options checked before any work: the profile, the targets (canonical names), the cache. `fp8`
    (a --weights fp8 graph): TensorRT-RTX's default targets narrowed to the FP8-capable ones, older ones named by
    the user refused."""
    options.profile.validate()
    if options.timing_cache and options.timing_cache.is_dir():
        raise ExportError(f"--timing-cache {options.timing_cache} is a folder: name a file")
    if trt is None:
        return options
    if trt.flavour == "tensorrt-rtx":
        if options.timing_cache:
            progress(f"note: TensorRT-RTX has no timing cache (it tunes on the GPU at run time): --timing-cache "
                     f"{options.timing_cache} is not used")
        targets = parse_compute_capabilities(trt, options.compute_capabilities)
        if fp8:
            older = [name for name in targets if int(name.removeprefix("SM")) < FP8_FIRST_TARGET]
            if older and options.compute_capabilities != RTX_DEFAULT_CAPABILITIES:
                raise ExportError(f"--weights fp8 runs FP8 GEMMs, which need SM89 or later: drop "
                                  f"--compute-capability {' '.join(older)}")
            targets = tuple(name for name in targets if name not in older)
        return replace(options, compute_capabilities=targets)
    if options.compute_capabilities != RTX_DEFAULT_CAPABILITIES:
        progress("note: --compute-capability applies to TensorRT-RTX; standard TensorRT builds for this machine's GPU")
    return options


def build_engines(trt: TensorRT, directory: Path, manifest: dict, options: BuildOptions,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Build every graph of the folder `directory` into `directory`/engines and write its manifest with them;
    returns the new manifest. Used by rar-export (on its temporary folder) and rar-build."""
    from rar_deploy.contract.integrity import file_record
    from rar_deploy.contract.manifest import write_manifest
    from rar_deploy.outputs import Output

    engines_dir = directory / "engines"
    engines_dir.mkdir(exist_ok=True)
    timing_cache = engines_dir / "timing.cache"
    if options.timing_cache and options.timing_cache.is_file():
        shutil.copyfile(options.timing_cache, timing_cache)
    engines = {}
    for name, graph in manifest["graphs"].items():
        engines[name] = build_engine(trt, directory / graph["file"], engines_dir / f"{name}.plan", graph["inputs"],
                                     options.profile, manifest["model"], timing_cache, options.opt_level,
                                     options.compute_capabilities, progress)
    if options.timing_cache and timing_cache.exists():
        with atomic_file(Output(options.timing_cache, "--timing-cache", force=True, written=any_file,
                                directory=False)) as shared:
            shutil.copyfile(timing_cache, shared)
    files = {name: record for name, record in manifest["files"].items() if not name.startswith("engines/")}
    files.update({engine["file"]: file_record(directory / engine["file"]) for engine in engines.values()})
    profile = options.profile
    manifest = {**manifest, "engines": engines, "files": files,
                "batch_profile": {"min": profile.min, "opt": profile.opt, "max": profile.max},
                "tools": {**manifest["tools"], "tensorrt": {"version": trt.version, "flavour": trt.flavour}}}
    write_manifest(manifest, directory)
    return manifest


# TensorRT-RTX reports its probe for a CUDA device as an error on CPU-only machines; the build goes on.
_HARMLESS = ("CUDA driver version is insufficient",)


def _make_logger(t: ModuleType):
    class Logger(t.ILogger):
        def __init__(self) -> None:
            t.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, message: str) -> None:
            if any(h in message for h in _HARMLESS):
                return
            if severity <= t.ILogger.Severity.ERROR:
                self.errors.append(message)
                print(f"[TensorRT] {message}", file=sys.stderr)
            elif severity <= t.ILogger.Severity.WARNING:
                self.warnings.append(message)

    return Logger()


def network_io(network, profile) -> list[dict]:
    """Names, dtypes, shapes (-1 for dynamic) of the built network's inputs and outputs, and for each
    input the [min, opt, max] shapes TensorRT holds in its optimization profile."""
    io = []
    for i in range(network.num_inputs):
        x = network.get_input(i)
        io.append({"name": x.name, "dtype": _dtype_name(x.dtype), "shape": list(x.shape), "is_input": True,
                   "profile": [list(shape) for shape in profile.get_shape(x.name)]})
    for i in range(network.num_outputs):
        x = network.get_output(i)
        io.append({"name": x.name, "dtype": _dtype_name(x.dtype), "shape": list(x.shape), "is_input": False})
    return io


_TRT_TO_NUMPY = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
                 "UINT8": "uint8", "INT8": "int8", "BOOL": "bool"}


def _dtype_name(dtype) -> str:
    """TensorRT DataType -> the numpy name the manifest uses."""
    name = str(dtype).rsplit(".", 1)[-1]
    return _TRT_TO_NUMPY.get(name, name.lower())


def _set_compute_capabilities(trt: TensorRT, config, names: tuple[str, ...]) -> list[str]:
    """TensorRT-RTX: build for the named capabilities. Standard TensorRT: the GPU it runs on."""
    if trt.flavour != "tensorrt-rtx":
        return [cuda_capability() or "unknown"]
    names = parse_compute_capabilities(trt, names)
    config.num_compute_capabilities = len(names)
    for index, name in enumerate(names):
        config.set_compute_capability(trt.module.ComputeCapability.__members__[name], index)
    return list(names)
