"""rar-serve: an artifact folder over HTTP with Ray Serve."""

from __future__ import annotations

import click

from rar_deploy.cli.common import BACKEND_CHOICE, PATH_TYPE, THREADS_OPTION, friendly_errors
from rar_deploy.errors import RARDeployError


@click.command("rar-serve")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE,
              help="Artifact directory (on storage every node of the cluster sees, at the same path).")
@click.option("--backend", type=BACKEND_CHOICE, default="onnxruntime", show_default=True)
@click.option("--device", help="cpu, cuda or cuda:N [default: the backend's].")
@THREADS_OPTION
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True, help="Replicas of the model.")
@click.option("--max-replicas", type=click.IntRange(1),
              help="Autoscale from --replicas up to this many under load [default: no autoscaling].")
@click.option("--num-cpus", type=click.FloatRange(0), default=1.0, show_default=True, help="CPUs each replica holds.")
@click.option("--num-gpus", type=click.FloatRange(0), default=0.0, show_default=True,
              help="GPUs each replica holds (1 for --backend tensorrt; a fraction shares a GPU).")
@click.option("--max-batch-size", type=click.IntRange(1),
              help="Slots of a replica's in-flight batch: images it generates at once, each joining at any step "
                   "[default: the artifacts' profile].")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True,
              help="Images a replica lets wait for a slot; past it requests are answered 503 (busy).")
@click.option("--request-timeout", "request_timeout_s", type=click.FloatRange(0, min_open=True),
              help="Seconds a request may take; past it the client gets 408 and its images leave [default: none].")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--address", help="A running Ray cluster to join (e.g. auto) [default: start Ray on this machine, "
                                "every port on loopback].")
@click.option("--drain-timeout", "drain_s", type=click.FloatRange(0), default=30.0, show_default=True,
              help="On Ctrl-C or SIGTERM, seconds the requests in flight may still take (new ones are turned away).")
@friendly_errors
def serve_command(artifacts_dir, backend, device, threads, replicas, max_replicas, num_cpus, num_gpus,
                  max_batch_size, max_queue, request_timeout_s, host, port, address, drain_s) -> None:
    """Serve an artifact folder (RAR or VAR) over HTTP with Ray Serve and in-flight batching: POST /generate,
    POST /generate/stream (previews), GET /healthz, GET /ready, GET /stats. Runs until interrupted (Ctrl-C or
    SIGTERM), then stops its replicas."""
    from rar_deploy.runtime import Artifacts
    from rar_deploy.serving.server import ServeOptions, check_before_start, serve_until_stopped

    artifacts = Artifacts.load(artifacts_dir)
    artifacts.check_batch_size(max_batch_size)
    if max_replicas is not None and max_replicas < replicas:
        raise RARDeployError(f"--max-replicas {max_replicas} is below --replicas {replicas}")
    if backend == "tensorrt" and num_gpus == 0:
        raise RARDeployError("--backend tensorrt runs on a GPU: give each replica one with --num-gpus 1")
    options = ServeOptions(str(artifacts.directory.resolve()), backend=backend, device=device, threads=threads,
                           replicas=replicas, max_replicas=max_replicas, num_cpus=num_cpus, num_gpus=num_gpus,
                           max_batch_size=max_batch_size, max_queue=max_queue, request_timeout_s=request_timeout_s,
                           host=host, port=port, address=address, drain_s=drain_s)
    check_before_start(options)
    serve_until_stopped(options, echo=lambda message: click.echo(message, err=True))
