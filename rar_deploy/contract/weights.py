"""Quantization of the step graph's Linear weights: the scheme, its one rounding rule, and its record in the
manifest (`weights`, docs/CONTRACT.md). Numpy only: export, the torch backend and any reader share it.

Symmetric, no zero point. Weight-only: int8 with one scale per output channel, int4 with one scale per block of
`group_size` consecutive input channels of an output channel. The scale is stored in the activation precision and
the integers are rounded against the stored scale, so that `q * scale` is exactly the weight every backend
multiplies by (ONNX `DequantizeLinear`, the torch reference, TensorRT).

fp8 (W8A8, FP8 E4M3): the weight with one scale per tensor, and the Linear's input too, with one static scale per
tensor calibrated on the model's own generations; the MatMul then reads two FP8 tensors (Ada, Hopper, Blackwell
GEMMs through TensorRT). Rounding is E4M3's round-to-nearest-even with saturation at +-448 (ONNX `QuantizeLinear`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rar_deploy.errors import RARDeployError

SCHEMES = ("int8", "int4", "fp8")
GROUP_SIZES = (128, 64, 32)  # int4 blocks; the default is the first that divides every quantized width
LEVELS = {"int8": 127, "int4": 7, "fp8": 448}  # symmetric: -LEVELS .. LEVELS (fp8: E4M3's largest finite value)


@dataclass(frozen=True)
class WeightQuantization:
    scheme: str  # "int8" | "int4" | "fp8"
    group_size: int | None = None  # int4: input channels per scale; int8, fp8: None

    @property
    def label(self) -> str:
        """int8, int4-g64: the scheme in a word."""
        return self.scheme if self.group_size is None else f"{self.scheme}-g{self.group_size}"

    @property
    def description(self) -> str:
        return {"int8": "int8 per output channel", "int4": f"int4 in blocks of {self.group_size}",
                "fp8": "fp8 E4M3 weights and activations, per tensor"}[self.scheme]

    @property
    def quantizes_activations(self) -> bool:
        """fp8: the Linears' inputs are quantized too (a static scale per tensor, calibrated at export)."""
        return self.scheme == "fp8"

    @property
    def levels(self) -> int:
        return LEVELS[self.scheme]

    def scale_shape(self, in_features: int, out_features: int) -> tuple[int, ...]:
        """The shape of the scales of a [in_features, out_features] MatMul weight."""
        if self.scheme == "fp8":
            return ()
        return (out_features,) if self.group_size is None else (in_features // self.group_size, out_features)

    def to_manifest(self, tensors: dict[str, list[int]], scale_dtype: str, calibration: dict | None = None) -> dict:
        section = {"scheme": self.scheme, "group_size": self.group_size, "symmetric": True,
                   "rounding": f"round half to even of weight / scale, scale = max |weight| / {self.levels} over "
                               f"its {_SCALED_OVER[self.scheme]}, stored in {scale_dtype}",
                   "axis": {"int8": "output channel", "int4": "blocks along the input channels",
                            "fp8": "whole tensor"}[self.scheme],
                   "calibration": calibration, "tensors": tensors}
        if self.quantizes_activations:
            section["activations"] = {"dtype": "float8e4m3fn", "scale": "one per Linear input, static: max |x| / "
                                      f"448 over the calibration data, stored in {scale_dtype}"}
        return section

    @classmethod
    def from_manifest(cls, section: dict | None) -> WeightQuantization | None:
        return None if section is None else cls(section["scheme"], section["group_size"])


_SCALED_OVER = {"int8": "output channel", "int4": "block", "fp8": "tensor"}


def weight_quantization(scheme: str | None, group_size: int | None, widths: dict[str, int]
                        ) -> WeightQuantization | None:
    """The scheme a user asked for (None: float weights), checked against the input widths of the Linears it
    would quantize (name -> in_features) before any heavy work; one clear line when it cannot apply."""
    if scheme in (None, "float"):
        if group_size is not None:
            raise RARDeployError("--group-size applies to --weights int4 only")
        return None
    if scheme not in SCHEMES:
        raise RARDeployError(f"--weights {scheme} is not a scheme: choose float, {', '.join(SCHEMES)}")
    if scheme in ("int8", "fp8"):
        if group_size is not None:
            raise RARDeployError(f"--group-size applies to --weights int4 only ({scheme} has one scale per "
                                 f"{_SCALED_OVER[scheme]})")
        return WeightQuantization(scheme)
    if group_size is not None and group_size not in GROUP_SIZES:
        raise RARDeployError(f"--group-size {group_size} is not supported: choose {', '.join(map(str, GROUP_SIZES))}")
    fitting = [g for g in GROUP_SIZES if all(width % g == 0 for width in widths.values())]
    if group_size is None:
        if not fitting:
            raise RARDeployError(f"no int4 group size of {GROUP_SIZES} divides every quantized width "
                                 f"({sorted(set(widths.values()))}): use --weights int8")
        return WeightQuantization("int4", fitting[0])
    name, width = next(((n, w) for n, w in widths.items() if w % group_size), (None, 0))
    if name is not None:
        raise RARDeployError(f"--group-size {group_size} does not divide the input width {width} of {name}: "
                             f"choose {' or '.join(map(str, fitting)) or 'int8'}")
    return WeightQuantization("int4", group_size)


def quantize(weight: np.ndarray, quantization: WeightQuantization, scale_dtype: type,
             peak: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """weight [in, out] (a MatMul's right operand) -> (integers [in, out] as int8, int4 ones in -7 .. 7, or fp8
    E4M3 values; scales of `scale_shape` in `scale_dtype`). `peak` [groups, out]: a calibration's range per channel
    or block instead of max |weight| (values beyond it are clipped)."""
    weight = np.asarray(weight, dtype=np.float32)
    k, n = weight.shape
    if quantization.scheme == "fp8":
        scale = fp8_scale(float(np.abs(weight).max() if peak is None else peak), scale_dtype)
        return to_fp8(weight / scale.astype(np.float32)), scale
    blocks = weight.reshape(1, k, n) if quantization.group_size is None else \
        weight.reshape(k // quantization.group_size, quantization.group_size, n)
    if peak is None:
        peak = np.abs(blocks).max(axis=1)  # [groups, out]
    scale = (peak / quantization.levels).astype(scale_dtype)
    scale[scale == 0] = 1  # an all-zero channel: any scale gives zeros
    q = np.rint(blocks / scale.astype(np.float32)[:, None, :])
    q = np.clip(q, -quantization.levels, quantization.levels).reshape(k, n)
    return q.astype(np.int8), scale.reshape(quantization.scale_shape(k, n))


def dequantize(q: np.ndarray, scale: np.ndarray, quantization: WeightQuantization) -> np.ndarray:
    """The float32 weight [in, out] that `q` and `scale` stand for, exactly (DequantizeLinear's rule)."""
    if quantization.scheme == "fp8":
        return q.astype(np.float32) * np.float32(scale)
    k, n = q.shape
    per_row = scale.astype(np.float32).reshape(-1, n)  # [groups, out]
    rows = k if quantization.group_size is None else quantization.group_size
    return (q.astype(np.float32).reshape(-1, rows, n) * per_row[:, None, :]).reshape(k, n)


def fp8_scale(peak: float, scale_dtype: type) -> np.ndarray:
    """The stored per-tensor fp8 scale of a tensor whose range is `peak` (a weight's max |w|, or an input's
    calibrated max |x|): peak / 448 in `scale_dtype`, 1 where that is 0 (any scale gives zeros)."""
    scale = np.asarray(peak / LEVELS["fp8"], scale_dtype)
    return scale if scale != 0 else np.asarray(1, scale_dtype)


def to_fp8(values: np.ndarray) -> np.ndarray:
    """float32 -> E4M3 (ml_dtypes.float8_e4m3fn): round to nearest even, saturating at +-448 (QuantizeLinear's
    rule with saturate=1)."""
    import ml_dtypes

    return np.clip(values, -LEVELS["fp8"], LEVELS["fp8"]).astype(ml_dtypes.float8_e4m3fn)


def fake_quantize_fp8(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """What QuantizeLinear then DequantizeLinear make of float32 `values` with a per-tensor `scale`."""
    scale = np.float32(scale)
    return to_fp8(np.asarray(values, np.float32) / scale).astype(np.float32) * scale
