"""manifest.json: the contract between an artifact directory and any runtime (Python, C++, ...)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from . import __version__
from .config import GeneratorConfig, TokenizerConfig
from .errors import RARDeployError

SCHEMA = "rar-deploy/manifest"
GRAPH_NAMES = ("prefill", "decode_step", "vq_decoder")
SCHEMA_VERSION = 1
GUIDANCE_FORMULA = "s_t = (g - 1) * (1 - cos(pi * (t / N) ** pow)) / 2 + 1 in float32, with 0 ** 0 = 1; t = 0 .. N-1"


def build_manifest(*, generator: GeneratorConfig, tokenizer: TokenizerConfig, checkpoints: dict, precision: str,
                   graphs: dict, cache_dtype: str, tools: dict, engines: dict, batch_profile: list[int]) -> dict:
    defaults = generator.sampling_defaults
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "rar_deploy_version": __version__,
        "model": {**generator.to_dict(), "preset": generator.preset_name},
        "tokenizer": tokenizer.to_dict(),
        "checkpoints": checkpoints,
        "precision": precision,
        "graphs": graphs,
        "kv_cache": {
            "layout": "[layers, 2*batch, heads, seq, head_dim]",
            "shape": [generator.depth, "2*batch", generator.num_heads, generator.cache_len, generator.head_dim],
            "dtype": cache_dtype,
            "rows": "batch conditional rows, then batch unconditional rows (null class)",
            "prefill_writes": [0, 1],
            "decode_step_writes": "step + 1",
        },
        "sampling": {
            "defaults": {"temperature": defaults.temperature, "guidance_scale": defaults.guidance_scale,
                         "guidance_pow": defaults.guidance_pow},
            "guidance_schedule": GUIDANCE_FORMULA,
            "noise": "uniform in (0, 1), float32 [batch, V] per step; tokens = argmax(logits / T - log(-log(u)))",
            "temperature_zero": "greedy argmax",
        },
        "batch_profile": {"min": batch_profile[0], "opt": batch_profile[1], "max": batch_profile[2]},
        "tools": {**tools, "python": platform.python_version(), "numpy": np.__version__},
        "engines": engines,
    }


def write_manifest(manifest: dict, directory: Path) -> None:
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def is_artifact_directory(path: Path) -> bool:
    """A folder rar-export wrote (any schema version): the only kind of folder its --force replaces."""
    try:
        return json.loads((Path(path) / "manifest.json").read_text()).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def read_manifest(directory: str | Path) -> dict:
    """Read and sanity-check `<directory>/manifest.json`."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise RARDeployError(f"{directory} has no manifest.json: is it an artifact directory written by rar-export?")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RARDeployError(f"{path} is corrupt ({exc}): export the artifacts again with rar-export") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise RARDeployError(f"{path} is not a rar-deploy manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise RARDeployError(f"{path} has schema version {manifest.get('schema_version')}, this rar-deploy reads "
                             f"{SCHEMA_VERSION}: export the artifacts again with this version")
    return manifest
