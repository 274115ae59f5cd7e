"""Where a backend's buffers live, and the few operations the generation loop performs on them.

`HostMemory`: numpy arrays (ONNX Runtime on the CPU). `CudaMemory`: device memory, one stream and CUDA
graphs through NVIDIA's cuda-python (`cuda.bindings.runtime`), for TensorRT and ONNX Runtime's CUDA
provider; no torch. The torch backend has its own (`torch_backend.TorchMemory`). Every buffer exposes
`shape`, `dtype` (numpy) and its address (`address(buffer)`), which is what ONNX Runtime's IOBinding
and TensorRT bind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from rar_deploy.errors import RARDeployError


class Memory(Protocol):
    device_type: str  # "cpu" or "cuda", as ONNX Runtime names it
    device_index: int

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Any: ...
    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> Any: ...
    def upload(self, array: np.ndarray, buffer: Any) -> None: ...
    def download(self, buffer: Any) -> np.ndarray: ...
    def copy(self, destination: Any, source: Any) -> None: ...
    def write_position(self, cache: Any, new: Any, position: int) -> None: ...  # new's n positions from `position`
    # in-flight batching (slots.py): rows along an axis between buffers, images at positions of their own.
    # gather: destination[j] <- source[index[j]]; scatter: destination[index[j]] <- source[j]
    def gather(self, destination: Any, source: Any, axis: int, index: list[int]) -> None: ...
    def scatter(self, destination: Any, source: Any, axis: int, index: list[int]) -> None: ...
    def write_rows(self, cache: Any, new: Any, rows: list[int], positions: list[int]) -> None: ...
    def capture(self, body: Callable[[], None]) -> Callable[[], None] | None: ...
    def synchronize(self) -> None: ...
    def mark(self) -> Any: ...  # a point in the device's work, for timing
    def elapsed_ms(self, start: Any, end: Any) -> float: ...  # between two marks (after synchronize)


def address(buffer: Any) -> int:
    """The address of a buffer's first element, for IOBinding and TensorRT."""
    if isinstance(buffer, np.ndarray):
        return buffer.ctypes.data
    return buffer.address


class HostMemory:
    """numpy arrays; every operation completes before it returns."""

    device_type, device_index = "cpu", 0

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype)

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.zeros(shape, dtype)

    def upload(self, array: np.ndarray, buffer: np.ndarray) -> None:
        buffer[...] = array

    def download(self, buffer: np.ndarray) -> np.ndarray:
        return buffer.copy()

    def copy(self, destination: np.ndarray, source: np.ndarray) -> None:
        destination[...] = source

    def write_position(self, cache: np.ndarray, new: np.ndarray, position: int) -> None:
        """cache [L, R, H, S, Dh] <- new [L, R, H, n, Dh] at sequence indices position .. position + n - 1."""
        cache[:, :, :, position:position + new.shape[3]] = new

    def gather(self, destination: np.ndarray, source: np.ndarray, axis: int, index: list[int]) -> None:
        np.take(source, index, axis=axis, out=destination)

    def scatter(self, destination: np.ndarray, source: np.ndarray, axis: int, index: list[int]) -> None:
        destination[(slice(None),) * axis + (list(index),)] = source

    def write_rows(self, cache: np.ndarray, new: np.ndarray, rows: list[int], positions: list[int]) -> None:
        """cache [L, R, H, S, Dh] row rows[j] <- new [L, R', H, n, Dh] row j at positions[j] .. positions[j] + n - 1;
        positions past the cache's end are dropped."""
        n, seq = new.shape[3], cache.shape[3]
        if n == 1:  # one position a row (RAR's step): one indexed assignment, [R', L, H, Dh] on both sides
            cache[:, list(rows), :, list(positions)] = new[:, :len(positions), :, 0].transpose(1, 0, 2, 3)
            return
        for j, (row, position) in enumerate(zip(rows, positions)):
            cache[:, row, :, position:position + n] = new[:, j, :, :seq - position]

    def capture(self, body: Callable[[], None]) -> None:
        return None  # nothing to capture on the host: the loop runs its steps directly

    def synchronize(self) -> None:
        pass

    def mark(self) -> float:
        return time.perf_counter()

    def elapsed_ms(self, start: float, end: float) -> float:
        return (end - start) * 1e3


@dataclass
class DeviceArray:
    """A dense row-major array in CUDA device memory; indexing the first dimension gives a view."""

    address: int
    shape: tuple[int, ...]
    dtype: np.dtype
    owner: Any = field(default=None, repr=False)  # keeps the allocation alive while views exist

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def reshape(self, *shape: int) -> "DeviceArray":
        """The same memory seen with another shape of as many elements."""
        if int(np.prod(shape, dtype=np.int64)) != int(np.prod(self.shape, dtype=np.int64)):
            raise ValueError(f"cannot view {self.shape} as {shape}")
        return DeviceArray(self.address, tuple(shape), self.dtype, self.owner or self)

    def __getitem__(self, index: int | slice) -> "DeviceArray":
        """array[i] (a row) or array[:n] (the first n rows): views of the same memory."""
        if isinstance(index, slice) and index.start in (None, 0) and index.step in (None, 1):
            rows = min(self.shape[0] if index.stop is None else index.stop, self.shape[0])
            return DeviceArray(self.address, (rows, *self.shape[1:]), self.dtype, self.owner or self)
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.shape[0]:
            raise IndexError(f"index {index} out of range for a device array of shape {self.shape}")
        row = self.nbytes // self.shape[0]
        return DeviceArray(self.address + int(index) * row, self.shape[1:], self.dtype, self.owner or self)


class _Allocation:
    def __init__(self, runtime, nbytes: int) -> None:
        self.runtime = runtime
        self.address = _check(runtime, runtime.cudaMalloc(max(nbytes, 1)), f"allocating {nbytes} bytes")

    def __del__(self) -> None:
        if getattr(self, "address", None):
            self.runtime.cudaFree(self.address)


class CudaMemory:
    """Device memory on one GPU, all work on one stream (the loop synchronises only to download)."""

    device_type = "cuda"

    def __init__(self, device_index: int = 0) -> None:
        try:
            from cuda.bindings import runtime
        except ImportError:
            raise RARDeployError("CUDA backends need NVIDIA's cuda-python: pip install 'rar-deploy[cuda]' "
                                 "(cuda-bindings), or use --device cpu") from None
        self.runtime, self.device_index, self.kinds = runtime, device_index, runtime.cudaMemcpyKind
        _check(runtime, runtime.cudaSetDevice(device_index), f"selecting CUDA device {device_index}")
        self.stream = _check(runtime, runtime.cudaStreamCreateWithFlags(runtime.cudaStreamNonBlocking),
                             "creating a stream")
        self.stream_handle = int(self.stream)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> DeviceArray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        allocation = _Allocation(self.runtime, nbytes)
        return DeviceArray(allocation.address, tuple(shape), dtype, allocation)

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> DeviceArray:
        array = self.empty(shape, dtype)
        _check(self.runtime, self.runtime.cudaMemsetAsync(array.address, 0, array.nbytes, self.stream), "zeroing")
        return array

    def upload(self, array: np.ndarray, buffer: DeviceArray) -> None:
        array = np.ascontiguousarray(array, dtype=buffer.dtype)
        if array.size != int(np.prod(buffer.shape, dtype=np.int64)):
            raise ValueError(f"uploading {array.shape} into a buffer of shape {buffer.shape}")
        # from pageable host memory the copy has finished reading `array` when the call returns
        self._memcpy(buffer.address, array.ctypes.data, array.nbytes, self.kinds.cudaMemcpyHostToDevice)

    def download(self, buffer: DeviceArray) -> np.ndarray:
        array = np.empty(buffer.shape, buffer.dtype)
        self._memcpy(array.ctypes.data, buffer.address, buffer.nbytes, self.kinds.cudaMemcpyDeviceToHost)
        self.synchronize()
        return array

    def copy(self, destination: DeviceArray, source: DeviceArray) -> None:
        self._memcpy(destination.address, source.address, source.nbytes, self.kinds.cudaMemcpyDeviceToDevice)

    def write_position(self, cache: DeviceArray, new: DeviceArray, position: int) -> None:
        """cache [L, R, H, S, Dh] <- new [L, R, H, n, Dh] at sequence indices position .. position + n - 1: one
        2-D copy of L*R*H rows of n*Dh elements, source pitch n*Dh, destination pitch S*Dh."""
        *rows, seq, head_dim = cache.shape
        step = head_dim * cache.dtype.itemsize
        width = new.shape[3] * step
        _check(self.runtime, self.runtime.cudaMemcpy2DAsync(
            cache.address + position * step, seq * step, new.address, width, width, int(np.prod(rows)),
            self.kinds.cudaMemcpyDeviceToDevice, self.stream), "writing the KV cache")

    def gather(self, destination: DeviceArray, source: DeviceArray, axis: int, index: list[int]) -> None:
        self._copy_rows(destination, range(len(index)), source, index, axis)

    def scatter(self, destination: DeviceArray, source: DeviceArray, axis: int, index: list[int]) -> None:
        self._copy_rows(destination, index, source, range(len(index)), axis)

    def _copy_rows(self, destination: DeviceArray, to_rows, source: DeviceArray, from_rows, axis: int) -> None:
        """destination[..., to_rows[j], ...] <- source[..., from_rows[j], ...] along `axis`: one 2-D copy a row."""
        outer = int(np.prod(source.shape[:axis], dtype=np.int64))
        inner = int(np.prod(source.shape[axis + 1:], dtype=np.int64)) * source.dtype.itemsize
        for to_row, from_row in zip(to_rows, from_rows):
            _check(self.runtime, self.runtime.cudaMemcpy2DAsync(
                destination.address + int(to_row) * inner, destination.shape[axis] * inner,
                source.address + int(from_row) * inner, source.shape[axis] * inner, inner, outer,
                self.kinds.cudaMemcpyDeviceToDevice, self.stream), "copying rows")

    def write_rows(self, cache: DeviceArray, new: DeviceArray, rows: list[int], positions: list[int]) -> None:
        """cache [L, R, H, S, Dh] row rows[j] <- new [L, R', H, n, Dh] row j at positions[j]: per layer and row,
        one 2-D copy of H rows of n*Dh elements (positions past the cache's end dropped)."""
        layers, num_rows, heads, seq, head_dim = cache.shape
        n, new_rows, step = new.shape[3], new.shape[1], head_dim * cache.dtype.itemsize
        for j, (row, position) in enumerate(zip(rows, positions)):
            width = min(n, seq - int(position)) * step
            for layer in range(layers):
                _check(self.runtime, self.runtime.cudaMemcpy2DAsync(
                    cache.address + ((layer * num_rows + int(row)) * heads * seq + int(position)) * step, seq * step,
                    new.address + (layer * new_rows + j) * heads * n * step, n * step, width, heads,
                    self.kinds.cudaMemcpyDeviceToDevice, self.stream), "writing the KV cache")

    def capture(self, body: Callable[[], None]) -> Callable[[], None]:
        """Capture the device work `body` enqueues on the stream into a CUDA graph; returns its replay."""
        rt = self.runtime
        _check(rt, rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
               "starting a CUDA graph capture")
        try:
            body()
        finally:
            graph = _check(rt, rt.cudaStreamEndCapture(self.stream), "ending the CUDA graph capture")
        executable = _check(rt, rt.cudaGraphInstantiate(graph, 0), "instantiating the CUDA graph")
        return _Replay(rt, graph, executable, self.stream)

    def synchronize(self) -> None:
        _check(self.runtime, self.runtime.cudaStreamSynchronize(self.stream), "synchronising the stream")

    def mark(self):
        """A CUDA event recorded on the stream: timing without synchronising the loop."""
        event = _check(self.runtime, self.runtime.cudaEventCreate(), "creating an event")
        _check(self.runtime, self.runtime.cudaEventRecord(event, self.stream), "recording an event")
        return event

    def elapsed_ms(self, start, end) -> float:
        return float(_check(self.runtime, self.runtime.cudaEventElapsedTime(start, end), "timing events"))

    def used_bytes(self) -> int:
        """Device memory in use on this GPU (all processes): total - free."""
        free, total = _check(self.runtime, self.runtime.cudaMemGetInfo(), "reading device memory")
        return int(total - free)

    def _memcpy(self, destination: int, source: int, nbytes: int, kind) -> None:
        _check(self.runtime, self.runtime.cudaMemcpyAsync(destination, source, nbytes, kind, self.stream), "copying")


class _Replay:
    def __init__(self, runtime, graph, executable, stream) -> None:
        self.runtime, self.graph, self.executable, self.stream = runtime, graph, executable, stream

    def __call__(self) -> None:
        _check(self.runtime, self.runtime.cudaGraphLaunch(self.executable, self.stream), "replaying the CUDA graph")

    def __del__(self) -> None:
        self.runtime.cudaGraphExecDestroy(self.executable)
        self.runtime.cudaGraphDestroy(self.graph)


def _check(runtime, result: tuple, doing: str) -> Any:
    """cuda.bindings calls return (error, *values): raise on an error, return the value."""
    error, *values = result
    if error != runtime.cudaError_t.cudaSuccess:
        _, name = runtime.cudaGetErrorName(error)
        raise RARDeployError(f"CUDA failed {doing}: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else (values or None)
