"""Slot tables for in-flight batching: a fixed number of slots (rows of a static cache) on one backend, each
holding one image at a step of its own. `scheduler.py` admits images into free slots, steps the table and
collects what finished; these classes own the buffers and the per-slot state, one class per family.

RAR (`RARSlots`): one decode_step call a step for the images present, each at its own position (the contract
lets a step's images sit at different positions): its condition rows computed at admission, its cache rows
zeroed, its own seed, guidance schedule and temperature. VAR (`VARSlots`): a call
runs one scale for the slots at that scale (and the same top-k/top-p, which a call takes once), their cache
rows gathered, so a step runs the group that waited longest. Either way an image's tokens are those of
generating it alone: the same graphs on the same rows, fed the same values. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rar_deploy.contract.graphs import var_dims
from rar_deploy.contract.sampling import guidance_rows, guidance_schedule, is_guided, sampling_noise, scale_guidance


@dataclass
class SlotImage:
    """One image in a slot: what it feeds each step, the tokens it sampled so far and where it is."""

    label: int
    sampling: Any  # the family's resolved sampling values
    noise: np.ndarray  # [L, V]: noise of every token of the image
    tokens: np.ndarray  # [L] int64, sampled so far
    step: int = 0  # steps done (RAR: positions, VAR: scales)
    guidance: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # RAR: the schedule [N]
    last_tick: int = 0  # when it last stepped (VAR's policy)


class RARSlots:
    """Up to `slots` RAR images on one backend, every one at its own sequence position. A step runs the decode_step
    on the n images present (batch n, so a lone image costs what it costs alone): they sit in the first rows of the
    cache in the layout of a batch of n (conditional rows 0 .. n-1, null-class rows n .. 2n-1), re-laid (one copy of
    their cache rows) when images join or leave. Each slot's condition rows are computed once, at admission, into a
    table [slot, row kind, position]; a step gathers each row's at its own position (P = 1). Guided and unguided
    images run different row counts, so a table holds one kind (`pool`)."""

    def __init__(self, backend: Any, slots: int, guided: bool) -> None:
        c, memory, float_dtype = backend.config, backend.memory, backend.float_dtype
        self.backend, self.memory, self.config, self.guided = backend, memory, c, guided
        self.slots, self.steps = slots, c.cache_len  # positions 0 .. N
        self.kinds = 2 if guided else 1  # rows per image
        shape = (c.depth, slots * self.kinds, c.num_heads, c.cache_len, c.head_dim)
        self.k_cache, self.v_cache = memory.zeros(shape, float_dtype), memory.zeros(shape, float_dtype)
        self.blank = memory.zeros((1, *shape[2:]), float_dtype)  # one row of one layer, for an image that joins
        # condition rows of every slot, row kind and position: (slot * kinds + kind) * S + position
        self.table = memory.zeros((1, slots * self.kinds * c.cache_len, backend.artifacts.condition_width),
                                  float_dtype)
        self.images: list[SlotImage | None] = [None] * slots
        self.order: list[int] = []  # the slots in the cache's rows: image j of a step is slot order[j]
        self._batches: dict[int, dict[str, Any]] = {}  # buffers of a step of n images
        self._replays: dict[int, Any] = {}

    @staticmethod
    def pool(sampling: Any) -> bool:
        """Which table an image of these sampling values needs: guided or not."""
        return is_guided(sampling.guidance_scale)

    def admit(self, slot: int, label: int, sampling: Any, seed: int, index: int) -> None:
        c, memory = self.config, self.memory
        labels = guidance_rows(np.array([label], np.int64), self.guided, c.null_class)
        positions = np.repeat(np.arange(c.cache_len, dtype=np.int64), self.kinds).reshape(c.cache_len, self.kinds)
        table = self.backend.run_host("condition", {"class_labels": labels, "positions": positions})["condition"]
        staged = memory.empty((1, self.kinds * c.cache_len, table.shape[2]), self.backend.float_dtype)
        memory.upload(table.transpose(1, 0, 2).reshape(staged.shape), staged)  # [kind, position, C]
        first = slot * self.kinds * c.cache_len
        memory.scatter(self.table, staged, 1, range(first, first + self.kinds * c.cache_len))
        schedule = guidance_schedule(c.image_seq_len, sampling.guidance_scale, sampling.guidance_pow)
        noise = sampling_noise(seed, 1, c.image_seq_len, c.codebook_size, index)[0]
        self.images[slot] = SlotImage(label, sampling, noise, np.zeros(c.image_seq_len, np.int64), guidance=schedule)

    def release(self, slot: int) -> None:
        self.images[slot] = None

    def active(self) -> list[int]:
        return [slot for slot, image in enumerate(self.images) if image is not None]

    def _relayout(self, order: list[int]) -> None:
        """Move the cache rows of the images that stay into the layout of a batch of len(order), zero those of the
        images that join; a layer at a time, so the staging memory is one layer's rows of the images that stay."""
        old, n = {slot: j for j, slot in enumerate(self.order)}, len(order)
        kept = [(j, old[slot]) for j, slot in enumerate(order) if slot in old]
        joined = [j + kind * n for kind in range(self.kinds) for j, slot in enumerate(order) if slot not in old]
        sources = [i + kind * len(self.order) for kind in range(self.kinds) for _, i in kept]
        targets = [j + kind * n for kind in range(self.kinds) for j, _ in kept]
        if sources != targets:
            staging = self.memory.empty((len(sources), *self.k_cache.shape[2:]), self.backend.float_dtype)
        for cache in (self.k_cache, self.v_cache):
            for layer in range(self.config.depth):
                if sources != targets:
                    self.memory.gather(staging, cache[layer], 0, sources)
                    self.memory.scatter(cache[layer], staging, 0, targets)
                for row in joined:
                    self.memory.scatter(cache[layer], self.blank, 0, [row])
        self.order = order

    def _batch(self, n: int) -> dict[str, Any]:
        """The buffers of a step of n images (allocated once per n: a captured step replays on them)."""
        if n not in self._batches:
            c, memory = self.config, self.memory
            int64, float32 = np.dtype(np.int64), np.dtype(np.float32)
            feeds = {"tokens": memory.zeros((n,), int64), "position": memory.zeros((n,), int64),
                     "guidance_scale": memory.zeros((n,), float32), "temperature": memory.zeros((n,), float32),
                     "noise": memory.zeros((n, c.codebook_size), float32),
                     "condition": memory.zeros((1, self.kinds * n, self.table.shape[2]), self.backend.float_dtype)}
            outputs = self.backend.output_buffers("decode_step", {"batch": n, "rows": self.kinds * n, "positions": 1})
            self._batches[n] = {"feeds": feeds, "outputs": outputs, "next_tokens": memory.empty((n,), int64)}
        return self._batches[n]

    def step(self, tick: int = 0) -> list[int]:
        """One decode_step for the images present; returns the slots whose image finished."""
        order = [slot for slot in self.order if self.images[slot] is not None]
        order += [slot for slot in self.active() if slot not in order]  # those admitted since the last step
        if order != self.order:
            self._relayout(order)
        if not order:
            return []
        c, memory, n = self.config, self.memory, len(order)
        batch = self._batch(n)
        images = [self.images[slot] for slot in order]
        steps = np.array([image.step for image in images])
        q = np.maximum(steps - 1, 0)  # the row of the input token, and the sampled token's guidance and noise
        host = {"tokens": np.array([image.tokens[p - 2] if p >= 2 else 0 for image, p in zip(images, steps)],
                                   np.int64),
                "position": steps.astype(np.int64),
                "guidance_scale": np.array([image.guidance[t] for image, t in zip(images, q)], np.float32),
                "temperature": np.array([image.sampling.temperature for image in images], np.float32),
                "noise": np.stack([image.noise[t] for image, t in zip(images, q)])}
        for name, array in host.items():
            memory.upload(array, batch["feeds"][name])
        rows = [(slot * self.kinds + kind) * c.cache_len + p for kind in range(self.kinds)
                for slot, p in zip(order, steps)]
        memory.gather(batch["feeds"]["condition"], self.table, 1, rows)
        self._run_decode(n, int(steps.max()))
        sampled = memory.download(batch["next_tokens"])
        positions = [int(p) for _ in range(self.kinds) for p in steps]
        memory.write_rows(self.k_cache, batch["outputs"]["keys"], range(self.kinds * n), positions)
        memory.write_rows(self.v_cache, batch["outputs"]["values"], range(self.kinds * n), positions)
        finished = []
        for slot, image, token in zip(order, images, sampled):
            if image.step >= 1:
                image.tokens[image.step - 1] = token
            image.step += 1
            image.last_tick = tick
            if image.step == self.steps:
                finished.append(slot)
        return finished

    def _run_decode(self, n: int, last_position: int) -> None:
        if self.backend.use_cuda_graph:  # one captured step per image count: its buffers never move
            if n not in self._replays:
                self._decode(n, last_position)  # warm-up (TensorRT requires one before capture)
                self._replays[n] = self.memory.capture(lambda: self._decode(n, last_position))
            else:
                self._replays[n]()
        else:
            self._decode(n, last_position)

    def _decode(self, n: int, last_position: int) -> None:
        layers, view, batch = range(self.config.depth), self.backend.cache_view, self._batch(n)
        rows, p = self.kinds * n, last_position + 1  # every row reads at most positions 0 .. last_position
        feeds = {**batch["feeds"], **{f"k_cache.{i}": view(self.k_cache[i][:rows], p) for i in layers},
                 **{f"v_cache.{i}": view(self.v_cache[i][:rows], p) for i in layers}}
        self.backend.run("decode_step", feeds, {**batch["outputs"], "next_tokens": batch["next_tokens"]})

    def tokens(self, slot: int) -> np.ndarray:
        return self.images[slot].tokens.copy()

    def preview_tokens(self, slot: int) -> np.ndarray:
        """The tokens so far, the positions not yet sampled filled from the grid row above (row 0's from the
        tokens sampled so far, in order; token 0 before any): a picture of what is there, growing downward."""
        image, n = self.images[slot], self.config.image_seq_len
        done, side = max(image.step - 1, 0), int(round(n ** 0.5))
        tokens = image.tokens.copy()
        for j in range(done, n):
            tokens[j] = tokens[j - side] if j >= side else (tokens[j % done] if done else 0)
        return tokens

    def decode(self, slots: list[int], preview: bool = False) -> np.ndarray:
        """uint8 images [len(slots), H, W, 3] of the slots' tokens (or their previews)."""
        tokens = np.stack([self.preview_tokens(s) if preview else self.images[s].tokens for s in slots])
        return self.backend.run_host("vq_decoder", {"tokens": tokens})["images_uint8"]


def scale_constants(memory: Any, scales: list[dict]) -> list[dict[str, Any]]:
    """Each VAR scale's constant inputs of var_step (positions, Phi index, resize matrices), on the device."""
    constants = []
    for scale in scales:
        side = scale["side"]
        host = {"positions": np.arange(scale["begin"], scale["end"], dtype=np.int64).reshape(side, side),
                "phi_index": np.array([scale["phi_index"]], np.int64),
                "down": np.array(scale["down"], np.float32), "up": np.array(scale["up"], np.float32)}
        buffers = {}
        for name, array in host.items():
            buffers[name] = memory.empty(array.shape, array.dtype)
            memory.upload(array, buffers[name])
        constants.append(buffers)
    return constants


class VARSlots:
    """`slots` VAR images on one backend. A step runs one scale for a group of slots: those at the scale (and
    top-k/top-p) of the image that waited longest, their cache rows and f_hat gathered into a batch of their own,
    so every scale keeps moving and a slot waits at most one call per other group."""

    def __init__(self, backend: Any, slots: int, pool: Any = None) -> None:
        c, memory = backend.config, backend.memory
        self.backend, self.memory, self.config, self.slots = backend, memory, c, slots
        self.scales = backend.artifacts.manifest["scales"]
        self.steps = len(self.scales)
        shape = (c.depth, 2 * slots, c.num_heads, c.seq_len, c.head_dim)
        self.k_cache = memory.zeros(shape, backend.float_dtype)
        self.v_cache = memory.zeros(shape, backend.float_dtype)
        self.blank = memory.zeros((c.depth, 2, *shape[2:]), backend.float_dtype)
        size = c.patch_nums[-1]
        self.f_hat = memory.zeros((slots, c.vae_channels, size, size), np.dtype(np.float32))
        self.blank_f_hat = memory.zeros((1, c.vae_channels, size, size), np.dtype(np.float32))
        self.constants = scale_constants(memory, self.scales)
        self.images: list[SlotImage | None] = [None] * slots

    @staticmethod
    def pool(sampling: Any) -> None:
        return None  # one table: every VAR image runs both rows

    def admit(self, slot: int, label: int, sampling: Any, seed: int, index: int) -> None:
        c = self.config
        for cache in (self.k_cache, self.v_cache):
            self.memory.scatter(cache, self.blank, 1, [slot, slot + self.slots])
        self.memory.scatter(self.f_hat, self.blank_f_hat, 0, [slot])
        self.images[slot] = SlotImage(label, sampling, sampling_noise(seed, 1, c.seq_len, c.codebook_size, index)[0],
                                      np.zeros(c.seq_len, np.int64))

    def release(self, slot: int) -> None:
        self.images[slot] = None

    def active(self) -> list[int]:
        return [slot for slot, image in enumerate(self.images) if image is not None]

    def _group(self, slot: int) -> tuple:
        image = self.images[slot]
        return image.step, image.sampling.top_k, image.sampling.top_p

    def step(self, tick: int = 0) -> list[int]:
        """One var_step call for the group of the slot that stepped longest ago (ties: the furthest scale, which
        finishes sooner); returns the slots whose image finished."""
        active = self.active()
        if not active:
            return []
        first = min(active, key=lambda s: (self.images[s].last_tick, -self.images[s].step, s))
        group = [s for s in active if self._group(s) == self._group(first)]
        k, top_k, top_p = self._group(first)
        scale, memory, c = self.scales[k], self.memory, self.config
        rows = group + [s + self.slots for s in group]
        b, side = len(group), scale["side"]
        host = {"class_labels": np.array([self.images[s].label for s in group], np.int64),
                "guidance": scale_guidance([scale["guidance_fraction"]],
                                           np.array([self.images[s].sampling.guidance_scale for s in group]))[0],
                "top_k": np.array([top_k], np.int64), "top_p": np.array([top_p], np.float32),
                "temperature": np.array([self.images[s].sampling.temperature for s in group], np.float32),
                "noise": np.stack([self.images[s].noise[scale["begin"]:scale["end"]] for s in group]
                                  ).reshape(b, side, side, c.codebook_size)}
        feeds = {}
        for name, array in host.items():
            feeds[name] = memory.empty(array.shape, array.dtype)
            memory.upload(array, feeds[name])
        float_dtype, float32 = self.backend.float_dtype, np.dtype(np.float32)
        k_rows, v_rows, f_hat = (self._take(*args) for args in ((self.k_cache, 1, rows, float_dtype),
                                                                (self.v_cache, 1, rows, float_dtype),
                                                                (self.f_hat, 0, group, float32)))
        feeds.update(self.constants[k], f_hat=f_hat,
                     **{f"k_cache.{i}": k_rows[i] for i in range(c.depth)},
                     **{f"v_cache.{i}": v_rows[i] for i in range(c.depth)})
        outputs = self.backend.output_buffers("var_step", var_dims(b, side))
        self.backend.run("var_step", feeds, outputs)
        memory.write_rows(self.k_cache, outputs["keys"], rows, [scale["begin"]] * len(rows))
        memory.write_rows(self.v_cache, outputs["values"], rows, [scale["begin"]] * len(rows))
        memory.scatter(self.f_hat, outputs["f_hat_out"], 0, group)
        tokens = memory.download(outputs["tokens"]).reshape(b, -1)
        finished = []
        for j, slot in enumerate(group):
            image = self.images[slot]
            image.tokens[scale["begin"]:scale["end"]] = tokens[j]
            image.step, image.last_tick = k + 1, tick
            if image.step == self.steps:
                finished.append(slot)
        return finished

    def tokens(self, slot: int) -> np.ndarray:
        return self.images[slot].tokens.copy()

    def decode(self, slots: list[int], preview: bool = False) -> np.ndarray:
        """uint8 images [len(slots), H, W, 3] of the slots' f_hat: the whole image once finished, the estimate
        from the scales so far as a preview."""
        f_hat = self.memory.download(self._take(self.f_hat, 0, slots, np.dtype(np.float32)))
        return self.backend.run_host("var_decoder", {"f_hat": f_hat})["images_uint8"]

    def _take(self, source: Any, axis: int, index: list[int], dtype: np.dtype) -> Any:
        """A new buffer of source's rows `index` along `axis`."""
        shape = list(source.shape)
        shape[axis] = len(index)
        destination = self.memory.empty(tuple(shape), dtype)
        self.memory.gather(destination, source, axis, index)
        return destination
