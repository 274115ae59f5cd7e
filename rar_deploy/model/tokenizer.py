"""MaskGIT-VQGAN, numerically equal to the official `modeling/modules/maskgit_vqgan.py`.

`VQDecoder` (decoder and codebook) is what generation uses: the loader drops a file's `encoder.*` keys.
`VQTokenizer` adds the official encoder (images -> tokens, nearest codebook row), with exactly the official
file's keys: the demo tokenizer is trained and saved through it. All 3x3 convolutions pad 1 on each side (the
official 'same' padding at stride 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rar_deploy.contract.config import RARTokenizerConfig
from rar_deploy.model.layers import GroupNorm


def conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=bias)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = GroupNorm(cin)
        self.conv1 = conv3x3(cin, cout, bias=False)
        self.norm2 = GroupNorm(cout)
        self.conv2 = conv3x3(cout, cout, bias=False)
        self.nin_shortcut = nn.Conv2d(cout, cout, kernel_size=1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        # The released weights were trained with the shortcut applied to the block's own output.
        residual = x if self.nin_shortcut is None else self.nin_shortcut(h)
        return h + residual


class DownLevel(nn.Module):
    def __init__(self, cin: int, cout: int, num_blocks: int, downsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(num_blocks))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return F.avg_pool2d(x, kernel_size=2, stride=2) if self.downsample else x


class Encoder(nn.Module):
    """Images [B, 3, H, W] in [0, 1] -> latents [B, z, H / f, W / f] (f = 2 ** (levels - 1))."""

    def __init__(self, config: RARTokenizerConfig) -> None:
        super().__init__()
        widths = [config.hidden_channels * m for m in config.channel_mult]
        inputs = [config.hidden_channels, *widths[:-1]]
        self.conv_in = nn.Conv2d(config.num_channels, config.hidden_channels, kernel_size=3, padding=1, bias=False)
        self.down = nn.ModuleList(
            DownLevel(inputs[i], widths[i], config.num_res_blocks, downsample=i != config.num_resolutions - 1)
            for i in range(config.num_resolutions)
        )
        self.mid = nn.ModuleList(ResnetBlock(widths[-1], widths[-1]) for _ in range(config.num_res_blocks))
        self.norm_out = GroupNorm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], config.z_channels, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(images)
        for level in self.down:
            x = level(x)
        for block in self.mid:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class UpLevel(nn.Module):
    def __init__(self, cin: int, cout: int, num_blocks: int, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(num_blocks))
        self.upsample_conv = conv3x3(cout, cout) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class Decoder(nn.Module):
    def __init__(self, config: RARTokenizerConfig) -> None:
        super().__init__()
        widths = [config.hidden_channels * m for m in config.channel_mult]
        self.conv_in = conv3x3(config.z_channels, widths[-1])
        self.mid = nn.ModuleList(ResnetBlock(widths[-1], widths[-1]) for _ in range(config.num_res_blocks))
        self.up = nn.ModuleList(
            UpLevel(widths[min(i + 1, len(widths) - 1)], widths[i], config.num_res_blocks, upsample=i != 0)
            for i in range(config.num_resolutions)
        )
        self.norm_out = GroupNorm(widths[0])
        self.conv_out = conv3x3(widths[0], config.num_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for block in self.mid:
            x = block(x)
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Codebook(nn.Module):
    def __init__(self, config: RARTokenizerConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.codebook_size, config.z_channels)

    def nearest(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, z, h, w] -> the nearest row's index (L2) per position, raster order [B, h * w]."""
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        codes = self.embedding.weight
        distances = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1)[None] - 2 * flat @ codes.t()
        return distances.argmin(1).reshape(latents.shape[0], -1)


class VQDecoder(nn.Module):
    """Image tokens [B, N] (raster order) -> images [B, 3, H, W]."""

    def __init__(self, config: RARTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = Decoder(config)
        self.quantize = Codebook(config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unclamped decoder output, float32."""
        batch, n = tokens.shape
        side = math.isqrt(n)
        z = self.quantize.embedding(tokens).reshape(batch, side, side, -1).permute(0, 3, 1, 2)
        return self.decoder(z).float()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Tokens [B, N] -> images [B, 3, H, W] float32, clamped to [0, 1] like the official decode."""
        images = self(tokens)
        return images.clamp(0.0, 1.0) if clamp else images


class VQTokenizer(VQDecoder):
    """The whole MaskGIT-VQGAN (the official `PretrainedTokenizer` keys: encoder, decoder, quantize)."""

    def __init__(self, config: RARTokenizerConfig) -> None:
        super().__init__(config)
        self.encoder = Encoder(config)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] float in [0, 1] -> tokens [B, (H / f) * (W / f)] int64, raster order."""
        return self.quantize.nearest(self.encoder(images))


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] floats -> [B, H, W, 3] uint8 with the official truncation."""
    return (images.clamp(0.0, 1.0) * 255).to(torch.uint8).permute(0, 2, 3, 1)
