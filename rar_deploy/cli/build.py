"""rar-build: TensorRT engines built on the target from an artifact folder's graphs."""

from __future__ import annotations

from pathlib import Path

import click

from rar_deploy.cli.common import PATH_TYPE, friendly_errors, progress_printer


@click.command("rar-build")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE, help="Artifact directory.")
@click.option("--min-batch", type=click.IntRange(1), help="[default: the folder's batch profile]")
@click.option("--opt-batch", type=click.IntRange(1), help="[default: the folder's batch profile]")
@click.option("--max-batch", type=click.IntRange(1), help="[default: the folder's batch profile]")
@click.option("--opt-level", type=click.IntRange(0, 5), help="TensorRT builder optimization level [default: 3].")
@click.option("--compute-capability", "capabilities", multiple=True,
              help="TensorRT-RTX build target (repeatable) [default: the folder's engines', "
                   "else SM80 SM86 SM89 SM120].")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="TensorRT timing cache to reuse across builds (read, then updated).")
@friendly_errors
def build_command(artifacts_dir, min_batch, opt_batch, max_batch, opt_level, capabilities, timing_cache) -> None:
    """Build (or rebuild) the TensorRT engines of an artifact folder on this machine, from its ONNX graphs:
    no torch, no checkpoint. The folder's engines and manifest are replaced in one atomic swap."""
    from rar_deploy.contract.manifest import read_manifest
    from rar_deploy.tools.engine_build import describe_targets
    from rar_deploy.tools.rebuild import rebuild_engines, recorded_options

    options = recorded_options(read_manifest(artifacts_dir), min_batch=min_batch, opt_batch=opt_batch,
                               max_batch=max_batch, opt_level=opt_level, compute_capabilities=tuple(capabilities),
                               timing_cache=timing_cache)
    manifest = rebuild_engines(artifacts_dir, options, progress=progress_printer())
    engine = next(iter(manifest["engines"].values()))
    click.echo(f"built {', '.join(manifest['engines'])} in {artifacts_dir}: {engine['flavour']} "
               f"{engine['tensorrt_version']}, batch {engine['profile']['batch']}, for "
               f"{describe_targets(engine['compute_capabilities'])}")
