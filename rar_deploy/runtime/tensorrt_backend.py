"""TensorRT engines (standard TensorRT 10.x/11.x or TensorRT-RTX) on CUDA device memory owned through
cuda-python: no torch. Engines are checked against this machine (TensorRT version and flavour, GPU compute
capability, file fingerprints) before anything is deserialised. The three execution contexts share one
scratch allocation (they never run at the same time); a step is captured in a CUDA graph (Backend)."""

from __future__ import annotations

from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.runtime.backends import Backend, Buffers
from rar_deploy.runtime.engines import check_engines, find_tensorrt
from rar_deploy.runtime.gpu import cuda_capability
from rar_deploy.runtime.memory import CudaMemory, address


class TensorRTBackend(Backend):
    """Set once per engine: the runtime, the shared scratch memory. Set per call (host calls, no device
    work): each input's shape and every tensor's address. Per step, with CUDA graphs: nothing but the
    copies into the captured inputs and one graph launch."""

    name = "tensorrt"

    def __init__(self, artifacts: Artifacts, device: str = "cuda", cuda_graphs: bool = True) -> None:
        trt = find_tensorrt()
        if trt is None:
            raise RARDeployError("--backend tensorrt needs TensorRT: install tensorrt (or tensorrt-rtx with "
                                 "`pip install .[rtx]`), or use --backend onnxruntime")
        index = int(device.partition(":")[2] or 0)
        check_engines(artifacts.manifest, artifacts.directory, trt.version, trt.flavour, cuda_capability(index))
        super().__init__(artifacts, CudaMemory(index))
        self.trt = trt.module
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        runtime = self.trt.Runtime(self.logger)
        self.engines = {}
        for name in artifacts.graph_names:
            engine = runtime.deserialize_cuda_engine(artifacts.check_files(name, engine=True).read_bytes())
            if engine is None:
                raise RARDeployError(f"TensorRT could not load engine {name}: rebuild the engines (rar-build)")
            self.engines[name] = engine
        # one scratch allocation for all three contexts, sized for the largest (TensorRT Diffusion's practice)
        scratch = max(_device_memory_size(engine) for engine in self.engines.values())
        self.scratch = self.memory.empty((max(scratch, 1),), "uint8")
        self.contexts = {}
        for name, engine in self.engines.items():
            context = _context_without_memory(self.trt, engine)
            if hasattr(context, "set_device_memory"):
                context.set_device_memory(address(self.scratch), self.scratch.nbytes)
            else:
                context.device_memory = address(self.scratch)
            self.contexts[name] = context
        capturable = all(getattr(context, "is_stream_capturable", lambda stream: True)(self.memory.stream_handle)
                         for context in self.contexts.values())
        self.use_cuda_graph = cuda_graphs and capturable

    def run(self, graph: str, feeds: Buffers, outputs: Buffers) -> None:
        context = self.contexts[graph]
        for name, buffer in feeds.items():
            context.set_input_shape(name, tuple(buffer.shape))
            context.set_tensor_address(name, address(buffer))
        for name, buffer in outputs.items():
            context.set_tensor_address(name, address(buffer))
        if not context.execute_async_v3(self.memory.stream_handle):
            raise RARDeployError(f"TensorRT failed to run {graph}")


def _device_memory_size(engine) -> int:
    """Scratch bytes an engine needs at its largest profile (TensorRT 10: device_memory_size_v2)."""
    return int(getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size)


def _context_without_memory(trt, engine):
    """An execution context whose scratch memory we provide (the API differs across TensorRT versions)."""
    strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
    if strategy is not None:
        return engine.create_execution_context(strategy.USER_MANAGED)
    return engine.create_execution_context_without_device_memory()
