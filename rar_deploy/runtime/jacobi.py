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

from dataclasses import dataclass

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
    """The decode_block graph on a host cache: every position's condition rows computed once, keys and values
    [L, R, H, N + 1, Dh] in numpy, each call's written at its images' own positions. What speculative decoding
    runs, and what rar-parity's teacher-forced block check runs (one runner for both)."""

    def __init__(self, backend, rows: np.ndarray) -> None:
        c = backend.config
        if "decode_block" not in backend.artifacts.graph_names:
            raise RARDeployError(f"{backend.artifacts.directory} has no decode_block graph: export it with "
                                 "rar-export --parallel-decoding to use --parallel-window")
        self.backend, self.depth, self.rows = backend, c.depth, rows
        table = np.repeat(np.arange(c.cache_len, dtype=np.int64), len(rows)).reshape(c.cache_len, len(rows))
        self.condition = backend.run_host("condition", {"class_labels": rows, "positions": table})["condition"]
        shape = (c.depth, len(rows), c.num_heads, c.cache_len, c.head_dim)
        self.keys, self.values = np.zeros(shape, backend.float_dtype), np.zeros(shape, backend.float_dtype)

    def __call__(self, first: np.ndarray, tokens: np.ndarray, guidance_scale: np.ndarray, temperature: np.ndarray,
                 noise: np.ndarray) -> dict[str, np.ndarray]:
        """tokens [B, P] at positions first[b] .. first[b] + P - 1 of image b; guidance_scale [B, P], noise [B, P, V].
        Writes the call's keys and values into the cache (both guidance rows of an image) and returns the graph's
        outputs."""
        batch, size = tokens.shape
        out = self.backend.run_host("decode_block", {
            "tokens": np.ascontiguousarray(tokens), "position": first, "condition": self.condition,
            **{f"k_cache.{i}": self.keys[i] for i in range(self.depth)},
            **{f"v_cache.{i}": self.values[i] for i in range(self.depth)},
            "guidance_scale": np.ascontiguousarray(guidance_scale, np.float32), "temperature": temperature,
            "noise": np.ascontiguousarray(noise, np.float32)})
        if (first == first[0]).all():  # one block for every image (the prefill, teacher forcing): one copy
            self.keys[:, :, :, first[0]:first[0] + size] = out["keys"]
            self.values[:, :, :, first[0]:first[0] + size] = out["values"]
            return out
        for b in range(batch):
            rows = [b] if len(self.rows) == batch else [b, b + batch]
            self.keys[:, rows, :, first[b]:first[b] + size] = out["keys"][:, rows]
            self.values[:, rows, :, first[b]:first[b] + size] = out["values"][:, rows]
        return out


def jacobi_generate(backend, inputs: RARInputs, seeds: list[tuple[int, int]], window: int
                    ) -> tuple[np.ndarray, JacobiStats]:
    """Tokens [B, N] of the images of `inputs` (their guidance rows, schedules and temperatures; not their
    sequential noise) by speculative Jacobi decoding with `window` drafts per image."""
    if not 1 <= window <= MAX_PARALLEL_WINDOW:
        raise RARDeployError(f"--parallel-window must be 1 .. {MAX_PARALLEL_WINDOW}, got {window}")
    backend.artifacts.check_batch_size(len(seeds))
    c = backend.config
    n, seq, vocab, batch = c.image_seq_len, c.cache_len, c.codebook_size, len(seeds)
    decoder = BlockDecoder(backend, inputs.rows)
    stride = window + 1
    streams = [sampling_noise(seed ^ JACOBI_STREAM, 1, (n + 1) * stride, vocab + 2, index)[0]
               for seed, index in seeds]
    tokens = np.zeros((batch, n), np.int64)
    accepted = np.zeros(batch, np.int64)  # a: image tokens 0 .. a - 1 are final
    # (token, q) for image tokens a, a + 1, ...: q None for a uniform draft, and unused when greedy (argmax decides)
    drafts = [[] for _ in range(batch)]
    calls = np.zeros(batch, np.int64)
    temperature = inputs.temperature.astype(np.float64)

    def call(first: np.ndarray, fed: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
        size = fed.shape[1]
        noise = np.stack([streams[b][calls[b] * stride:calls[b] * stride + size, :vocab] for b in range(batch)])
        return decoder(first, fed, inputs.guidance[np.minimum(predicted, n - 1), np.arange(batch)[:, None]],
                       inputs.temperature, noise)

    # the prefill: positions 0 and 1, image token 0 sampled at position 1
    out = call(np.zeros(batch, np.int64), np.zeros((batch, 2), np.int64), np.zeros((batch, 2), np.int64))
    tokens[:, 0], accepted[:] = out["next_tokens"][:, 1], 1
    calls += 1
    while (accepted < n).any():
        live = accepted < n
        first = np.where(live, accepted + 1, 0)
        size = int(min(window + 1, (seq - first[live]).min()))
        for b in range(batch):  # fill each window with uniform drafts
            while len(drafts[b]) < size - 1:
                u = streams[b][calls[b] * stride + len(drafts[b]) + 1, vocab + 1]
                drafts[b].append((min(int(u * vocab), vocab - 1), None))
        fed = np.zeros((batch, size), np.int64)
        for b in np.flatnonzero(live):
            fed[b, 0] = tokens[b, accepted[b] - 1]
            fed[b, 1:] = [token for token, _ in drafts[b][:size - 1]]
        predicted = np.where(live[:, None], accepted[:, None] + np.arange(size), 0)
        out = call(first, fed, predicted)
        for b in np.flatnonzero(live):
            a, row, t = int(accepted[b]), streams[b][calls[b] * stride:], temperature[b]
            logits = out["logits"][b]
            probabilities = _probabilities(logits, t) if t > 0 else None
            done = size - 1  # drafts accepted
            for i in range(size - 1):
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
                    residual = probabilities[i] - (np.full(vocab, 1.0 / vocab) if q is None else q)
                    with np.errstate(divide="ignore"):
                        tokens[b, a + i] = _gumbel_argmax(np.log(np.maximum(residual, 0.0)), row[i, :vocab])
                done = i
                break
            else:  # every draft accepted: the last position's own sample
                tokens[b, a + size - 1] = out["next_tokens"][b, size - 1]
            accepted[b] = a + done + 1
            # drafts for the tokens after the new accepted ones: this call's samples where it has them
            drafts[b] = [(int(out["next_tokens"][b, j]), None if t == 0 else probabilities[j])
                         for j in range(done + 1, size)]
        calls[live] += 1
    return tokens, JacobiStats(calls=calls, tokens=n)
