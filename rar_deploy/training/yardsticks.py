"""Quality yardsticks of any export of the demo model, on any backend: what a speed trick (reduced-precision
weights, parallel decoding, batching) costs in quality is read off these numbers.

- class accuracy of generated images, by the demo's classifier (beside its accuracy on real held-out images);
- proxy FID: the Frechet distance between generated and real held-out images in the classifier's features;
- the teacher-forced token NLL of held-out images' token sequences (the shipped tokenizer's encoder makes them),
  through the export's own decode step, and the per-token entropy of the model's distribution there (with the
  share of tokens whose most likely value has a probability under 5 %, the figure GSD reports for ImageNet
  models: their 50-95 %);
- samples as a grid, one row per class.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rar_deploy.contract.config import GENERATOR_PRESETS
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.families import RARSampling, rar_inputs
from rar_deploy.runtime.pipeline import RARPipeline
from rar_deploy.tools.parity import drive_keeping_logits
from rar_deploy.tools.sample_files import GridWriter
from rar_deploy.training.classifier import classify, frechet_distance
from rar_deploy.training.demo_model import (
    SHIPPED,
    TOKENIZER_FILE,
    demo_split,
    load_classifier,
    load_full_tokenizer,
    read_record,
)
from rar_deploy.training.recipe import DemoRecipe
from rar_deploy.training.shapes import CLASSES
from rar_deploy.training.tokenizer_training import encode_images


@dataclass(frozen=True)
class Quality:
    guidance_scale: float
    guidance_pow: float
    temperature: float
    images: int
    accuracy: float  # of generated images
    proxy_fid: float  # generated vs real held-out
    per_class_accuracy: list[float]
    parallel_window: int = 0  # speculative Jacobi decoding's drafts per image (0: one token a decode call)
    passes_per_image: float = 0.0  # decode calls an image took


@dataclass(frozen=True)
class Likelihood:
    sequences: int
    token_nll_nats: float
    entropy_bits: float  # mean per-token entropy of the model's (unguided, T = 1) distribution
    top1_under_5_percent: float  # share of tokens whose top-1 probability is under 0.05
    top1_agreement: float  # share of held-out tokens that are the model's most likely value


@dataclass(frozen=True)
class Divergence:
    sequences: int
    kl_nats: float  # mean per token of KL(reference || this export)
    kl_p99_nats: float  # its 99th percentile over tokens
    top1_agreement: float  # share of tokens where both have the same most likely value


class Yardsticks:
    """The instruments (classifier, real held-out images and their features and token sequences) made once, and
    the measurements of one export."""

    def __init__(self, pipeline: RARPipeline, weights: Path = SHIPPED) -> None:
        if pipeline.config != GENERATOR_PRESETS["demo"]:
            raise RARDeployError(f"{pipeline.artifacts.directory} is not an export of the demo model (make it with "
                                 "`rar-deploy make-checkpoint --preset demo`): the yardsticks are trained for it")
        self.pipeline, self.weights = pipeline, Path(weights)
        self.record = read_record(self.weights)
        self.recipe = DemoRecipe(**self.record["recipe"])
        self.classifier = load_classifier(self.weights)
        self.real_images, self.real_labels = demo_split(self.recipe, "held_out")
        self.real_classes, self.real_features = classify(self.classifier, self.real_images)

    @property
    def real_accuracy(self) -> float:
        return float((self.real_classes == self.real_labels).mean())

    def generated(self, sampling: RARSampling | None, per_class: int, seed: int = 0,
                  progress: Callable | None = None, parallel_window: int = 0) -> tuple[Quality, np.ndarray]:
        """The quality of per_class images of every class drawn with `sampling` (None: the published values), by
        speculative decoding with parallel_window drafts when not 0, and the images (class by class)."""
        sampling = sampling or RARSampling()
        labels = np.repeat(np.arange(len(CLASSES)), per_class)
        images = self.pipeline.generate(labels.tolist(), sampling=sampling, seed=seed, progress=progress,
                                        parallel_window=parallel_window).images
        classes, features = classify(self.classifier, images)
        resolved = sampling.resolved(self.pipeline.artifacts.sampling_defaults)
        correct = (classes == labels).reshape(len(CLASSES), per_class).mean(1)
        return Quality(resolved.guidance_scale, resolved.guidance_pow, resolved.temperature, int(len(images)),
                       float(correct.mean()), frechet_distance(features, self.real_features),
                       [round(float(c), 3) for c in correct], parallel_window,
                       float(self.pipeline.decode_calls.mean())), images

    def likelihood(self) -> Likelihood:
        """Teacher-forced through the export's decode step (unguided: the class rows alone, as trained)."""
        tokens = self.held_out_tokens()
        batch = self.pipeline.artifacts.check_batch_size(None)
        nll, entropy, peaked, agree = [], [], [], []
        for start in range(0, len(tokens), batch):
            chunk, labels = tokens[start:start + batch], self.real_labels[start:start + batch]
            log_p = _teacher_forced_log_p(self.pipeline, chunk, labels)
            target = torch.from_numpy(chunk)
            nll.append(-log_p.gather(-1, target[..., None])[..., 0].numpy())
            p = log_p.exp()
            entropy.append(-(p * log_p).sum(-1).numpy() / np.log(2))
            peaked.append(p.max(-1).values.numpy() < 0.05)
            agree.append((log_p.argmax(-1) == target).numpy())
        nll, entropy, peaked, agree = (np.concatenate(x) for x in (nll, entropy, peaked, agree))
        return Likelihood(int(len(tokens)), float(nll.mean()), float(entropy.mean()), float(peaked.mean()),
                          float(agree.mean()))

    def divergence(self, reference: RARPipeline) -> Divergence:
        """How far this export's next-token distributions are from `reference`'s (another export of the demo, for
        example its float32 one), teacher-forced on the held-out sequences, unguided."""
        tokens = self.held_out_tokens()
        batch = min(self.pipeline.artifacts.check_batch_size(None), reference.artifacts.check_batch_size(None))
        kl, agree = [], []
        for start in range(0, len(tokens), batch):
            chunk, labels = tokens[start:start + batch], self.real_labels[start:start + batch]
            log_q = _teacher_forced_log_p(self.pipeline, chunk, labels)
            log_p = _teacher_forced_log_p(reference, chunk, labels)
            kl.append((log_p.exp() * (log_p - log_q)).sum(-1).numpy())
            agree.append((log_p.argmax(-1) == log_q.argmax(-1)).numpy())
        kl, agree = np.concatenate(kl), np.concatenate(agree)
        return Divergence(int(len(tokens)), float(kl.mean()), float(np.percentile(kl, 99)), float(agree.mean()))

    def held_out_tokens(self) -> np.ndarray:
        """The held-out images encoded by the demo tokenizer's encoder (the export holds only its decoder)."""
        return encode_images(load_full_tokenizer(self.weights / TOKENIZER_FILE), self.real_images)


def _teacher_forced_log_p(pipeline: RARPipeline, tokens: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """log-probabilities [B, N, V] (float64) of the model's unguided T = 1 distribution at every position of the
    sequences `tokens` [B, N] of classes `labels`, through the export's own decode step."""
    sampling = RARSampling(guidance_scale=0.0, guidance_pow=0.0, temperature=1.0)
    inputs = rar_inputs(pipeline.config, labels, [sampling] * len(tokens), [(0, i) for i in range(len(tokens))])
    _, logits = drive_keeping_logits(pipeline.loop, inputs, lambda p: tokens[:, p - 2] if p >= 2 else None)
    return torch.log_softmax(torch.from_numpy(logits).double(), -1)


def quality_rows(results: list[Quality], real_accuracy: float) -> list[str]:
    """A markdown table of generation results, with the real held-out images' accuracy beside them."""
    rows = ["| guidance scale | pow | temperature | parallel window | passes/image | images | class accuracy | "
            "proxy FID |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows += [f"| {q.guidance_scale:g} | {q.guidance_pow:g} | {q.temperature:g} | {q.parallel_window or '-'} | "
             f"{q.passes_per_image:.1f} | {q.images} | {q.accuracy:.3f} | {q.proxy_fid:.2f} |" for q in results]
    rows.append(f"| real held-out images | | | | | | {real_accuracy:.3f} | 0 |")
    return rows


def as_dict(result: Quality | Likelihood | Divergence) -> dict:
    return asdict(result)


QUALITY_FILE = "quality.json"


def write_grid(folder: Path, row: int, images: np.ndarray, per_class: int) -> str:
    """grid-<row>.png in `folder`: one row of images per class; returns its name."""
    name = f"grid-{row}.png"
    grid = GridWriter(folder / name, len(images), per_class, *images.shape[1:3])
    for image in images:
        grid.add(image)
    grid.close()
    return name


def quality_written(path: Path) -> frozenset[str] | None:
    """The files demo-quality wrote in a folder (its quality.json lists them), or None."""
    try:
        return frozenset(str(name) for name in json.loads((path / QUALITY_FILE).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
