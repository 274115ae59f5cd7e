"""rar-deploy make-checkpoint: demo weights in the official checkpoint format."""

from __future__ import annotations

import click

from rar_deploy.cli.common import friendly_errors


@click.command("make-checkpoint")
@click.option("--preset", default="tiny", show_default=True,
              type=click.Choice(["demo", "tiny", "rar_b", "rar_l", "rar_xl", "rar_xxl", "var_tiny", "var_d16",
                                 "var_d20", "var_d24", "var_d30"]),
              help="demo: the trained demo model (ten classes of shapes, 64 x 64; shipped weights); the others are "
                   "random weights of a size: rar_* / var_d* with the released tokenizer's / VQVAE's shape.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder to write into; identical files already there are kept, others are never replaced.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Seed of the random weights.")
@click.option("--weights", type=click.Path(file_okay=False),
              help="demo: a folder written by `rar-deploy train-demo` instead of the shipped weights.")
@friendly_errors
def make_checkpoint(preset: str, out_dir: str, seed: int, weights: str | None) -> None:
    """Write a generator and its tokenizer in the official checkpoint format: the trained demo model, or random
    weights of a size (the same bytes for the same preset and seed)."""
    if preset == "demo":
        from rar_deploy.training.demo_model import SHIPPED, write_demo_checkpoints

        generator_path, tokenizer_path = write_demo_checkpoints(out_dir, weights or SHIPPED)
    else:
        from rar_deploy.model.demo import make_demo_checkpoints

        generator_path, tokenizer_path = make_demo_checkpoints(preset, out_dir, seed)
    click.echo(f"generator: {generator_path}\ntokenizer: {tokenizer_path}")
