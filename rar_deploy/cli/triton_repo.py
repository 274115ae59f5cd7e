"""rar-deploy triton-repo: a Triton Inference Server model repository for an artifact folder."""

from __future__ import annotations

import click

from rar_deploy.cli.common import PATH_TYPE, THREADS_OPTION, friendly_errors
from rar_deploy.errors import RARDeployError


@click.command("triton-repo")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE,
              help="Artifact directory (the server reads it at this absolute path).")
@click.option("--out", required=True, type=PATH_TYPE,
              help="Model repository (tritonserver --model-repository), new or holding other models: only its "
                   "'rar' model folder is written.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--device", help="cpu, cuda or cuda:N [default: the backend's].")
@THREADS_OPTION
@click.option("--max-batch-size", type=click.IntRange(1),
              help="Triton's max_batch_size: most images an instance generates together "
                   "[default: the artifacts' profile].")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True, help="Model instances.")
@click.option("--queue-delay-us", type=click.IntRange(0), default=5000, show_default=True,
              help="Dynamic batching: how long a request may wait for others.")
@click.option("--force", is_flag=True, help="Replace the 'rar' model this command wrote earlier.")
@friendly_errors
def triton_repo_command(artifacts_dir, out, backend, device, threads, max_batch_size, instances, queue_delay_us,
                        force) -> None:
    """Write a Triton Inference Server model repository that serves an artifact folder (Python backend,
    the whole loop in one model instance, dynamic batching)."""
    from rar_deploy.contract.checks import check_device
    from rar_deploy.outputs import Output, atomic_directory
    from rar_deploy.runtime import Artifacts
    from rar_deploy.serving.triton import MODEL_NAME, model_files, write_model

    artifacts = Artifacts.load(artifacts_dir)
    artifacts.require_family("rar", "rar-deploy triton-repo")
    artifacts.check_batch_size(max_batch_size)
    check_device(device)
    if out.exists() and not out.is_dir():
        raise RARDeployError(f"--out {out} is a file: give a model repository folder (new or existing)")
    output = Output(out / MODEL_NAME, "--out", force, written=model_files, owner="rar-deploy triton-repo",
                    inputs=(artifacts.directory,))
    with atomic_directory(output) as folder:
        write_model(folder, artifacts, backend, device, threads, max_batch_size, instances, queue_delay_us)
    click.echo(f"wrote {out / MODEL_NAME}: tritonserver --model-repository {out} (model {MODEL_NAME!r})")
