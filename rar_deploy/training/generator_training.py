"""Training the demo RAR generator with the official objective: next-token cross-entropy over the raster order
(output i predicts image token i from the cls token, the class and tokens 0 .. i-1), the class replaced by the
null class with probability `class_dropout` so that classifier-free guidance has an unconditional model.

Initialisation as the official `RAR.initialize_weights`: normal(0.02) for linear maps, embeddings and learned
positions, adaLN modulations zero (every block starts as the identity). The paper's randomized-order annealing is
not used: its final stage is this raster order, and on this budget the steps go to raster order alone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rar_deploy.model.generator import RARGenerator
from rar_deploy.model.layers import NORM_TYPES
from rar_deploy.training.recipe import DemoRecipe
from rar_deploy.training.steps import Progress, Reporter, cosine_rate


def init_generator(recipe: DemoRecipe) -> RARGenerator:
    torch.manual_seed(recipe.seed)
    generator = RARGenerator(recipe.generator)
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for name in ("cls_token", "pos_embed", "target_aware_pos_embed", "timesteps_embeddings"):
            nn.init.trunc_normal_(getattr(generator, name), std=0.02)
        for block in [*generator.blocks, generator.adaln_before_head]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
    return generator


def next_token_loss(generator: RARGenerator, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of every image token given its prefix: tokens [B, N], labels [B] (null class allowed)."""
    logits = generator.forward_prefix(labels, tokens[:, :-1], per_class_modulation=True)[0]  # output i: token i
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))


def train_generator(recipe: DemoRecipe, tokens: np.ndarray, labels: np.ndarray,
                    progress: Progress | None = None) -> RARGenerator:
    """Train on token sequences [n, N] of images with class `labels` [n]."""
    generator = init_generator(recipe).train()
    decay, no_decay = [], []
    norm_params = {id(p) for m in generator.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()}
    for name, param in generator.named_parameters():
        plain_matrix = param.dim() == 2 and id(param) not in norm_params and "embed" not in name
        (decay if plain_matrix else no_decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=recipe.generator_lr, betas=(0.9, 0.96))
    rng = np.random.default_rng([recipe.seed, 2])
    all_tokens, all_labels = torch.from_numpy(tokens), torch.from_numpy(labels)
    null = recipe.generator.null_class
    reporter = Reporter("generator", recipe.generator_steps, progress)
    for step in range(recipe.generator_steps):
        picked = torch.from_numpy(rng.integers(0, len(tokens), recipe.generator_batch))
        dropped = torch.from_numpy(rng.random(recipe.generator_batch) < recipe.class_dropout)
        batch_labels = torch.where(dropped, null, all_labels[picked])
        for group in optimizer.param_groups:
            group["lr"] = cosine_rate(step, recipe.generator_steps, recipe.generator_lr, recipe.generator_warmup)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.generator_bfloat16):
            loss = next_token_loss(generator, batch_labels, all_tokens[picked])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(generator.parameters(), 1.0)
        optimizer.step()
        reporter.add(step, loss=loss.item())
    return generator.eval().requires_grad_(False)


@torch.no_grad()
def held_out_nll(generator: RARGenerator, tokens: np.ndarray, labels: np.ndarray, batch: int = 250) -> float:
    """Mean teacher-forced negative log-likelihood per token (nats) of sequences [n, N] given their classes."""
    total = 0.0
    for i in range(0, len(tokens), batch):
        t, y = torch.from_numpy(tokens[i:i + batch]), torch.from_numpy(labels[i:i + batch])
        total += next_token_loss(generator, y, t).item() * len(t)
    return total / len(tokens)
