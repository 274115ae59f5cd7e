"""Finding TensorRT (standard 10.x/11.x, module `tensorrt`, or TensorRT-RTX, module `tensorrt_rtx_bindings`) and
checking a folder's engines against the machine that would run them. Building engines is rar-build's
(`rar_deploy/tools/engine_build.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from rar_deploy.contract.graphs import present_graphs
from rar_deploy.contract.manifest import manifest_family
from rar_deploy.errors import RARDeployError

FLAVOURS = (("tensorrt", "tensorrt"), ("tensorrt_rtx_bindings", "tensorrt-rtx"))

@dataclass(frozen=True)
class TensorRT:
    module: ModuleType
    flavour: str  # "tensorrt" or "tensorrt-rtx"

    @property
    def version(self) -> str:
        return self.module.__version__


def find_tensorrt() -> TensorRT | None:
    """The first importable flavour: standard TensorRT, else TensorRT-RTX."""
    for module_name, flavour in FLAVOURS:
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        return TensorRT(module, flavour)
    return None


def check_engines(manifest: dict, directory: Path, trt_version: str, flavour: str, capability: str | None) -> None:
    """Refuse engines that this machine cannot run, with what to rebuild."""
    engines = manifest.get("engines") or {}
    rebuild = f"rebuild them here: rar-build --artifacts {directory}"
    if set(engines) != set(present_graphs(manifest_family(manifest), manifest["graphs"])):
        raise RARDeployError(f"{directory} has no TensorRT engines: build them on this machine with rar-build "
                             f"--artifacts {directory}, or use --backend onnxruntime")
    for name, engine in engines.items():
        if (engine["flavour"], engine["tensorrt_version"]) != (flavour, trt_version):
            raise RARDeployError(f"engine {name} was built with {engine['flavour']} {engine['tensorrt_version']}, "
                                 f"this machine has {flavour} {trt_version}: {rebuild}")
        if capability is None:
            raise RARDeployError("the tensorrt backend needs an NVIDIA GPU (cuda-python sees none): "
                                 "use --backend onnxruntime on this machine")
        if capability not in engine["compute_capabilities"]:
            raise RARDeployError(f"engine {name} was built for {', '.join(engine['compute_capabilities'])}, this GPU "
                                 f"is {capability}: {rebuild}")
        if not (directory / engine["file"]).is_file():
            raise RARDeployError(f"{directory / engine['file']} is missing: {rebuild}")
