"""The generation loop and the Python API: RARPipeline.from_artifacts(dir, backend=...)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from rar_deploy.contract.sampling import guidance_rows, guidance_schedule, is_guided, sampling_noise
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.runtime.backends import Backend, OnnxRuntimeBackend
from rar_deploy.runtime.checks import (
    check_class_labels,
    check_count,
    check_device,
    check_seed,
    check_threads,
    check_tokens,
)
from rar_deploy.runtime.gpu import cuda_capability

BACKENDS = ("onnxruntime", "tensorrt", "torch")
# progress(done, total) counts decode steps (N per image) then decoded images
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Sample:
    """One image to generate: its class, where its noise comes from (image `index` of a request with `seed`:
    the same image as that request draws, whatever batch it runs in), and its own sampling values (None:
    the model size's published defaults)."""

    class_label: int
    seed: int = 0
    index: int = 0
    guidance_scale: float | None = None
    guidance_pow: float | None = None
    temperature: float | None = None


def generate_batch(backend: Backend, labels: np.ndarray, guidance: np.ndarray, temperature: np.ndarray,
                   noise: np.ndarray, guided: bool, on_step: Callable[[], None] | None = None) -> np.ndarray:
    """Every sequence position 0 .. N through the decode step, the cache written on the backend's device
    (positions 0 and 1 are the prefill): labels [B], guidance scales [N, B] (each image its own schedule),
    temperatures [B], noise [B, N, V] -> tokens [B, N]."""
    backend.start(guidance_rows(labels, guided, backend.config.null_class), guidance, temperature, noise)
    for p in range(backend.config.cache_len):
        backend.step(p)
        if p >= 1 and on_step:
            on_step()
    return backend.tokens()


class RARPipeline:
    """Generate images from an artifact directory with one backend.

    Safe to share between threads: calls are serialised by a lock (a backend owns one set of device
    buffers, the KV cache among them), so concurrent calls give the images sequential calls give.
    """

    def __init__(self, artifacts: Artifacts, backend: Backend) -> None:
        if artifacts.family != "rar":
            raise RARDeployError(f"{artifacts.directory} holds a VAR export: use VARPipeline (or open_pipeline)")
        self.artifacts = artifacts
        self.backend = backend
        self.config = artifacts.config
        self._lock = threading.RLock()

    @classmethod
    def from_artifacts(cls, directory: str | Path, backend: str = "onnxruntime", device: str | None = None,
                       ckpt: str | None = None, tokenizer: str | None = None, verify_files: bool = False,
                       threads: int | None = None) -> "RARPipeline":
        """backend: onnxruntime | tensorrt | torch. device: cpu, cuda or cuda:N (default: cpu for onnxruntime,
        cuda for tensorrt, cuda where torch sees one for torch). ckpt/tokenizer: for torch, when the
        checkpoints moved since export. verify_files: check every byte of every file the manifest lists (SHA-256)
        instead of the graphs' size and fingerprint. threads: CPU threads of onnxruntime's and torch's pools."""
        return cls(*open_backend(directory, backend, device, ckpt, tokenizer, verify_files, threads))

    def generate_tokens(self, class_labels: Sequence[int], guidance_scale: float | None = None,
                        guidance_pow: float | None = None, temperature: float | None = None, seed: int = 0,
                        batch_size: int | None = None, progress: Progress | None = None) -> np.ndarray:
        """int64 tokens [B, N]. None means the model size's published default. Image i uses noise
        from (seed, i) alone, so it is the same image whatever the batch size."""
        labels = check_class_labels(class_labels, self.config.num_classes)
        self.artifacts.sampling_values(guidance_scale, guidance_pow, temperature)  # one line, before any work
        samples = [Sample(int(label), seed, index, guidance_scale, guidance_pow, temperature)
                   for index, label in enumerate(labels)]
        return self.generate_samples(samples, batch_size, progress)

    def generate_samples(self, samples: Sequence[Sample], batch_size: int | None = None,
                         progress: Progress | None = None) -> np.ndarray:
        """int64 tokens [len(samples), N], in order: each sample with its own seed, index and sampling values,
        batched together (those without guidance apart, as they run half the rows). Image for image the same
        tokens as generate_tokens of each sample's request, whatever the batch."""
        c = self.config
        if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence) or not samples:
            raise RARDeployError("samples must be a non-empty list of Sample")
        checked = [self.check_sample(sample) for sample in samples]
        batch_size = self.artifacts.check_batch_size(batch_size)
        tokens = np.empty((len(checked), c.image_seq_len), np.int64)
        total, done = len(checked) * c.image_seq_len, 0
        with self._lock:
            for guided in (True, False):
                group = [i for i, sample in enumerate(checked) if is_guided(sample.guidance_scale) == guided]
                for start in range(0, len(group), batch_size):
                    chunk = [checked[i] for i in group[start:start + batch_size]]

                    def on_step(size: int = len(chunk)) -> None:
                        nonlocal done
                        done += size
                        progress and progress(done, total)

                    tokens[group[start:start + batch_size]] = generate_batch(self.backend, *self._batch_inputs(chunk),
                                                                             guided, on_step)
        return tokens

    def check_sample(self, sample: Sample) -> Sample:
        """The sample with its values checked (one line each) and the defaults filled in."""
        if not isinstance(sample, Sample):
            raise RARDeployError(f"samples must be Sample objects, got {type(sample).__name__}")
        check_class_labels([sample.class_label], self.config.num_classes)
        scale, pow_, temperature = self.artifacts.sampling_values(sample.guidance_scale, sample.guidance_pow,
                                                                  sample.temperature)
        return Sample(int(sample.class_label), check_seed(sample.seed), check_count("image index", sample.index, 0),
                      scale, pow_, temperature)

    def _batch_inputs(self, chunk: list[Sample]) -> tuple[np.ndarray, ...]:
        """labels [B], guidance [N, B], temperature [B], noise [B, N, V] of checked samples."""
        c = self.config
        schedules = {(s.guidance_scale, s.guidance_pow) for s in chunk}
        schedules = {key: guidance_schedule(c.image_seq_len, *key) for key in schedules}
        return (np.array([s.class_label for s in chunk], np.int64),
                np.stack([schedules[s.guidance_scale, s.guidance_pow] for s in chunk], axis=1),
                np.array([s.temperature for s in chunk], np.float32),
                np.concatenate([sampling_noise(s.seed, 1, c.image_seq_len, c.codebook_size, s.index) for s in chunk]))

    def decode(self, tokens: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Tokens [B, N] -> uint8 images [B, H, W, 3]."""
        tokens = check_tokens(tokens, self.config.image_seq_len, self.config.codebook_size)
        batch_size = self.artifacts.check_batch_size(batch_size)
        with self._lock:
            return np.concatenate([self.backend.decode_images(tokens[i:i + batch_size])
                                   for i in range(0, tokens.shape[0], batch_size)])

    def generate_batches(self, class_labels: Sequence[int], guidance_scale: float | None = None,
                         guidance_pow: float | None = None, temperature: float | None = None, seed: int = 0,
                         batch_size: int | None = None,
                         progress: Progress | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(int64 tokens [b, N], uint8 images [b, H, W, 3]) one batch at a time, in order: what generate_tokens
        and decode give, without holding every image (the arguments are those of generate_tokens)."""
        c = self.config
        labels = check_class_labels(class_labels, c.num_classes)
        values = self.artifacts.sampling_values(guidance_scale, guidance_pow, temperature)
        seed, batch_size = check_seed(seed), self.artifacts.check_batch_size(batch_size)
        total = len(labels) * c.image_seq_len
        for start in range(0, len(labels), batch_size):
            samples = [Sample(int(label), seed, start + i, *values)
                       for i, label in enumerate(labels[start:start + batch_size])]

            def report(done: int, _: int, before: int = start * c.image_seq_len) -> None:
                progress and progress(before + done, total)

            tokens = self.generate_samples(samples, batch_size, report)
            yield tokens, self.decode(tokens, batch_size)

    def generate(self, class_labels: Sequence[int], guidance_scale: float | None = None,
                 guidance_pow: float | None = None, temperature: float | None = None, seed: int = 0,
                 batch_size: int | None = None, progress: Progress | None = None) -> list[Image.Image]:
        """PIL images; the arguments are those of generate_tokens."""
        with self._lock:
            tokens = self.generate_tokens(class_labels, guidance_scale, guidance_pow, temperature, seed, batch_size,
                                          progress)
            return [Image.fromarray(image) for image in self.decode(tokens, batch_size)]


def open_backend(directory: str | Path, backend: str = "onnxruntime", device: str | None = None,
                 ckpt: str | None = None, tokenizer: str | None = None, verify_files: bool = False,
                 threads: int | None = None) -> tuple[Artifacts, Backend]:
    """An artifact directory (checked) and one backend on its graphs; the arguments of from_artifacts."""
    if not isinstance(directory, (str, os.PathLike)):
        raise RARDeployError(f"the artifact directory must be a path, got {directory!r}")
    if backend not in BACKENDS:
        raise RARDeployError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    check_device(device)
    threads = check_threads(threads)
    artifacts = Artifacts.load(directory, verify="all" if verify_files else "fingerprint")
    if backend == "onnxruntime":
        return artifacts, OnnxRuntimeBackend(artifacts, check_cuda_present(device or "cpu"), threads)
    if backend == "tensorrt":
        if device == "cpu":
            raise RARDeployError("the tensorrt backend runs on a CUDA GPU: drop --device cpu")
        from rar_deploy.runtime.tensorrt_backend import TensorRTBackend

        return artifacts, TensorRTBackend(artifacts, device or "cuda")
    try:
        import torch

        from rar_deploy.model.torch_backend import TorchBackend
    except ImportError:
        raise RARDeployError("the torch backend needs torch: pip install 'rar-deploy[export]', or use "
                             "--backend onnxruntime or tensorrt") from None
    if threads is not None:
        torch.set_num_threads(threads)
    device = check_cuda_present(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return artifacts, TorchBackend(artifacts, device, ckpt=ckpt, tokenizer=tokenizer)


def open_pipeline(directory: str | Path, backend: str = "onnxruntime", **options):
    """RARPipeline or VARPipeline, as the artifact directory's family says; options of from_artifacts."""
    from rar_deploy.runtime.var_pipeline import VARPipeline

    artifacts, runner = open_backend(directory, backend, **options)
    return (VARPipeline if artifacts.family == "var" else RARPipeline)(artifacts, runner)


def check_cuda_present(device: str) -> str:
    """`device`, refused with one line when it names a GPU this machine does not have."""
    if device != "cpu" and cuda_capability(int(device.partition(":")[2] or 0)) is None:
        raise RARDeployError(f"device {device}, but no CUDA GPU is visible here (or cuda-python is not installed): "
                             "use --device cpu")
    return device
