"""Small layers shared by the generator and the tokenizer decoder.

Normalisations always compute in float32 (their parameters stay float32 when a model is cast to
fp16), so that one module definition serves the fp32 reference and the fp16 export graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-6


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the activation dtype."""

    def __init__(self, dim: int, affine: bool = True) -> None:
        super().__init__(dim, eps=NORM_EPS, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class GroupNorm(nn.GroupNorm):
    """GroupNorm(32) computed in float32 whatever the activation dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(num_groups=32, num_channels=channels, eps=NORM_EPS, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


NORM_TYPES = (LayerNorm, GroupNorm)


def cast_for_inference(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast weights to `dtype` in place, keeping normalisation parameters in float32."""
    module.to(dtype)
    for sub in module.modules():
        if isinstance(sub, NORM_TYPES):
            sub.float()
    return module


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift
