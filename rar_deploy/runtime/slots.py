"""Slot tables for in-flight batching: a fixed number of slots (rows of a static cache) on one backend, each
holding one image at a step of its own. `scheduler.py` admits images into free slots, steps the table and
collects what finished; these classes own the buffers and the per-slot state, one class per family.

RAR (`RARSlots`): one decode_step call a step for every slot, each image at its own position (the contract
lets a step's images sit at different positions): its condition rows computed at admission into its rows of
the table, its cache rows zeroed, its own seed, guidance schedule and temperature. VAR (`VARSlots`): a call
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
    """`slots` RAR images on one backend, every one at its own sequence position. Guided and unguided images
    run different row counts, so a table holds one kind (`pool`)."""

    def __init__(self, backend: Any, slots: int, guided: bool) -> None:
        c, memory, float_dtype = backend.config, backend.memory, backend.float_dtype
        self.backend, self.memory, self.config, self.guided = backend, memory, c, guided
        self.slots, self.steps = slots, c.cache_len  # positions 0 .. N
        self.rows_per_image = 2 if guided else 1
        rows = slots * self.rows_per_image
        shape = (c.depth, rows, c.num_heads, c.cache_len, c.head_dim)
        self.k_cache, self.v_cache = memory.zeros(shape, float_dtype), memory.zeros(shape, float_dtype)
        self.blank = memory.zeros((c.depth, self.rows_per_image, *shape[2:]), float_dtype)  # an admitted image's rows
        # the condition table [S, R, C]: row (p, r) is row r's at position p (the step reads `position mod S`)
        self.condition = memory.zeros((c.cache_len, rows, backend.artifacts.condition_width), float_dtype)
        int64, float32 = np.dtype(np.int64), np.dtype(np.float32)
        self.feeds = {"tokens": memory.zeros((slots,), int64), "position": memory.zeros((slots,), int64),
                      "guidance_scale": memory.zeros((slots,), float32), "temperature": memory.zeros((slots,), float32),
                      "noise": memory.zeros((slots, c.codebook_size), float32)}
        self.outputs = backend.output_buffers("decode_step", {"batch": slots, "rows": rows, "positions": c.cache_len})
        self.next_tokens = memory.empty((slots,), int64)
        self.images: list[SlotImage | None] = [None] * slots
        self._replay = None

    @staticmethod
    def pool(sampling: Any) -> bool:
        """Which table an image of these sampling values needs: guided or not."""
        return is_guided(sampling.guidance_scale)

    def rows(self, slot: int) -> list[int]:
        """The generator rows of a slot: its conditional row (and its null-class row)."""
        return [slot + k * self.slots for k in range(self.rows_per_image)]

    def admit(self, slot: int, label: int, sampling: Any, seed: int, index: int) -> None:
        c, memory, rows = self.config, self.memory, self.rows(slot)
        labels = guidance_rows(np.array([label], np.int64), self.guided, c.null_class)
        positions = np.repeat(np.arange(c.cache_len, dtype=np.int64), len(labels)).reshape(c.cache_len, len(labels))
        table = self.backend.run_host("condition", {"class_labels": labels, "positions": positions})["condition"]
        staged = memory.empty(table.shape, self.backend.float_dtype)
        memory.upload(table, staged)
        memory.put(self.condition, 1, rows, staged)
        memory.put(self.k_cache, 1, rows, self.blank)
        memory.put(self.v_cache, 1, rows, self.blank)
        schedule = guidance_schedule(c.image_seq_len, sampling.guidance_scale, sampling.guidance_pow)
        self.images[slot] = SlotImage(label, sampling, sampling_noise(seed, 1, c.image_seq_len, c.codebook_size,
                                                                      index)[0],
                                      np.zeros(c.image_seq_len, np.int64), guidance=schedule)

    def release(self, slot: int) -> None:
        self.images[slot] = None

    def active(self) -> list[int]:
        return [slot for slot, image in enumerate(self.images) if image is not None]

    def step(self, tick: int = 0) -> list[int]:
        """One decode_step for every slot (idle ones at position 0, writing nothing); returns the slots whose
        image finished."""
        active = self.active()
        if not active:
            return []
        c, memory = self.config, self.memory
        host = {"tokens": np.zeros(self.slots, np.int64), "position": np.zeros(self.slots, np.int64),
                "guidance_scale": np.ones(self.slots, np.float32), "temperature": np.ones(self.slots, np.float32),
                "noise": np.full((self.slots, c.codebook_size), 0.5, np.float32)}
        for slot in active:
            image = self.images[slot]
            p, q = image.step, max(image.step - 1, 0)
            host["tokens"][slot] = image.tokens[p - 2] if p >= 2 else 0
            host["position"][slot] = p
            host["guidance_scale"][slot] = image.guidance[q]
            host["temperature"][slot] = image.sampling.temperature
            host["noise"][slot] = image.noise[q]
        for name, array in host.items():
            memory.upload(array, self.feeds[name])
        self._run_decode(int(host["position"].max()))
        sampled = memory.download(self.next_tokens)
        rows = [row for slot in active for row in self.rows(slot)]
        positions = [self.images[row % self.slots].step for row in rows]
        self._write_cache(rows, positions)
        finished = []
        for slot in active:
            image = self.images[slot]
            if image.step >= 1:
                image.tokens[image.step - 1] = sampled[slot]
            image.step += 1
            image.last_tick = tick
            if image.step == self.steps:
                finished.append(slot)
        return finished

    def _write_cache(self, rows: list[int], positions: list[int]) -> None:
        """This step's keys and values of `rows` (its outputs hold every row) at each row's own position."""
        all_rows = len(rows) == self.slots * self.rows_per_image and rows == sorted(rows)
        for cache, new in ((self.k_cache, self.outputs["keys"]), (self.v_cache, self.outputs["values"])):
            if all_rows:
                self.memory.write_rows(cache, new, rows, positions)
            else:
                self.memory.write_rows(cache, self.memory.take(new, 1, rows), rows, positions)

    def _run_decode(self, last_position: int) -> None:
        if self.backend.use_cuda_graph:  # one captured step per table: its buffers never move
            if self._replay is None:
                self._decode(last_position)  # warm-up (TensorRT requires one before capture)
                self._replay = self.memory.capture(lambda: self._decode(last_position))
            else:
                self._replay()
        else:
            self._decode(last_position)

    def _decode(self, last_position: int) -> None:
        layers, view = range(self.config.depth), self.backend.cache_view
        p = last_position + 1  # every row reads at most positions 0 .. last_position (masked by its own)
        feeds = {**self.feeds, "condition": self.condition,
                 **{f"k_cache.{i}": view(self.k_cache[i], p) for i in layers},
                 **{f"v_cache.{i}": view(self.v_cache[i], p) for i in layers}}
        self.backend.run("decode_step", feeds, {**self.outputs, "next_tokens": self.next_tokens})

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
            self.memory.put(cache, 1, [slot, slot + self.slots], self.blank)
        self.memory.put(self.f_hat, 0, [slot], self.blank_f_hat)
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
        k_rows, v_rows = memory.take(self.k_cache, 1, rows), memory.take(self.v_cache, 1, rows)
        feeds.update(self.constants[k], f_hat=memory.take(self.f_hat, 0, group),
                     **{f"k_cache.{i}": k_rows[i] for i in range(c.depth)},
                     **{f"v_cache.{i}": v_rows[i] for i in range(c.depth)})
        outputs = self.backend.output_buffers("var_step", var_dims(b, side))
        self.backend.run("var_step", feeds, outputs)
        memory.write_rows(self.k_cache, outputs["keys"], rows, [scale["begin"]] * len(rows))
        memory.write_rows(self.v_cache, outputs["values"], rows, [scale["begin"]] * len(rows))
        memory.put(self.f_hat, 0, group, outputs["f_hat_out"])
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
        f_hat = self.memory.download(self.memory.take(self.f_hat, 0, slots))
        return self.backend.run_host("var_decoder", {"f_hat": f_hat})["images_uint8"]
