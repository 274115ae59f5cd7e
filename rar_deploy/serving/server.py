"""rar-serve: start (or join) Ray, run the deployment, serve until SIGINT/SIGTERM, then stop cleanly."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Callable

from ..errors import RARDeployError


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
    batch_wait_s: float = 0.005
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None


def import_ray():
    """ray and ray.serve, or one line saying how to install them."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from a deployment tool
    try:
        import ray
        from ray import serve
    except ImportError:
        raise RARDeployError("rar-serve needs Ray Serve: pip install 'rar-deploy[serve]'") from None
    return ray, serve


def serve_until_stopped(options: ServeOptions, echo: Callable[[str], None] = print) -> None:
    ray, serve = import_ray()
    from .ray_serve import build_app

    if options.address:
        ray.init(address=options.address, logging_level="ERROR")
    else:  # a one-machine cluster of this process, on loopback
        ray.init(include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own (fatal) handlers
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        app = build_app(options.artifacts, options.backend, options.device, options.threads, options.replicas,
                        options.max_replicas, options.num_cpus, options.num_gpus, options.max_batch_size,
                        options.batch_wait_s)
        serve.run(app, name="rar", route_prefix="/")
        echo(f"serving {options.artifacts} ({options.backend}, {options.replicas} replica(s)) at "
             f"http://{options.host}:{options.port}: POST /generate, GET /healthz, GET /ready; Ctrl-C stops")
        stop.wait()
        echo("stopping")
    finally:
        serve.shutdown()
        ray.shutdown()
