"""rar-deploy triton-repo: a Triton Inference Server model repository for an artifact folder."""

from __future__ import annotations

import click

from rar_deploy.cli.common import PATH_TYPE, THREADS_OPTION, friendly_errors
from rar_deploy.errors import RARDeployError


@click.command("triton-repo")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE,
              help="Artifact directory (the server reads it at this absolute path).")
@click.option("--out", required=True, type=PATH_TYPE,
              help="Model repository (tritonserver --model-repository), new or holding other models: only the "
                   "model's own folder is written.")
@click.option("--name", help="The model's name in the repository [default: the family, rar or var].")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--device", help="cpu, cuda or cuda:N [default: the backend's].")
@THREADS_OPTION
@click.option("--max-batch-size", type=click.IntRange(1),
              help="Triton's max_batch_size: most images an instance generates together "
                   "[default: the artifacts' profile].")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True, help="Model instances.")
@click.option("--queue-delay-us", type=click.IntRange(0), default=5000, show_default=True,
              help="Dynamic batching: how long a request may wait for others.")
@click.option("--decoupled", is_flag=True,
              help="Triton's decoupled policy (gRPC streaming clients): requests join the running batch at the next "
                   "step, images are sent as each is done, previews on request (input preview_every).")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True,
              help="Images an instance lets wait for a slot (decoupled); past it requests get UNAVAILABLE.")
@click.option("--force", is_flag=True, help="Replace the model folder this command wrote earlier.")
@friendly_errors
def triton_repo_command(artifacts_dir, out, name, backend, device, threads, max_batch_size, instances, queue_delay_us,
                        decoupled, max_queue, force) -> None:
    """Write a Triton Inference Server model repository that serves an artifact folder, RAR or VAR (Python backend,
    the generation in one model instance on the in-flight scheduler, dynamic batching; --decoupled for streaming)."""
    from rar_deploy.contract.checks import check_device
    from rar_deploy.outputs import Output, atomic_directory
    from rar_deploy.runtime import Artifacts
    from rar_deploy.serving.triton import check_model_name, model_files, write_model

    artifacts = Artifacts.load(artifacts_dir)
    name = check_model_name(name or artifacts.family.name)
    artifacts.check_batch_size(max_batch_size)
    check_device(device)
    if out.exists() and not out.is_dir():
        raise RARDeployError(f"--out {out} is a file: give a model repository folder (new or existing)")
    output = Output(out / name, "--out", force, written=model_files, owner="rar-deploy triton-repo",
                    inputs=(artifacts.directory,))
    with atomic_directory(output) as folder:
        write_model(folder, artifacts, name, backend, device, threads, max_batch_size, instances, queue_delay_us,
                    decoupled, max_queue)
    click.echo(f"wrote {out / name}: tritonserver --model-repository {out} (model {name!r}"
               + (", decoupled: gRPC streaming clients)" if decoupled else ")"))
