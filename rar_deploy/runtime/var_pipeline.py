"""VAR's generation loop over any backend and its Python API: VARPipeline.from_artifacts(dir, backend=...).

One var_step per scale (docs/CONTRACT.md, "VAR"): the scale's keys and values are written into the static
cache on the backend's device, f_hat goes from one step's output buffer to the next step's input (two
buffers, swapped), and the var_decoder turns the last f_hat into images. The per-scale constants (positions,
Phi index, resize matrices) and the noise of every scale are uploaded once per generation; nothing but the
tokens and the images comes back to the host. No torch here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from rar_deploy.contract.sampling import sampling_noise
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.runtime.backends import Backend
from rar_deploy.runtime.checks import check_class_labels, check_seed
from rar_deploy.runtime.pipeline import Progress, open_backend


def var_guidance(num_scales: int, guidance_scale: float) -> np.ndarray:
    """The official schedule, t = cfg * k / (K - 1) for scales k = 0 .. K-1 (float64, rounded to float32)."""
    return np.array([guidance_scale * k / (num_scales - 1) for k in range(num_scales)], np.float64).astype(np.float32)


def var_loop_inputs(config, labels: np.ndarray, guidance_scale: float, top_k: int, top_p: float, temperature: float,
                    seed: int, first_image: int = 0) -> tuple:
    """VARLoop.start's arguments for images first_image, first_image + 1, ... of a request with `seed`."""
    b = len(labels)
    guidance = np.repeat(var_guidance(config.num_scales, guidance_scale)[:, None], b, axis=1)
    return (np.asarray(labels, np.int64), guidance, top_k, top_p, np.full(b, temperature, np.float32),
            sampling_noise(seed, b, config.seq_len, config.codebook_size, first_image))


class VARLoop:
    """The device side of a VAR generation on one backend: the cache, f_hat and per-scale buffers."""

    def __init__(self, backend: Backend) -> None:
        self.backend, self.memory, self.config = backend, backend.memory, backend.config
        self.scales = backend.artifacts.manifest["scales"]
        self.constants = []
        for scale in self.scales:
            side = scale["side"]
            host = {"positions": np.arange(scale["begin"], scale["end"], dtype=np.int64).reshape(side, side),
                    "phi_index": np.array([scale["phi_index"]], np.int64),
                    "down": np.array(scale["down"], np.float32), "up": np.array(scale["up"], np.float32)}
            self.constants.append({name: self._upload(array) for name, array in host.items()})
        self.batch: int | None = None

    def _upload(self, array: np.ndarray):
        buffer = self.memory.empty(array.shape, array.dtype)
        self.memory.upload(array, buffer)
        return buffer

    def _allocate(self, batch: int) -> None:
        c, memory, rows = self.config, self.memory, 2 * batch
        shape = (c.depth, rows, c.num_heads, c.seq_len, c.head_dim)
        # zeros: slots of later scales are masked, and a masked score times a NaN value would still be NaN
        self.k_cache = memory.zeros(shape, self.backend.float_dtype)
        self.v_cache = memory.zeros(shape, self.backend.float_dtype)
        size = c.patch_nums[-1]
        self.f_hat = [memory.zeros((batch, c.vae_channels, size, size), np.dtype(np.float32)) for _ in range(2)]
        int64, float32 = np.dtype(np.int64), np.dtype(np.float32)
        self.labels, self.temperature = memory.empty((batch,), int64), memory.empty((batch,), float32)
        self.guidance = memory.empty((c.num_scales, batch), float32)
        self.top_k, self.top_p = memory.empty((1,), int64), memory.empty((1,), float32)
        self.noise, self.outputs = [], []
        for scale in self.scales:
            side = scale["side"]
            self.noise.append(memory.empty((batch, side, side, c.codebook_size), float32))
            dims = {"batch": batch, "rows": rows, "side": side, "tokens": side * side}
            self.outputs.append({name: buffer for name, buffer in self.backend.output_buffers("var_step", dims).items()
                                 if name != "f_hat_out"})
        self.images = self.backend.output_buffers("var_decoder", {"batch": batch})
        self.batch = batch

    def start(self, labels: np.ndarray, guidance: np.ndarray, top_k: int, top_p: float, temperature: np.ndarray,
              noise: np.ndarray) -> None:
        """labels [B], guidance t per scale [K, B], temperatures [B], noise [B, L, V] uniform."""
        batch = labels.shape[0]
        if batch != self.batch:
            self._allocate(batch)
        upload = self.memory.upload
        upload(labels, self.labels)
        upload(guidance, self.guidance)
        upload(np.array([top_k], np.int64), self.top_k)
        upload(np.array([top_p], np.float32), self.top_p)
        upload(temperature, self.temperature)
        for scale, buffer in zip(self.scales, self.noise):
            upload(noise[:, scale["begin"]:scale["end"]].reshape(buffer.shape), buffer)
        upload(np.zeros(self.f_hat[0].shape, np.float32), self.f_hat[0])

    def step(self, k: int, forced_f_hat: np.ndarray | None = None) -> None:
        """Scale k: its tokens from f_hat (or `forced_f_hat` [B, Cvae, P, P], teacher forcing), the next f_hat,
        its keys and values written into the cache at the scale's positions."""
        f_hat, f_hat_out = self.f_hat[k % 2], self.f_hat[(k + 1) % 2]
        if forced_f_hat is not None:
            self.memory.upload(np.asarray(forced_f_hat, np.float32), f_hat)
        layers = range(self.config.depth)
        feeds = {"class_labels": self.labels, "f_hat": f_hat, **self.constants[k], "guidance": self.guidance[k],
                 "top_k": self.top_k, "top_p": self.top_p, "temperature": self.temperature, "noise": self.noise[k],
                 **{f"k_cache.{i}": self.k_cache[i] for i in layers},
                 **{f"v_cache.{i}": self.v_cache[i] for i in layers}}
        outputs = self.outputs[k]
        self.backend.run("var_step", feeds, {**outputs, "f_hat_out": f_hat_out})
        begin = self.scales[k]["begin"]
        self.memory.write_position(self.k_cache, outputs["keys"], begin)
        self.memory.write_position(self.v_cache, outputs["values"], begin)

    def tokens(self) -> np.ndarray:
        """Every scale's tokens [B, L] on the host."""
        return np.concatenate([self.memory.download(out["tokens"]) for out in self.outputs], axis=1)

    def logits(self, k: int) -> np.ndarray:
        """The guided logits [B, n, V] scale k sampled from, float32 on the host (parity checks)."""
        return self.memory.download(self.outputs[k]["logits"]).astype(np.float32)

    def decode(self) -> np.ndarray:
        """The last f_hat -> uint8 images [B, H, W, 3]."""
        self.backend.run("var_decoder", {"f_hat": self.f_hat[len(self.scales) % 2]}, self.images)
        return self.memory.download(self.images["images_uint8"])


class VARPipeline:
    """Generate images from a VAR artifact directory with one backend. Thread-safe as RARPipeline: calls are
    serialised by a lock."""

    def __init__(self, artifacts: Artifacts, backend: Backend) -> None:
        if artifacts.family != "var":
            raise RARDeployError(f"{artifacts.directory} holds a RAR export: use RARPipeline")
        self.artifacts, self.backend, self.config = artifacts, backend, artifacts.config
        self.loop = VARLoop(backend)
        self._lock = threading.RLock()

    @classmethod
    def from_artifacts(cls, directory: str | Path, backend: str = "onnxruntime", device: str | None = None,
                       ckpt: str | None = None, tokenizer: str | None = None, verify_files: bool = False,
                       threads: int | None = None) -> "VARPipeline":
        """The arguments of RARPipeline.from_artifacts."""
        return cls(*open_backend(directory, backend, device, ckpt, tokenizer, verify_files, threads))

    def generate_batches(self, class_labels: Sequence[int], guidance_scale: float | None = None,
                         top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                         seed: int = 0, batch_size: int | None = None,
                         progress: Progress | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(int64 tokens [b, L], uint8 images [b, H, W, 3]) one batch at a time, in order (the arguments of
        generate_images)."""
        c = self.config
        labels = check_class_labels(class_labels, c.num_classes)
        scale, top_k, top_p, temperature = self.artifacts.var_sampling_values(guidance_scale, top_k, top_p,
                                                                              temperature)
        seed, batch_size = check_seed(seed), self.artifacts.check_batch_size(batch_size)
        done, total = 0, len(labels) * c.seq_len
        for start in range(0, len(labels), batch_size):
            chunk = labels[start:start + batch_size]
            with self._lock:
                self.loop.start(*var_loop_inputs(c, chunk, scale, top_k, top_p, temperature, seed, start))
                for k, (begin, end) in enumerate(c.scale_ranges()):
                    self.loop.step(k)
                    done += len(chunk) * (end - begin)
                    progress and progress(done, total)
                tokens, images = self.loop.tokens(), self.loop.decode()
            yield tokens, images

    def generate_images(self, class_labels: Sequence[int], guidance_scale: float | None = None,
                        top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                        seed: int = 0, batch_size: int | None = None,
                        progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """int64 tokens [B, L] (all scales) and uint8 images [B, H, W, 3]. None means the published default
        (cfg 1.5, top-k 900, top-p 0.96, temperature 1). Image i uses noise from (seed, i) alone, so it is the
        same image whatever the batch size."""
        batches = list(self.generate_batches(class_labels, guidance_scale, top_k, top_p, temperature, seed,
                                             batch_size, progress))
        return np.concatenate([t for t, _ in batches]), np.concatenate([i for _, i in batches])

    def generate_tokens(self, class_labels: Sequence[int], guidance_scale: float | None = None,
                        top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                        seed: int = 0, batch_size: int | None = None, progress: Progress | None = None) -> np.ndarray:
        """int64 tokens [B, L]; the arguments of generate_images."""
        return self.generate_images(class_labels, guidance_scale, top_k, top_p, temperature, seed, batch_size,
                                    progress)[0]

    def generate(self, class_labels: Sequence[int], guidance_scale: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, temperature: float | None = None, seed: int = 0,
                 batch_size: int | None = None, progress: Progress | None = None) -> list[Image.Image]:
        """PIL images; the arguments of generate_images."""
        _, images = self.generate_images(class_labels, guidance_scale, top_k, top_p, temperature, seed, batch_size,
                                         progress)
        return [Image.fromarray(image) for image in images]
