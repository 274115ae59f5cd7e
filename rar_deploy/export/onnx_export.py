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
import ctypes
import gc
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from rar_deploy.contract.graphs import condition_width, forward_arguments, graph_specs, var_graph_specs, var_input_dims
from rar_deploy.errors import ExportError
from rar_deploy.model.generator import RARGenerator
from rar_deploy.model.graphs import ConditionGraph, DecodeBlockGraph, DecodeStepGraph, VQDecoderGraph
from rar_deploy.model.layers import NORM_TYPES
from rar_deploy.model.tokenizer import VQDecoder
from rar_deploy.model.var import VARVQVAE, VARGenerator
from rar_deploy.model.var_graphs import VARDecoderGraph, VARScaleStepGraph, scale_constants

OPSET = 18
PROTOBUF_LIMIT = 2**31 - 1
_EXAMPLE_BATCH = 2  # verification runs at another batch size, so a specialised batch cannot pass
_EXAMPLE_POSITIONS = 3  # unlike any static size, so that torch.export keeps it symbolic
_EXAMPLE_BLOCK = 5  # unlike the other example sizes, for the same reason
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class GraphExport:
    module: nn.Module
    args: tuple  # example inputs, as the module's forward arguments
    dynamic_shapes: tuple
    input_names: list[str]
    output_names: list[str]
    dim_names: dict[str, str] | None = None  # torch's names of derived dims (2*batch) -> the contract's (rows)


def graph_export(module: nn.Module, args: tuple, spec: dict, dims: dict, dim_names: dict[str, str] | None = None
                 ) -> GraphExport:
    """A graph to export as its contract spec says (contract.graph_specs): the input and output names, and every
    symbolic axis of an input dynamic as `dims` maps its symbol (torch.export Dims); example inputs `args`."""
    inputs = [s.name for s in spec["inputs"]]
    axes = {s.name: {i: dims[d] for i, d in enumerate(s.shape) if isinstance(d, str)} or None for s in spec["inputs"]}
    shapes = tuple([axes[n] for n in arg] if isinstance(arg, list) else axes[arg] for arg in forward_arguments(inputs))
    return GraphExport(module, args, shapes, inputs, [s.name for s in spec["outputs"]], dim_names)


def cast_models(generator: RARGenerator, tokenizer: VQDecoder, precision: str) -> tuple[RARGenerator, VQDecoder]:
    """Copies of the models in the export precision (norms stay float32), made tensor by tensor: the
    float32 originals are never copied whole."""
    dtype = DTYPES[precision]
    if dtype == torch.float16:
        for model in (generator, tokenizer):
            check_float16_range(model)
    return _cast_copy(generator, dtype), _cast_copy(tokenizer, dtype)


def release_cast_copy(original: nn.Module, copy: nn.Module) -> None:
    """Free the storage of a cast copy once its graphs are written. onnxscript's rewrite rules keep a
    reference to the last graph they matched, and through it to the exported weights, so dropping our
    references alone would keep a copy of the weights alive until the process ends."""
    if copy is original:
        return
    for tensor in list(copy.parameters()) + list(copy.buffers()):
        tensor.data = torch.empty(0, dtype=tensor.dtype)


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise), between
    export stages that each need much memory: the peak is the largest stage, not their sum."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _cast_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    if dtype == torch.float32:
        return model  # already float32: nothing to copy
    with torch.device("meta"):
        copy = type(model)(model.config)
    norms = {name for name, module in copy.named_modules() if isinstance(module, NORM_TYPES)}
    state = {name: value if name.rpartition(".")[0] in norms or not value.is_floating_point() else value.to(dtype)
             for name, value in model.state_dict().items()}
    copy.load_state_dict(state, assign=True)
    return copy.eval().requires_grad_(False)


FLOAT16_MAX = 65504.0


def check_float16_range(model: nn.Module) -> None:
    """Weights beyond float16's range would become inf in an fp16 graph: refuse, naming them."""
    for name, param in model.named_parameters():
        peak = float(param.detach().abs().max()) if param.numel() else 0.0
        if peak > FLOAT16_MAX:
            raise ExportError(f"{name} holds values up to {peak:.3g}, beyond float16's {FLOAT16_MAX:g}: export with "
                              "--fp32")


def rar_graph_exports(generator: RARGenerator, tokenizer: VQDecoder, max_batch: int) -> dict[str, GraphExport]:
    """RAR's three graphs: modules, example inputs and dynamic axes, for export_graph."""
    c = generator.config
    b, rows, positions, vocab = _EXAMPLE_BATCH, 2 * _EXAMPLE_BATCH, _EXAMPLE_POSITIONS, c.codebook_size
    dtype = generator.embeddings.weight.dtype
    dims = {"batch": torch.export.Dim("batch", min=1, max=max(max_batch, b + 1)),
            "rows": torch.export.Dim("rows", min=1, max=max(2 * max_batch, rows + 1)),
            "positions": torch.export.Dim("positions", min=1, max=c.cache_len),
            "block": torch.export.Dim("block", min=1, max=c.cache_len)}
    specs = graph_specs(c, tokenizer.config, str(dtype).removeprefix("torch."))
    # every input a distinct tensor: torch.export ties inputs passed as the same object together
    labels = torch.arange(rows)
    condition = torch.zeros(positions, rows, condition_width(c), dtype=dtype)

    def cache() -> list[torch.Tensor]:
        return [torch.zeros(rows, c.num_heads, c.cache_len, c.head_dim, dtype=dtype) for _ in range(c.depth)]

    block = min(_EXAMPLE_BLOCK, c.cache_len)
    return {
        "condition": graph_export(ConditionGraph(generator), (labels, torch.zeros(positions, rows, dtype=torch.int64)),
                                  specs["condition"], dims),
        "decode_step": graph_export(
            DecodeStepGraph(generator),
            (torch.arange(b), torch.full((b,), 3), condition, cache(), cache(),
             torch.full((b,), 2.0), torch.ones(b), torch.rand(b, vocab)), specs["decode_step"], dims),
        "decode_block": graph_export(
            DecodeBlockGraph(generator),
            (torch.zeros(b, block, dtype=torch.int64), torch.full((b,), 3), condition, cache(), cache(),
             torch.full((b, block), 2.0), torch.ones(b), torch.rand(b, block, vocab)), specs["decode_block"], dims),
        "vq_decoder": graph_export(VQDecoderGraph(tokenizer), (torch.zeros(b, c.image_seq_len, dtype=torch.int64),),
                                   specs["vq_decoder"], dims),
    }


def var_graph_exports(generator: VARGenerator, vqvae: VARVQVAE, max_batch: int):
    """VAR's scale step and decoder: modules, example inputs and dynamic axes, for export_graph."""
    c, b = generator.config, 2
    dtype = generator.class_emb.weight.dtype
    dims = var_input_dims(torch.export.Dim("batch", min=1, max=max(max_batch, b + 1)),
                          torch.export.Dim("side", min=1, max=c.patch_nums[-1]))
    specs = var_graph_specs(c, vqvae.config, str(dtype).removeprefix("torch."))
    size, scale = c.patch_nums[-1], 2  # an example scale with pn > 1
    const = scale_constants(c, vqvae.config.num_phi)[scale]
    cache = [torch.zeros(2 * b, c.num_heads, c.seq_len, c.head_dim, dtype=dtype) for _ in range(c.depth)]
    args = (torch.arange(b), torch.zeros(b, c.vae_channels, size, size), const["positions"], const["phi_index"],
            const["down"], const["up"], torch.full((b,), 1.0), torch.tensor([0]), torch.tensor([0.0]), torch.ones(b),
            torch.rand(b, c.patch_nums[scale], c.patch_nums[scale], c.codebook_size),
            cache, [x.clone() for x in cache])
    names = {"2*batch": "rows", "side**2": "tokens"}  # torch's derived dims, named as the contract names them
    return {"var_step": graph_export(VARScaleStepGraph(generator, vqvae), args, specs["var_step"], dims, names),
            "var_decoder": graph_export(VARDecoderGraph(vqvae), (torch.zeros(b, c.vae_channels, size, size),),
                                        specs["var_decoder"], dims)}


@dataclass(frozen=True)
class ExportedGraph:
    external_data: bool  # weights in `<file>.data`
    weight_bytes: int  # every initializer
    table_bytes: int  # initializers only gathered from (embedding tables): a call reads a few rows of them


def export_graph(graph: GraphExport, path: Path, external_data: bool) -> ExportedGraph:
    """Export one graph to `path`, its weights to `path`.data when asked or when they would not fit in
    one protobuf, then check it."""
    module = graph.module.eval()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, graph.args, dynamo=True, opset_version=OPSET, input_names=graph.input_names,
                output_names=graph.output_names, dynamic_shapes=graph.dynamic_shapes, verbose=False,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {path.name}: {exc}") from exc
    initializers = [value for value in program.model.graph.initializers.values() if value.const_value is not None]
    weights = sum(value.const_value.nbytes for value in initializers)
    tables = sum(value.const_value.nbytes for value in initializers
                 if {use.node.op_type for use in value.uses()} <= {"Gather", "GatherND"})
    if graph.dim_names:
        _rename_dims(program.model.graph, graph.dim_names)
    program.save(str(path), external_data=external_data or weights > PROTOBUF_LIMIT - (64 << 20))
    del program, initializers
    # what was written, not what was asked: torch also moves weights out above its own threshold (1.5 GiB)
    external = path.with_name(path.name + ".data").exists()
    flat = [shape for spec in graph.dynamic_shapes for shape in (spec if isinstance(spec, list) else [spec])]
    check_onnx(path, static={name for name, shape in zip(graph.input_names, flat) if shape is None})
    return ExportedGraph(external, weights, tables)


def _rename_dims(graph, names: dict[str, str]) -> None:
    """Rename symbolic dims everywhere in an onnx_ir graph (its inputs, outputs and every value)."""
    import onnx_ir

    values = [*graph.inputs, *graph.outputs, *(out for node in graph.all_nodes() for out in node.outputs)]
    for value in values:
        if value.shape is not None and any(str(d) in names for d in value.shape):
            value.shape = onnx_ir.Shape([onnx_ir.SymbolicDim(names[str(d)]) if str(d) in names else d
                                         for d in value.shape])


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


def static_inputs(model: onnx.ModelProto) -> set[str]:
    """The inputs of a graph with no symbolic dim."""
    return {t.name for t in model.graph.input if not any(d.dim_param for d in t.type.tensor_type.shape.dim)}


def check_onnx(path: Path, static: set[str] = frozenset()) -> None:
    """onnx.checker with full_check (which includes strict shape inference); every input but the `static`
    ones (those exported without a dynamic axis, such as VAR's top_k) keeps a symbolic dim."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"{path.name} failed the ONNX checker or shape inference: {exc}") from exc
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.input:
        if tensor.name in static:
            continue
        dims = tensor.type.tensor_type.shape.dim
        if not any(d.dim_param for d in dims):
            raise ExportError(f"{path.name}: input {tensor.name} lost its dynamic batch axis during export")


# each family's graph exports, by the generator class its checkpoint loads as
FAMILY_EXPORTS = {RARGenerator: ("rar", rar_graph_exports), VARGenerator: ("var", var_graph_exports)}
