"""TensorRT engines (standard TensorRT 10.x/11.x or TensorRT-RTX) on CUDA, with torch owning the device
buffers. Engines are checked against this machine (TensorRT version and flavour, GPU compute
capability) before anything is deserialised; the decode step is captured in a CUDA graph (Backend)."""

from __future__ import annotations

import torch

from ..engines import check_engines, current_capability, find_tensorrt
from ..errors import RARDeployError
from ..manifest import GRAPH_NAMES
from .artifacts import Artifacts
from .backends import TORCH_DTYPES, Backend


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
            plan = (artifacts.directory / artifacts.manifest["engines"][name]["file"]).read_bytes()
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise RARDeployError(f"TensorRT could not load engine {name}: rebuild it with rar-export --engine")
            self.engines[name] = engine
        self.contexts = {name: engine.create_execution_context() for name, engine in self.engines.items()}
        self.use_cuda_graph = cuda_graphs
        self.outputs: dict[tuple[str, int], dict[str, torch.Tensor]] = {}  # allocated once per graph and batch

    def _bind(self, graph: str, feeds: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        """Input shapes and every tensor address of this call (cheap host calls, no device work)."""
        context = self.contexts[graph]
        outputs = self.outputs.get((graph, batch))
        if outputs is None:
            outputs = {name: torch.empty(shape, dtype=TORCH_DTYPES[dtype], device=self.device)
                       for name, (shape, dtype) in self.artifacts.output_shapes(graph, batch).items()}
            self.outputs[(graph, batch)] = outputs
        for name, tensor in feeds.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        for name, tensor in outputs.items():
            context.set_tensor_address(name, tensor.data_ptr())
        return outputs

    def run(self, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {name: tensor.contiguous() for name, tensor in feeds.items()}
        batch = feeds["class_labels" if "class_labels" in feeds else "tokens"].shape[0]
        outputs = self._bind(graph, feeds, batch)
        if not self.contexts[graph].execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RARDeployError(f"TensorRT failed to run {graph}")
        return outputs
