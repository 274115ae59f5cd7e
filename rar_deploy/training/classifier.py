"""The yardstick's instrument: a small CNN that tells the ten shape classes apart, trained on the real training
images and tokenizer reconstructions of some of them, with random blur (generated images come through the
tokenizer's decoder: its softer edges must not be a new world to it). Its 128 pooled features are the space of
the proxy FID."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rar_deploy.training.recipe import DemoRecipe
from rar_deploy.training.shapes import CLASSES
from rar_deploy.training.steps import Progress, Reporter, as_tensor, cosine_rate

FEATURES = 128


class ShapeClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        widths = (3, 32, 64, 128, FEATURES)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size=3, padding=1) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.GroupNorm(8, b) for b in widths[1:])
        self.head = nn.Linear(FEATURES, len(CLASSES))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> pooled features [B, 128]."""
        x = images * 2 - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x)))
            if i < len(self.convs) - 1:
                x = F.max_pool2d(x, 2)
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _blurred(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Half of the batch blurred by a 3 x 3 box (edges like a tokenizer's reconstruction), the rest as is."""
    soft = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    chosen = torch.from_numpy(rng.random(len(images)) < 0.5)[:, None, None, None]
    return torch.where(chosen, soft, images)


def train_classifier(recipe: DemoRecipe, images: np.ndarray, labels: np.ndarray,
                     progress: Progress | None = None) -> ShapeClassifier:
    torch.manual_seed(recipe.seed + 3)
    model = ShapeClassifier().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.classifier_lr, weight_decay=1e-4)
    rng = np.random.default_rng([recipe.seed, 3])
    reporter = Reporter("classifier", recipe.classifier_steps, progress)
    for step in range(recipe.classifier_steps):
        picked = rng.integers(0, len(images), recipe.classifier_batch)
        batch = _blurred(as_tensor(images[picked]), rng)
        flips = rng.random(2) < 0.5  # shapes are classes whatever their orientation
        batch = batch.flip(-1) if flips[0] else batch
        batch = batch.flip(-2) if flips[1] else batch
        for group in optimizer.param_groups:
            group["lr"] = cosine_rate(step, recipe.classifier_steps, recipe.classifier_lr, warmup=50)
        loss = F.cross_entropy(model(batch), torch.from_numpy(labels[picked]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        reporter.add(step, loss=loss.item())
    return model.eval().requires_grad_(False)


@torch.no_grad()
def classify(model: ShapeClassifier, images: np.ndarray, batch: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, H, W, 3] -> (predicted classes [n], features [n, 128] float64)."""
    predicted, features = [], []
    for i in range(0, len(images), batch):
        f = model.features(as_tensor(images[i:i + batch]))
        predicted.append(model.head(f).argmax(1).numpy())
        features.append(f.double().numpy())
    return np.concatenate(predicted), np.concatenate(features)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a [n, d] and b [m, d] (FID's formula).
    tr sqrt(S_a S_b) is the sum of the square roots of the eigenvalues of S_a S_b (real, >= 0 for PSD S)."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b)
    cross = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
