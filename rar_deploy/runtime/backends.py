"""Backends run one artifact directory's graphs on buffers of their `Memory` (host arrays, CUDA device memory,
or torch tensors), and the ONNX Runtime backend. The generation loops over them are `loops.py`: the cache
writes between steps never leave the device and a loop synchronises only to read the tokens. No torch here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from rar_deploy.contract.graphs import resolve_shape
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.runtime.memory import CudaMemory, HostMemory, Memory, address

Buffers = dict[str, Any]


class Backend(ABC):
    """One artifact directory's graphs on one device: subclasses run a graph on buffers of `memory`.
    `use_cuda_graph`: whether a loop may capture a step once and replay it (the memory's `capture`)."""

    name: str

    def __init__(self, artifacts: Artifacts, memory: Memory, float_dtype: np.dtype | None = None) -> None:
        self.artifacts = artifacts
        self.config = artifacts.config
        self.memory = memory
        self.float_dtype = np.dtype(float_dtype or artifacts.cache_dtype)  # the torch backend may compute in another
        self.use_cuda_graph = False

    @abstractmethod
    def run(self, graph: str, feeds: Buffers, outputs: Buffers) -> None:
        """Run one graph on buffers of `self.memory`, writing into `outputs`."""

    @property
    def device(self) -> str:
        return self.memory.device_type if self.memory.device_type == "cpu" else f"cuda:{self.memory.device_index}"

    def output_buffers(self, graph: str, dims: dict[str, int]) -> Buffers:
        return {spec["name"]: self.memory.empty(tuple(resolve_shape(spec["shape"], dims)),
                                                self._dtype(np.dtype(spec["dtype"])))
                for spec in self.artifacts.graph_outputs(graph)}

    def _dtype(self, dtype: np.dtype) -> np.dtype:
        """A graph's float dtype as this backend holds it."""
        return self.float_dtype if dtype == self.artifacts.cache_dtype else dtype

    def run_host(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph from host arrays (checked against the manifest); float outputs come back as float32."""
        dims = self.artifacts.check_feeds(graph, {name: (a.shape, a.dtype) for name, a in feeds.items()})
        buffers = {}
        for name, array in feeds.items():
            buffers[name] = self.memory.empty(array.shape, self._dtype(array.dtype))
            self.memory.upload(array, buffers[name])
        outputs = self.output_buffers(graph, dims)
        self.run(graph, buffers, outputs)
        host = {name: self.memory.download(buffer) for name, buffer in outputs.items()}
        return {name: a.astype(np.float32) if a.dtype.kind == "f" else a for name, a in host.items()}

    def cache_view(self, layer: Any, p: int) -> Any:
        """What a step reads of a layer's cache [R, H, S, Dh]: all of it (a backend may read less)."""
        return layer


# ONNX Runtime fuses a quantized folder's DequantizeLinear + MatMul into MatMulNBits, which by default (accuracy
# level 4) also rounds the activations to int8: not the model the folder holds. Level 1 computes in float32
# (exact); level 4 only when asked (int8_activations), for its speed.
EXACT_QUANTIZED_MATMUL = {"session.qdq_matmulnbits_accuracy_level": "1"}
INT8_ACTIVATIONS = {"session.qdq_matmulnbits_accuracy_level": "4"}


def _session_options(threads: int | None, entries: dict[str, str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    return options


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime through IOBinding on our own buffers: host arrays on the CPU, or CUDA device memory
    with the CUDA execution provider (onnxruntime-gpu) running on our stream: the cache, noise and
    tokens never leave the device."""

    name = "onnxruntime"

    def __init__(self, artifacts: Artifacts, device: str = "cpu", threads: int | None = None,
                 int8_activations: bool = False) -> None:
        import onnxruntime as ort

        matmul = INT8_ACTIVATIONS if int8_activations else EXACT_QUANTIZED_MATMUL
        options = _session_options(threads, matmul)
        if device == "cpu":
            memory, providers = HostMemory(), ["CPUExecutionProvider"]
        else:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RARDeployError("onnxruntime has no CUDA execution provider here: install onnxruntime-gpu, "
                                     "or run with --device cpu")
            memory = CudaMemory(int(device.partition(":")[2] or 0))
            providers = [("CUDAExecutionProvider", {"device_id": memory.device_index,
                                                    "user_compute_stream": str(memory.stream_handle)})]
        super().__init__(artifacts, memory)
        self.sessions = {}
        for name in artifacts.graph_names:
            if name not in (artifacts.family.step_graph, "decode_block"):  # decode_block: speculative decoding's step
                # the other graphs run between steps: their idle threads must not spin against the step's
                options = _session_options(threads, {**matmul, "session.intra_op.allow_spinning": "0"})
            self.sessions[name] = artifacts.onnxruntime_session(name, options, providers)
        self.run_options = ort.RunOptions()
        if device != "cpu":  # our stream orders the work; no host synchronisation after every run
            self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def run(self, graph: str, feeds: Buffers, outputs: Buffers) -> None:
        binding = self.sessions[graph].io_binding()
        where = (self.memory.device_type, self.memory.device_index)
        for name, buffer in feeds.items():
            binding.bind_input(name, *where, buffer.dtype, list(buffer.shape), address(buffer))
        for name, buffer in outputs.items():
            binding.bind_output(name, *where, buffer.dtype, list(buffer.shape), address(buffer))
        self.sessions[graph].run_with_iobinding(binding, self.run_options)
