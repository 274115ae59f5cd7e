"""Backends behind one small interface. The generation loop (`pipeline.py`) only calls `start`,
`prefill`, `step`, `tokens` and `decode_images`; buffers live on the backend's device as torch tensors,
so the cache writes between steps never leave it and the loop never synchronises per step."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from ..errors import RARDeployError
from ..manifest import GRAPH_NAMES
from .artifacts import Artifacts

TORCH_DTYPES = {np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float16,
                np.dtype("int64"): torch.int64, np.dtype("uint8"): torch.uint8}


class Backend(ABC):
    """One artifact directory's graphs on one device. Subclasses run a graph from named tensors."""

    name: str

    def __init__(self, artifacts: Artifacts, device: torch.device) -> None:
        self.artifacts = artifacts
        self.config = artifacts.config
        self.device = device
        self.cache_dtype = TORCH_DTYPES[artifacts.cache_dtype]
        self.batch = 0
        self.use_cuda_graph = False  # CUDA backends: capture the decode step + cache write once, replay it
        self.graph: torch.cuda.CUDAGraph | None = None

    @abstractmethod
    def run(self, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one graph; inputs and outputs are tensors on `self.device`."""

    # -- the loop's interface ----------------------------------------------------------------------------
    def start(self, class_labels: torch.Tensor, guidance_scales: torch.Tensor, temperature: torch.Tensor,
              noise: torch.Tensor) -> None:
        """Per-batch inputs: labels [B], the schedule [N], temperatures [B], noise [N, B, V]."""
        c, b = self.config, class_labels.shape[0]
        if b != self.batch:
            self.graph = None  # captured for another batch size
            shape = (c.depth, 2 * b, c.num_heads, c.cache_len, c.head_dim)
            self.k_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
            self.v_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
            self.out_tokens = torch.zeros((c.image_seq_len, b), dtype=torch.int64, device=self.device)
            self.step_index = torch.zeros(b, dtype=torch.int64, device=self.device)
            self.batch = b
        self.class_labels = class_labels.to(self.device)
        self.guidance = guidance_scales.to(self.device)[:, None].expand(-1, b).contiguous()  # [N, B]
        self.temperature = temperature.to(self.device, torch.float32).contiguous()
        self.noise = noise.to(self.device)  # [N, B, V]: noise[t] is contiguous
        if self.graph is not None:  # the captured step reads this generation's inputs from its own buffers
            self._static["class_labels"].copy_(self.class_labels)
            self._static["temperature"].copy_(self.temperature)

    def prefill(self) -> None:
        out = self.run("prefill", {"class_labels": self.class_labels, "guidance_scale": self.guidance[0],
                                   "temperature": self.temperature, "noise": self.noise[0]})
        self.k_cache[:, :, :, :2] = out["keys"]
        self.v_cache[:, :, :, :2] = out["values"]
        self.out_tokens[0] = out["tokens"]
        self.last_logits = out["logits"]

    @torch.no_grad()
    def step(self, t: int) -> None:
        """Decode step t (1..N-1): feeds token t-1, writes this step's keys/values at position t+1."""
        if self.use_cuda_graph:
            return self._replay(t)
        self.step_index.fill_(t)
        out = self.decode(self.decode_feeds(t))
        self.k_cache[:, :, :, t + 1] = out["keys"][:, :, :, 0]
        self.v_cache[:, :, :, t + 1] = out["values"][:, :, :, 0]
        self.out_tokens[t] = out["next_tokens"]
        self.last_logits = out["logits"]  # guided logits [B, V] of this step, for parity checks

    def decode(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The decode step of the loop; a backend may run it differently from the plain graph."""
        return self.run("decode_step", feeds)

    _GRAPH_INPUTS = ("tokens", "class_labels", "guidance_scale", "temperature", "noise")  # static buffers

    def _replay(self, t: int) -> None:
        """Copy this step's inputs into the captured graph's static buffers (device to device) and replay;
        start() refreshes the per-generation ones."""
        if self.graph is None:
            self._capture(t)
        self._static["tokens"].copy_(self.out_tokens[t - 1])
        self._static["guidance_scale"].copy_(self.guidance[t])
        self._static["noise"].copy_(self.noise[t])
        self.step_index.fill_(t)
        self.graph.replay()
        self.out_tokens[t].copy_(self._graph_out["next_tokens"])
        self.last_logits = self._graph_out["logits"]

    def _capture(self, t: int) -> None:
        """Warm up on a side stream, then capture decode + in-place cache write at step_index + 1."""
        feeds = self.decode_feeds(t)
        self._static = {name: feeds[name].clone() for name in self._GRAPH_INPUTS}

        def decode_and_write() -> dict[str, torch.Tensor]:
            out = self.decode({**feeds, **self._static, "step": self.step_index})
            position = self.step_index[:1] + 1
            self.k_cache.index_copy_(3, position, out["keys"])
            self.v_cache.index_copy_(3, position, out["values"])
            return out

        self.step_index.fill_(t)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            decode_and_write()  # warm-up outside capture (TensorRT requires it); rewrites position t + 1
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=stream):
                self._graph_out = decode_and_write()
        torch.cuda.current_stream().wait_stream(stream)

    def decode_feeds(self, t: int) -> dict[str, torch.Tensor]:
        layers = range(self.config.depth)
        return {"tokens": self.out_tokens[t - 1], "step": self.step_index, "class_labels": self.class_labels,
                **{f"k_cache.{i}": self.k_cache[i] for i in layers},
                **{f"v_cache.{i}": self.v_cache[i] for i in layers},
                "guidance_scale": self.guidance[t], "temperature": self.temperature, "noise": self.noise[t]}

    def tokens(self) -> np.ndarray:
        """The generated tokens [B, N] on the host (the loop's one synchronisation)."""
        return self.out_tokens.t().to("cpu", copy=True).numpy()  # a copy: the buffer is reused by the next batch

    def decode_images(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens [B, N] -> uint8 images [B, H, W, 3]."""
        out = self.run("vq_decoder", {"tokens": torch.from_numpy(tokens).to(self.device)})
        return out["images_uint8"].to("cpu", copy=True).numpy()


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
        self.sessions = {name: ort.InferenceSession(str(artifacts.graph_path(name)), options, providers=providers)
                         for name in GRAPH_NAMES}
        self.ort_device = ("cuda" if device.type == "cuda" else "cpu", device.index or 0)

    def run(self, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        session = self.sessions[graph]
        binding = session.io_binding()
        batch = feeds["class_labels" if "class_labels" in feeds else "tokens"].shape[0]
        for name, tensor in feeds.items():
            tensor = tensor.contiguous()
            feeds[name] = tensor  # keep alive until run returns
            binding.bind_input(name, *self.ort_device, _numpy_dtype(tensor), list(tensor.shape), tensor.data_ptr())
        outputs = {}
        for name, (shape, dtype) in self.artifacts.output_shapes(graph, batch).items():
            outputs[name] = torch.empty(shape, dtype=TORCH_DTYPES[dtype], device=self.device)
            binding.bind_output(name, *self.ort_device, dtype, shape, outputs[name].data_ptr())
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
    """The graph modules in PyTorch: float32 eager on CPU; on CUDA in the artifacts' precision, with
    the decode step (graph + cache write) captured once in a CUDA graph and replayed.

    hoist_adaln: compute every adaLN output of the batch (all classes x positions) once at start, a
    compute-bound GEMM, so that a step reads two thirds of the weight bytes. The tables hold
    2B x (N+1) x (6L + 2) x D values (RAR-B at batch 4: 0.9 GB in float32); a batch whose tables would
    pass ADALN_TABLE_BUDGET computes adaLN in every step instead (RAR-L fp16 hoists up to batch 13).
    """

    name = "torch"
    ADALN_TABLE_BUDGET = 2 << 30  # bytes

    def __init__(self, artifacts: Artifacts, device: torch.device, ckpt: str | None = None,
                 tokenizer: str | None = None, cuda_graphs: bool = True, hoist_adaln: bool = True) -> None:
        from ..export.graphs import DecodeStepGraph, PrefillGraph, VQDecoderGraph
        from ..model.layers import cast_for_inference

        super().__init__(artifacts, device)
        from ..checkpoint import load_exported_from

        generator = load_exported_from(artifacts.manifest, "generator", ckpt)
        decoder = load_exported_from(artifacts.manifest, "tokenizer", tokenizer)
        dtype = torch.float16 if device.type == "cuda" and artifacts.precision == "fp16" else torch.float32
        self.cache_dtype = dtype
        if device.type == "cpu":
            use_weight_major_linears(generator)
        self.modules = {
            "prefill": PrefillGraph(cast_for_inference(generator, dtype).to(device)),
            "decode_step": DecodeStepGraph(generator),
            "vq_decoder": VQDecoderGraph(cast_for_inference(decoder, dtype).to(device)),
        }
        self.use_cuda_graph = cuda_graphs and device.type == "cuda"
        self.hoist_adaln = hoist_adaln
        self.tables: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def run(self, graph: str, feeds: dict[str, torch.Tensor],
            modulation: tuple | None = None) -> dict[str, torch.Tensor]:
        module = self.modules[graph]
        if graph == "decode_step":
            layers = range(self.config.depth)
            args = (feeds["tokens"], feeds["step"], feeds["class_labels"], [feeds[f"k_cache.{i}"] for i in layers],
                    [feeds[f"v_cache.{i}"] for i in layers], feeds["guidance_scale"], feeds["temperature"],
                    feeds["noise"], modulation)
        else:
            args = tuple(feeds[name] for name in module.input_names)
        return dict(zip(module.output_names, module(*args)))

    def adaln_table_bytes(self, batch: int) -> int:
        c = self.config
        return 2 * batch * c.cache_len * (6 * c.depth + 2) * c.hidden_size * self.cache_dtype.itemsize

    @torch.no_grad()
    def start(self, class_labels, guidance_scales, temperature, noise) -> None:
        super().start(class_labels, guidance_scales, temperature, noise)
        if not self.hoist_adaln or self.adaln_table_bytes(self.batch) > self.ADALN_TABLE_BUDGET:
            self.tables = None
            return
        rows = torch.cat([self.class_labels, torch.full_like(self.class_labels, self.config.null_class)])
        tables = self.modules["decode_step"].generator.adaln_tables(rows)
        if self.graph is not None:  # replayed graphs read the tables captured with them
            self.tables[0].copy_(tables[0])
            self.tables[1].copy_(tables[1])
        else:
            self.tables = tables

    def decode(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.tables is None:
            return self.run("decode_step", feeds)
        position = feeds["step"].repeat(2) + 1
        rows = torch.arange(position.shape[0], device=self.device)
        blocks, head = self.tables
        return self.run("decode_step", feeds, (blocks[:, rows, position], head[rows, position]))

    def decode_feeds(self, t: int) -> dict[str, torch.Tensor]:
        """Eager: the cache's live prefix [0, t] only, a free view in torch (not in ONNX, where a
        slice is a copy), so attention reads what the official loop reads. CUDA graphs keep the
        full static length."""
        feeds = super().decode_feeds(t)
        if not self.use_cuda_graph:
            for name in feeds:
                if "_cache." in name:
                    feeds[name] = feeds[name][:, :, : t + 1]
        return feeds
