"""rar-bench: per-stage latency of backends, and of the official loop."""

from __future__ import annotations

import click

from rar_deploy.cli.common import (
    BACKEND_CHOICE,
    INT8_ACTIVATIONS_OPTION,
    PATH_TYPE,
    THREADS_OPTION,
    friendly_errors,
    progress_printer,
)
from rar_deploy.errors import RARDeployError


@click.command("rar-bench")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE, help="Artifact directory.")
@click.option("--backend", "backends", multiple=True, default=["onnxruntime"], show_default=True,
              type=BACKEND_CHOICE, help="Repeatable: all run in one process.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Device of the backends and the baseline.")
@click.option("--baseline", is_flag=True, help="Also time the official-style eager loop and print ratios to it.")
@click.option("--ckpt", help="Checkpoint for torch/baseline [default: the one recorded in the manifest].")
@click.option("--tokenizer", help="Tokenizer for torch/baseline [default: the one recorded in the manifest].")
@click.option("--warmup-steps", default=3, show_default=True, type=click.IntRange(0),
              help="Decode steps run before timing (VAR: one whole generation warms up every scale).")
@click.option("--condition-budget", "condition_budgets", multiple=True, type=click.IntRange(0),
              help="Bytes of condition rows a generation may hold (0: one position a step). Repeatable: every "
                   "backend runs at each [default: 2 GiB].")
@click.option("--parallel-window", "parallel_windows", multiple=True, type=int,
              help="RAR: also time speculative Jacobi decoding with this many drafts against the sequential loop "
                   "(repeatable; the folder needs rar-export --parallel-decoding).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@THREADS_OPTION
@INT8_ACTIVATIONS_OPTION
@friendly_errors
def bench_command(artifacts_dir, backends, batch_sizes, device, baseline, ckpt, tokenizer, warmup_steps,
                  condition_budgets, parallel_windows, as_json, threads, int8_activations):
    """Per-stage latency (prefill, decode step mean/p50/p99, decoder), per image, images/s, peak memory."""
    import json

    from rar_deploy.contract.checks import parse_integers
    from rar_deploy.runtime import Artifacts
    from rar_deploy.runtime.jacobi import check_parallel_window
    from rar_deploy.tools.bench import bench_results, format_results

    artifacts = Artifacts.load(artifacts_dir)
    artifacts.family.refuse_options({"condition_budget": condition_budgets or None}, artifacts.directory)
    windows = [check_parallel_window(artifacts, window, least=1) for window in parallel_windows]
    sizes = [artifacts.check_batch_size(b) for b in parse_integers(batch_sizes, "--batch-sizes")]
    if not sizes:
        raise RARDeployError("--batch-sizes is empty: give at least one batch size, e.g. 1,8")
    results = bench_results(artifacts, list(backends), sizes, device, baseline, ckpt, tokenizer,
                            warmup_steps, progress=progress_printer(), threads=threads,
                            condition_budgets=list(condition_budgets), int8_activations=int8_activations,
                            parallel_windows=windows)
    click.echo(json.dumps(results, indent=1) if as_json else format_results(results))
