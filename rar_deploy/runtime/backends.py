"""Backends behind one small interface, and the generation loop's device side.

The loop (`pipeline.py`) calls `start`, `step` for every sequence position, `tokens` and `decode_images`.
Buffers live on the backend's device as torch tensors, so the cache writes between steps never leave it
and the loop never synchronises per step. The contract (positions, condition rows, cache layout) is the
manifest's; `contract.py` says what each graph takes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from ..contract import GRAPH_NAMES, resolve_shape
from ..errors import RARDeployError
from .artifacts import Artifacts

TORCH_DTYPES = {np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float16,
                np.dtype("int64"): torch.int64, np.dtype("uint8"): torch.uint8}
Tensors = dict[str, torch.Tensor]


class Backend(ABC):
    """One artifact directory's graphs on one device. Subclasses run a graph from named tensors.

    The condition of every position is computed once per generation when its table (N + 1 positions x
    R rows x C) fits CONDITION_TABLE_BUDGET, else the current position's in every step (large batches,
    where the step is compute-bound and reading the adaLN weights costs little). Both give the same tokens.
    """

    name: str
    CONDITION_TABLE_BUDGET = 2 << 30  # bytes, the default of `condition_table_budget`

    def __init__(self, artifacts: Artifacts, device: torch.device) -> None:
        self.artifacts = artifacts
        self.config = artifacts.config
        self.device = device
        self.float_dtype = TORCH_DTYPES[artifacts.cache_dtype]
        self.condition_table_budget = self.CONDITION_TABLE_BUDGET
        self.dims: tuple[int, int, bool] | None = None  # (batch, rows, per-step condition) of the buffers
        self.use_cuda_graph = False  # CUDA backends: capture a step (and its cache write) once, replay it
        self.graph: torch.cuda.CUDAGraph | None = None

    @abstractmethod
    def run(self, graph: str, feeds: Tensors, outputs: Tensors | None = None) -> Tensors:
        """Run one graph on tensors on `self.device`; writes into `outputs` when given, else new tensors."""

    def output_buffers(self, graph: str, dims: dict[str, int]) -> Tensors:
        return {spec["name"]: torch.empty(resolve_shape(spec["shape"], dims),
                                          dtype=TORCH_DTYPES[np.dtype(spec["dtype"])], device=self.device)
                for spec in self.artifacts.graph_outputs(graph)}

    def run_host(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph from host arrays (checked against the manifest); float outputs come back as float32."""
        self.artifacts.check_feeds(graph, {name: (array.shape, array.dtype) for name, array in feeds.items()})
        graph_float = TORCH_DTYPES[self.artifacts.cache_dtype]  # the torch backend may compute in another
        tensors = {name: torch.from_numpy(np.ascontiguousarray(array)).to(self.device) for name, array in feeds.items()}
        outputs = self.run(graph, {name: t.to(self.float_dtype) if t.dtype == graph_float else t
                                   for name, t in tensors.items()})
        return {name: (t.float() if t.is_floating_point() else t).cpu().numpy() for name, t in outputs.items()}

    # -- the loop's interface ----------------------------------------------------------------------------
    def condition_table_bytes(self, rows: int) -> int:
        return self.config.cache_len * rows * self.artifacts.condition_width * self.float_dtype.itemsize

    @torch.no_grad()
    def start(self, rows: np.ndarray, schedule: np.ndarray, temperature: np.ndarray, noise: np.ndarray) -> None:
        """One generation: guidance rows [R] (contract: B labels, then B null classes, or B labels alone),
        the guidance schedule [N], temperatures [B] and noise [B, N, V]."""
        c, batch, num_rows = self.config, temperature.shape[0], rows.shape[0]
        per_step = self.condition_table_bytes(num_rows) > self.condition_table_budget
        if (batch, num_rows, per_step) != self.dims:
            self._allocate(batch, num_rows, per_step)
        self.rows.copy_(torch.from_numpy(rows))
        self.guidance.copy_(torch.from_numpy(np.repeat(schedule[:, None], batch, axis=1)))
        self.temperature.copy_(torch.from_numpy(temperature))
        self.noise.copy_(torch.from_numpy(np.ascontiguousarray(noise.transpose(1, 0, 2))))  # [N, B, V]: a slice a step
        if not self.per_step_condition:
            positions = torch.arange(c.cache_len, device=self.device)[:, None].expand(-1, num_rows).contiguous()
            self.run("condition", {"class_labels": self.rows, "positions": positions}, {"condition": self.condition})

    def _allocate(self, batch: int, num_rows: int, per_step: bool) -> None:
        c, device = self.config, self.device
        shape = (c.depth, num_rows, c.num_heads, c.cache_len, c.head_dim)
        # zeros: a masked cache position is multiplied by 0 in attention, and 0 * NaN would be NaN
        self.k_cache = torch.zeros(shape, dtype=self.float_dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=self.float_dtype, device=device)
        self.per_step_condition = per_step
        positions = 1 if per_step else c.cache_len
        self.condition = torch.empty((positions, num_rows, self.artifacts.condition_width), dtype=self.float_dtype,
                                     device=device)
        self.condition_positions = torch.zeros((1, num_rows), dtype=torch.int64, device=device)
        self.rows = torch.zeros(num_rows, dtype=torch.int64, device=device)
        # row p holds what position p sampled (image token p - 1); row 0 is what position 0 returns (unused)
        self.out_tokens = torch.zeros((c.cache_len, batch), dtype=torch.int64, device=device)
        self.position = torch.zeros(batch, dtype=torch.int64, device=device)
        self.guidance = torch.zeros((c.image_seq_len, batch), dtype=torch.float32, device=device)
        self.temperature = torch.zeros(batch, dtype=torch.float32, device=device)
        self.noise = torch.zeros((c.image_seq_len, batch, c.codebook_size), dtype=torch.float32, device=device)
        self.dims, self.graph = (batch, num_rows, per_step), None

    @torch.no_grad()
    def step(self, p: int, forced: np.ndarray | None = None) -> None:
        """Sequence position p (0 .. N): feeds image token p - 2, samples token p - 1 (from p = 1 on) with the
        guidance and noise of that token, and writes position p's keys and values into the cache.
        `forced`: image tokens p - 2 [B] to feed instead of the ones sampled before (teacher forcing)."""
        if forced is not None:
            self.out_tokens[p - 1].copy_(torch.from_numpy(np.asarray(forced, dtype=np.int64)))
        self.position.fill_(p)
        self.condition_positions.fill_(p)
        if self.use_cuda_graph:
            return self._replay(p)
        out = self._step_body(self.step_feeds(p))
        self.out_tokens[p] = out["next_tokens"]
        self.last_logits = out["logits"]  # guided logits [B, V] of image token p - 1, for parity checks

    def step_feeds(self, p: int) -> Tensors:
        layers, q = range(self.config.depth), max(p - 1, 0)
        return {"tokens": self.out_tokens[max(p - 1, 0)], "position": self.position, "condition": self.condition,
                **{f"k_cache.{i}": self.k_cache[i] for i in layers},
                **{f"v_cache.{i}": self.v_cache[i] for i in layers},
                "guidance_scale": self.guidance[q], "temperature": self.temperature, "noise": self.noise[q]}

    def _step_body(self, feeds: Tensors) -> Tensors:
        """The device work of one position: its condition (per-step mode), the step, the cache write."""
        if self.per_step_condition:
            self.run("condition", {"class_labels": self.rows, "positions": self.condition_positions},
                     {"condition": self.condition})
        out = self.run("decode_step", feeds)
        position = self.position[:1]
        self.k_cache.index_copy_(3, position, out["keys"])
        self.v_cache.index_copy_(3, position, out["values"])
        return out

    _STATIC_INPUTS = ("tokens", "guidance_scale", "noise")  # copied into the captured graph's buffers each step

    def _replay(self, p: int) -> None:
        if self.graph is None:
            self._capture(p)
        q = max(p - 1, 0)
        self._static["tokens"].copy_(self.out_tokens[q])
        self._static["guidance_scale"].copy_(self.guidance[q])
        self._static["noise"].copy_(self.noise[q])
        self.graph.replay()
        self.out_tokens[p].copy_(self._graph_out["next_tokens"])
        self.last_logits = self._graph_out["logits"]

    def _capture(self, p: int) -> None:
        """Warm up on a side stream (TensorRT requires it), then capture the step body."""
        feeds = self.step_feeds(p)
        self._static = {name: feeds[name].clone() for name in self._STATIC_INPUTS}
        feeds.update(self._static)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._step_body(feeds)  # rewrites position p's keys and values with themselves
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=stream):
                self._graph_out = self._step_body(feeds)
        torch.cuda.current_stream().wait_stream(stream)

    def step_logits(self) -> np.ndarray:
        """The guided logits [B, V] of the last step's image token, float32 on the host (for parity checks)."""
        return self.last_logits.float().cpu().numpy()

    def tokens(self) -> np.ndarray:
        """The generated tokens [B, N] on the host (the loop's one synchronisation)."""
        return self.out_tokens[1:].t().to("cpu", copy=True).numpy()  # a copy: the buffers are reused

    def decode_images(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens [B, N] -> uint8 images [B, H, W, 3]."""
        out = self.run("vq_decoder", {"tokens": torch.from_numpy(tokens).to(self.device)})
        return out["images_uint8"].to("cpu", copy=True).numpy()


def feed_dims(artifacts: Artifacts, graph: str, feeds: Tensors) -> dict[str, int]:
    """The symbolic dims of a call, read off its feeds (their checks are the artifacts')."""
    return artifacts.check_feeds(graph, {name: (tuple(t.shape), _numpy_dtype(t)) for name, t in feeds.items()})


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime through IOBinding on torch buffers: CPU, or the CUDA execution provider when it is
    installed and `device` is CUDA (then inputs, cache and outputs all stay on the GPU)."""

    name = "onnxruntime"

    def __init__(self, artifacts: Artifacts, device: torch.device) -> None:
        import onnxruntime as ort

        super().__init__(artifacts, device)
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RARDeployError("onnxruntime has no CUDA execution provider here: install onnxruntime-gpu, "
                                 "or run with --device cpu")
        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.sessions = {name: artifacts.onnxruntime_session(name, options, providers) for name in GRAPH_NAMES}
        self.ort_device = ("cuda" if device.type == "cuda" else "cpu", device.index or 0)

    def run(self, graph: str, feeds: Tensors, outputs: Tensors | None = None) -> Tensors:
        session = self.sessions[graph]
        binding = session.io_binding()
        feeds = {name: tensor.contiguous() for name, tensor in feeds.items()}  # alive until run returns
        outputs = outputs or self.output_buffers(graph, feed_dims(self.artifacts, graph, feeds))
        for name, tensor in feeds.items():
            binding.bind_input(name, *self.ort_device, _numpy_dtype(tensor), list(tensor.shape), tensor.data_ptr())
        for name, tensor in outputs.items():
            binding.bind_output(name, *self.ort_device, _numpy_dtype(tensor), list(tensor.shape), tensor.data_ptr())
        session.run_with_iobinding(binding)
        return outputs


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return np.dtype(str(tensor.dtype).removeprefix("torch."))


class WeightMajorLinear(torch.nn.Linear):
    """nn.Linear computed as (W @ x^T)^T for up to MAX_ROWS rows. On CPU, torch 2.13's x @ W^T with
    2 rows runs on one thread at about 7.5 GB/s, W @ x^T on both cores at about 33 GB/s (measured on
    the 2-core CI machine; a RAR-B step went from 153 to 70 ms); at 8 rows the two are even."""

    MAX_ROWS = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] > self.MAX_ROWS:
            return super().forward(x)
        out = torch.addmm(self.bias[:, None], self.weight, rows.t()).t()
        return out.reshape(*x.shape[:-1], self.out_features)


def use_weight_major_linears(module: torch.nn.Module) -> torch.nn.Module:
    """A performance switch from outside the model: same parameters, same state-dict keys."""
    for sub in module.modules():
        if type(sub) is torch.nn.Linear and sub.bias is not None:
            sub.__class__ = WeightMajorLinear
    return module


class TorchBackend(Backend):
    """The graph modules in PyTorch: float32 eager on CPU; on CUDA in the artifacts' precision, with a
    step (its graphs and the cache write) captured once in a CUDA graph and replayed."""

    name = "torch"

    def __init__(self, artifacts: Artifacts, device: torch.device, ckpt: str | None = None,
                 tokenizer: str | None = None, cuda_graphs: bool = True) -> None:
        from ..checkpoint import load_exported_from
        from ..export.graphs import GRAPH_MODULES
        from ..model.layers import cast_for_inference

        super().__init__(artifacts, device)
        generator = load_exported_from(artifacts.manifest, "generator", ckpt)
        decoder = load_exported_from(artifacts.manifest, "tokenizer", tokenizer)
        dtype = torch.float16 if device.type == "cuda" and artifacts.precision == "fp16" else torch.float32
        self.float_dtype = dtype
        if device.type == "cpu":
            use_weight_major_linears(generator)
        generator = cast_for_inference(generator, dtype).to(device)
        decoder = cast_for_inference(decoder, dtype).to(device)
        self.modules = {name: GRAPH_MODULES[name](decoder if name == "vq_decoder" else generator)
                        for name in GRAPH_NAMES}
        self.use_cuda_graph = cuda_graphs and device.type == "cuda"

    @torch.no_grad()
    def run(self, graph: str, feeds: Tensors, outputs: Tensors | None = None) -> Tensors:
        module = self.modules[graph]
        if graph == "decode_step":
            layers = range(self.config.depth)
            args = (feeds["tokens"], feeds["position"], feeds["condition"], [feeds[f"k_cache.{i}"] for i in layers],
                    [feeds[f"v_cache.{i}"] for i in layers], feeds["guidance_scale"], feeds["temperature"],
                    feeds["noise"])
        else:
            args = tuple(feeds[name] for name in module.input_names)
        results = module(*args)
        results = dict(zip(module.output_names, results if isinstance(results, tuple) else (results,)))
        if outputs is None:
            return results
        for name, tensor in results.items():
            outputs[name].copy_(tensor)
        return outputs

    def step_feeds(self, p: int) -> Tensors:
        """Eager: the cache's live prefix only, a free view in torch (not in ONNX, where a slice is a copy),
        so attention reads what the official loop reads. CUDA graphs keep the full static length."""
        feeds = super().step_feeds(p)
        if not self.use_cuda_graph:
            for name in feeds:
                if "_cache." in name:
                    feeds[name] = feeds[name][:, :, : max(p, 1)]
        return feeds

    def decode_images(self, tokens: np.ndarray) -> np.ndarray:
        """On CPU one image per call: torch's batched convolutions round differently with the batch size
        (1 level in a few pixels), and an image must not depend on the batch it was made in."""
        if self.device.type != "cpu":
            return super().decode_images(tokens)
        return np.concatenate([super(TorchBackend, self).decode_images(tokens[i:i + 1]) for i in range(len(tokens))])
