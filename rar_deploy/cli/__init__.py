"""The command-line entry points, one module per command. Bad input ends in one line on stderr and a non-zero
exit, before any heavy work."""

import click

from rar_deploy.cli.bench import bench_command
from rar_deploy.cli.build import build_command
from rar_deploy.cli.demo_quality import demo_quality_command
from rar_deploy.cli.export import export_command
from rar_deploy.cli.generate import generate_command
from rar_deploy.cli.make_checkpoint import make_checkpoint
from rar_deploy.cli.parity import parity_command
from rar_deploy.cli.serve import serve_command
from rar_deploy.cli.train_demo import train_demo_command
from rar_deploy.cli.triton_repo import triton_repo_command


@click.group()
def main() -> None:
    """rar-deploy: RAR and VAR image generators as ONNX graphs and TensorRT engines."""


main.add_command(make_checkpoint, name="make-checkpoint")
main.add_command(triton_repo_command, name="triton-repo")
main.add_command(export_command, name="export")
main.add_command(generate_command, name="generate")
main.add_command(parity_command, name="parity")
main.add_command(bench_command, name="bench")
main.add_command(build_command, name="build")
main.add_command(serve_command, name="serve")
main.add_command(train_demo_command, name="train-demo")
main.add_command(demo_quality_command, name="demo-quality")

__all__ = ["bench_command", "build_command", "export_command", "generate_command", "main", "make_checkpoint",
           "parity_command", "serve_command", "triton_repo_command"]
