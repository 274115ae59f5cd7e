"""Speculative Jacobi decoding for RAR (SJD, arXiv 2410.01699): each image keeps a window of draft tokens after its
accepted ones; one decode_block call scores the last accepted token and the drafts at once, and the drafts are
accepted left to right by speculative sampling's rule (accept draft x drawn from q with probability
min(1, p(x) / q(x)); at the first rejection draw from max(p - q, 0) normalised; when all are accepted, the last
position's own sample), which keeps every token's distribution the model's own. Greedy (temperature 0) accepts a
draft iff it is the argmax, so it gives the sequential greedy tokens. Drafts not accepted are redrawn from the
call's distributions (q = p); empty window places get a uniformly drawn token (q = 1 / V).

Randomness is a function of (seed, image) alone: image i's stream is the contract's noise with the seed
`seed ^ JACOBI_STREAM`, rows of V + 2 uniforms, P rows per call (call k reads rows k * (W + 1) ...): columns 0 .. V-1
the Gumbel noise of the call's sampling, V the acceptance draw, V + 1 the uniform draft of an empty place.
Host-driven (the acceptance needs the probabilities); the graphs run through the backend's run_host. No torch here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rar_deploy.contract.graphs import MAX_PARALLEL_WINDOW
from rar_deploy.contract.sampling import sampling_noise
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.loops import RARInputs

JACOBI_STREAM = 0x4A41434F4249  # "JACOBI": the speculative streams differ from the sequential noise of a seed


@dataclass
class JacobiStats:
    """Per image: decode calls (the prefill included) and tokens; the sequential loop makes N + 1 calls."""

    calls: np.ndarray
    tokens: int
    graph_ms: float = 0.0  # wall time in decode_block calls (their inputs' uploads and outputs' downloads included)
    host_ms: float = 0.0  # the rest: acceptance, drafts and noise, on the host

    @property
    def host_ms_per_call(self) -> float:
        """The host's share of a batch's decode call (what a GPU pass would add to its graph's time)."""
        return self.host_ms / max(int(self.calls.max()), 1)

    @property
    def tokens_per_call(self) -> float:
        return float(self.tokens / (self.calls - 1).mean())  # the prefill call samples one token in both loops


def _probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def _gumbel_argmax(log_weights: np.ndarray, uniform: np.ndarray) -> int:
    return int(np.argmax(log_weights - np.log(-np.log(uniform.astype(np.float64)))))


class BlockDecoder:
    """The decode_block graph over a cache in the backend's memory: every position's condition rows computed once,
    keys and values [L, R, H, N + 1, Dh] written in place after each call at its images' own positions (so a call
    moves only its inputs and what the host needs: logits and tokens). What speculative decoding runs, and what
    rar-parity's teacher-forced block check runs (one runner for both)."""

    def __init__(self, backend, rows: np.ndarray) -> None:
        c, memory = backend.config, backend.memory
        self.backend, self.memory, self.depth, self.num_rows = backend, memory, c.depth, len(rows)
        table = np.repeat(np.arange(c.cache_len, dtype=np.int64), len(rows)).reshape(c.cache_len, len(rows))
        self.condition = memory.empty((c.cache_len, len(rows), backend.artifacts.condition_width), backend.float_dtype)
        backend.run("condition", {"class_labels": self._upload(rows), "positions": self._upload(table)},
                    {"condition": self.condition})
        shape = (c.depth, len(rows), c.num_heads, c.cache_len, c.head_dim)
        # zeros: a masked cache position is multiplied by 0 in attention, and 0 * NaN would be NaN
        self.keys, self.values = memory.zeros(shape, backend.float_dtype), memory.zeros(shape, backend.float_dtype)
        self._buffers: dict[tuple[int, int], tuple[dict, dict]] = {}  # feeds and outputs by (batch, block)

    def _upload(self, array: np.ndarray):
        buffer = self.memory.empty(array.shape, array.dtype)
        self.memory.upload(array, buffer)
        return buffer

    def __call__(self, first: np.ndarray, tokens: np.ndarray, guidance_scale: np.ndarray, temperature: np.ndarray,
                 noise: np.ndarray) -> dict[str, np.ndarray]:
        """tokens [B, P] at positions first[b] .. first[b] + P - 1 of image b; guidance_scale [B, P], noise [B, P, V].
        Writes the call's keys and values into the cache (both guidance rows of an image); returns its logits
        [B, P, V] (float32) and next_tokens [B, P] on the host."""
        batch, size = tokens.shape
        if (batch, size) not in self._buffers:  # allocated once per shape: a call only uploads into them
            memory, int64, float32 = self.memory, np.dtype(np.int64), np.dtype(np.float32)
            self._buffers[batch, size] = (
                {"tokens": memory.empty((batch, size), int64), "position": memory.empty((batch,), int64),
                 "guidance_scale": memory.empty((batch, size), float32), "temperature": memory.empty((batch,), float32),
                 "noise": memory.empty((batch, size, self.backend.config.codebook_size), float32)},
                self.backend.output_buffers("decode_block", {"batch": batch, "rows": self.num_rows, "block": size,
                                                             "positions": self.condition.shape[0]}))
        feeds, outputs = self._buffers[batch, size]
        for name, array, dtype in (("tokens", tokens, np.int64), ("position", first, np.int64),
                                   ("guidance_scale", guidance_scale, np.float32),
                                   ("temperature", temperature, np.float32), ("noise", noise, np.float32)):
            self.memory.upload(np.ascontiguousarray(array, dtype), feeds[name])
        layers = range(self.depth)
        self.backend.run("decode_block", {**feeds, "condition": self.condition,
                                          **{f"k_cache.{i}": self.keys[i] for i in layers},
                                          **{f"v_cache.{i}": self.values[i] for i in layers}}, outputs)
        if (first == first[0]).all():  # one block for every image (the prefill, teacher forcing): one copy
            self.memory.write_position(self.keys, outputs["keys"], int(first[0]))
            self.memory.write_position(self.values, outputs["values"], int(first[0]))
        else:  # row r of image r mod B
            positions = [int(first[r % batch]) for r in range(self.num_rows)]
            self.memory.write_rows(self.keys, outputs["keys"], list(range(self.num_rows)), positions)
            self.memory.write_rows(self.values, outputs["values"], list(range(self.num_rows)), positions)
        return {"logits": self.memory.download(outputs["logits"]).astype(np.float32),
                "next_tokens": self.memory.download(outputs["next_tokens"])}


def check_parallel_window(artifacts, window: int, least: int = 0) -> int:
    """A parallel window checked before any work, one line each: least (0: off) .. 16 draft tokens, on a RAR
    folder with the decode_block graph."""
    whole = isinstance(window, (int, np.integer)) and not isinstance(window, bool)
    if not whole or not least <= window <= MAX_PARALLEL_WINDOW:
        raise RARDeployError(f"--parallel-window must be {least} .. {MAX_PARALLEL_WINDOW} draft tokens"
                             f"{' (0: off)' if least == 0 else ''}, got {window}")
    if window and artifacts.family.name != "rar":
        raise RARDeployError(f"--parallel-window is RAR's speculative decoding; a {artifacts.family.title} model "
                             "samples a whole scale a step: drop it")
    if window and "decode_block" not in artifacts.graph_names:
        raise RARDeployError(f"{artifacts.directory} has no decode_block graph: export it with "
                             "rar-export --parallel-decoding to use --parallel-window")
    return int(window)


def jacobi_generate(backend, inputs: RARInputs, seeds: list[tuple[int, int]], window: int,
                    on_call: Callable[[np.ndarray], None] | None = None) -> tuple[np.ndarray, JacobiStats]:
    """Tokens [B, N] of the images of `inputs` (their guidance rows, schedules and temperatures; not their
    sequential noise) by speculative Jacobi decoding with `window` drafts per image. on_call(accepted) after every
    call: the tokens per image final so far."""
    window = check_parallel_window(backend.artifacts, window, least=1)
    backend.artifacts.check_batch_size(len(seeds))
    c = backend.config
    n, seq, vocab, batch = c.image_seq_len, c.cache_len, c.codebook_size, len(seeds)
    started = time.perf_counter()
    decoder = BlockDecoder(backend, inputs.rows)
    graph_s = time.perf_counter() - started  # the condition table: a graph too
    stride = window + 1

    def streams(live: np.ndarray) -> np.ndarray:  # each image's rows of its current call: [B, W + 1, V + 2]
        rows = np.full((batch, stride, vocab + 2), 0.5, np.float32)  # images done: any valid noise
        for b in np.flatnonzero(live):
            seed, index = seeds[b]
            rows[b] = sampling_noise(seed ^ JACOBI_STREAM, 1, stride, vocab + 2, index, int(calls[b]) * stride)[0]
        return rows

    tokens = np.zeros((batch, n), np.int64)
    accepted = np.zeros(batch, np.int64)  # a: image tokens 0 .. a - 1 are final
    # (token, q) for image tokens a, a + 1, ...: q None for a uniform draft, and unused when greedy (argmax decides)
    drafts = [[] for _ in range(batch)]
    calls = np.zeros(batch, np.int64)
    temperature = inputs.temperature.astype(np.float64)

    def call(first: np.ndarray, fed: np.ndarray, predicted: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal graph_s
        start = time.perf_counter()
        out = decoder(first, fed, inputs.guidance[np.minimum(predicted, n - 1), np.arange(batch)[:, None]],
                      inputs.temperature, rows[:, :fed.shape[1], :vocab])
        graph_s += time.perf_counter() - start
        return out

    # the prefill: positions 0 and 1, image token 0 sampled at position 1
    everyone = np.ones(batch, bool)
    out = call(np.zeros(batch, np.int64), np.zeros((batch, 2), np.int64), np.zeros((batch, 2), np.int64),
               streams(everyone))
    tokens[:, 0], accepted[:] = out["next_tokens"][:, 1], 1
    calls += 1
    on_call and on_call(accepted)
    while (accepted < n).any():
        live = accepted < n
        rows = streams(live)
        first = np.where(live, accepted + 1, 0)
        # one block size a call; an image near its end uses the positions up to N and ignores the rest (they wrap
        # round the condition table, and their keys are not written), so it never shortens another image's window
        size = int(min(window + 1, (seq - first[live]).max()))
        valid = np.minimum(size, seq - first)  # positions of the block that image b uses
        fed = np.zeros((batch, size), np.int64)
        for b in np.flatnonzero(live):
            while len(drafts[b]) < valid[b] - 1:  # fill the window with uniform drafts
                u = rows[b, len(drafts[b]) + 1, vocab + 1]
                drafts[b].append((min(int(u * vocab), vocab - 1), None))
            fed[b, 0] = tokens[b, accepted[b] - 1]
            fed[b, 1:valid[b]] = [token for token, _ in drafts[b][:valid[b] - 1]]
        predicted = np.where(live[:, None], accepted[:, None] + np.arange(size), 0)
        out = call(first, fed, predicted, rows)
        for b in np.flatnonzero(live):
            a, row, t, size_b = int(accepted[b]), rows[b], temperature[b], int(valid[b])
            logits = out["logits"][b, :size_b]
            probabilities = _probabilities(logits, t) if t > 0 else None
            done = size_b - 1  # drafts accepted
            for i in range(size_b - 1):
                token, q = drafts[b][i]
                if t == 0:
                    keep = token == int(np.argmax(logits[i]))
                else:
                    q_token = 1.0 / vocab if q is None else q[token]
                    keep = row[i, vocab] < probabilities[i, token] / q_token
                if keep:
                    tokens[b, a + i] = token
                    continue
                if t == 0:
                    tokens[b, a + i] = int(np.argmax(logits[i]))
                else:
                    residual = probabilities[i] - (1.0 / vocab if q is None else q)
                    with np.errstate(divide="ignore"):
                        tokens[b, a + i] = _gumbel_argmax(np.log(np.maximum(residual, 0.0)), row[i, :vocab])
                done = i
                break
            else:  # every draft accepted: the last position's own sample
                tokens[b, a + size_b - 1] = out["next_tokens"][b, size_b - 1]
            accepted[b] = a + done + 1
            # drafts for the tokens after the new accepted ones: this call's samples where it has them
            drafts[b] = [(int(out["next_tokens"][b, j]), None if t == 0 else probabilities[j])
                         for j in range(done + 1, size_b)]
        calls[live] += 1
        on_call and on_call(accepted)
    total_ms = (time.perf_counter() - started) * 1e3
    return tokens, JacobiStats(calls=calls, tokens=n, graph_ms=graph_s * 1e3, host_ms=total_ms - graph_s * 1e3)
