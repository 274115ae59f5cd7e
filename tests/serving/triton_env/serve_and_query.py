"""Runs inside the Triton test environment (tests/triton_env/requirements.txt): validate a model repository's
config.pbtxt offline with tritonclient's ModelConfig protobuf, serve the repository with the tritonserver
that nvidia-pytriton bundles (loopback only), query it over HTTP and gRPC at once, stop it.

    python serve_and_query.py --repo REPO --jobs jobs.json --out results.npz

jobs.json: [[labels, seed], ...]. results.npz: {http,grpc}_{i}_{image,tokens}; prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException
from tritonserver import free_port, launch, wait_ready


def validate_offline(repo: Path) -> dict:
    """Parse config.pbtxt into Triton's ModelConfig (unknown fields and wrong types raise)."""
    config = text_format.Parse((repo / "rar" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return {"name": config.name, "backend": config.backend, "max_batch_size": config.max_batch_size,
            "inputs": [i.name for i in config.input], "outputs": {o.name: list(o.dims) for o in config.output}}


def infer(module, url: str, labels: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    client = module.InferenceServerClient(url)
    inputs = [module.InferInput("class_label", [len(labels), 1], "INT64"),
              module.InferInput("seed", [len(labels), 1], "INT64")]
    inputs[0].set_data_from_numpy(np.array(labels, np.int64).reshape(-1, 1))
    inputs[1].set_data_from_numpy(np.full((len(labels), 1), seed, np.int64))
    result = client.infer("rar", inputs)
    return result.as_numpy("image"), result.as_numpy("tokens")


def invalid_request(module, url: str) -> str:
    client = module.InferenceServerClient(url)
    label = module.InferInput("class_label", [1, 1], "INT64")
    label.set_data_from_numpy(np.array([[10**6]], np.int64))
    try:
        client.infer("rar", [label])
    except InferenceServerException as error:
        return f"{error.status()} {error.message()}"
    return "accepted"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--jobs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    summary = {"config": validate_offline(args.repo)}
    jobs = json.loads(args.jobs.read_text())
    workdir = Path(tempfile.mkdtemp(prefix="triton-"))
    http_port, grpc_port = free_port(), free_port()
    server = launch(args.repo, Path(sys.executable), workdir, http_port, grpc_port)
    urls = {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    modules = {"http": http_client, "grpc": grpc_client}
    try:
        wait_ready(server, http_port, workdir / "log", args.timeout)
        calls = [(protocol, i, labels, seed) for i, (labels, seed) in enumerate(jobs) for protocol in urls]
        with ThreadPoolExecutor(len(calls)) as pool:  # every job over both protocols at once
            results = list(pool.map(lambda c: infer(modules[c[0]], urls[c[0]], c[2], c[3]), calls))
        arrays = {}
        for (protocol, i, _, _), (image, tokens) in zip(calls, results):
            arrays[f"{protocol}_{i}_image"], arrays[f"{protocol}_{i}_tokens"] = image, tokens
        np.savez(args.out, **arrays)
        summary["invalid"] = {protocol: invalid_request(modules[protocol], url) for protocol, url in urls.items()}
    finally:
        server.send_signal(signal.SIGTERM)
        summary["exit_code"] = server.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
