"""manifest.json: the contract between an artifact directory and any runtime (Python, C++, a user's own).

Versioned, validated on load against `manifest.schema.json`, then against what this version's contract
derives from the recorded model: a manifest whose graph I/O, cache or condition layout disagrees with its
own model configuration was edited or damaged, and is refused before any graph is opened.
"""

from __future__ import annotations

import hashlib
import json
import platform
import struct
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from rar_deploy.contract.config import (
    VAR_DEMO_GUIDANCE_SCALE,
    RARConfig,
    RARTokenizerConfig,
    VARConfig,
    VARSamplingDefaults,
    VARTokenizerConfig,
)
from rar_deploy.contract.graphs import (
    cache_layout,
    condition_layout,
    family_graph_specs,
    graph_specs,
    present_graphs,
    var_cache_layout,
    var_graph_specs,
    var_scales,
)
from rar_deploy.errors import RARDeployError
from rar_deploy.version import __version__

SCHEMA = "rar-deploy/manifest"
SCHEMA_VERSION = 5
# What a manifest's contract_sha256 does not cover: what rar-build rewrites (files, engines, batch_profile,
# tools), where the checkpoints were, and the part a user may edit (sampling.defaults).
OUTSIDE_CONTRACT = ("contract_sha256", "rar_deploy_version", "checkpoints", "files", "engines", "batch_profile",
                    "tools")
EDITABLE_SAMPLING = ("defaults", "demo_guidance_scale")
FLOAT_DTYPES = {"fp32": "float32", "fp16": "float16"}


NOISE = {"generator": "splitmix64", "bits": 23,
         "key": "splitmix64(splitmix64(seed) ^ image)",
         "value": "u[image][t][v] = ((splitmix64(key + (t * V + v) * 0x9E3779B97F4A7C15) >> 41) + 0.5) "
                  "/ 2**23, splitmix64(x) = mix(x + 0x9E3779B97F4A7C15), uint64 arithmetic"}


def canonical(value) -> str:
    """The text contract_sha256 hashes (docs/CONTRACT.md): JSON with keys sorted and no spaces, except that a
    float is `f` and the 16 hex digits of its IEEE-754 bits (so that every language writes it the same way)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{canonical(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, float):
        return "f" + struct.pack(">d", value).hex()
    return json.dumps(value)  # str (ASCII-escaped), int, bool, None


def contract_sha256(manifest: dict) -> str:
    """SHA-256 of every section a runtime builds its computation from (all but OUTSIDE_CONTRACT and the editable
    sampling defaults): recorded at export, recomputed by every runtime on load."""
    sections = {key: value for key, value in manifest.items() if key not in OUTSIDE_CONTRACT}
    if isinstance(sections.get("sampling"), dict):
        sections["sampling"] = {k: v for k, v in sections["sampling"].items() if k not in EDITABLE_SAMPLING}
    return hashlib.sha256(canonical(sections).encode("ascii")).hexdigest()


def build_manifest(*, generator: RARConfig | VARConfig, tokenizer: RARTokenizerConfig | VARTokenizerConfig,
                   checkpoints: dict, precision: str, graphs: dict, files: dict, tools: dict, engines: dict,
                   batch_profile: list[int], weights: dict | None = None) -> dict:
    """graphs: name -> {"file", "external_data", ...}; files: relative path -> integrity.file_record."""
    dtype = FLOAT_DTYPES[precision]
    family = "var" if isinstance(generator, VARConfig) else "rar"
    specs = family_graph_specs(family, generator, tokenizer, dtype)
    manifest = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "family": family,
        "rar_deploy_version": __version__,
        "model": {**generator.to_dict(), "preset": generator.preset_name},
        "tokenizer": tokenizer.to_dict(),
        "checkpoints": checkpoints,
        "precision": precision,
        **({"weights": weights} if weights else {}),
        "graphs": {name: {**graphs[name], "inputs": [s.to_dict() for s in specs[name]["inputs"]],
                          "outputs": [s.to_dict() for s in specs[name]["outputs"]]}
                   for name in present_graphs(family, graphs)},
        "files": files,
    }
    manifest.update(_var_sections(generator, tokenizer, dtype) if family == "var" else _rar_sections(generator, dtype))
    manifest.update({
        "batch_profile": {"min": batch_profile[0], "opt": batch_profile[1], "max": batch_profile[2]},
        "tools": {**tools, "python": platform.python_version(), "numpy": np.__version__},
        "engines": engines,
    })
    manifest["contract_sha256"] = contract_sha256(manifest)
    return manifest


def _rar_sections(generator: RARConfig, dtype: str) -> dict:
    defaults = generator.sampling_defaults
    return {
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
            "noise": NOISE,
            "gumbel_max": "token = argmax(logits / T - log(-log(u)))",
            "temperature_zero": "greedy argmax",
        },
        "loop": {"first_position": 0, "last_position": generator.image_seq_len, "token_input_offset": -2,
                 "sample_offset": -1, "first_sampling_position": 1,
                 "condition_row": "position mod P (P positions of condition rows: 1 .. N + 1)"},
    }


def _var_sections(generator: VARConfig, tokenizer: VARTokenizerConfig, dtype: str) -> dict:
    defaults = VARSamplingDefaults()
    return {
        "kv_cache": var_cache_layout(generator, dtype),
        "scales": var_scales(generator, tokenizer.num_phi),
        "guidance": {
            "rows": "rows = class_labels, then as many null_class rows (always: guidance scale 0 is t = 0)",
            "null_class": generator.null_class,
            "schedule": {"formula": "t = cfg * n / d at a scale of guidance_fraction [n, d] (the official "
                                    "k / (K - 1)); logits = (1 + t) * cond - t * uncond",
                         "evaluation": "float64, cfg * n first, then / d, rounded to float32 (the var_step's "
                                       "guidance input)"},
        },
        "sampling": {
            "defaults": {"guidance_scale": defaults.guidance_scale, "top_k": defaults.top_k, "top_p": defaults.top_p,
                         "temperature": defaults.temperature},
            "demo_guidance_scale": VAR_DEMO_GUIDANCE_SCALE,
            "noise": NOISE,
            "filter": "top-k (k > 0: logits below the k-th largest -> -inf), then top-p (p > 0: ascending softmax "
                      "cumsum <= 1 - p -> -inf, the largest always kept)",
            "gumbel_max": "token = argmax(filtered / T - log(-log(u))), t in u[image][t][v] the sequence position",
            "temperature_zero": "greedy argmax (as top_k 1)",
        },
        "loop": {"order": "scales k = 0 .. K-1, one var_step each (tokens begin .. end - 1 of `scales`)",
                 "f_hat": "zeros [B, Cvae, P, P] before scale 0; f_hat_out is the next scale's f_hat and the "
                          "var_decoder's input after the last",
                 "cache": "keys/values of scale k written at sequence indices begin .. end - 1; the step reads "
                          "indices < begin (zeros elsewhere)"},
    }


def write_manifest(manifest: dict, directory: Path) -> None:
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


RECORD_FILE = "reference.npz"  # the float32 reference's inputs and outputs (rar-parity on the target)
PARITY_FILE = "parity.json"  # export-time verification's report


def exported_files(path: Path) -> frozenset[str] | None:
    """The files rar-export (and rar-build) wrote in a folder, any schema version: what its manifest lists, the
    manifest itself, the verification report and the engines' timing cache; None if it is not an export."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
        if manifest.get("schema") != SCHEMA:
            return None
        files = {str(name) for name in manifest.get("files", {})}
        files |= {str(engine["timing_cache"]) for engine in manifest.get("engines", {}).values()
                  if engine.get("timing_cache")}
        return frozenset(files | {"manifest.json", PARITY_FILE})
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return None


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
    if manifest["contract_sha256"] != contract_sha256(manifest):
        raise RARDeployError(f"{path} was edited: its contract sections (model, graphs, layouts, scales; everything "
                             "but sampling.defaults) no longer match their contract_sha256; export the artifacts "
                             "again (only sampling.defaults may be edited)")
    _check_consistent(manifest, path)
    _check_defaults(manifest, path)
    return manifest


def _check_defaults(manifest: dict, path: Path) -> None:
    """sampling.defaults, the editable part, must hold values the runtime accepts from a user."""
    from rar_deploy.contract.checks import check_sampling, check_var_sampling

    defaults = manifest["sampling"]["defaults"]
    try:
        if manifest_family(manifest) == "var":
            check_var_sampling(defaults["guidance_scale"], defaults["top_k"], defaults["top_p"],
                               defaults["temperature"])
        else:
            check_sampling(defaults["guidance_scale"], defaults["guidance_pow"], defaults["temperature"])
    except RARDeployError as exc:
        raise RARDeployError(f"{path}: sampling.defaults holds a value the runtime refuses ({exc}); fix it there or "
                             "export the artifacts again") from None


def manifest_family(manifest: dict) -> str:
    """"rar" or "var" (manifests written before VAR had no family: RAR's)."""
    return manifest.get("family", "rar")


def _check_consistent(manifest: dict, path: Path) -> None:
    """The manifest's contract must be the one its own model configuration gives."""
    def refuse(what: str) -> RARDeployError:
        return RARDeployError(f"{path}: {what}; the manifest was edited or is damaged: export the artifacts again")

    family = manifest_family(manifest)
    try:
        generator = manifest_generator_config(manifest)
        tokenizer = manifest_tokenizer_config(manifest)
    except (TypeError, ValueError) as exc:
        raise refuse(f"its model configuration is invalid ({exc})") from None
    dtype = FLOAT_DTYPES[manifest["precision"]]
    if family == "var":
        if generator.embed_dim % generator.num_heads or tokenizer.vae_channels != generator.vae_channels:
            raise refuse("its model configuration is not a VAR generator and its VQVAE (heads or channels)")
        specs, layout = var_graph_specs(generator, tokenizer, dtype), var_cache_layout(generator, dtype)
        _check_scales(manifest["scales"], generator, tokenizer.num_phi, refuse)
    else:
        if generator.hidden_size % generator.num_heads or generator.grid_size ** 2 != generator.image_seq_len:
            raise refuse("its model configuration is not a RAR generator (heads or token grid)")
        specs, layout = graph_specs(generator, tokenizer, dtype), cache_layout(generator, dtype)
        if manifest["condition"] != condition_layout(generator):
            raise refuse("its condition layout is not the one its model gives")
    if tokenizer.codebook_size != generator.codebook_size:
        raise refuse(f"the tokenizer's codebook ({tokenizer.codebook_size}) does not match the generator's vocabulary "
                     f"({generator.codebook_size}): it mixes two models")
    for name in present_graphs(family, manifest["graphs"]):
        for kind in ("inputs", "outputs"):
            expected = [s.to_dict() for s in specs[name][kind]]
            for recorded, wanted in zip(manifest["graphs"][name][kind], expected):
                if recorded != wanted:
                    raise refuse(f"graph {name} {kind[:-1]} {recorded.get('name')} is {recorded}, its model gives "
                                 f"{wanted}")
            if len(manifest["graphs"][name][kind]) != len(expected):
                raise refuse(f"graph {name} lists {len(manifest['graphs'][name][kind])} {kind}, its model gives "
                             f"{len(expected)}")
    if manifest["kv_cache"] != layout:
        raise refuse("its kv_cache layout is not the one its model gives")
    profile = manifest["batch_profile"]
    if not profile["min"] <= profile["opt"] <= profile["max"]:
        raise refuse(f"its batch profile {profile} does not satisfy min <= opt <= max")
    listed = {graph["file"] for graph in manifest["graphs"].values()}
    listed |= {graph["external_data"] for graph in manifest["graphs"].values() if graph["external_data"]}
    listed |= {engine["file"] for engine in manifest["engines"].values()}
    missing = sorted(listed - set(manifest["files"]))
    if missing:
        raise refuse(f"{missing[0]} has no size and hashes in its files list")


def _check_scales(scales: list[dict], config: VARConfig, num_phi: int, refuse) -> None:
    """VAR's per-scale constants must be the ones its model gives (contract.var_scales), value for value."""
    expected = var_scales(config, num_phi)
    if len(scales) != len(expected):
        raise refuse(f"it lists {len(scales)} scales, its model has {len(expected)}")
    for k, (scale, wanted) in enumerate(zip(scales, expected)):
        for key in ("side", "begin", "end", "phi_index", "down", "up", "guidance_fraction"):
            if scale[key] != wanted[key]:
                shown = scale[key] if key not in ("down", "up") else "its matrix"
                raise refuse(f"scale {k}'s {key} is {shown}, its model gives "
                             f"{wanted[key] if key not in ('down', 'up') else 'another'}")


def manifest_generator_config(manifest: dict) -> RARConfig | VARConfig:
    model = {k: v for k, v in manifest["model"].items() if k != "preset"}
    if manifest_family(manifest) == "var":
        return VARConfig(**{**model, "patch_nums": tuple(model["patch_nums"])})
    return RARConfig(**model)


def manifest_tokenizer_config(manifest: dict) -> RARTokenizerConfig | VARTokenizerConfig:
    config = VARTokenizerConfig if manifest_family(manifest) == "var" else RARTokenizerConfig
    return config(**{**manifest["tokenizer"], "channel_mult": tuple(manifest["tokenizer"]["channel_mult"])})
