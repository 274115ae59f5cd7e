"""rar-deploy train-demo: train the demo model again, from data made on the machine."""

from __future__ import annotations

import click

from rar_deploy.cli.common import PATH_TYPE, friendly_errors, progress_printer


@click.command("train-demo")
@click.option("--out", required=True, type=PATH_TYPE, help="Folder to write the weights and their record into.")
@click.option("--quick", type=click.IntRange(1), help="Divide every step count and split by this (a quick check of "
                                                      "the machinery, not the shipped model).")
@click.option("--force", is_flag=True, help="Replace a folder that train-demo wrote before.")
@friendly_errors
def train_demo_command(out, quick, force) -> None:
    """Train the demo tokenizer, RAR generator and classifier (about 30 minutes on 2 cores) and write them as the
    package ships them: on a machine of the same kind and thread count, the same bytes (compare demo.json's
    SHA-256s with those of rar_deploy/training/demo_weights/demo.json)."""
    from rar_deploy.training.demo_model import train_demo
    from rar_deploy.training.recipe import DemoRecipe

    recipe = DemoRecipe() if quick is None else DemoRecipe().shortened(quick)
    record = train_demo(out, recipe, force=force, progress=progress_printer())
    held = record["held_out"]
    click.echo(f"wrote {out} in {record['total_seconds']:.0f} s: held-out token NLL {held['token_nll_nats']:.3f} nats, "
               f"reconstruction PSNR {held['reconstruction_psnr_db']:.1f} dB, classifier accuracy "
               f"{held['classifier_accuracy_real']:.3f} (real) / {held['classifier_accuracy_reconstructed']:.3f} "
               f"(reconstructed)")
    for name, entry in record["files"].items():
        click.echo(f"  {name}  {entry['bytes']} bytes  sha256 {entry['sha256']}")
