"""Training the demo tokenizer: a MaskGIT-VQGAN (the official layout, encoder included) on the shapes.

Loss: mean squared reconstruction error plus the commitment term of the official `VectorQuantizer` loss
(straight-through gradient). The first steps train without quantization (an autoencoder, so that latents mean
something), then k-means over latents of the training images sets the codebook, which from there on follows the
latents it is chosen for as an exponential moving average (VQ-VAE-2's update; steadier than the codebook loss
here). Codes that no latent chose for `dead_code_every` steps restart at latents of the batch, so that the whole
codebook is used. Inference is the official nearest-row lookup, unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rar_deploy.model.tokenizer import VQTokenizer
from rar_deploy.training.recipe import DemoRecipe
from rar_deploy.training.steps import Progress, Reporter, as_tensor, cosine_rate


def init_tokenizer(recipe: DemoRecipe) -> VQTokenizer:
    torch.manual_seed(recipe.seed)
    return VQTokenizer(recipe.tokenizer)


def _batches(recipe: DemoRecipe, images: np.ndarray, rng: np.random.Generator):
    """(step, steps, crops uint8) for every step: crops of the token grid first, then whole images."""
    factor = recipe.tokenizer.upsample_factor
    phases = [(recipe.tokenizer_crop, recipe.tokenizer_crop_steps, recipe.tokenizer_crop_batch),
              (recipe.image_size, recipe.tokenizer_full_steps, recipe.tokenizer_full_batch)]
    steps, step = sum(n for _, n, _ in phases), 0
    for crop, phase_steps, batch in phases:
        for _ in range(phase_steps):
            picked = rng.integers(0, len(images), batch)
            top, left = rng.integers(0, (recipe.image_size - crop) // factor + 1, (2, batch)) * factor
            yield step, steps, np.stack([images[i, t:t + crop, s:s + crop] for i, t, s in zip(picked, top, left)])
            step += 1


def _flat(latents: torch.Tensor) -> torch.Tensor:
    return latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])


def train_tokenizer(recipe: DemoRecipe, images: np.ndarray, progress: Progress | None = None) -> VQTokenizer:
    """Train on uint8 images [n, H, W, 3]."""
    tokenizer = init_tokenizer(recipe).train()
    codebook = tokenizer.quantize.embedding.weight
    codebook.requires_grad_(False)  # moved by the moving average, not by the optimizer
    optimizer = torch.optim.Adam([p for p in tokenizer.parameters() if p.requires_grad], lr=recipe.tokenizer_lr)
    rng = np.random.default_rng([recipe.seed, 1])
    size = recipe.tokenizer.codebook_size
    counts, sums = torch.zeros(size), torch.zeros_like(codebook)
    last_used = np.zeros(size, np.int64)
    reporter = None
    for step, steps, crops in _batches(recipe, images, rng):
        reporter = reporter or Reporter("tokenizer", steps, progress)
        quantizing = step >= recipe.tokenizer_warmup
        if step == recipe.tokenizer_warmup:
            codebook.copy_(_kmeans(tokenizer, images, size, rng))
            counts.fill_(1.0), sums.copy_(codebook)
        for group in optimizer.param_groups:
            group["lr"] = cosine_rate(step, steps, recipe.tokenizer_lr, warmup=100)
        batch = as_tensor(crops)
        latents = tokenizer.encoder(batch)
        flat = _flat(latents)
        if quantizing:
            codes = tokenizer.quantize.nearest(latents.detach()).reshape(-1)
            quantized = codebook[codes]
            commitment = F.mse_loss(flat, quantized)
            flat = flat + (quantized - flat).detach()
        else:
            commitment = torch.zeros(())
        z = flat.reshape(latents.shape[0], *latents.shape[2:], -1).permute(0, 3, 1, 2)
        reconstruction = F.mse_loss(tokenizer.decoder(z), batch)
        optimizer.zero_grad(set_to_none=True)
        (reconstruction + recipe.commitment * commitment).backward()
        optimizer.step()
        if quantizing:
            _moving_average(codebook, counts, sums, codes, _flat(latents.detach()), recipe.codebook_decay)
            last_used[np.unique(codes.numpy())] = step
            if (step + 1) % recipe.dead_code_every == 0:
                _restart_dead_codes(codebook, counts, sums, last_used, step, recipe.dead_code_every,
                                    _flat(latents.detach()), rng)
        used = float((last_used >= step + 1 - recipe.dead_code_every).sum()) if quantizing else 0.0
        reporter.add(step, mse=reconstruction.item(), commitment=commitment.item(), codes_used=used)
    return tokenizer.eval().requires_grad_(False)


@torch.no_grad()
def _kmeans(tokenizer: VQTokenizer, images: np.ndarray, size: int, rng: np.random.Generator,
            samples: int = 512, iterations: int = 20) -> torch.Tensor:
    """`size` centres of the latents of `samples` training images (k-means, seeded)."""
    picked = rng.choice(len(images), min(samples, len(images)), replace=False)
    latents = _flat(tokenizer.encoder(as_tensor(images[np.sort(picked)])))
    centres = latents[torch.from_numpy(rng.choice(len(latents), size, replace=False))].clone()
    for _ in range(iterations):
        nearest = torch.cdist(latents, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, nearest, latents)
        counts = torch.bincount(nearest, minlength=size).float()
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
    return centres


@torch.no_grad()
def _moving_average(codebook: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor, codes: torch.Tensor,
                    latents: torch.Tensor, decay: float) -> None:
    counts.mul_(decay).add_(torch.bincount(codes, minlength=len(counts)).float(), alpha=1 - decay)
    sums.mul_(decay).add_(torch.zeros_like(sums).index_add_(0, codes, latents), alpha=1 - decay)
    codebook.copy_(sums / counts.clamp(min=1e-5)[:, None])


@torch.no_grad()
def _restart_dead_codes(codebook: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor, last_used: np.ndarray,
                        step: int, window: int, latents: torch.Tensor, rng: np.random.Generator) -> None:
    dead = np.flatnonzero(last_used < step + 1 - window)
    if len(dead):
        chosen = latents[torch.from_numpy(rng.integers(0, len(latents), len(dead)))]
        index = torch.from_numpy(dead)
        codebook[index], counts[index], sums[index] = chosen, 1.0, chosen
        last_used[dead] = step


@torch.no_grad()
def encode_images(tokenizer: VQTokenizer, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """uint8 images [n, H, W, 3] -> tokens [n, N] int64 (the official encoder and nearest-row lookup)."""
    return np.concatenate([tokenizer.encode(as_tensor(images[i:i + batch])).numpy()
                           for i in range(0, len(images), batch)])
