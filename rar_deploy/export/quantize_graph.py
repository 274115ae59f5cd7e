"""A step graph with quantized weights: every MatMul whose weight is one of the quantized reference's Linears reads
it through a standard ONNX `DequantizeLinear` (opset 21: int4 and blocked scales) instead of a float initializer;
fp8 also reads its input through QuantizeLinear + DequantizeLinear (E4M3, a static scale).

One graph form for every backend: ONNX Runtime fuses DequantizeLinear + MatMul into MatMulNBits by itself,
TensorRT and TensorRT-RTX build weight-only quantized engines from it, the C++ runtime runs it unchanged. The
weights are found by value: the exported initializer is exactly the dequantized weight in the graph's precision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter
from onnx.external_data_helper import load_external_data_for_model

from rar_deploy.contract.weights import WeightQuantization, dequantize
from rar_deploy.errors import ExportError
from rar_deploy.export.onnx_export import check_onnx, static_inputs
from rar_deploy.model.quantized import QuantizedWeight

QUANTIZED_OPSET = 21
_STORAGE = {"int8": np.int8, "int4": ml_dtypes.int4, "fp8": ml_dtypes.float8_e4m3fn}


@dataclass(frozen=True)
class QuantizedGraph:
    tensors: dict[str, list[int]]  # the quantized Linears by name, with their [in, out] shapes
    weight_bytes: int  # every initializer as stored (int4 packed two to a byte)


def quantize_graph(path: Path, weights: dict[str, QuantizedWeight], quantization: WeightQuantization,
                   dtype: type, external_data: bool) -> QuantizedGraph:
    """Rewrite the graph at `path` in place and check it. Every Linear of `weights` must be found, or the export
    stops (the graph would not be the quantized model)."""
    # the weights are loaded once, into the converted graph: converting a loaded graph would copy them (RAR-XXL's
    # 2.9 GB step graph twice in memory)
    original = onnx.load(str(path), load_external_data=False)
    static = static_inputs(original)  # inputs exported without a symbolic dim (VAR's phi_index): the rest keep theirs
    model = version_converter.convert_version(original, QUANTIZED_OPSET)
    del original
    load_external_data_for_model(model, str(path.parent))
    for tensor in model.graph.initializer:  # loading marks them DEFAULT: the same bytes as before, unmarked
        tensor.ClearField("data_location")
    by_value = {_key(dequantize(w.q, w.scale, quantization).astype(dtype)): name for name, w in weights.items()}
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    replaced: dict[str, str] = {}  # initializer -> the Linear it holds
    nodes = []
    for node in model.graph.node:
        name = None
        if node.op_type == "MatMul" and node.input[1] in initializers:
            name = by_value.get(_key(numpy_helper.to_array(initializers[node.input[1]])))
        if name is not None:
            replaced[node.input[1]] = name
            node.input[1] = f"{node.input[1]}_dequantized"
            if quantization.quantizes_activations:  # the input through fp8 with its static scale
                nodes += _quantized_input(model, node, name, weights[name].input_scale)
        nodes.append(node)
    missing = sorted(set(weights) - set(replaced.values()))
    if missing:
        raise ExportError(f"{path.name}: no MatMul reads the weights of {', '.join(missing[:3])}; the graph cannot "
                          "be quantized (export with float weights)")
    kept = [tensor for tensor in model.graph.initializer if tensor.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    dequantize_nodes = []
    for initializer, name in replaced.items():
        w = weights[name]
        q = numpy_helper.from_array(w.q.astype(_STORAGE[quantization.scheme]), f"{initializer}_q")
        scale = numpy_helper.from_array(w.scale, f"{initializer}_scale")
        model.graph.initializer.extend([q, scale])
        attributes = {"fp8": {}, "int8": {"axis": 1},
                      "int4": {"axis": 0, "block_size": quantization.group_size}}[quantization.scheme]
        dequantize_nodes.append(helper.make_node("DequantizeLinear", [q.name, scale.name],
                                                 [f"{initializer}_dequantized"], name=f"{name}.dequantize",
                                                 **attributes))
    del model.graph.node[:]
    model.graph.node.extend(dequantize_nodes + nodes)
    stored = sum(len(t.raw_data) if t.HasField("raw_data") else numpy_helper.to_array(t).nbytes
                 for t in model.graph.initializer)  # before saving: external data empties raw_data
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=external_data, location=data.name)
    if data.exists():  # onnx writes external data for its owner only (0600); the folder's other files follow the umask
        data.chmod(path.stat().st_mode & 0o777)
    check_onnx(path, static)
    return QuantizedGraph({name: list(weights[name].q.shape) for name in sorted(weights)}, stored)


def _quantized_input(model: onnx.ModelProto, matmul: onnx.NodeProto, name: str, scale: np.ndarray
                     ) -> list[onnx.NodeProto]:
    """QuantizeLinear + DequantizeLinear of the MatMul's input (fp8 E4M3, one static scale), rewiring the MatMul."""
    source = matmul.input[0]
    model.graph.initializer.extend([numpy_helper.from_array(scale, f"{name}.input_scale"),
                                    numpy_helper.from_array(np.zeros((), ml_dtypes.float8_e4m3fn),
                                                            f"{name}.input_zero_point")])
    matmul.input[0] = f"{name}.input_dequantized"
    return [helper.make_node("QuantizeLinear", [source, f"{name}.input_scale", f"{name}.input_zero_point"],
                             [f"{name}.input_quantized"], name=f"{name}.quantize_input", saturate=1),
            helper.make_node("DequantizeLinear", [f"{name}.input_quantized", f"{name}.input_scale"],
                             [matmul.input[0]], name=f"{name}.dequantize_input")]


def _key(array: np.ndarray) -> tuple:
    return array.shape, str(array.dtype), hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
