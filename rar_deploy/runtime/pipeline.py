"""The Python API: one `Pipeline` interface for both families, `open_pipeline(dir)` choosing the family's
pipeline from the manifest. A pipeline drives its family's loop (`loops.py`) with the one driver."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from rar_deploy.contract.checks import check_class_labels, check_count, check_seed, check_tokens
from rar_deploy.contract.sampling import is_guided
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.runtime.backends import Backend
from rar_deploy.runtime.families import RAR, VAR, Family, RARSampling, VARSampling, rar_inputs
from rar_deploy.runtime.jacobi import check_parallel_window, jacobi_generate
from rar_deploy.runtime.load import open_backend
from rar_deploy.runtime.loops import decode_tokens, drive
from rar_deploy.runtime.scheduler import ImageRequest

# progress(done, total) counts sampled tokens over all images
Progress = Callable[[int, int], None]


class Generated(NamedTuple):
    """int64 tokens [B, L] and uint8 images [B, H, W, 3] of one call (or one batch of generate_batches)."""

    tokens: np.ndarray
    images: np.ndarray

    def pil(self) -> list[Image.Image]:
        return [Image.fromarray(image) for image in self.images]


class Pipeline:
    """Generate images from an artifact directory with one backend, the same interface for RAR and VAR.

    Safe to share between threads: calls are serialised by a lock (a backend owns one set of device
    buffers, the KV cache among them), so concurrent calls give the images sequential calls give.
    Image i of a call uses noise from (seed, i) alone, so it is the same image whatever the batch size.
    """

    family: ClassVar[Family]

    def __init__(self, artifacts: Artifacts, backend: Backend) -> None:
        if artifacts.family is not self.family:
            raise RARDeployError(f"{artifacts.directory} holds a {artifacts.family.title} export: use "
                                 f"{PIPELINES[artifacts.family].__name__} (or open_pipeline)")
        self.artifacts, self.backend, self.config = artifacts, backend, artifacts.config
        self.loop = self.family.loop(backend)
        self._lock = threading.RLock()
        # decode calls (graph passes) each image of the last generate / generate_batches call took
        self.decode_calls = np.zeros(0, np.int64)

    @classmethod
    def from_artifacts(cls, directory: str | Path, backend: str = "onnxruntime", *, device: str | None = None,
                       ckpt: str | None = None, tokenizer: str | None = None, verify_files: bool = False,
                       threads: int | None = None, int8_activations: bool = False) -> "Pipeline":
        """backend: onnxruntime | tensorrt | torch. device: cpu, cuda or cuda:N (default: cpu for onnxruntime,
        cuda for tensorrt, cuda where torch sees one for torch). ckpt/tokenizer: for torch, when the
        checkpoints moved since export. verify_files: check every byte of every file the manifest lists (SHA-256)
        instead of the graphs' size and fingerprint. threads: CPU threads of onnxruntime's and torch's pools.
        int8_activations: a quantized folder on onnxruntime runs its fast MatMulNBits kernels, which round the
        activations to int8 at run time (an approximation of the folder's model, measured in the README)."""
        return cls(*open_backend(directory, backend, device, ckpt, tokenizer, verify_files, threads,
                                 int8_activations))

    def generate(self, class_labels: Sequence[int], *, sampling: RARSampling | VARSampling | None = None,
                 seed: int = 0, batch_size: int | None = None, progress: Progress | None = None,
                 parallel_window: int = 0) -> Generated:
        """Tokens and images of every class label, in order. sampling: the family's sampling type (None: the
        published defaults); batch_size: images per batch (default: the artifacts' largest). parallel_window: RAR,
        speculative Jacobi decoding with this many draft tokens per image (1 .. 16; the folder needs decode_block:
        rar-export --parallel-decoding); 0, the default, samples one token per call. Same distribution, other
        draws: its images are not the sequential images of the seed."""
        batches = list(self.generate_batches(class_labels, sampling=sampling, seed=seed, batch_size=batch_size,
                                             progress=progress, parallel_window=parallel_window))
        return Generated(np.concatenate([b.tokens for b in batches]), np.concatenate([b.images for b in batches]))

    def generate_batches(self, class_labels: Sequence[int], *, sampling: RARSampling | VARSampling | None = None,
                         seed: int = 0, batch_size: int | None = None,
                         progress: Progress | None = None, parallel_window: int = 0) -> Iterator[Generated]:
        """What generate gives, one batch at a time, without holding every image."""
        labels = check_class_labels(class_labels, self.config.num_classes)
        sampling = self.family.check_sampling(sampling, self.artifacts.sampling_defaults)
        seed, batch_size = check_seed(seed), self.artifacts.check_batch_size(batch_size)
        window = check_parallel_window(self.artifacts, parallel_window)
        per_image = self.family.tokens_per_image(self.config)
        total = len(labels) * per_image
        self.decode_calls = np.zeros(0, np.int64)
        for start in range(0, len(labels), batch_size):
            chunk = labels[start:start + batch_size]
            inputs = self.family.inputs(self.config, chunk, sampling, seed, start)
            with self._lock:
                if window:
                    tokens, calls = self._jacobi(inputs, [(seed, start + i) for i in range(len(chunk))], window,
                                                 start * per_image, total, progress)
                    images = decode_tokens(self.backend, tokens)
                else:
                    tokens = self._drive(inputs, len(chunk), start * per_image, total, progress)
                    images, calls = self.loop.images(), np.full(len(chunk), self.loop.steps)
            self.decode_calls = np.concatenate([self.decode_calls, calls])
            yield Generated(tokens, images)

    def image_request(self, label: int, seed: int = 0, index: int = 0,
                      sampling: RARSampling | VARSampling | None = None, preview_every: int = 0) -> ImageRequest:
        """One image for the in-flight scheduler (runtime/scheduler.py), its values checked (one line each) and the
        published defaults filled in: the image `generate` draws for label at position `index` of a call with seed."""
        check_class_labels([label], self.config.num_classes)
        return ImageRequest(int(label), check_seed(seed), check_count("image index", index, 0),
                            self.family.check_sampling(sampling, self.artifacts.sampling_defaults),
                            check_count("preview_every", preview_every, 0))

    def _drive(self, inputs: Any, size: int, before: int, total: int, progress: Progress | None) -> np.ndarray:
        def on_step(loop) -> None:
            if progress and loop.tokens_done():
                progress(before + size * loop.tokens_done(), total)

        return drive(self.loop, inputs, on_step)

    def _jacobi(self, inputs: Any, seeds: list[tuple[int, int]], window: int, before: int, total: int,
                progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
        def on_call(accepted: np.ndarray) -> None:
            if progress:
                progress(before + int(accepted.sum()), total)

        tokens, stats = jacobi_generate(self.backend, inputs, seeds, window, on_call)
        return tokens, stats.calls


@dataclass(frozen=True)
class Sample:
    """One RAR image to generate: its class, where its noise comes from (image `index` of a request with `seed`:
    the same image as that request draws, whatever batch it runs in), and its own sampling values."""

    class_label: int
    seed: int = 0
    index: int = 0
    sampling: RARSampling = field(default_factory=RARSampling)


class RARPipeline(Pipeline):
    """RAR: the N + 1 positions of the decode step, then the VQ decoder. Also generates a list of `Sample`s,
    each with its own seed and sampling values (a server's batch), and decodes tokens."""

    family = RAR

    def generate_samples(self, samples: Sequence[Sample], *, batch_size: int | None = None,
                         progress: Progress | None = None) -> np.ndarray:
        """int64 tokens [len(samples), N], in order: each sample with its own seed, index and sampling values,
        batched together (those without guidance apart, as they run half the rows). Image for image the same
        tokens as generate of each sample's request, whatever the batch."""
        if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence) or not samples:
            raise RARDeployError("samples must be a non-empty list of Sample")
        checked = [self.check_sample(sample) for sample in samples]
        batch_size = self.artifacts.check_batch_size(batch_size)
        tokens = np.empty((len(checked), self.config.image_seq_len), np.int64)
        total, before = len(checked) * self.config.image_seq_len, 0
        with self._lock:
            for guided in (True, False):
                group = [i for i, sample in enumerate(checked) if is_guided(sample.sampling.guidance_scale) == guided]
                for start in range(0, len(group), batch_size):
                    chunk = [checked[i] for i in group[start:start + batch_size]]
                    inputs = rar_inputs(self.config, np.array([s.class_label for s in chunk], np.int64),
                                        [s.sampling for s in chunk], [(s.seed, s.index) for s in chunk])
                    tokens[group[start:start + batch_size]] = self._drive(inputs, len(chunk), before, total, progress)
                    before += len(chunk) * self.config.image_seq_len
        return tokens

    def check_sample(self, sample: Sample) -> Sample:
        """The sample with its values checked (one line each) and the defaults filled in."""
        if not isinstance(sample, Sample):
            raise RARDeployError(f"samples must be Sample objects, got {type(sample).__name__}")
        check_class_labels([sample.class_label], self.config.num_classes)
        return Sample(int(sample.class_label), check_seed(sample.seed), check_count("image index", sample.index, 0),
                      self.family.check_sampling(sample.sampling, self.artifacts.sampling_defaults))

    def decode(self, tokens: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
        """Tokens [B, N] -> uint8 images [B, H, W, 3]."""
        tokens = check_tokens(tokens, self.config.image_seq_len, self.config.codebook_size)
        batch_size = self.artifacts.check_batch_size(batch_size)
        with self._lock:
            return np.concatenate([decode_tokens(self.backend, tokens[i:i + batch_size])
                                   for i in range(0, tokens.shape[0], batch_size)])


class VARPipeline(Pipeline):
    """VAR: one var_step per scale, then the VQVAE decoder on the last f_hat."""

    family = VAR


PIPELINES: dict[Family, type[Pipeline]] = {RAR: RARPipeline, VAR: VARPipeline}


def open_pipeline(directory: str | Path, backend: str = "onnxruntime", **options) -> Pipeline:
    """The pipeline of the artifact directory's family; options of from_artifacts."""
    artifacts, runner = open_backend(directory, backend, **options)
    return PIPELINES[artifacts.family](artifacts, runner)
