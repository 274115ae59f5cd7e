"""The generation loop's device side, behind one small interface, and the ONNX Runtime backend.

The loop (`pipeline.py`) calls `start`, `step` for every sequence position, `tokens` and `decode_images`.
Buffers live in the backend's `Memory` (host arrays, CUDA device memory, or torch tensors): the cache
writes between steps never leave the device and the loop synchronises only to read the tokens. No
torch here. The contract (positions, condition rows, cache layout) is the manifest's; docs/CONTRACT.md
says what each graph takes.
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
    """One artifact directory's graphs on one device. Subclasses run a graph on buffers of `memory`; the
    methods below `run_host` are RAR's loop (VAR's is var_pipeline.VARLoop, over `run` and `memory`).

    The condition rows (everything that depends on class and position) are computed for a window of W
    consecutive positions at a time, the largest W whose rows (W x R x C) fit `condition_table_budget`:
    all N + 1 positions once per generation when they fit (the table), one position per step at worst
    (large batches, where a step is compute-bound and reading the adaLN weights costs little), or a few at
    a time in between. The decode step reads row `position mod W`. Every W gives the same tokens.
    With `use_cuda_graph`, the decode step is captured once per batch shape and replayed; the values that
    change per position are copied into the captured inputs first, and its outputs out after.
    """

    name: str
    CONDITION_TABLE_BUDGET = 2 << 30  # bytes, the default of `condition_table_budget`

    def __init__(self, artifacts: Artifacts, memory: Memory, float_dtype: np.dtype | None = None) -> None:
        self.artifacts = artifacts
        self.config = artifacts.config
        self.memory = memory
        self.float_dtype = np.dtype(float_dtype or artifacts.cache_dtype)  # the torch backend may compute in another
        self.condition_table_budget = self.CONDITION_TABLE_BUDGET
        self.use_cuda_graph = False
        self.dims: tuple[int, int, int] | None = None  # (batch, rows, condition window) of the buffers
        self._replay = None

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

    # -- the loop's interface ----------------------------------------------------------------------------
    def condition_window(self, rows: int) -> int:
        """How many positions of condition rows fit the budget (at least 1, at most all N + 1)."""
        per_position = rows * self.artifacts.condition_width * self.float_dtype.itemsize
        return int(min(max(self.condition_table_budget // per_position, 1), self.config.cache_len))

    def start(self, rows: np.ndarray, guidance: np.ndarray, temperature: np.ndarray, noise: np.ndarray) -> None:
        """One generation: guidance rows [R] (B labels, then B null classes, or the B labels alone), the guidance
        scale of every image token [N, B], temperatures [B] and noise [B, N, V]."""
        batch, num_rows = temperature.shape[0], rows.shape[0]
        window = self.condition_window(num_rows)
        if (batch, num_rows, window) != self.dims:
            self._allocate(batch, num_rows, window)
        upload = self.memory.upload
        upload(rows, self.rows)
        upload(guidance, self.guidance)  # [N, B]: one row a step
        upload(temperature, self.temperature)
        upload(noise.transpose(1, 0, 2), self.noise)  # [N, B, V]: one slice a step

    def _allocate(self, batch: int, num_rows: int, window: int) -> None:
        c, memory, float_dtype = self.config, self.memory, self.float_dtype
        shape = (c.depth, num_rows, c.num_heads, c.cache_len, c.head_dim)
        # zeros: a masked cache position is multiplied by 0 in attention, and 0 * NaN would be NaN
        self.k_cache, self.v_cache = memory.zeros(shape, float_dtype), memory.zeros(shape, float_dtype)
        self.condition = memory.empty((window, num_rows, self.artifacts.condition_width), float_dtype)
        int64 = np.dtype(np.int64)
        windows = -(-c.cache_len // window)
        # window k's positions [W, R]: k W .. k W + W - 1 (past N clamped to N: rows never read)
        positions = np.minimum(np.arange(windows * window), c.cache_len - 1)
        self.positions = memory.empty((windows, window, num_rows), int64)
        memory.upload(np.repeat(positions, num_rows).reshape(windows, window, num_rows), self.positions)
        self.image_positions = memory.empty((c.cache_len, batch), int64)  # [p, b] = p: the step's `position`
        memory.upload(np.repeat(np.arange(c.cache_len), batch).reshape(c.cache_len, batch), self.image_positions)
        self.rows = memory.empty((num_rows,), int64)
        # row p holds what position p sampled (image token p - 1); row 0 is what position 0 returns (unused)
        self.out_tokens = memory.zeros((c.cache_len, batch), int64)
        self.guidance = memory.empty((c.image_seq_len, batch), np.dtype(np.float32))
        self.temperature = memory.empty((batch,), np.dtype(np.float32))
        self.noise = memory.empty((c.image_seq_len, batch, c.codebook_size), np.dtype(np.float32))
        self.outputs = self.output_buffers("decode_step", {"batch": batch, "rows": num_rows, "positions": window})
        if self.use_cuda_graph:  # the captured step reads and writes these fixed addresses
            self.static = {"tokens": memory.zeros((batch,), int64), "position": memory.zeros((batch,), int64),
                           "guidance_scale": memory.empty((batch,), np.dtype(np.float32)),
                           "noise": memory.empty((batch, c.codebook_size), np.dtype(np.float32)),
                           "next_tokens": memory.empty((batch,), int64)}
        self.dims, self._replay = (batch, num_rows, window), None

    @property
    def window(self) -> int:
        """The condition window of the current buffers: N + 1 is the whole table, 1 is per step."""
        return self.dims[2]

    def step(self, p: int, forced: np.ndarray | None = None) -> None:
        """Sequence position p (0 .. N): feeds image token p - 2, samples token p - 1 (from p = 1 on) with the
        guidance and noise of that token, and writes position p's keys and values into the cache.
        `forced`: image tokens p - 2 [B] to feed instead of the ones sampled before (teacher forcing)."""
        q = max(p - 1, 0)  # the row of the input token, and the sampled token's guidance and noise
        if forced is not None:
            self.memory.upload(np.asarray(forced, dtype=np.int64), self.out_tokens[q])
        if p % self.window == 0:  # the next window of condition rows
            self.run("condition", {"class_labels": self.rows, "positions": self.positions[p // self.window]},
                     {"condition": self.condition})
        if self.use_cuda_graph:
            copy, static = self.memory.copy, self.static
            for name, source in (("tokens", self.out_tokens[q]), ("position", self.image_positions[p]),
                                 ("guidance_scale", self.guidance[q]), ("noise", self.noise[q])):
                copy(static[name], source)
            feeds = (static["tokens"], static["position"], static["guidance_scale"], static["noise"],
                     static["next_tokens"], p)
            if self._replay is None:
                self._decode(*feeds)  # warm-up (TensorRT requires one before capture); it computes this step
                self._replay = self.memory.capture(lambda: self._decode(*feeds))
            else:
                self._replay()
            copy(self.out_tokens[p], static["next_tokens"])
        else:
            self._decode(self.out_tokens[q], self.image_positions[p], self.guidance[q], self.noise[q],
                         self.out_tokens[p], p)
        self.memory.write_position(self.k_cache, self.outputs["keys"], p)
        self.memory.write_position(self.v_cache, self.outputs["values"], p)

    def _decode(self, tokens, position, guidance_scale, noise, next_tokens, p: int) -> None:
        layers = range(self.config.depth)
        feeds = {"tokens": tokens, "position": position, "condition": self.condition,
                 **{f"k_cache.{i}": self.cache_view(self.k_cache[i], p) for i in layers},
                 **{f"v_cache.{i}": self.cache_view(self.v_cache[i], p) for i in layers},
                 "guidance_scale": guidance_scale, "temperature": self.temperature, "noise": noise}
        self.run("decode_step", feeds, {**self.outputs, "next_tokens": next_tokens})

    def cache_view(self, layer: Any, p: int) -> Any:
        """What a step reads of a layer's cache [R, H, S, Dh]: all of it (a backend may read less)."""
        return layer

    def step_logits(self) -> np.ndarray:
        """The guided logits [B, V] of the last step's image token, float32 on the host (for parity checks)."""
        return self.memory.download(self.outputs["logits"]).astype(np.float32)

    def tokens(self) -> np.ndarray:
        """The generated tokens [B, N] on the host (the loop's one synchronisation)."""
        return np.ascontiguousarray(self.memory.download(self.out_tokens)[1:].T)

    def decode_images(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens [B, N] -> uint8 images [B, H, W, 3]."""
        return self.run_host("vq_decoder", {"tokens": tokens})["images_uint8"]


def _copy_options(options, entries: dict[str, str]):
    """SessionOptions like `options`, with these config entries."""
    import onnxruntime as ort

    copy = ort.SessionOptions()
    copy.log_severity_level = options.log_severity_level
    copy.intra_op_num_threads = options.intra_op_num_threads
    for key, value in entries.items():
        copy.add_session_config_entry(key, value)
    return copy


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime through IOBinding on our own buffers: host arrays on the CPU, or CUDA device memory
    with the CUDA execution provider (onnxruntime-gpu) running on our stream: the cache, noise and
    tokens never leave the device."""

    name = "onnxruntime"

    def __init__(self, artifacts: Artifacts, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
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
            if name != artifacts.step_graph:
                # the other graphs run between steps: their idle threads must not spin against the step's
                options = _copy_options(options, {"session.intra_op.allow_spinning": "0"})
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
