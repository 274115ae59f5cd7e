"""The quantized reference: a generator whose step-graph Linear weights are replaced by their quantized values
(contract.weights), the model a quantized export must compute exactly. Export, the torch backend and the quality
yardsticks all make it here.

Quantized: the attention and MLP Linears of every block, the weights a decode (or scale) step reads on every call.
Kept in the activation precision: adaLN modulations (computed once per image, and the source of the channel
outliers PTQ4ARVG names), embeddings, norms, the head and the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from rar_deploy.contract.weights import (
    LEVELS,
    WeightQuantization,
    dequantize,
    fp8_scale,
    quantize,
    weight_quantization,
)
from rar_deploy.errors import RARDeployError

if TYPE_CHECKING:
    from rar_deploy.model.calibration import Calibration

_KEPT = ("adaLN_modulation", "ada_lin")


@dataclass(frozen=True)
class QuantizedWeight:
    q: np.ndarray  # int8 [in, out] (int4 values for int4), or fp8 E4M3 values
    scale: np.ndarray  # scale_shape, in the activation precision (q * scale is the weight: contract.dequantize)
    input_scale: np.ndarray | None = None  # fp8: the input's static scale (a scalar in the activation precision)


def quantized_linears(generator: nn.Module) -> dict[str, nn.Linear]:
    """The Linears a weight scheme quantizes, by module name."""
    return {name: module for name, module in generator.named_modules()
            if isinstance(module, nn.Linear) and name.startswith("blocks.") and not any(k in name for k in _KEPT)}


def resolve_weights(generator: nn.Module, scheme: str | None, group_size: int | None) -> WeightQuantization | None:
    """The user's --weights/--group-size checked against this generator's widths (None: float weights)."""
    widths = {name: linear.in_features for name, linear in quantized_linears(generator).items()}
    return weight_quantization(scheme, group_size, widths)


@torch.no_grad()
def quantize_generator(generator: nn.Module, quantization: WeightQuantization, scale_dtype: type,
                       calibration: Calibration | None = None) -> dict[str, QuantizedWeight]:
    """Replace, in place, every quantized Linear's weight by its dequantized value; return what was stored.
    `calibration` (model.calibration): GPTQ's weights and ranges instead of round-to-nearest's; fp8's input ranges
    (the inputs are quantized by `quantize_inputs`, once the graphs are exported)."""
    stored = {}
    calibrated = calibration.weights if calibration is not None else None
    peaks = calibration.input_peaks if calibration is not None else None
    if quantization.quantizes_activations and peaks is None:
        raise ValueError("fp8 needs the inputs' calibrated ranges (model.calibration.calibrate_inputs)")
    for name, linear in quantized_linears(generator).items():
        if calibrated is None:
            q, scale = quantize(linear.weight.detach().float().T.numpy(), quantization, scale_dtype)  # [in, out]
        else:
            q, scale = quantize(calibrated[name].weight, quantization, scale_dtype, calibrated[name].peak)
        # the weight alone holds q * scale: a second float32 copy here would be RAR-XXL's 5 GB
        linear.weight.copy_(torch.from_numpy(dequantize(q, scale, quantization).T.copy()))
        stored[name] = QuantizedWeight(q, scale, None if peaks is None else fp8_scale(peaks[name], scale_dtype))
    return stored


@torch.no_grad()
def load_stored_weights(generator: nn.Module, step_graph: Path, quantization: WeightQuantization) -> None:
    """Every quantized Linear's weight set, in place, to exactly what the folder's step graph stores (its
    DequantizeLinear's integers times scales): the same weights whatever calibration chose them; fp8: the inputs
    quantized with the graph's QuantizeLinear scales."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(step_graph))
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node if node.op_type == "DequantizeLinear"}
    for name, linear in quantized_linears(generator).items():
        node = nodes.get(f"{name}.dequantize")
        if node is None:
            raise RARDeployError(f"{step_graph} stores no quantized weight of {name}: export the folder again")
        q, scale = (numpy_helper.to_array(initializers[input_name]) for input_name in node.input[:2])
        linear.weight.copy_(torch.from_numpy(dequantize(q, scale, quantization).T.copy()))
    if quantization.quantizes_activations:
        quantize_inputs(generator, {node.name.removesuffix(".quantize_input"):
                                    numpy_helper.to_array(initializers[node.input[1]])
                                    for node in model.graph.node if node.op_type == "QuantizeLinear"})


@torch.no_grad()
def input_peaks(generator: nn.Module, forward: Callable[[nn.Module], None]) -> dict[str, float]:
    """max |input| of every quantized Linear over `forward(generator)` (the static ranges of fp8 activations)."""
    peaks: dict[str, float] = {}

    def record(name: str, module: nn.Module, args: tuple) -> None:
        peaks[name] = max(peaks.get(name, 0.0), float(args[0].detach().abs().max()))
    linears = quantized_linears(generator)
    handles = [linear.register_forward_pre_hook(partial(record, name)) for name, linear in linears.items()]
    try:
        forward(generator)
    finally:
        for handle in handles:
            handle.remove()
    return peaks


def quantize_inputs(generator: nn.Module, scales: dict[str, np.ndarray]) -> None:
    """Every quantized Linear's input, in place, through fp8 E4M3 with its static scale: QuantizeLinear then
    DequantizeLinear, as the fp8 step graph computes (round to nearest even, saturating at +-448)."""
    for name, linear in quantized_linears(generator).items():
        linear.register_forward_pre_hook(partial(_fp8_input, float(np.float32(scales[name]))))


def _fp8_input(scale: float, module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    q = (x.float() / scale).clamp(-LEVELS["fp8"], LEVELS["fp8"]).to(torch.float8_e4m3fn)
    return (q.float().mul(scale).to(x.dtype), *args[1:])
