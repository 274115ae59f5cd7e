"""rar-parity: a backend against the float32 reference."""

from __future__ import annotations

import click

from rar_deploy.cli.common import BACKEND_CHOICE, PATH_TYPE, THREADS_OPTION, friendly_errors, progress_printer
from rar_deploy.errors import RARDeployError


@click.command("rar-parity")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE, help="Artifact directory.")
@click.option("--backend", default="onnxruntime", show_default=True, type=BACKEND_CHOICE)
@click.option("--ckpt", help="Recompute the reference from this generator checkpoint (needs torch).")
@click.option("--tokenizer", help="Recompute the reference from this tokenizer checkpoint (needs torch).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Device of the backend.")
@click.option("--batch", type=click.IntRange(1), help="Images compared; recomputes the reference [default: 2].")
@click.option("--seed", type=int, help="Seed of the inputs and of the shared noise; recomputes the reference [0].")
@click.option("--tolerance", type=float, help="Max error relative to the reference's peak [default: per precision].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@THREADS_OPTION
@friendly_errors
def parity_command(artifacts_dir, backend, ckpt, tokenizer, device, batch, seed, tolerance, as_json, threads) -> None:
    """Compare a backend with the float32 PyTorch reference: per graph, teacher-forced, free-running, decoder.

    By default against the reference record stored at export (reference.npz): no torch, no checkpoints.
    Exits 1 when a metric is over its tolerance, naming it with its value and the allowed value."""
    import json

    from rar_deploy.contract.checks import check_finite, check_seed
    from rar_deploy.runtime import Artifacts, open_pipeline
    from rar_deploy.tools.parity import format_report, load_record, run_parity

    if seed is not None:
        check_seed(seed)
    if tolerance is not None and not check_finite("--tolerance", tolerance) > 0:
        raise RARDeployError(f"--tolerance must be > 0, got {tolerance}")
    artifacts = Artifacts.load(artifacts_dir, verify="all")
    if ckpt or tokenizer or batch is not None or seed is not None:
        record = _recompute_record(artifacts, ckpt, tokenizer, 2 if batch is None else batch, seed or 0)
    else:
        record = load_record(artifacts)
    pipeline = open_pipeline(artifacts_dir, backend=backend, device=device, ckpt=ckpt, tokenizer=tokenizer,
                             threads=threads)
    report = run_parity(pipeline, record, rel_tol=tolerance, progress=progress_printer())
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))
    if report["failures"]:
        raise SystemExit(1)


def _recompute_record(artifacts, ckpt: str | None, tokenizer: str | None, batch: int, seed: int) -> dict:
    """The reference record from the checkpoints the artifacts were exported from (SHA-256 checked)."""

    try:
        from rar_deploy.model.checkpoint import load_exported_from
        from rar_deploy.model.reference import reference_record, var_reference_record
    except ImportError as exc:
        raise RARDeployError(f"recomputing the reference needs torch ({exc.name} is not installed): install "
                             "rar-deploy[export], or drop --ckpt/--tokenizer/--batch/--seed to use the stored record")
    generator = load_exported_from(artifacts.manifest, "generator", ckpt)
    decoder = load_exported_from(artifacts.manifest, "tokenizer", tokenizer)
    make_record = {"rar": reference_record, "var": var_reference_record}[artifacts.family.name]
    return make_record(generator, decoder, str(artifacts.cache_dtype), batch, seed)
