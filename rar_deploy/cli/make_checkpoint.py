"""rar-deploy make-checkpoint: demo weights in the official checkpoint format."""

from __future__ import annotations

import click

from rar_deploy.cli.common import friendly_errors


@click.command("make-checkpoint")
@click.option("--preset", default="tiny", show_default=True,
              type=click.Choice(["tiny", "rar_b", "rar_l", "rar_xl", "rar_xxl", "var_tiny", "var_d16", "var_d20",
                                 "var_d24", "var_d30"]),
              help="Model size; rar_* / var_d* presets get the released tokenizer's / VQVAE's shape.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder to write into; identical files already there are kept, others are never replaced.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Seed of the random weights.")
@friendly_errors
def make_checkpoint(preset: str, out_dir: str, seed: int) -> None:
    """Write a randomly initialised generator and tokenizer in the official checkpoint format (the same
    bytes for the same preset and seed)."""
    from rar_deploy.model.demo import make_demo_checkpoints

    generator_path, tokenizer_path = make_demo_checkpoints(preset, out_dir, seed)
    click.echo(f"generator: {generator_path}\ntokenizer: {tokenizer_path}")
