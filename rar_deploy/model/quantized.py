"""The quantized reference: a generator whose step-graph Linear weights are replaced by their quantized values
(contract.weights), the model a quantized export must compute exactly. Export, the torch backend and the quality
yardsticks all make it here.

Quantized: the attention and MLP Linears of every block, the weights a decode (or scale) step reads on every call.
Kept in the activation precision: adaLN modulations (computed once per image, and the source of the channel
outliers PTQ4ARVG names), embeddings, norms, the head and the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rar_deploy.contract.weights import WeightQuantization, dequantize, quantize, weight_quantization

_KEPT = ("adaLN_modulation", "ada_lin")


@dataclass(frozen=True)
class QuantizedWeight:
    q: np.ndarray  # int8 [in, out] (int4 values for int4)
    scale: np.ndarray  # scale_shape, in the activation precision
    dequantized: np.ndarray  # float32 [in, out]: what q * scale is


def quantized_linears(generator: nn.Module) -> dict[str, nn.Linear]:
    """The Linears a weight scheme quantizes, by module name."""
    return {name: module for name, module in generator.named_modules()
            if isinstance(module, nn.Linear) and name.startswith("blocks.") and not any(k in name for k in _KEPT)}


def resolve_weights(generator: nn.Module, scheme: str | None, group_size: int | None) -> WeightQuantization | None:
    """The user's --weights/--group-size checked against this generator's widths (None: float weights)."""
    widths = {name: linear.in_features for name, linear in quantized_linears(generator).items()}
    return weight_quantization(scheme, group_size, widths)


@torch.no_grad()
def quantize_generator(generator: nn.Module, quantization: WeightQuantization, scale_dtype: type
                       ) -> dict[str, QuantizedWeight]:
    """Replace, in place, every quantized Linear's weight by its dequantized value; return what was stored."""
    stored = {}
    for name, linear in quantized_linears(generator).items():
        weight = linear.weight.detach().float().T.numpy()  # [in, out], as a MatMul reads it
        q, scale = quantize(weight, quantization, scale_dtype)
        dequantized = dequantize(q, scale, quantization)
        linear.weight.copy_(torch.from_numpy(dequantized.T.copy()))
        stored[name] = QuantizedWeight(q, scale, dequantized)
    return stored
