"""manifest.json: the contract between an artifact directory and any runtime (Python, C++, a user's own).

Versioned, validated on load against `manifest.schema.json`, then against what this version's contract
derives from the recorded model: a manifest whose graph I/O, cache or condition layout disagrees with its
own model configuration was edited or damaged, and is refused before any graph is opened.
"""

from __future__ import annotations

import json
import platform
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from .config import GeneratorConfig, TokenizerConfig
from .contract import GRAPH_NAMES, cache_layout, condition_layout, graph_specs
from .errors import RARDeployError
from .version import __version__

SCHEMA = "rar-deploy/manifest"
SCHEMA_VERSION = 3
FLOAT_DTYPES = {"fp32": "float32", "fp16": "float16"}


def build_manifest(*, generator: GeneratorConfig, tokenizer: TokenizerConfig, checkpoints: dict, precision: str,
                   graphs: dict, files: dict, tools: dict, engines: dict, batch_profile: list[int]) -> dict:
    """graphs: name -> {"file", "external_data"}; files: relative path -> integrity.file_record."""
    defaults = generator.sampling_defaults
    dtype = FLOAT_DTYPES[precision]
    specs = graph_specs(generator, tokenizer, dtype)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "rar_deploy_version": __version__,
        "model": {**generator.to_dict(), "preset": generator.preset_name},
        "tokenizer": tokenizer.to_dict(),
        "checkpoints": checkpoints,
        "precision": precision,
        "graphs": {name: {**graphs[name], "inputs": [s.to_dict() for s in specs[name]["inputs"]],
                          "outputs": [s.to_dict() for s in specs[name]["outputs"]]} for name in GRAPH_NAMES},
        "files": files,
        "kv_cache": cache_layout(generator, dtype),
        "condition": condition_layout(generator),
        "guidance": {
            "rows": "rows = class_labels, then as many null_class rows; without guidance the class_labels alone",
            "null_class": generator.null_class,
            "unguided_scale": 0,
            "schedule": {"formula": "s_t = (g - 1) * ((1 - cos(pi * (t / N) ** pow)) * 0.5) + 1, t = 0 .. N-1, "
                                    "0 ** 0 = 1",
                         "evaluation": "float64 (C library cos and pow), rounded to float32"},
        },
        "sampling": {
            "defaults": {"temperature": defaults.temperature, "guidance_scale": defaults.guidance_scale,
                         "guidance_pow": defaults.guidance_pow},
            "noise": {"generator": "splitmix64", "bits": 23,
                      "key": "splitmix64(splitmix64(seed) ^ image)",
                      "value": "u[image][t][v] = ((splitmix64(key + (t * V + v) * 0x9E3779B97F4A7C15) >> 41) + 0.5) "
                               "/ 2**23, splitmix64(x) = mix(x + 0x9E3779B97F4A7C15), uint64 arithmetic"},
            "gumbel_max": "token = argmax(logits / T - log(-log(u)))",
            "temperature_zero": "greedy argmax",
        },
        "loop": {"first_position": 0, "last_position": generator.image_seq_len, "token_input_offset": -2,
                 "sample_offset": -1, "first_sampling_position": 1,
                 "condition_row": "position mod P (P positions of condition rows: 1 .. N + 1)"},
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


@cache
def _validator():
    import jsonschema

    schema = json.loads(resources.files(__package__).joinpath("manifest.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def read_manifest(directory: str | Path) -> dict:
    """Read `<directory>/manifest.json`, validated against the schema and against its own model."""
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
    error = next(iter(sorted(_validator().iter_errors(manifest), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise RARDeployError(f"{path} is not a valid manifest at {where}: {error.message}; it was edited or is "
                             "damaged: export the artifacts again")
    _check_consistent(manifest, path)
    return manifest


def _check_consistent(manifest: dict, path: Path) -> None:
    """The manifest's contract must be the one its own model configuration gives."""
    def refuse(what: str) -> RARDeployError:
        return RARDeployError(f"{path}: {what}; the manifest was edited or is damaged: export the artifacts again")

    try:
        generator = manifest_generator_config(manifest)
        tokenizer = manifest_tokenizer_config(manifest)
    except (TypeError, ValueError) as exc:
        raise refuse(f"its model configuration is invalid ({exc})") from None
    if generator.hidden_size % generator.num_heads or generator.grid_size ** 2 != generator.image_seq_len:
        raise refuse("its model configuration is not a RAR generator (heads or token grid)")
    if tokenizer.codebook_size != generator.codebook_size:
        raise refuse(f"the tokenizer's codebook ({tokenizer.codebook_size}) does not match the generator's vocabulary "
                     f"({generator.codebook_size}): it mixes two models")
    dtype = FLOAT_DTYPES[manifest["precision"]]
    specs = graph_specs(generator, tokenizer, dtype)
    for name in GRAPH_NAMES:
        for kind in ("inputs", "outputs"):
            expected = [s.to_dict() for s in specs[name][kind]]
            for recorded, wanted in zip(manifest["graphs"][name][kind], expected):
                if recorded != wanted:
                    raise refuse(f"graph {name} {kind[:-1]} {recorded.get('name')} is {recorded}, its model gives "
                                 f"{wanted}")
            if len(manifest["graphs"][name][kind]) != len(expected):
                raise refuse(f"graph {name} lists {len(manifest['graphs'][name][kind])} {kind}, its model gives "
                             f"{len(expected)}")
    if manifest["kv_cache"] != cache_layout(generator, dtype):
        raise refuse("its kv_cache layout is not the one its model gives")
    if manifest["condition"] != condition_layout(generator):
        raise refuse("its condition layout is not the one its model gives")
    profile = manifest["batch_profile"]
    if not profile["min"] <= profile["opt"] <= profile["max"]:
        raise refuse(f"its batch profile {profile} does not satisfy min <= opt <= max")
    listed = {graph["file"] for graph in manifest["graphs"].values()}
    listed |= {graph["external_data"] for graph in manifest["graphs"].values() if graph["external_data"]}
    listed |= {engine["file"] for engine in manifest["engines"].values()}
    missing = sorted(listed - set(manifest["files"]))
    if missing:
        raise refuse(f"{missing[0]} has no size and hashes in its files list")


def manifest_generator_config(manifest: dict) -> GeneratorConfig:
    return GeneratorConfig(**{k: v for k, v in manifest["model"].items() if k != "preset"})


def manifest_tokenizer_config(manifest: dict) -> TokenizerConfig:
    return TokenizerConfig(**{**manifest["tokenizer"], "channel_mult": tuple(manifest["tokenizer"]["channel_mult"])})
