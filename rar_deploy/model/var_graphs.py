"""VAR as deployment graphs: one scale step for every scale (a dynamic token count against a static KV cache)
and the VQVAE decoder, as nn.Modules around the reference (model/var.py).

The runtime owns the cache ([2B, H, L, Dh] per layer, written at the scale's positions from the step's
keys/values), f_hat (the VQVAE estimate, [B, Cvae, P, P]) and per-scale constants: the scale's positions,
the index of its Phi convolution, and the area (into the scale) and bicubic (out of it) resize matrices.
Resizing is linear and separable, so `down @ f_hat @ down^T` and `up @ h @ up^T` with the area and bicubic
matrices of contract.var_scales reproduce F.interpolate (to float rounding) with plain matmuls that every
backend runs for any scale size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rar_deploy.contract.config import VARConfig
from rar_deploy.contract.graphs import var_scales
from rar_deploy.model.graphs import uint8_images
from rar_deploy.model.guidance import gumbel_max
from rar_deploy.model.var import VARVQVAE, VARGenerator, guided_logits


def scale_constants(config: VARConfig, num_phi: int) -> list[dict[str, torch.Tensor]]:
    """The manifest's scales (contract.var_scales) as a var_step's inputs: positions [pn, pn], phi_index [1],
    down [pn, P], up [P, pn]."""
    return [{"positions": torch.arange(scale["begin"], scale["end"]).view(scale["side"], scale["side"]),
             "phi_index": torch.tensor([scale["phi_index"]]), "down": torch.tensor(scale["down"]),
             "up": torch.tensor(scale["up"])} for scale in var_scales(config, num_phi)]


def filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The official top-k (k > 0) then top-p (p > 0) filtering of [..., V] logits; k and p are [1] tensors."""
    vocab = logits.shape[-1]
    ordered = logits.sort(dim=-1, descending=True).values
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    kth = ordered.gather(-1, (k - 1).expand(*logits.shape[:-1], 1))
    logits = logits.masked_fill(logits < kth, float("-inf"))
    ascending, order = logits.sort(dim=-1)
    remove = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
    remove = remove & (top_p > 0) & (torch.arange(vocab, device=logits.device) < vocab - 1)  # the largest is kept
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def scale_attention(q, k, v, k_cache, v_cache, valid, scale: float) -> torch.Tensor:
    """A scale's n queries over the earlier scales in the static cache (slots where `valid`) and the scale's own
    n keys: the standard attention pattern (scores, additive mask, softmax, weighted sum) over the cache and the
    scale's keys joined, which TensorRT fuses into one attention kernel. q, k, v [R, H, n, Dh]; caches
    [R, H, L, Dh] -> [R, n, H * Dh]."""
    keys, values = torch.cat((k_cache, k), dim=2), torch.cat((v_cache, v), dim=2)
    visible = torch.cat((valid, torch.ones(k.shape[2], dtype=torch.bool, device=valid.device)))
    bias = torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill(~visible, float("-inf"))
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias.view(1, -1), scale=scale)
    return out.transpose(1, 2).flatten(2)


class VARScaleStepGraph(nn.Module):
    """One scale for B images (guided: 2B rows, conditional then unconditional):
    class_labels [B], f_hat [B, Cvae, P, P], positions [pn, pn] (the scale's n = pn^2 sequence positions),
    phi_index [1], down [pn, P], up [P, pn], guidance [B] (t = cfg * scale / (K - 1)), top_k [1], top_p [1],
    temperature [B], noise [B, pn, pn, V] uniform (grids, so that export sees n as pn * pn),
    per layer k_cache.i / v_cache.i [2B, H, L, Dh] holding positions < positions[0]
    -> tokens [B, n], f_hat_out, guided logits [B, n, V], keys / values of this scale [depth, 2B, H, n, Dh]."""


    def __init__(self, generator: VARGenerator, vqvae: VARVQVAE) -> None:
        super().__init__()
        self.generator, self.quantizer = generator, vqvae.quantize
        phis = self.quantizer.quant_resi.qresi_ls  # float32 in every precision, as f_hat (a small convolution)
        self.phi_weight = nn.Parameter(torch.stack([phi.weight for phi in phis]).float(), requires_grad=False)
        self.phi_bias = nn.Parameter(torch.stack([phi.bias for phi in phis]).float(), requires_grad=False)
        self.phi_ratio = phis[0].ratio

    def forward(self, class_labels, f_hat, positions, phi_index, down, up, guidance, top_k, top_p, temperature,
                noise, k_cache: list, v_cache: list):
        g, c = self.generator, self.generator.config
        dtype = g.class_emb.weight.dtype  # the precision's: f_hat and the resize matrices stay float32
        positions, noise = positions.flatten(), noise.flatten(1, 2)
        batch, n = class_labels.shape[0], positions.shape[0]
        rows = torch.cat((class_labels, torch.full_like(class_labels, c.null_class)))
        level_positions = g.level_positions()[0, positions]  # [n, C]
        first = g.class_emb(rows)[:, None] + g.pos_start[:, :1]  # scale 0: one token (pn0 = 1)
        scale_input = (down @ f_hat @ down.t()).flatten(2).transpose(1, 2).to(dtype)  # [B, n, Cvae]
        later = g.word_embed(scale_input).repeat(2, 1, 1)
        x = torch.where(positions[0] == 0, first.expand(-1, n, -1), later) + level_positions
        cond = g.class_emb(rows)
        valid = torch.arange(k_cache[0].shape[-2], device=positions.device) < positions[0]  # earlier scales' slots
        keys, values = [], []
        for layer, block in enumerate(g.blocks):

            def attend(q, k, v, layer=layer, block=block):
                keys.append(k)
                values.append(v)
                return scale_attention(q, k, v, k_cache[layer], v_cache[layer], valid, block.attn.softmax_scale)

            x = block(x, cond, attend)
        guided = guided_logits(g.logits(x, cond), guidance)
        filtered = filter_top_k_top_p(guided, top_k, top_p)
        vocab = guided.shape[-1]
        tokens = gumbel_max(filtered.reshape(-1, vocab), noise.reshape(-1, vocab),
                            temperature[:, None].expand(batch, n).reshape(-1)).view(batch, n)
        pn = down.shape[0]
        h = self.quantizer.embedding(tokens).float().transpose(1, 2).reshape(batch, -1, pn, pn)
        h = up @ h @ up.t()
        weight, bias = self.phi_weight[phi_index[0]], self.phi_bias[phi_index[0]]
        h = h * (1 - self.phi_ratio) + F.conv2d(h, weight, bias, padding=1) * self.phi_ratio
        return tokens, f_hat + h, guided, torch.stack(keys), torch.stack(values)


class VARDecoderGraph(nn.Module):
    """f_hat [B, Cvae, P, P] -> images [B, 3, H, W] in [0, 1] and images_uint8 [B, H, W, 3] (floor of x * 255)."""


    def __init__(self, vqvae: VARVQVAE) -> None:
        super().__init__()
        self.vqvae = vqvae

    def forward(self, f_hat):
        images = self.vqvae.decode_fhat(f_hat.to(self.vqvae.post_quant_conv.weight.dtype)).float()
        return images, uint8_images(images)


# graph name -> its module from (generator, VQVAE)
VAR_GRAPH_MODULES = {"var_step": VARScaleStepGraph, "var_decoder": lambda generator, vqvae: VARDecoderGraph(vqvae)}
