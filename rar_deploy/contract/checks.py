"""Checks of user-supplied values, shared by the command line and the Python API: each raises
RARDeployError with one line that says what is wrong, before any work starts."""

from __future__ import annotations

import math
import numbers
import os
import re
from typing import Any, Sequence

import numpy as np

from rar_deploy.errors import RARDeployError

MAX_SEED = 2**63 - 1
MAX_IMAGES = 10**6  # one rar-generate call: its labels, tokens and PNG list are held in memory
MAX_GUIDANCE = 1e4  # far beyond any useful scale; larger ones overflow the guided logits in float32


def _is_integer(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_class_labels(labels: Any, num_classes: int) -> np.ndarray:
    """A sequence (or 1-D integer array/tensor) of class ids in [0, num_classes) -> int64 [B]."""
    if hasattr(labels, "numpy") and hasattr(labels, "detach"):  # a torch tensor
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu":
            raise RARDeployError(f"class labels must be integers, got an array of {labels.dtype}")
        if labels.ndim != 1:
            raise RARDeployError(f"class labels must be one list of class ids (a 1-D array), got an array of shape "
                                 f"{list(labels.shape)}")
        array = labels.astype(np.int64)
    else:
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
            raise RARDeployError(f"class labels must be a list of integer class ids, got {type(labels).__name__}")
        wrong = [label for label in labels if not _is_integer(label)]
        if wrong:
            raise RARDeployError(f"class labels must be integer class ids, got {wrong[0]!r} "
                                 f"({type(wrong[0]).__name__})")
        outside = [int(label) for label in labels if not 0 <= label < num_classes]  # before int64 can overflow
        if outside:
            raise RARDeployError(f"class id {outside[0]} is out of range: class ids must lie in [0, {num_classes})")
        array = np.array([int(label) for label in labels], dtype=np.int64)
    if array.size == 0:
        raise RARDeployError("no class labels given: pass at least one ImageNet class id")
    bad = array[(array < 0) | (array >= num_classes)]
    if bad.size:
        raise RARDeployError(f"class id {int(bad[0])} is out of range: class ids must lie in [0, {num_classes})")
    return array


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_finite(name: str, value: Any) -> float:
    """A real number that stays finite as the float32 the graphs compute with."""
    if not _is_real(value):
        raise RARDeployError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        raise RARDeployError(f"{name} must be a finite number within float32's range, got {value!r}"[:200])
    return number


def check_guidance(guidance_scale: Any) -> float:
    """A finite guidance scale within +-MAX_GUIDANCE (beyond it the guided logits overflow: a wrong image)."""
    scale = check_finite("guidance scale", guidance_scale)
    if abs(scale) > MAX_GUIDANCE:
        raise RARDeployError(f"guidance scale must lie within +-{MAX_GUIDANCE:g} (published values are 1.5 to 16), "
                             f"got {scale:g}")
    return scale


def check_sampling(guidance_scale: Any, guidance_pow: Any, temperature: Any) -> tuple[float, float, float]:
    """Guidance scale (0 = no guidance), guidance pow >= 0, temperature >= 0 (0 = greedy); all finite."""
    scale = check_guidance(guidance_scale)
    pow_ = check_finite("guidance pow", guidance_pow)
    temperature = check_finite("temperature", temperature)
    if pow_ < 0:
        raise RARDeployError(f"guidance pow must be >= 0 (0 is constant guidance), got {pow_}")
    if temperature < 0:
        raise RARDeployError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    return scale, pow_, temperature


def check_var_sampling(guidance_scale: Any, top_k: Any, top_p: Any, temperature: Any
                       ) -> tuple[float, int, float, float]:
    """VAR: guidance scale (cfg) >= 0, top-k >= 0 (0: off), top-p in [0, 1) (0: off), temperature >= 0 (0: greedy)."""
    scale = check_guidance(guidance_scale)
    if scale < 0:
        raise RARDeployError(f"guidance scale must be >= 0 (0 is the conditional logits alone), got {scale}")
    top_k = check_count("top-k", top_k, 0, MAX_SEED)
    top_p = check_finite("top-p", top_p)
    if not 0 <= top_p < 1:
        raise RARDeployError(f"top-p must lie in [0, 1) (0 turns it off), got {top_p}")
    temperature = check_finite("temperature", temperature)
    if temperature < 0:
        raise RARDeployError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    return scale, top_k, top_p, temperature


def check_seed(seed: Any) -> int:
    if not _is_integer(seed):
        raise RARDeployError(f"seed must be an integer, got {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise RARDeployError(f"seed must lie in [0, 2**63), got {int(seed)}")
    return int(seed)


def check_device(device: Any) -> str | None:
    """None (the backend's default), 'cpu', 'cuda' or 'cuda:N'."""
    if device is not None and (not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device)):
        raise RARDeployError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_threads(threads: Any) -> int | None:
    """None (every core), or 1 .. this machine's cores: more threads only slow ONNX Runtime and torch down, and
    creating thousands of them takes minutes and memory."""
    if threads is None:
        return None
    cores = cpu_cores()
    if not _is_integer(threads) or not 1 <= threads <= cores:
        raise RARDeployError(f"threads must be an integer from 1 to {cores} (this machine's CPU cores), got "
                             f"{threads!r}"[:200])
    return int(threads)


def check_count(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """An integer in [low, high]."""
    if not _is_integer(value):
        raise RARDeployError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise RARDeployError(f"{name} must be {bounds}, got {int(value)}")
    return int(value)


def check_tokens(tokens: Any, image_seq_len: int, codebook_size: int) -> np.ndarray:
    """Integer tokens [B, N] with ids in [0, V) -> int64 [B, N]."""
    array = np.asarray(tokens.detach().cpu().numpy() if hasattr(tokens, "detach") else tokens)
    if array.dtype.kind not in "iu":
        raise RARDeployError(f"tokens must be integers, got {array.dtype}")
    if array.ndim != 2 or array.shape[1] != image_seq_len or array.shape[0] == 0:
        raise RARDeployError(f"tokens must be [B, {image_seq_len}] with B >= 1, got {list(array.shape)}")
    if array.min() < 0 or array.max() >= codebook_size:
        raise RARDeployError(f"token ids must lie in [0, {codebook_size})")
    return array.astype(np.int64)


_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")  # decimal digits only: no "1_0", no 5000-digit numbers


def parse_integers(text: str, option: str) -> list[int]:
    """'1,2, 3' -> [1, 2, 3] (possibly empty); names the option when the text is not a list of integers."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    wrong = [part for part in parts if not _INTEGER.fullmatch(part)]
    if wrong:
        raise RARDeployError(f"{option} must be comma-separated decimal integers, got {wrong[0][:40]!r}")
    return [int(part) for part in parts]
