"""ONNX export of the three graphs with torch's dynamo exporter, checked by onnx's checker and
shape inference.

Exporter choice, measured (benchmarks/exporter_choice.py; RAR-B, fp16, table in benchmarks/RESULTS.md):
both exporters pass the checker, the verification (same error) and a strongly typed TensorRT build,
and their decode steps run equally fast in ONNX Runtime. We use the dynamo exporter (torch.export):
its graphs have half the nodes (1706 vs 3700 for the decode step), it states the cache's batch axis as
the derived dim 2*batch, and torch 2.13 deprecates the TorchScript exporter for removal. It costs
export time (65 s vs 24 s for the RAR-B graphs), once per model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from ..errors import ExportError
from ..model.generator import RARGenerator
from ..model.layers import cast_for_inference
from ..model.tokenizer import VQDecoder
from .graphs import DecodeStepGraph, PrefillGraph, VQDecoderGraph

OPSET = 18
PROTOBUF_LIMIT = 2**31 - 1
_EXAMPLE_BATCH = 2  # verification runs at another batch size, so a specialised batch cannot pass
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class GraphExport:
    module: nn.Module
    args: tuple
    dynamic_shapes: tuple
    weight_bytes: int


def cast_models(generator: RARGenerator, tokenizer: VQDecoder, precision: str) -> tuple[RARGenerator, VQDecoder]:
    """Copies of the models in the export precision (norms stay float32)."""
    dtype = DTYPES[precision]
    if dtype == torch.float16:
        for model in (generator, tokenizer):
            check_float16_range(model)
    return (cast_for_inference(copy.deepcopy(generator), dtype), cast_for_inference(copy.deepcopy(tokenizer), dtype))


FLOAT16_MAX = 65504.0


def check_float16_range(model: nn.Module) -> None:
    """Weights beyond float16's range would become inf in an fp16 graph: refuse, naming them."""
    for name, param in model.named_parameters():
        peak = float(param.detach().abs().max()) if param.numel() else 0.0
        if peak > FLOAT16_MAX:
            raise ExportError(f"{name} holds values up to {peak:.3g}, beyond float16's {FLOAT16_MAX:g}: export with "
                              "--fp32")


def graph_exports(generator: RARGenerator, tokenizer: VQDecoder, max_batch: int) -> dict[str, GraphExport]:
    """Modules, example inputs and dynamic axes of the three graphs."""
    c = generator.config
    b, vocab = _EXAMPLE_BATCH, c.codebook_size
    dtype = generator.embeddings.weight.dtype
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, b + 1))
    labels = torch.arange(b)
    sampling = (torch.full((b,), 2.0), torch.ones(b), torch.rand(b, vocab))
    def cache() -> list[torch.Tensor]:
        return [torch.zeros(2 * b, c.num_heads, c.cache_len, c.head_dim, dtype=dtype) for _ in range(c.depth)]

    per_image, cache_axes = {0: batch}, [{0: 2 * batch}] * c.depth

    def nbytes(module: nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    return {
        "prefill": GraphExport(PrefillGraph(generator), (labels, *sampling), (per_image,) * 4, nbytes(generator)),
        "decode_step": GraphExport(
            DecodeStepGraph(generator),
            # every input a distinct tensor: torch.export ties inputs passed as the same object together
            (labels.clone(), torch.ones(b, dtype=torch.int64), labels, cache(), cache(), *sampling),
            (per_image, per_image, per_image, cache_axes, cache_axes, per_image, per_image, per_image),
            nbytes(generator),
        ),
        "vq_decoder": GraphExport(
            VQDecoderGraph(tokenizer), (torch.zeros(b, c.image_seq_len, dtype=torch.int64),), (per_image,),
            nbytes(tokenizer),
        ),
    }


def export_graph(graph: GraphExport, path: Path, external_data: bool) -> None:
    """Export one graph to `path` (weights to `path`.data when external), then check it."""
    module = graph.module.eval()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, graph.args, dynamo=True, opset_version=OPSET, input_names=list(module.input_names),
                output_names=list(module.output_names), dynamic_shapes=graph.dynamic_shapes, verbose=False,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {path.name}: {exc}") from exc
    program.save(str(path), external_data=external_data)
    check_onnx(path)


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Silence a library logger for a while (torch.onnx logs one 'torchvision is not installed' per op)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def needs_external_data(graph: GraphExport) -> bool:
    """Weights past about 2 GB do not fit in one protobuf; leave room for the graph itself."""
    return graph.weight_bytes > PROTOBUF_LIMIT - (64 << 20)


def check_onnx(path: Path) -> None:
    """onnx.checker (full) and strict shape inference; every input keeps a symbolic batch dim."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path.with_suffix(".inferred.onnx")), strict_mode=True)
    except Exception as exc:
        raise ExportError(f"{path.name} failed the ONNX checker or shape inference: {exc}") from exc
    finally:
        path.with_suffix(".inferred.onnx").unlink(missing_ok=True)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        if not any(d.dim_param for d in dims):
            raise ExportError(f"{path.name}: input {tensor.name} lost its dynamic batch axis during export")
