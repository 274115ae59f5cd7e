"""Serving throughput and latency (issue 13): requests/s, p50 and p99 at 1 and 8 concurrent clients for
in-process calls (threads sharing one RARPipeline), rar-serve (Ray Serve, 1 and 2 replicas) and Triton (the
repository of `rar-deploy triton-repo`, served by the tritonserver of nvidia-pytriton), in one run. Every
request is one image (one class label, its own seed) and returns a PNG (Triton: the uint8 image).

    python benchmarks/serving.py --artifacts DIR --triton-python ~/.cache/rar-deploy/triton-env-*/bin/python

The Triton environment is the one tests/test_triton.py creates (tests/triton_env/requirements.txt); without
--triton-python the Triton rows are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "triton_env"))
from tritonserver import free_port, launch, wait_ready  # noqa: E402

from rar_deploy.runtime import RARPipeline  # noqa: E402
from rar_deploy.tools.sample_files import png_bytes  # noqa: E402


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.loads(reply.read())


def measure(call: Callable[[int], object], clients: int, requests: int) -> dict:
    """`requests` calls (call(i) for i in range) from `clients` threads: req/s, p50/p99 latency in ms."""
    call(10**6)  # warm-up

    def timed(i: int) -> float:
        start = time.perf_counter()
        call(i)
        return (time.perf_counter() - start) * 1000

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(timed, range(requests)))
    wall = time.perf_counter() - start
    return {"req_s": requests / wall, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]}


def in_process(artifacts: Path, threads: int) -> Callable[[int], object]:
    pipeline = RARPipeline.from_artifacts(artifacts, threads=threads)

    def call(i: int) -> bytes:
        return png_bytes(pipeline.generate([i % 1000], seed=i).images[0])

    return call


def ray_serve(artifacts: Path, replicas: int, threads: int, workdir: Path):
    port = free_port()
    log = open(workdir / f"rar-serve-{replicas}.log", "w")
    process = subprocess.Popen([str(Path(sys.executable).with_name("rar-serve")), "--artifacts", str(artifacts),
                                "--port", str(port), "--replicas", str(replicas), "--threads", str(threads)],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/ready", timeout=5) as reply:
                if reply.status == 200:
                    break
        except OSError:
            time.sleep(1)
    return process, lambda i: post_json(url + "/generate", {"class_labels": [i % 1000], "seed": i})


def triton(artifacts: Path, python: Path, threads: int, workdir: Path):
    repo = workdir / "triton-repo"
    subprocess.run([str(Path(sys.executable).with_name("rar-deploy")), "triton-repo", "--artifacts", str(artifacts),
                    "--out", str(repo), "--threads", str(threads)], check=True, capture_output=True)
    http_port = free_port()
    server = launch(repo, python, workdir, http_port, free_port(), env={"PYTHONPATH": str(REPO_ROOT)})
    wait_ready(server, http_port, workdir / "log", 300)
    url = f"http://127.0.0.1:{http_port}/v2/models/rar/infer"

    def call(i: int) -> dict:
        inputs = [{"name": "class_label", "shape": [1, 1], "datatype": "INT64", "data": [i % 1000]},
                  {"name": "seed", "shape": [1, 1], "datatype": "INT64", "data": [i]}]
        return post_json(url, {"inputs": inputs, "outputs": [{"name": "image"}]})

    return server, call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--triton-python", type=Path)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--requests-per-client", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each pipeline")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="rar-serving-"))
    rows = []

    def run(name: str, call: Callable[[int], object]) -> None:
        for n in clients:
            result = measure(call, n, n * args.requests_per_client)
            rows.append((name, n, result))
            print(f"{name}, {n} clients: {result['req_s']:.1f} req/s", file=sys.stderr, flush=True)

    run("in-process (threads, one pipeline)", in_process(args.artifacts, args.threads))
    for replicas in (1, 2):
        process, call = ray_serve(args.artifacts, replicas, args.threads, workdir)
        try:
            run(f"rar-serve (Ray Serve), {replicas} replica{'s' if replicas > 1 else ''}", call)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
    if args.triton_python:
        server, call = triton(args.artifacts, args.triton_python, args.threads, workdir)
        try:
            run("Triton (Python backend, dynamic batching)", call)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    print("| server | clients | requests/s | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |")
    for name, n, r in rows:
        print(f"| {name} | {n} | {r['req_s']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} |")


if __name__ == "__main__":
    main()
