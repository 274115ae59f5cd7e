"""Opening an artifact directory on one backend: the directory checked, the backend chosen by name. The torch
backend is the torch part's (`rar_deploy/model/torch_backend.py`) and is imported only when asked for."""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path

from rar_deploy.contract.checks import check_device, check_threads
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.runtime.backends import Backend, OnnxRuntimeBackend
from rar_deploy.runtime.gpu import cuda_capability

BACKENDS = ("onnxruntime", "tensorrt", "torch")
TORCH_BACKEND = "rar_deploy.model.torch_backend"  # a plug-in of the torch part: present with rar-deploy[export]


def open_backend(directory: str | Path, backend: str = "onnxruntime", device: str | None = None,
                 ckpt: str | None = None, tokenizer: str | None = None, verify_files: bool = False,
                 threads: int | None = None, int8_activations: bool = False) -> tuple[Artifacts, Backend]:
    """An artifact directory (checked) and one backend on its graphs; the arguments of from_artifacts."""
    if not isinstance(directory, (str, os.PathLike)):
        raise RARDeployError(f"the artifact directory must be a path, got {directory!r}")
    if backend not in BACKENDS:
        raise RARDeployError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    check_device(device)
    threads = check_threads(threads)
    artifacts = Artifacts.load(directory, verify="all" if verify_files else "fingerprint")
    if int8_activations and (backend != "onnxruntime" or artifacts.weights is None
                             or artifacts.weights.quantizes_activations):
        weights = artifacts.weights.label if artifacts.weights else "float"
        raise RARDeployError("--int8-activations applies to a folder exported with --weights int8|int4, on the "
                             f"onnxruntime backend ({directory} has {weights} weights, backend {backend}): drop it")
    if backend == "onnxruntime":
        return artifacts, OnnxRuntimeBackend(artifacts, check_cuda_present(device or "cpu"), threads,
                                             int8_activations)
    if backend == "tensorrt":
        if device == "cpu":
            raise RARDeployError("the tensorrt backend runs on a CUDA GPU: drop --device cpu")
        from rar_deploy.runtime.tensorrt_backend import TensorRTBackend

        return artifacts, TensorRTBackend(artifacts, device or "cuda")
    try:
        plugin = import_module(TORCH_BACKEND)
    except ImportError:
        raise RARDeployError("the torch backend needs torch: pip install 'rar-deploy[export]', or use "
                             "--backend onnxruntime or tensorrt") from None
    return artifacts, plugin.open_torch_backend(artifacts, device, threads, ckpt, tokenizer)


def check_cuda_present(device: str) -> str:
    """`device`, refused with one line when it names a GPU this machine does not have."""
    if device != "cpu" and cuda_capability(int(device.partition(":")[2] or 0)) is None:
        raise RARDeployError(f"device {device}, but no CUDA GPU is visible here (or cuda-python is not installed): "
                             "use --device cpu")
    return device
