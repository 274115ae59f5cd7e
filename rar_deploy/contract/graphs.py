"""The graph contract as data: what each graph takes and returns, and the layouts a runtime must know.

Export writes all of it into the manifest; every runtime (this package's, the C++ one, a user's own)
reads it from there. No torch here. Symbolic dimensions: `batch` (B images), `rows` (R = 2B with
classifier-free guidance: B conditional rows, then B rows of the null class; R = B without), and
`positions` (P condition rows per guidance row: all N + 1 sequence positions, or only the current one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rar_deploy.contract.config import RARConfig, RARTokenizerConfig, VARConfig, VARTokenizerConfig

GRAPH_NAMES = ("condition", "decode_step", "vq_decoder")
VAR_GRAPH_NAMES = ("var_step", "var_decoder")
FAMILY_GRAPHS = {"rar": GRAPH_NAMES, "var": VAR_GRAPH_NAMES}
# graphs an export writes only when asked (`rar-export --parallel-decoding`): RAR's multi-position step
OPTIONAL_GRAPHS = {"rar": ("decode_block",), "var": ()}


def present_graphs(family: str, names) -> tuple[str, ...]:
    """The graphs of a folder of `family` whose graph names are `names`: every required one, then the optional
    ones it has."""
    return FAMILY_GRAPHS[family] + tuple(name for name in OPTIONAL_GRAPHS[family] if name in names)


# speculative Jacobi decoding (runtime/jacobi.py): draft tokens per image a decode_block call checks
DEFAULT_PARALLEL_WINDOW, MAX_PARALLEL_WINDOW = 8, 16
# `block`: consecutive positions per image in one decode_block call. VAR adds `side` (pn, the scale's token grid
# side) and `tokens` (n = pn * pn, the scale's tokens)
SYMBOLIC_DIMS = ("batch", "rows", "positions", "block", "side", "tokens")
# what parity compares of one var_step call (its tokens and f_hat_out follow from sampling: the free-running
# checks cover them)
VAR_STEP_COMPARED = ("logits", "keys", "values")
# Chunks of one block's adaLN output (D each), and of the head's, in the order of the official Linear.
BLOCK_MODULATION = ("shift1", "scale1", "gate1", "shift2", "scale2", "gate2")
HEAD_MODULATION = ("scale", "shift")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype (numpy name) and shape, symbolic dims as strings."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def condition_width(config: RARConfig) -> int:
    """C: the input embedding (D), every block's adaLN output (6D each) and the head's (2D)."""
    return (1 + 6 * config.depth + 2) * config.hidden_size


def condition_layout(config: RARConfig) -> dict:
    """Offsets (in elements) of each part of one condition row of width C."""
    d, layers = config.hidden_size, config.depth
    return {
        "width": condition_width(config),
        "input_embedding": {"offset": 0, "size": d},
        "blocks": {"offset": d, "stride": 6 * d, "count": layers, "chunks": list(BLOCK_MODULATION)},
        "head": {"offset": d + 6 * d * layers, "size": 2 * d, "chunks": list(HEAD_MODULATION)},
    }


def cache_layout(config: RARConfig, dtype: str) -> dict:
    """One keys and one values buffer [L, R, H, S, Dh]; layer i's view is the decode step's k_cache.i."""
    return {
        "shape": [config.depth, "rows", config.num_heads, config.cache_len, config.head_dim],
        "dtype": dtype,
        "layer_input_names": {"keys": "k_cache.%d", "values": "v_cache.%d"},
        "write_offset": 0,  # the step at sequence position p returns keys/values written at index p + 0
    }


def graph_specs(config: RARConfig, tokenizer: RARTokenizerConfig, dtype: str) -> dict[str, dict]:
    """Inputs and outputs of each graph; `dtype` is the graph precision's float type (float16/float32)."""
    vocab, layers, heads, head_dim = config.codebook_size, config.depth, config.num_heads, config.head_dim
    side = config.grid_size * tokenizer.upsample_factor
    channels = tokenizer.num_channels
    step_kv = (layers, "rows", heads, 1, head_dim)
    cache_view = ("rows", heads, config.cache_len, head_dim)
    return {
        "condition": {
            "inputs": [TensorSpec("class_labels", "int64", ("rows",)),
                       TensorSpec("positions", "int64", ("positions", "rows"))],
            "outputs": [TensorSpec("condition", dtype, ("positions", "rows", condition_width(config)))],
        },
        "decode_step": {
            "inputs": [TensorSpec("tokens", "int64", ("batch",)),
                       TensorSpec("position", "int64", ("batch",)),
                       TensorSpec("condition", dtype, ("positions", "rows", condition_width(config))),
                       *(TensorSpec(f"k_cache.{i}", dtype, cache_view) for i in range(layers)),
                       *(TensorSpec(f"v_cache.{i}", dtype, cache_view) for i in range(layers)),
                       TensorSpec("guidance_scale", "float32", ("batch",)),
                       TensorSpec("temperature", "float32", ("batch",)),
                       TensorSpec("noise", "float32", ("batch", vocab))],
            "outputs": [TensorSpec("next_tokens", "int64", ("batch",)),
                        TensorSpec("logits", "float32", ("batch", vocab)),
                        TensorSpec("keys", dtype, step_kv),
                        TensorSpec("values", dtype, step_kv)],
        },
        "decode_block": {
            "inputs": [TensorSpec("tokens", "int64", ("batch", "block")),
                       TensorSpec("position", "int64", ("batch",)),
                       TensorSpec("condition", dtype, ("positions", "rows", condition_width(config))),
                       *(TensorSpec(f"k_cache.{i}", dtype, cache_view) for i in range(layers)),
                       *(TensorSpec(f"v_cache.{i}", dtype, cache_view) for i in range(layers)),
                       TensorSpec("guidance_scale", "float32", ("batch", "block")),
                       TensorSpec("temperature", "float32", ("batch",)),
                       TensorSpec("noise", "float32", ("batch", "block", vocab))],
            "outputs": [TensorSpec("next_tokens", "int64", ("batch", "block")),
                        TensorSpec("logits", "float32", ("batch", "block", vocab)),
                        TensorSpec("keys", dtype, (layers, "rows", heads, "block", head_dim)),
                        TensorSpec("values", dtype, (layers, "rows", heads, "block", head_dim))],
        },
        "vq_decoder": {
            "inputs": [TensorSpec("tokens", "int64", ("batch", config.image_seq_len))],
            "outputs": [TensorSpec("images", "float32", ("batch", channels, side, side)),
                        TensorSpec("images_uint8", "uint8", ("batch", side, side, channels))],
        },
    }


def var_cache_layout(config: VARConfig, dtype: str) -> dict:
    """Per layer one keys and one values buffer [2B, H, L, Dh]: the var_step's k_cache.i / v_cache.i."""
    return {
        "shape": [config.depth, "rows", config.num_heads, config.seq_len, config.head_dim],
        "dtype": dtype,
        "layer_input_names": {"keys": "k_cache.%d", "values": "v_cache.%d"},
        "write_offset": 0,  # scale [begin, end) returns keys/values written at sequence indices begin .. end - 1
    }


def var_graph_specs(config: VARConfig, tokenizer: VARTokenizerConfig, dtype: str) -> dict[str, dict]:
    """Inputs and outputs of VAR's two graphs; `dtype` is the precision's float type (the cache's)."""
    vocab, side_max, channels = config.codebook_size, config.patch_nums[-1], config.vae_channels
    image = side_max * tokenizer.upsample_factor
    f_hat = ("batch", channels, side_max, side_max)
    cache_view = ("rows", config.num_heads, config.seq_len, config.head_dim)
    scale_kv = (config.depth, "rows", config.num_heads, "tokens", config.head_dim)
    layers = range(config.depth)
    return {
        "var_step": {
            "inputs": [TensorSpec("class_labels", "int64", ("batch",)),
                       TensorSpec("f_hat", "float32", f_hat),
                       TensorSpec("positions", "int64", ("side", "side")),
                       TensorSpec("phi_index", "int64", (1,)),
                       TensorSpec("down", "float32", ("side", side_max)),
                       TensorSpec("up", "float32", (side_max, "side")),
                       TensorSpec("guidance", "float32", ("batch",)),
                       TensorSpec("top_k", "int64", (1,)),
                       TensorSpec("top_p", "float32", (1,)),
                       TensorSpec("temperature", "float32", ("batch",)),
                       TensorSpec("noise", "float32", ("batch", "side", "side", vocab)),
                       *(TensorSpec(f"k_cache.{i}", dtype, cache_view) for i in layers),
                       *(TensorSpec(f"v_cache.{i}", dtype, cache_view) for i in layers)],
            "outputs": [TensorSpec("tokens", "int64", ("batch", "tokens")),
                        TensorSpec("f_hat_out", "float32", f_hat),
                        TensorSpec("logits", "float32", ("batch", "tokens", vocab)),
                        TensorSpec("keys", dtype, scale_kv),
                        TensorSpec("values", dtype, scale_kv)],
        },
        "var_decoder": {
            "inputs": [TensorSpec("f_hat", "float32", f_hat)],
            "outputs": [TensorSpec("images", "float32", ("batch", 3, image, image)),
                        TensorSpec("images_uint8", "uint8", ("batch", image, image, 3))],
        },
    }


def phi_index(scale: int, num_scales: int, num_phi: int) -> int:
    """Which of the quantiser's num_phi shared Phi convolutions scale k uses (the official rule): the one whose tick
    is nearest k / (K - 1); ticks evenly spaced in [1 / 3n, 1 - 1 / 3n] for n = 4, else [1 / 2n, 1 - 1 / 2n]."""
    margin = 1 / 3 / num_phi if num_phi == 4 else 1 / 2 / num_phi
    ticks = np.linspace(margin, 1 - margin, num_phi)
    return int(np.argmin(np.abs(ticks - scale / (num_scales - 1))))


def area_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in]: area interpolation (adaptive average pooling) along one axis, float64."""
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-(i + 1) * size_in // size_out)
        matrix[i, start:end] = 1 / (end - start)
    return matrix


def bicubic_matrix(size_in: int, size_out: int, a: float = -0.75) -> np.ndarray:
    """[size_out, size_in]: bicubic interpolation along one axis (align_corners False, cubic convolution with
    a = -0.75, border taps clamped), float64; the identity when the sizes are equal."""
    if size_in == size_out:
        return np.eye(size_in)
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731  |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731  1 < |x| < 2
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        source = size_in / size_out * (i + 0.5) - 0.5
        first, t = math.floor(source), source - math.floor(source)
        for tap, weight in zip(range(first - 1, first + 3), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            matrix[i, min(max(tap, 0), size_in - 1)] += weight
    return matrix


def var_scales(config: VARConfig, num_phi: int) -> list[dict]:
    """The manifest's `scales`: per scale its side, positions [begin, end), Phi index, the float32 resize
    matrices down [side, P] (area, P -> side) and up [P, side] (bicubic, side -> P), and its guidance fraction
    [n, d]: the guidance t = cfg * n / d (the official k / (K - 1))."""
    size = config.patch_nums[-1]
    return [{"side": side, "begin": begin, "end": end, "phi_index": phi_index(k, config.num_scales, num_phi),
             "down": area_matrix(size, side).astype(np.float32).tolist(),
             "up": bicubic_matrix(side, size).astype(np.float32).tolist(),
             "guidance_fraction": [k, config.num_scales - 1]}
            for k, (side, (begin, end)) in enumerate(zip(config.patch_nums, config.scale_ranges()))]


def forward_arguments(names: list[str]) -> list[str | list[str]]:
    """A graph's inputs as its module's forward arguments (and torch.export's dynamic shapes): the per-layer
    inputs k_cache.i and v_cache.i each form one list argument."""
    arguments: list[str | list[str]] = []
    for name in names:
        kind, _, layer = name.rpartition(".")
        if not layer.isdigit():
            arguments.append(name)
        elif layer == "0":
            arguments.append([n for n in names if n.rpartition(".")[0] == kind])
    return arguments


def family_graph_specs(family: str, generator, tokenizer, dtype: str) -> dict[str, dict]:
    """The graph specs of a family's model (graph_specs or var_graph_specs)."""
    return {"rar": graph_specs, "var": var_graph_specs}[family](generator, tokenizer, dtype)


def var_input_dims(batch, side) -> dict:
    """VAR's symbolic input dims from the batch and the scale side (ints, or torch.export Dims): R = 2B rows."""
    return {"batch": batch, "rows": 2 * batch, "side": side}


def var_dims(batch: int, side: int) -> dict[str, int]:
    """Every VAR symbolic dim of one scale step: its inputs', and its outputs' n = side^2 tokens."""
    return {**var_input_dims(batch, side), "tokens": side * side}


def var_profile_dims(min_batch: int, opt_batch: int, max_batch: int, max_side: int) -> list[dict[str, int]]:
    """The [min, opt, max] dims a VAR engine profile covers: every scale (side 1 .. pn_K), 2B rows."""
    return [var_dims(b, side) for b, side in ((min_batch, 1), (opt_batch, max_side), (max_batch, max_side))]


def resolve_shape(shape: list, dims: dict[str, int]) -> list[int]:
    """A manifest shape with symbolic dims -> concrete dims, e.g. dims = {"batch": 2, "rows": 4}."""
    return [dims[d] if isinstance(d, str) else d for d in shape]


def generation_dims(batch: int, guided: bool, positions: int) -> dict[str, int]:
    """The symbolic dims of one generation: rows = 2 x batch with guidance, batch without."""
    return {"batch": batch, "rows": 2 * batch if guided else batch, "positions": positions}


def profile_dims(min_batch: int, opt_batch: int, max_batch: int, cache_len: int) -> list[dict[str, int]]:
    """The [min, opt, max] dims an engine profile covers: unguided to guided rows, one to all positions."""
    return [{"batch": min_batch, "rows": min_batch, "positions": 1},
            generation_dims(opt_batch, True, cache_len),
            generation_dims(max_batch, True, cache_len)]


def with_block_dims(dims: list[dict[str, int]], cache_len: int) -> list[dict[str, int]]:
    """An engine profile's [min, opt, max] dims with decode_block's `block`: one position, the last token and the
    default window of drafts, the largest window (at most every position)."""
    blocks = (1, DEFAULT_PARALLEL_WINDOW + 1, MAX_PARALLEL_WINDOW + 1)
    return [{**d, "block": min(size, cache_len)} for d, size in zip(dims, blocks)]
