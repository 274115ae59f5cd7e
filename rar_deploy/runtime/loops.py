"""The generation loops, one object per family over a Backend (which only runs graphs and owns the memory),
and the one driver that runs either: `drive(loop, inputs, on_step=...)`.

A loop has the same shape for both families (ONNX Runtime GenAI's `while not generator.is_done()`):
`start(inputs)`, `step()` until `done()`, then `tokens()` and `images()`; `tokens_done()` counts the tokens
per image sampled so far and `logits()` gives what the last step sampled from (parity checks). RAR steps
through its N + 1 sequence positions (the prefill is positions 0 and 1), VAR through its K scales.
docs/CONTRACT.md says what each graph takes. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from rar_deploy.contract.graphs import var_dims
from rar_deploy.contract.sampling import scale_guidance


class Backend(Protocol):
    """What a loop uses of a backend (`backends.Backend` is one): the graphs run on buffers of `memory`."""

    artifacts: Any
    config: Any
    memory: Any
    float_dtype: np.dtype
    use_cuda_graph: bool

    def run(self, graph: str, feeds: dict[str, Any], outputs: dict[str, Any]) -> None: ...
    def run_host(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def output_buffers(self, graph: str, dims: dict[str, int]) -> dict[str, Any]: ...
    def cache_view(self, layer: Any, p: int) -> Any: ...


@dataclass(frozen=True)
class RARInputs:
    """One RAR generation: guidance rows [R] (B labels, then B null classes, or the B labels alone), the
    guidance scale of every image token [N, B], temperatures [B] and uniform noise [B, N, V]."""

    rows: np.ndarray
    guidance: np.ndarray
    temperature: np.ndarray
    noise: np.ndarray


@dataclass(frozen=True)
class VARInputs:
    """One VAR generation: labels [B], guidance scales (cfg) [B], top-k, top-p, temperatures [B] and uniform noise
    [B, L, V]. The guidance t of each scale follows from its manifest `guidance_fraction`."""

    labels: np.ndarray
    guidance_scale: np.ndarray
    top_k: int
    top_p: float
    temperature: np.ndarray
    noise: np.ndarray


class Loop(Protocol):
    backend: Backend
    steps: int  # steps of one generation
    position: int  # steps done since the start
    distinct_step_shapes: bool  # whether each step runs its graph on shapes of its own (a warm-up runs them all)

    def start(self, inputs: Any) -> None: ...
    def step(self, forced: np.ndarray | None = None) -> None: ...
    def done(self) -> bool: ...
    def tokens_done(self) -> int: ...
    def tokens(self) -> np.ndarray: ...
    def images(self) -> np.ndarray: ...
    def logits(self) -> np.ndarray: ...
    def details(self) -> dict[str, int]: ...
    def step_bytes(self) -> int: ...


def drive(loop: Loop, inputs: Any, on_step: Callable[[Loop], None] | None = None,
          forced: Callable[[int], np.ndarray | None] | None = None) -> np.ndarray:
    """Run one generation to its end and return its tokens [B, L]. on_step(loop) after the start (position 0)
    and after every step (progress, timing marks, logits); forced(step) -> what to feed that step instead of
    what the loop sampled (teacher forcing: RAR's tokens, VAR's f_hat), or None."""
    loop.start(inputs)
    if on_step:
        on_step(loop)
    while not loop.done():
        loop.step(forced(loop.position) if forced else None)
        if on_step:
            on_step(loop)
    return loop.tokens()


class RARLoop:
    """RAR's generation on one backend: the KV cache, the condition rows, tokens, guidance and noise buffers.

    The condition rows (everything that depends on class and position) are computed for a window of W
    consecutive positions at a time, the largest W whose rows (W x R x C) fit `condition_table_budget`:
    all N + 1 positions once per generation when they fit (the table), one position per step at worst
    (large batches, where a step is compute-bound and reading the adaLN weights costs little), or a few at
    a time in between. The decode step reads row `position mod W`. Every W gives the same tokens.
    With the backend's `use_cuda_graph`, the decode step is captured once per batch shape and replayed; the
    values that change per position are copied into the captured inputs first, and its outputs out after.
    """

    CONDITION_TABLE_BUDGET = 2 << 30  # bytes, the default of `condition_table_budget`
    distinct_step_shapes = False  # every position runs the decode step on the same shapes

    def __init__(self, backend: Backend) -> None:
        self.backend, self.memory, self.config = backend, backend.memory, backend.config
        self.artifacts = backend.artifacts
        self.condition_table_budget = self.CONDITION_TABLE_BUDGET
        self.steps = self.config.cache_len  # sequence positions 0 .. N
        self.position = 0
        self.dims: tuple[int, int, int] | None = None  # (batch, rows, condition window) of the buffers
        self._replay = None

    def condition_window(self, rows: int) -> int:
        """How many positions of condition rows fit the budget (at least 1, at most all N + 1)."""
        per_position = rows * self.artifacts.condition_width * self.backend.float_dtype.itemsize
        return int(min(max(self.condition_table_budget // per_position, 1), self.config.cache_len))

    def start(self, inputs: RARInputs) -> None:
        batch, num_rows = inputs.temperature.shape[0], inputs.rows.shape[0]
        window = self.condition_window(num_rows)
        if (batch, num_rows, window) != self.dims:
            self._allocate(batch, num_rows, window)
        upload = self.memory.upload
        upload(inputs.rows, self.rows)
        upload(inputs.guidance, self.guidance)  # [N, B]: one row a step
        upload(inputs.temperature, self.temperature)
        upload(inputs.noise.transpose(1, 0, 2), self.noise)  # [N, B, V]: one slice a step
        self.position = 0

    def _allocate(self, batch: int, num_rows: int, window: int) -> None:
        c, memory, float_dtype = self.config, self.memory, self.backend.float_dtype
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
        self.outputs = self.backend.output_buffers("decode_step",
                                                   {"batch": batch, "rows": num_rows, "positions": window})
        if self.backend.use_cuda_graph:  # the captured step reads and writes these fixed addresses
            self.static = {"tokens": memory.zeros((batch,), int64), "position": memory.zeros((batch,), int64),
                           "guidance_scale": memory.empty((batch,), np.dtype(np.float32)),
                           "noise": memory.empty((batch, c.codebook_size), np.dtype(np.float32)),
                           "next_tokens": memory.empty((batch,), int64)}
        self.dims, self._replay = (batch, num_rows, window), None

    @property
    def window(self) -> int:
        """The condition window of the current buffers: N + 1 is the whole table, 1 is per step."""
        return self.dims[2]

    def done(self) -> bool:
        return self.position == self.steps

    def tokens_done(self) -> int:
        return max(self.position - 1, 0)

    def step(self, forced: np.ndarray | None = None) -> None:
        """Sequence position p (0 .. N): feeds image token p - 2, samples token p - 1 (from p = 1 on) with the
        guidance and noise of that token, and writes position p's keys and values into the cache.
        `forced`: image tokens p - 2 [B] to feed instead of the ones sampled before (teacher forcing)."""
        p = self.position
        q = max(p - 1, 0)  # the row of the input token, and the sampled token's guidance and noise
        if forced is not None:
            self.memory.upload(np.asarray(forced, dtype=np.int64), self.out_tokens[q])
        if p % self.window == 0:  # the next window of condition rows
            self.backend.run("condition", {"class_labels": self.rows, "positions": self.positions[p // self.window]},
                             {"condition": self.condition})
        if self.backend.use_cuda_graph:
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
        self.position = p + 1

    def _decode(self, tokens, position, guidance_scale, noise, next_tokens, p: int) -> None:
        layers, view = range(self.config.depth), self.backend.cache_view
        feeds = {"tokens": tokens, "position": position, "condition": self.condition,
                 **{f"k_cache.{i}": view(self.k_cache[i], p) for i in layers},
                 **{f"v_cache.{i}": view(self.v_cache[i], p) for i in layers},
                 "guidance_scale": guidance_scale, "temperature": self.temperature, "noise": noise}
        self.backend.run("decode_step", feeds, {**self.outputs, "next_tokens": next_tokens})

    def details(self) -> dict[str, int]:
        """What the current buffers are, for reports."""
        return {"condition_window": self.window}

    def step_bytes(self) -> int:
        """Bytes a decode step reads at least: the decode graph's weights (and the condition graph's, shared
        by the W positions of a condition window), this position's condition rows, and the KV cache's live half
        on average. Weights are the real initializer bytes recorded at export (without the embedding tables, of
        which a step reads a few rows), not a formula."""
        c, itemsize, rows = self.config, self.artifacts.cache_dtype.itemsize, self.dims[1]
        weights = _weight_bytes(self.artifacts)
        condition = rows * self.artifacts.condition_width * itemsize
        cache = 2 * c.depth * rows * c.num_heads * c.head_dim * itemsize * c.cache_len // 2
        return weights["decode_step"] + weights["condition"] // self.window + condition + cache

    def logits(self) -> np.ndarray:
        """The guided logits [B, 1, V] the last step sampled its image token from, float32 on the host."""
        return self.memory.download(self.outputs["logits"]).astype(np.float32)[:, None]

    def tokens(self) -> np.ndarray:
        """The generated tokens [B, N] on the host (the loop's one synchronisation)."""
        return np.ascontiguousarray(self.memory.download(self.out_tokens)[1:].T)

    def images(self) -> np.ndarray:
        """The generated tokens decoded: uint8 images [B, H, W, 3]."""
        return decode_tokens(self.backend, self.tokens())


def _weight_bytes(artifacts: Any) -> dict[str, int]:
    """Each graph's initializer bytes without its embedding tables (recorded at export)."""
    return {name: graph["weight_bytes"] - graph["table_bytes"] for name, graph in artifacts.manifest["graphs"].items()}


def decode_tokens(backend: Backend, tokens: np.ndarray) -> np.ndarray:
    """RAR tokens [B, N] -> uint8 images [B, H, W, 3] through the vq_decoder."""
    return backend.run_host("vq_decoder", {"tokens": tokens})["images_uint8"]


class VARLoop:
    """VAR's generation on one backend: one var_step per scale (docs/CONTRACT.md, "VAR"). The scale's keys and
    values are written into the static cache on the backend's device, f_hat goes from one step's output buffer
    to the next step's input (two buffers, swapped), and the var_decoder turns the last f_hat into images. The
    per-scale constants (positions, Phi index, resize matrices) and the noise of every scale are uploaded once
    per generation; nothing but the tokens and the images comes back to the host."""

    distinct_step_shapes = True  # every scale has its own token count

    def __init__(self, backend: Backend) -> None:
        self.backend, self.memory, self.config = backend, backend.memory, backend.config
        self.artifacts = backend.artifacts
        self.scales = backend.artifacts.manifest["scales"]
        self.steps = len(self.scales)
        self.position = 0
        self.constants = []
        for scale in self.scales:
            side = scale["side"]
            host = {"positions": np.arange(scale["begin"], scale["end"], dtype=np.int64).reshape(side, side),
                    "phi_index": np.array([scale["phi_index"]], np.int64),
                    "down": np.array(scale["down"], np.float32), "up": np.array(scale["up"], np.float32)}
            self.constants.append({name: self._upload(array) for name, array in host.items()})
        self.batch: int | None = None

    def _upload(self, array: np.ndarray):
        buffer = self.memory.empty(array.shape, array.dtype)
        self.memory.upload(array, buffer)
        return buffer

    def _allocate(self, batch: int) -> None:
        c, memory, rows = self.config, self.memory, 2 * batch
        shape = (c.depth, rows, c.num_heads, c.seq_len, c.head_dim)
        # zeros: slots of later scales are masked, and a masked score times a NaN value would still be NaN
        self.k_cache = memory.zeros(shape, self.backend.float_dtype)
        self.v_cache = memory.zeros(shape, self.backend.float_dtype)
        size = c.patch_nums[-1]
        self.f_hat = [memory.zeros((batch, c.vae_channels, size, size), np.dtype(np.float32)) for _ in range(2)]
        int64, float32 = np.dtype(np.int64), np.dtype(np.float32)
        self.labels, self.temperature = memory.empty((batch,), int64), memory.empty((batch,), float32)
        self.guidance = memory.empty((c.num_scales, batch), float32)
        self.top_k, self.top_p = memory.empty((1,), int64), memory.empty((1,), float32)
        self.noise, self.outputs = [], []
        for scale in self.scales:
            side = scale["side"]
            self.noise.append(memory.empty((batch, side, side, c.codebook_size), float32))
            dims = var_dims(batch, side)
            self.outputs.append({name: buffer for name, buffer in self.backend.output_buffers("var_step", dims).items()
                                 if name != "f_hat_out"})
        self.image_buffers = self.backend.output_buffers("var_decoder", {"batch": batch})
        self.batch = batch

    def start(self, inputs: VARInputs) -> None:
        batch = inputs.labels.shape[0]
        if batch != self.batch:
            self._allocate(batch)
        upload = self.memory.upload
        upload(inputs.labels, self.labels)
        fractions = [scale["guidance_fraction"] for scale in self.scales]
        upload(scale_guidance(fractions, inputs.guidance_scale), self.guidance)  # [K, B]: a row a scale
        upload(np.array([inputs.top_k], np.int64), self.top_k)
        upload(np.array([inputs.top_p], np.float32), self.top_p)
        upload(inputs.temperature, self.temperature)
        for scale, buffer in zip(self.scales, self.noise):
            upload(inputs.noise[:, scale["begin"]:scale["end"]].reshape(buffer.shape), buffer)
        upload(np.zeros(self.f_hat[0].shape, np.float32), self.f_hat[0])
        self.position = 0

    def done(self) -> bool:
        return self.position == self.steps

    def tokens_done(self) -> int:
        return self.scales[self.position - 1]["end"] if self.position else 0

    def step(self, forced: np.ndarray | None = None) -> None:
        """Scale k: its tokens from f_hat (or `forced` f_hat [B, Cvae, P, P], teacher forcing), the next f_hat,
        its keys and values written into the cache at the scale's positions."""
        k = self.position
        f_hat, f_hat_out = self.f_hat[k % 2], self.f_hat[(k + 1) % 2]
        if forced is not None:
            self.memory.upload(np.asarray(forced, np.float32), f_hat)
        layers = range(self.config.depth)
        feeds = {"class_labels": self.labels, "f_hat": f_hat, **self.constants[k], "guidance": self.guidance[k],
                 "top_k": self.top_k, "top_p": self.top_p, "temperature": self.temperature, "noise": self.noise[k],
                 **{f"k_cache.{i}": self.k_cache[i] for i in layers},
                 **{f"v_cache.{i}": self.v_cache[i] for i in layers}}
        outputs = self.outputs[k]
        self.backend.run("var_step", feeds, {**outputs, "f_hat_out": f_hat_out})
        begin = self.scales[k]["begin"]
        self.memory.write_position(self.k_cache, outputs["keys"], begin)
        self.memory.write_position(self.v_cache, outputs["values"], begin)
        self.position = k + 1

    def tokens(self) -> np.ndarray:
        """Every scale's tokens [B, L] on the host."""
        return np.concatenate([self.memory.download(out["tokens"]) for out in self.outputs], axis=1)

    def details(self) -> dict[str, int]:
        return {}

    def step_bytes(self) -> int:
        """Bytes a scale step reads at least: the var_step graph's weights (recorded at export)."""
        return _weight_bytes(self.artifacts)["var_step"]

    def logits(self) -> np.ndarray:
        """The guided logits [B, n, V] the last scale sampled from, float32 on the host."""
        return self.memory.download(self.outputs[self.position - 1]["logits"]).astype(np.float32)

    def images(self) -> np.ndarray:
        """The last f_hat -> uint8 images [B, H, W, 3]."""
        self.backend.run("var_decoder", {"f_hat": self.f_hat[len(self.scales) % 2]}, self.image_buffers)
        return self.memory.download(self.image_buffers["images_uint8"])
