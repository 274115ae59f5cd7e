"""rar-build: TensorRT engines for an artifact folder, on the machine that will run them (engines are
specific to a GPU and a TensorRT version). Needs TensorRT (or TensorRT-RTX) and the runtime install only:
no torch, no checkpoint. The folder is replaced in one atomic swap: a new folder is assembled beside it
(its graphs hard-linked, not copied), given the new engines and manifest, and exchanged with the old one,
so a kill leaves the old engines or the new ones, never a mix."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable

from rar_deploy.contract.manifest import exported_files
from rar_deploy.outputs import Output, atomic_directory
from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.tools.engine_build import (
    RTX_DEFAULT_CAPABILITIES,
    BatchProfile,
    BuildOptions,
    build_engines,
    check_build,
    require_tensorrt,
)


def rebuild_engines(directory: Path, options: BuildOptions | None = None,
                    progress: Callable[[str], None] = print) -> dict:
    """Build the engines of `directory` (profile, level and targets from its manifest unless `options` says
    otherwise); returns the new manifest."""
    trt = require_tensorrt()
    artifacts = Artifacts.load(directory, verify="sha256")
    options = check_build(trt, options or recorded_options(artifacts.manifest), progress,
                          fp8=artifacts.weights is not None and artifacts.weights.quantizes_activations)
    # a link names the folder to rebuild (Output follows it); what rar-build did not write is carried over
    output = Output(directory, "--artifacts", force=True, written=exported_files, owner="rar-export",
                    keeps_foreign=True)
    with atomic_directory(output, report=progress) as tmp:
        for name in _kept_files(output.target, artifacts.manifest):
            _link_or_copy(output.target / name, tmp / name)
        return build_engines(trt, tmp, artifacts.manifest, options, progress)


def recorded_options(manifest: dict, **overrides) -> BuildOptions:
    """The build options recorded in the folder (its batch profile, its engines' level and TensorRT-RTX
    targets), with `overrides` (BuildOptions fields, or min/opt/max batch) applied where not None."""
    recorded = manifest["batch_profile"]
    given = {key: overrides.pop(f"{key}_batch", None) for key in ("min", "opt", "max")}
    batch = {key: given[key] or recorded[key] for key in ("min", "opt", "max")}
    if not given["opt"]:  # the recorded opt batch, moved inside a new [min, max]
        batch["opt"] = min(max(batch["opt"], batch["min"]), batch["max"])
    engine = next(iter(manifest["engines"].values()), {})
    options = BuildOptions(BatchProfile(batch["min"], batch["opt"], batch["max"]), engine.get("opt_level", 3),
                           tuple(engine["compute_capabilities"]) if engine.get("flavour") == "tensorrt-rtx"
                           else RTX_DEFAULT_CAPABILITIES)
    return replace(options, **{key: value for key, value in overrides.items() if value})


def _kept_files(directory: Path, manifest: dict) -> list[str]:
    """Everything in the folder but what a rebuild replaces (the manifest, the engines it lists and their timing
    cache), as paths relative to it: the graphs, the reference record, and whatever a user put there."""
    replaced = {"manifest.json"} | {engine["file"] for engine in manifest["engines"].values()}
    replaced |= {engine["timing_cache"] for engine in manifest["engines"].values() if engine.get("timing_cache")}
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*")
                  if (path.is_file() or path.is_symlink()) and str(path.relative_to(directory)) not in replaced)


def _link_or_copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)  # the same bytes under a second name: nothing is copied
    except OSError:
        shutil.copy2(source, destination)
