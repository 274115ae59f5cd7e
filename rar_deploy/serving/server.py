"""rar-serve: start (or join) Ray, run the deployment, serve until SIGINT/SIGTERM, then stop cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Callable

from rar_deploy.errors import RARDeployError


@dataclass(frozen=True)
class ServeOptions:
    artifacts: str
    backend: str = "onnxruntime"
    device: str | None = None
    threads: int | None = None
    replicas: int = 1
    max_replicas: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_batch_size: int | None = None
    max_queue: int = 256
    request_timeout_s: float | None = None  # the proxy's: past it a request is answered 408 and cancelled
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None
    drain_s: float = 30.0  # on a stop, how long requests in flight may still take


LOOPBACK_HOOK = "rar_deploy.serving.loopback.bind_replica_grpc_to_loopback"


def import_ray(local: bool = False):
    """ray and ray.serve, or one line saying how to install them. local: a single-machine Ray is to be started,
    every port of which must listen on loopback only."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from a deployment tool
    if local:
        # Ray treats 127.0.0.1 as "use this machine's address" unless clusters are off (its default off Linux);
        # with them off, its GCS, raylet, agents, workers and metrics ports all bind to 127.0.0.1
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
        from ray import serve
    except ImportError:
        raise RARDeployError("rar-serve needs Ray Serve: pip install 'rar-deploy[serve]'") from None
    return ray, serve


def check_before_start(options: ServeOptions) -> None:
    """What can be known before Ray starts: the device, this machine's GPUs (when Ray runs here only), and
    whether host:port can be listened on (another server there would silently share it with Ray's proxy)."""
    from rar_deploy.contract.checks import check_device
    from rar_deploy.runtime.gpu import cuda_capability
    from rar_deploy.runtime.load import check_cuda_present

    check_device(options.device)
    if options.address is None:
        if options.num_gpus > 0 and cuda_capability(0) is None:
            raise RARDeployError(f"--num-gpus {options.num_gpus:g}, but no CUDA GPU is visible here: the replicas "
                                 "would wait for one forever; use --num-gpus 0 (and a CPU backend) or a GPU machine")
        if options.backend == "tensorrt" or (options.device or "").startswith("cuda"):
            check_cuda_present(options.device or "cuda")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a just-closed server's TIME_WAIT is fine
        try:
            probe.bind((options.host, options.port))
        except socket.gaierror:
            raise RARDeployError(f"--host {options.host} is not an address of this machine") from None
        except OSError as exc:
            raise RARDeployError(f"{options.host}:{options.port} is in use ({exc.strerror}): stop what listens "
                                 "there or choose another --port") from None


def serve_until_stopped(options: ServeOptions, echo: Callable[[str], None] = print) -> None:
    """Start (or join) Ray, serve, and on SIGINT/SIGTERM stop: new requests are turned away while those in flight
    get their answers (for up to options.drain_s), then the replicas, Serve and Ray stop. A single-machine Ray
    listens on loopback only, and its processes end with this one even when it is killed (watchdog.py)."""
    from rar_deploy.serving import watchdog

    stop = threading.Event()

    def catch_signals() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())

    catch_signals()  # a stop while Ray loads and starts is kept, and honoured once Ray can be shut down cleanly
    local = options.address is None
    ray, serve = import_ray(local)
    from rar_deploy.serving.ray_serve import build_app

    guard = watchdog.start() if local else None
    try:
        if local:  # a one-machine cluster of this process, on loopback
            ray.init(include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1",
                     runtime_env={"worker_process_setup_hook": LOOPBACK_HOOK})
        else:
            ray.init(address=options.address, logging_level="ERROR")
        catch_signals()  # again: ray.init installs its own (fatal) handlers
        if not stop.is_set():
            serve.start(http_options={"host": options.host, "port": options.port,
                                      "request_timeout_s": options.request_timeout_s})
            app = build_app(options.artifacts, options.backend, options.device, options.threads, options.replicas,
                            options.max_replicas, options.num_cpus, options.num_gpus, options.max_batch_size,
                            options.max_queue, options.drain_s)
            serve.run(app, name="rar", route_prefix="/")
            echo(f"serving {options.artifacts} ({options.backend}, {options.replicas} replica(s)) at "
                 f"http://{options.host}:{options.port}: POST /generate, POST /generate/stream, GET /healthz, "
                 "GET /ready, GET /stats; Ctrl-C stops")
        stop.wait()
        echo(f"stopping: answering the requests in flight (up to {options.drain_s:g} s)")
        with contextlib.suppress(Exception):  # the app may not have started
            serve.delete("rar")  # its replicas finish what they hold; the proxy turns new requests away
    finally:
        serve.shutdown()
        ray.shutdown()
        if guard is not None:
            guard.stdin.close()  # the watchdog ends whatever Ray left running
            guard.wait(timeout=30)
