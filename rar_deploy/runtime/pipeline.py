"""The generation loop and the Python API: RARPipeline.from_artifacts(dir, backend=...)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import RARDeployError
from ..sampling import check_class_labels, guidance_schedule, sampling_noise
from .artifacts import Artifacts
from .backends import Backend, OnnxRuntimeBackend, TorchBackend

BACKENDS = ("onnxruntime", "torch", "tensorrt")
# progress(done, total) counts decode steps (N per image) then decoded images
Progress = Callable[[int, int], None]


def generate_batch(backend: Backend, class_labels: torch.Tensor, schedule: np.ndarray, temperature: float,
                   noise: np.ndarray, on_step: Callable[[], None] | None = None) -> np.ndarray:
    """Prefill, N-1 decode steps with the cache written on the backend's device; tokens [B, N]."""
    batch = class_labels.shape[0]
    backend.start(class_labels, torch.from_numpy(schedule), torch.full((batch,), float(temperature)),
                  torch.from_numpy(np.ascontiguousarray(noise.transpose(1, 0, 2))))
    backend.prefill()
    on_step and on_step()
    for t in range(1, backend.config.image_seq_len):
        backend.step(t)
        on_step and on_step()
    return backend.tokens()


class RARPipeline:
    """Generate images from an artifact directory with one backend."""

    def __init__(self, artifacts: Artifacts, backend: Backend) -> None:
        self.artifacts = artifacts
        self.backend = backend
        self.config = artifacts.config

    @classmethod
    def from_artifacts(cls, directory: str | Path, backend: str = "onnxruntime", device: str | None = None,
                       ckpt: str | None = None, tokenizer: str | None = None) -> "RARPipeline":
        """backend: onnxruntime | torch | tensorrt. device: cpu or cuda (default: cuda where it exists,
        except onnxruntime, which defaults to cpu). ckpt/tokenizer: for torch, when the checkpoints
        moved since export."""
        artifacts = Artifacts.load(directory)
        if backend not in BACKENDS:
            raise RARDeployError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        default = "cuda" if torch.cuda.is_available() and backend != "onnxruntime" else "cpu"
        target = torch.device(device or default)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise RARDeployError("--device cuda, but torch sees no CUDA GPU here")
        if backend == "onnxruntime":
            return cls(artifacts, OnnxRuntimeBackend(artifacts, target))
        if backend == "torch":
            return cls(artifacts, TorchBackend(artifacts, target, ckpt=ckpt, tokenizer=tokenizer))
        from .tensorrt_backend import TensorRTBackend

        return cls(artifacts, TensorRTBackend(artifacts, torch.device("cuda")))

    def generate_tokens(self, class_labels: Sequence[int], guidance_scale: float | None = None,
                        guidance_pow: float | None = None, temperature: float | None = None, seed: int = 0,
                        batch_size: int | None = None, progress: Progress | None = None) -> np.ndarray:
        """int64 tokens [B, N]. None means the model size's published default. Image i uses noise
        from (seed, i) alone, so it is the same image whatever the batch size."""
        labels = check_class_labels(class_labels, self.config.num_classes)
        defaults = self.artifacts.sampling_defaults
        scale = defaults.guidance_scale if guidance_scale is None else guidance_scale
        pow_ = defaults.guidance_pow if guidance_pow is None else guidance_pow
        temperature = defaults.temperature if temperature is None else temperature
        if temperature < 0:
            raise RARDeployError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        batch_size = self._check_batch_size(batch_size)
        schedule = guidance_schedule(self.config.image_seq_len, scale, pow_)
        total, done = labels.shape[0] * self.config.image_seq_len, 0
        chunks = []
        for start in range(0, labels.shape[0], batch_size):
            chunk = labels[start:start + batch_size]
            noise = sampling_noise(seed, chunk.shape[0], self.config.image_seq_len, self.config.codebook_size, start)

            def on_step(size: int = chunk.shape[0]) -> None:
                nonlocal done
                done += size
                progress and progress(done, total)

            chunks.append(generate_batch(self.backend, chunk, schedule, temperature, noise, on_step))
        return np.concatenate(chunks)

    def decode(self, tokens: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Tokens [B, N] -> uint8 images [B, H, W, 3]."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[1] != self.config.image_seq_len:
            raise RARDeployError(f"tokens must be [B, {self.config.image_seq_len}], got {list(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= self.config.codebook_size:
            raise RARDeployError(f"token ids must lie in [0, {self.config.codebook_size})")
        batch_size = self._check_batch_size(batch_size)
        return np.concatenate([self.backend.decode_images(tokens[i:i + batch_size])
                               for i in range(0, tokens.shape[0], batch_size)])

    def generate(self, class_labels: Sequence[int], guidance_scale: float | None = None,
                 guidance_pow: float | None = None, temperature: float | None = None, seed: int = 0,
                 batch_size: int | None = None, progress: Progress | None = None) -> list[Image.Image]:
        tokens = self.generate_tokens(class_labels, guidance_scale, guidance_pow, temperature, seed, batch_size,
                                      progress)
        return [Image.fromarray(image) for image in self.decode(tokens, batch_size)]

    def _check_batch_size(self, batch_size: int | None) -> int:
        limit = self.artifacts.max_batch
        if batch_size is None:
            return limit
        if not 1 <= batch_size <= limit:
            raise RARDeployError(f"batch size {batch_size} is outside the artifacts' profile [1, {limit}]: "
                                 f"use a smaller one or export again with a larger --max-batch")
        return batch_size


def image_grid(images: Sequence[Image.Image], columns: int) -> Image.Image:
    """Images in rows of `columns`."""
    width, height = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid
