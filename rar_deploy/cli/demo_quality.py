"""rar-deploy demo-quality: the quality yardsticks of an export of the demo model."""

from __future__ import annotations

import json

import click

from rar_deploy.cli.common import BACKEND_CHOICE, PATH_TYPE, THREADS_OPTION, friendly_errors, progress_printer


@click.command("demo-quality")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE, help="An export of the demo model.")
@click.option("--backend", default="onnxruntime", show_default=True, type=BACKEND_CHOICE)
@click.option("--per-class", default=100, show_default=True, type=click.IntRange(2),
              help="Images generated per class.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option("--guidance-scale", "guidance_scales", type=float, multiple=True,
              help="Guidance scale (repeatable: one row each) [default: the model's published value].")
@click.option("--guidance-pow", type=float, help="Guidance schedule power [default: published].")
@click.option("--temperature", "temperatures", type=float, multiple=True,
              help="Temperature (repeatable) [default: published].")
@click.option("--parallel-window", "parallel_windows", type=int, multiple=True,
              help="Speculative Jacobi decoding with this many drafts (repeatable: one row each; 0: one token a call; "
                   "the folder needs rar-export --parallel-decoding) [default: 0].")
@click.option("--out", type=PATH_TYPE, help="Folder for quality.json (every number) and a grid per table row "
                                            "(grid-<row>.png, one row of images per class).")
@click.option("--force", is_flag=True, help="Replace a folder that demo-quality wrote before.")
@click.option("--weights", type=PATH_TYPE, help="Demo weights folder of the yardsticks [default: the shipped one].")
@THREADS_OPTION
@friendly_errors
def demo_quality_command(artifacts_dir, backend, per_class, seed, guidance_scales, guidance_pow, temperatures,
                         parallel_windows, out, force, weights, threads) -> None:
    """Class accuracy and proxy FID of generated images, held-out token NLL and per-token entropy, for any export of
    the demo model on any backend (what a speed trick costs in quality)."""
    from contextlib import nullcontext

    from rar_deploy.outputs import Output, atomic_outputs
    from rar_deploy.runtime import open_pipeline
    from rar_deploy.runtime.families import RARSampling
    from rar_deploy.runtime.jacobi import check_parallel_window
    from rar_deploy.training.demo_model import SHIPPED
    from rar_deploy.training.yardsticks import (
        QUALITY_FILE,
        Yardsticks,
        as_dict,
        quality_rows,
        quality_written,
        write_grid,
    )

    say = progress_printer()
    pipeline = open_pipeline(artifacts_dir, backend=backend, threads=threads)
    samplings = [(RARSampling(guidance_scale=g, guidance_pow=guidance_pow, temperature=t), w)
                 for g in guidance_scales or [None] for t in temperatures or [None] for w in parallel_windows or [0]]
    for sampling, window in samplings:  # bad values: one line before any work
        sampling.resolved(pipeline.artifacts.sampling_defaults)
        check_parallel_window(pipeline.artifacts, window)
    outputs = [Output(out, "--out", force, written=quality_written, owner="rar-deploy demo-quality",
                      inputs=(artifacts_dir,))] if out else []
    with (atomic_outputs(outputs) if outputs else nullcontext([None])) as (folder,):
        yardsticks = Yardsticks(pipeline, weights or SHIPPED)
        say("teacher-forced likelihood of the held-out token sequences")
        likelihood = yardsticks.likelihood()
        results, files = [], []
        for row, (sampling, window) in enumerate(samplings):
            say(f"generating {10 * per_class} images with {sampling}"
                + (f", speculative decoding with {window} drafts" if window else ""))
            quality, images = yardsticks.generated(sampling, per_class, seed, parallel_window=window)
            results.append(quality)
            if folder:
                files.append(write_grid(folder, row, images, per_class))
        if folder:
            (folder / QUALITY_FILE).write_text(json.dumps(
                {"artifacts": str(artifacts_dir), "backend": backend, "seed": seed, "per_class": per_class,
                 "likelihood": as_dict(likelihood), "generated": [as_dict(q) for q in results],
                 "real_accuracy": yardsticks.real_accuracy, "files": [*files, QUALITY_FILE]}, indent=1) + "\n")
    click.echo("\n".join(quality_rows(results, yardsticks.real_accuracy)))
    click.echo(f"held-out token NLL {likelihood.token_nll_nats:.4f} nats over {likelihood.sequences} sequences; "
               f"per-token entropy {likelihood.entropy_bits:.2f} bits; top-1 probability under 5 %: "
               f"{likelihood.top1_under_5_percent:.1%} of tokens; top-1 = held-out token: "
               f"{likelihood.top1_agreement:.1%}")
