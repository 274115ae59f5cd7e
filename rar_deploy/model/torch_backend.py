"""The torch backend: the graph modules themselves in PyTorch, on the loop of every backend. Float32
eager on CPU; on CUDA in the artifacts' precision with a step captured once in a CUDA graph. It needs
the export extra (torch) and the checkpoints the artifacts were exported from (SHA-256 checked)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from rar_deploy.contract.graphs import forward_arguments
from rar_deploy.model.graphs import RAR_GRAPH_MODULES
from rar_deploy.model.var_graphs import VAR_GRAPH_MODULES
from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.runtime.backends import Backend, Buffers

GRAPH_MODULES = {**RAR_GRAPH_MODULES, **VAR_GRAPH_MODULES}  # graph name -> module(generator, tokenizer)
TORCH_DTYPES = {np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float16,
                np.dtype("int64"): torch.int64, np.dtype("uint8"): torch.uint8}


class TorchMemory:
    """torch tensors on one device, the loop's Memory for the torch backend."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.device_type, self.device_index = device.type, device.index or 0

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=TORCH_DTYPES[np.dtype(dtype)], device=self.device)

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=TORCH_DTYPES[np.dtype(dtype)], device=self.device)

    def upload(self, array: np.ndarray, buffer: torch.Tensor) -> None:
        buffer.copy_(torch.from_numpy(np.ascontiguousarray(array)).reshape(buffer.shape))

    def download(self, buffer: torch.Tensor) -> np.ndarray:
        return buffer.to("cpu", copy=True).numpy()

    def copy(self, destination: torch.Tensor, source: torch.Tensor) -> None:
        destination.copy_(source)

    def write_position(self, cache: torch.Tensor, new: torch.Tensor, position: int) -> None:
        cache[:, :, :, position:position + new.shape[3]] = new

    def gather(self, destination: torch.Tensor, source: torch.Tensor, axis: int, index: list[int]) -> None:
        torch.index_select(source, axis, torch.tensor(index, device=self.device), out=destination)

    def scatter(self, destination: torch.Tensor, source: torch.Tensor, axis: int, index: list[int]) -> None:
        destination.index_copy_(axis, torch.tensor(list(index), device=self.device), source)

    def write_rows(self, cache: torch.Tensor, new: torch.Tensor, rows: list[int], positions: list[int]) -> None:
        n, seq = new.shape[3], cache.shape[3]  # positions past the cache's end are dropped
        for j, (row, position) in enumerate(zip(rows, positions)):
            cache[:, row, :, position:position + n] = new[:, j, :, :seq - position]

    def capture(self, body: Callable[[], None]) -> Callable[[], None]:
        """torch's CUDA-graph capture on a side stream (after the loop's warm-up run)."""
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return graph.replay

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def mark(self):
        if self.device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.device.type == "cuda" else (end - start) * 1e3

    def used_bytes(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)


def open_torch_backend(artifacts: Artifacts, device: str | None, threads: int | None, ckpt: str | None,
                       tokenizer: str | None) -> "TorchBackend":
    """The torch backend as runtime/load.py opens it: torch's thread pool set, the device defaulting to CUDA where
    torch sees one."""
    from rar_deploy.runtime.load import check_cuda_present

    if threads is not None:
        torch.set_num_threads(threads)
    device = check_cuda_present(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return TorchBackend(artifacts, device, ckpt=ckpt, tokenizer=tokenizer)


class TorchBackend(Backend):
    """The graph modules in PyTorch: float32 eager on CPU (attention over the live cache prefix only); on CUDA
    in the artifacts' precision, a step replayed from a CUDA graph."""

    name = "torch"

    def __init__(self, artifacts: Artifacts, device: str = "cpu", ckpt: str | None = None,
                 tokenizer: str | None = None, cuda_graphs: bool = True) -> None:
        from rar_deploy.model.checkpoint import load_exported_from
        from rar_deploy.model.layers import cast_for_inference
        from rar_deploy.model.quantized import load_stored_weights

        target = torch.device(device)
        dtype = torch.float16 if target.type == "cuda" and artifacts.precision == "fp16" else torch.float32
        super().__init__(artifacts, TorchMemory(target), np.dtype(str(dtype).removeprefix("torch.")))
        generator = load_exported_from(artifacts.manifest, "generator", ckpt)
        if artifacts.weights is not None:  # the folder's own quantized weights, read from its step graph
            load_stored_weights(generator, artifacts.graph_path(artifacts.family.step_graph), artifacts.weights)
        decoder = load_exported_from(artifacts.manifest, "tokenizer", tokenizer)
        generator = cast_for_inference(generator, dtype).to(target)
        decoder = cast_for_inference(decoder, dtype).to(target)
        self.modules = {name: GRAPH_MODULES[name](generator, decoder) for name in artifacts.graph_names}
        self.use_cuda_graph = cuda_graphs and target.type == "cuda"

    @torch.no_grad()
    def run(self, graph: str, feeds: Buffers, outputs: Buffers) -> None:
        module = self.modules[graph]
        if graph in ("vq_decoder", "var_decoder") and self.memory.device_type == "cpu":
            # one image per call: torch's batched convolutions on the CPU round differently with the batch size
            # (1 level in a few pixels), and an image must not depend on the batch it was made in
            for i in range(next(iter(feeds.values())).shape[0]):
                self._call(graph, module, {k: v[i:i + 1] for k, v in feeds.items()},
                           {k: v[i:i + 1] for k, v in outputs.items()})
        else:
            self._call(graph, module, feeds, outputs)

    def _call(self, graph: str, module, feeds: Buffers, outputs: Buffers) -> None:
        """The module on the feeds, as the graph's inputs in the manifest are its forward arguments; its results
        are the manifest's outputs, in order."""
        names = [spec["name"] for spec in self.artifacts.graph_inputs(graph)]
        args = [[feeds[n] for n in arg] if isinstance(arg, list) else feeds[arg] for arg in forward_arguments(names)]
        results = module(*args)
        results = results if isinstance(results, tuple) else (results,)
        for spec, tensor in zip(self.artifacts.graph_outputs(graph), results):
            outputs[spec["name"]].copy_(tensor)

    def cache_view(self, layer: torch.Tensor, p: int) -> torch.Tensor:
        """Eager: the live prefix [0, p) only, a free view in torch (not in ONNX, where a slice is a copy),
        so attention reads what the official loop reads. CUDA graphs keep the full static length."""
        return layer if self.use_cuda_graph else layer[:, :, : max(p, 1)]
