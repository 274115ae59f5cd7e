"""Command-line entry points. Bad input ends in one line on stderr and a non-zero exit."""

from __future__ import annotations

import functools
from typing import Callable

import click

from .errors import RARDeployError


def friendly_errors(command: Callable) -> Callable:
    """Turn RARDeployError into click's one-line 'Error: ...' and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RARDeployError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group()
def main() -> None:
    """rar-deploy: RAR image generators as ONNX graphs and TensorRT engines."""


@main.command("make-checkpoint")
@click.option("--preset", default="tiny", show_default=True,
              type=click.Choice(["tiny", "rar_b", "rar_l", "rar_xl", "rar_xxl"]),
              help="Model size; rar_* presets get the released tokenizer's shape.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder to write into.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@friendly_errors
def make_checkpoint(preset: str, out_dir: str, seed: int) -> None:
    """Write a randomly initialised generator and tokenizer in the official checkpoint format."""
    from .demo import make_demo_checkpoints

    generator_path, tokenizer_path = make_demo_checkpoints(preset, out_dir, seed)
    click.echo(f"generator: {generator_path}\ntokenizer: {tokenizer_path}")
