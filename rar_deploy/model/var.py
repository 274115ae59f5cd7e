"""VAR, the reference: the next-scale generator and the multi-scale VQVAE's decoding side, with the official
parameter names and shapes (FoundationVision/VAR `models/var.py`, `basic_var.py`, `quant.py`,
`basic_vae.py`, `vqvae.py`), in our own code.

Generator: scale si's tokens all attend to every token of scales <= si (a block-causal mask; with a KV
cache, a scale attends to the cache and itself). Tokens of scale 0 are the class embedding + pos_start;
those of scale si > 0 are word_embed of the running VQVAE estimate f_hat, area-downsampled to the scale.
Every position adds lvl_embed(level) + pos_1LC. Blocks are adaLN-modulated (SiLU + Linear of the class
embedding: gamma1, gamma2, scale1, scale2, shift1, shift2) with L2-normalised q and k (scale_mul_1H11).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rar_deploy.contract.config import VARConfig, VARTokenizerConfig
from rar_deploy.contract.graphs import phi_index

VAR_NORM_EPS = 1e-6
MAX_SCALE_MUL = float(np.log(100.0))


def scale_levels(config: VARConfig) -> torch.Tensor:
    """The scale index of every position, [L]."""
    return torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(config.patch_nums)])


def block_causal_mask(config: VARConfig) -> torch.Tensor:
    """[1, 1, L, L]: 0 where a position may attend (its own scale and earlier ones), -inf elsewhere."""
    levels = scale_levels(config)
    return torch.where(levels.view(-1, 1) >= levels.view(1, -1), 0.0, -torch.inf).view(1, 1, len(levels), -1)


class VARAttention(nn.Module):
    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        c = config
        self.num_heads, self.head_dim, self.l2_norm = c.num_heads, c.head_dim, c.attn_l2_norm
        self.mat_qkv = nn.Linear(c.embed_dim, 3 * c.embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(c.embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(c.embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(c.embed_dim))
        if self.l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, c.num_heads, 1, 1), 4.0).log())
        self.proj = nn.Linear(c.embed_dim, c.embed_dim)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, C] -> q, k, v [B, H, L, Dh], q and k normalised (and q scaled) as the official."""
        b, n, _ = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        # the official F.linear(x, mat_qkv.weight, bias), through the module so that its hooks see the input
        # (quantization calibration, fp8 inputs)
        q, k, v = (self.mat_qkv(x) + bias).view(b, n, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp()
            k = F.normalize(k, dim=-1)
        return q, k, v

    @property
    def softmax_scale(self) -> float:
        return 1.0 if self.l2_norm else 0.25 / self.head_dim**0.5

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q [B, H, n, Dh] over k, v [B, H, S, Dh] -> heads joined [B, n, C], before `proj`."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.softmax_scale)
        return out.transpose(1, 2).flatten(2)


class VARFeedForward(nn.Module):
    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.mlp_size)
        self.fc2 = nn.Linear(config.mlp_size, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def guided_logits(logits: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Rows [cond; uncond] of [2B, ...] logits -> (1 + t) cond - t uncond; t a number or [B] (VAR's schedule
    gives t = cfg * scale / (K - 1))."""
    batch = logits.shape[0] // 2
    t = torch.as_tensor(t, dtype=logits.dtype).reshape(-1, *[1] * (logits.dim() - 1))
    return (1 + t) * logits[:batch] - t * logits[batch:]


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """VAR's LayerNorm without affine parameters (eps 1e-6), in float32."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=VAR_NORM_EPS).to(x.dtype)


class VARBlock(nn.Module):
    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        self.attn = VARAttention(config)
        self.ffn = VARFeedForward(config)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(config.embed_dim, 6 * config.embed_dim))

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """cond [B, C] -> gamma1, gamma2, scale1, scale2, shift1, shift2, each [B, 1, C]."""
        return self.ada_lin(cond).view(cond.shape[0], 1, 6, -1).unbind(2)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, attend: Callable[..., torch.Tensor]) -> torch.Tensor:
        """attend(q, k, v) -> [B, n, C] before `proj`: the caller's attention (full, growing or static cache)."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.modulation(cond)
        q, k, v = self.attn.qkv(layer_norm(x) * (1 + scale1) + shift1)
        x = x + self.attn.proj(attend(q, k, v)) * gamma1
        return x + self.ffn(layer_norm(x) * (1 + scale2) + shift2) * gamma2


class VARCache:
    """Keys and values of the scales generated so far (the reference grows it; graphs use a static one)."""

    def __init__(self, depth: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * depth
        self.values: list[torch.Tensor | None] = [None] * depth

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k, v = torch.cat((self.keys[layer], k), dim=2), torch.cat((self.values[layer], v), dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class VARHeadNorm(nn.Module):
    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(config.embed_dim, 2 * config.embed_dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(cond.shape[0], 1, 2, -1).unbind(2)
        return layer_norm(x) * (1 + scale) + shift


class VARGenerator(nn.Module):
    """The VAR transformer. Parameter and buffer names are the official ones (`load_state_dict` of a
    released `var_d*.pth` works as is)."""

    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        c = self.config = config
        self.word_embed = nn.Linear(c.vae_channels, c.embed_dim)
        self.class_emb = nn.Embedding(c.num_classes + 1, c.embed_dim)
        self.pos_start = nn.Parameter(torch.zeros(1, c.patch_nums[0] ** 2, c.embed_dim))
        self.pos_1LC = nn.Parameter(torch.zeros(1, c.seq_len, c.embed_dim))
        self.lvl_embed = nn.Embedding(c.num_scales, c.embed_dim)
        self.blocks = nn.ModuleList(VARBlock(c) for _ in range(c.depth))
        self.head_nm = VARHeadNorm(c)
        self.head = nn.Linear(c.embed_dim, c.codebook_size)
        self.register_buffer("lvl_1L", scale_levels(c).view(1, -1))
        self.register_buffer("attn_bias_for_masking", block_causal_mask(c))

    def level_positions(self) -> torch.Tensor:
        """lvl_embed(level) + pos_1LC, [1, L, C]: what every position adds to its input."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def first_scale_input(self, class_labels: torch.Tensor) -> torch.Tensor:
        """Class embedding + pos_start + level/position of scale 0: [B, pn0^2, C]."""
        n = self.config.patch_nums[0] ** 2
        sos = self.class_emb(class_labels).unsqueeze(1)
        return sos + self.pos_start + self.level_positions()[:, :n]

    def scale_input(self, f_hat_scale: torch.Tensor, scale: int) -> torch.Tensor:
        """f_hat area-downsampled to `scale` [B, Cvae, pn, pn] -> that scale's input tokens [B, pn^2, C]."""
        begin, end = self.config.scale_ranges()[scale]
        tokens = f_hat_scale.flatten(2).transpose(1, 2)
        return self.word_embed(tokens) + self.level_positions()[:, begin:end]

    def logits(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(x, cond)).float()

    def run(self, x: torch.Tensor, class_labels: torch.Tensor, cache: VARCache | None,
            mask: torch.Tensor | None) -> torch.Tensor:
        cond = self.class_emb(class_labels)
        for layer, block in enumerate(self.blocks):

            def attend(q, k, v, layer=layer, block=block):
                if cache is not None:
                    k, v = cache.append(layer, k, v)
                return block.attn.attention(q, k, v, mask)

            x = block(x, cond, attend)
        return self.logits(x, cond)

    def forward(self, class_labels: torch.Tensor, scale_inputs: torch.Tensor) -> torch.Tensor:
        """Teacher forcing, as the official forward: scale_inputs [B, L - pn0^2, Cvae] (the VQVAE's
        `idxBl_to_var_input`) -> logits [B, L, V]."""
        first = self.first_scale_input(class_labels)
        rest = self.word_embed(scale_inputs) + self.level_positions()[:, first.shape[1]:]
        return self.run(torch.cat((first, rest), dim=1), class_labels, None, self.attn_bias_for_masking)


# -- the multi-scale VQVAE: quantiser embedding, Phi convolutions, decoder ------------------------------------------


class Phi(nn.Conv2d):
    """(1 - r) h + r conv3x3(h): the quantiser's residual refinement of an upsampled scale."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = ratio

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class VARQuantizer(nn.Module):
    """What decoding needs of the official VectorQuantizer2: the codebook and the partially shared Phi."""

    def __init__(self, config: VARTokenizerConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.codebook_size, config.vae_channels)
        self.quant_resi = nn.Module()
        self.quant_resi.qresi_ls = nn.ModuleList(Phi(config.vae_channels, config.quant_resi)
                                                 for _ in range(config.num_phi))
        self.num_phi = config.num_phi

    def phi(self, scale: int, num_scales: int) -> Phi:
        return self.quant_resi.qresi_ls[phi_index(scale, num_scales, self.num_phi)]

    def add_scale(self, f_hat: torch.Tensor, tokens: torch.Tensor, scale: int,
                  patch_nums: tuple[int, ...]) -> torch.Tensor:
        """f_hat [B, Cvae, H, W] + Phi(bicubic upsample of scale `scale`'s token embeddings [B, pn^2])."""
        pn, size = patch_nums[scale], patch_nums[-1]
        h = self.embedding(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, pn, pn)
        if scale != len(patch_nums) - 1:
            h = F.interpolate(h, size=(size, size), mode="bicubic")
        return f_hat + self.phi(scale, len(patch_nums))(h)


class ResnetBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(32, channels_in, eps=1e-6)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(32, channels_out, eps=1e-6)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.nin_shortcut(x) + self.conv2(F.silu(self.norm2(h)))


class AttnBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c**-0.5, dim=2)  # [B, HW (query), HW (key)]
        out = torch.bmm(v, weights.transpose(1, 2)).view(b, c, h, w)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class VARDecoder(nn.Module):
    def __init__(self, config: VARTokenizerConfig) -> None:
        super().__init__()
        c, levels = config, len(config.channel_mult)
        channels = c.hidden_channels * c.channel_mult[-1]
        self.conv_in = nn.Conv2d(c.vae_channels, channels, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1 = ResnetBlock(channels, channels), AttnBlock(channels)
        self.mid.block_2 = ResnetBlock(channels, channels)
        self.up = nn.ModuleList([nn.Module() for _ in range(levels)])
        for level in reversed(range(levels)):
            up, out = self.up[level], c.hidden_channels * c.channel_mult[level]
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                up.block.append(ResnetBlock(channels, out))
                channels = out
                if level == levels - 1:
                    up.attn.append(AttnBlock(channels))
            if level != 0:
                up.upsample = Upsample(channels)
        self.norm_out = nn.GroupNorm(32, channels, eps=1e-6)
        self.conv_out = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for index, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[index](h)
            if level != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VARVQVAE(nn.Module):
    """Decoding side of the official VQVAE (`quantize`, `post_quant_conv`, `decoder`); the checkpoint's
    encoder, quant_conv and training statistics are dropped on load."""

    def __init__(self, config: VARTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.quantize = VARQuantizer(config)
        self.post_quant_conv = nn.Conv2d(config.vae_channels, config.vae_channels, 3, padding=1)
        self.decoder = VARDecoder(config)

    def tokens_to_fhat(self, tokens: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
        """All scales' tokens [B, L] -> f_hat [B, Cvae, pn_K, pn_K] (the official `embed_to_fhat`, last one)."""
        size = patch_nums[-1]
        f_hat = torch.zeros(tokens.shape[0], self.config.vae_channels, size, size, device=tokens.device)
        begin = 0
        for scale, pn in enumerate(patch_nums):
            f_hat = self.quantize.add_scale(f_hat, tokens[:, begin:begin + pn * pn], scale, patch_nums)
            begin += pn * pn
        return f_hat

    def teacher_forcing_inputs(self, tokens: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
        """The generator's inputs for scales 1 .. K-1 from all tokens [B, L]: f_hat after each scale,
        area-downsampled to the next (the official `idxBl_to_var_input`) -> [B, L - pn0^2, Cvae]."""
        size = patch_nums[-1]
        f_hat = torch.zeros(tokens.shape[0], self.config.vae_channels, size, size, device=tokens.device)
        inputs, begin = [], 0
        for scale, pn in enumerate(patch_nums[:-1]):
            f_hat = self.quantize.add_scale(f_hat, tokens[:, begin:begin + pn * pn], scale, patch_nums)
            begin += pn * pn
            nxt = patch_nums[scale + 1]
            inputs.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat -> images [B, 3, H, W] in [0, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1).add(1).mul(0.5)

    def forward(self, tokens: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
        return self.decode_fhat(self.tokens_to_fhat(tokens, patch_nums))
