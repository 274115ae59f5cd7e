"""The static KV cache: allocated once at its full length N + 1, written in place, never grown."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rar_deploy.contract.config import RARConfig


@dataclass
class StaticKVCache:
    keys: torch.Tensor  # [L, R, H, S, Dh]
    values: torch.Tensor  # [L, R, H, S, Dh]

    @classmethod
    def allocate(
        cls, config: RARConfig, rows: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> "StaticKVCache":
        shape = (config.depth, rows, config.num_heads, config.cache_len, config.head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    def write(self, keys: torch.Tensor, values: torch.Tensor, position: int | torch.Tensor) -> None:
        """Write new keys/values [L, R, H, P, Dh] at sequence position `position` onwards.

        `position` is an int shared by every row, or a tensor [R] of one position per row (P = 1).
        """
        if isinstance(position, int):
            span = slice(position, position + keys.shape[-2])
            self.keys[:, :, :, span] = keys
            self.values[:, :, :, span] = values
            return
        rows = torch.arange(keys.shape[1], device=keys.device)
        # Advanced indices on dims 1 and 3 put the row dim first: [R, L, H, Dh].
        self.keys[:, rows, :, position] = keys[:, :, :, 0].transpose(0, 1)
        self.values[:, rows, :, position] = values[:, :, :, 0].transpose(0, 1)
