"""TensorRT engines (standard TensorRT 10.x/11.x or TensorRT-RTX) on CUDA, with torch owning the device
buffers. Engines are checked against this machine (TensorRT version and flavour, GPU compute
capability) before anything is deserialised; the decode step is captured in a CUDA graph (Backend)."""

from __future__ import annotations

import torch

from ..contract import GRAPH_NAMES
from ..engines import check_engines, current_capability, find_tensorrt
from ..errors import RARDeployError
from .artifacts import Artifacts
from .backends import Backend, Tensors, feed_dims


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, artifacts: Artifacts, device: torch.device, cuda_graphs: bool = True) -> None:
        trt = find_tensorrt()
        if trt is None:
            raise RARDeployError("--backend tensorrt needs TensorRT: install tensorrt (or tensorrt-rtx with "
                                 "`pip install .[rtx]`), or use --backend onnxruntime or torch")
        check_engines(artifacts.manifest, artifacts.directory, trt.version, trt.flavour, current_capability())
        super().__init__(artifacts, device)
        self.trt = trt.module
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        runtime = self.trt.Runtime(self.logger)
        self.engines = {}
        for name in GRAPH_NAMES:
            plan = artifacts.check_files(name, engine=True).read_bytes()
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise RARDeployError(f"TensorRT could not load engine {name}: rebuild the engines (rar-build)")
            self.engines[name] = engine
        self.contexts = {name: engine.create_execution_context() for name, engine in self.engines.items()}
        self.use_cuda_graph = cuda_graphs
        self.outputs: dict[tuple, Tensors] = {}  # allocated once per graph and dims

    def run(self, graph: str, feeds: Tensors, outputs: Tensors | None = None) -> Tensors:
        """Input shapes and every tensor address of this call (cheap host calls), then one enqueue."""
        feeds = {name: tensor.contiguous() for name, tensor in feeds.items()}
        context = self.contexts[graph]
        if outputs is None:
            dims = feed_dims(self.artifacts, graph, feeds)
            key = (graph, *sorted(dims.items()))
            outputs = self.outputs.get(key) or self.outputs.setdefault(key, self.output_buffers(graph, dims))
        for name, tensor in feeds.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        for name, tensor in outputs.items():
            context.set_tensor_address(name, tensor.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RARDeployError(f"TensorRT failed to run {graph}")
        return outputs
