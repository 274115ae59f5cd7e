"""Runs inside the Triton test environment (tests/triton_env/requirements.txt): validate a model repository's
config.pbtxt files offline with tritonclient's ModelConfig protobuf, serve the repository with the tritonserver
that nvidia-pytriton bundles (loopback only), query it over HTTP and gRPC at once, stream from its decoupled
model over gRPC, stop it.

    python serve_and_query.py --repo REPO --jobs jobs.json --out results.npz

jobs.json: {"infer": [[model, labels, seed], ...], "stream": [[model, labels, seed, preview_every], ...],
"busy": model or null}. results.npz: {http,grpc}_{i}_{image,tokens} and stream_{i}_{row}_{image,tokens}; prints a
JSON summary (stream: the (row, step) of every response in order; busy: what a full queue and a cancel did).
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException
from tritonserver import free_port, launch, wait_ready


def validate_offline(folder: Path) -> dict:
    """Parse config.pbtxt into Triton's ModelConfig (unknown fields and wrong types raise)."""
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return {"name": config.name, "backend": config.backend, "max_batch_size": config.max_batch_size,
            "decoupled": config.model_transaction_policy.decoupled,
            "inputs": [i.name for i in config.input], "outputs": {o.name: list(o.dims) for o in config.output}}


def request_inputs(module, labels: list[int], seed: int, preview_every: int = 0) -> list:
    columns = {"class_label": labels, "seed": [seed] * len(labels)}
    if preview_every:
        columns["preview_every"] = [preview_every] * len(labels)
    inputs = []
    for name, values in columns.items():
        inputs.append(module.InferInput(name, [len(labels), 1], "INT64"))
        inputs[-1].set_data_from_numpy(np.array(values, np.int64).reshape(-1, 1))
    return inputs


def infer(module, url: str, model: str, labels: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    client = module.InferenceServerClient(url)
    result = client.infer(model, request_inputs(module, labels, seed))
    return result.as_numpy("image"), result.as_numpy("tokens")


class Stream:
    """One gRPC stream to a decoupled model: its responses, in order, until the final one."""

    def __init__(self, url: str) -> None:
        self.client, self.responses = grpc_client.InferenceServerClient(url), queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def send(self, model: str, labels: list[int], seed: int, preview_every: int = 0) -> None:
        self.client.async_stream_infer(model, request_inputs(grpc_client, labels, seed, preview_every),
                                       enable_empty_final_response=True)

    def next(self, timeout: float = 120) -> tuple[dict | None, str | None, bool]:
        """(outputs, error, final) of the next response."""
        result, error = self.responses.get(timeout=timeout)
        if error is not None:
            return None, error.message(), True  # a stream's errors carry no status code
        final = result.get_response().parameters["triton_final_response"].bool_param
        outputs = {name: result.as_numpy(name) for name in ("image", "tokens", "row", "step")}
        return (None if outputs["row"] is None else outputs), None, final

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)


def stream(url: str, model: str, labels: list[int], seed: int, preview_every: int) -> tuple[list, dict]:
    """Every response of one streamed request: [(row, step), ...] in order, and each row's final image, tokens."""
    connection, order, finals = Stream(url), [], {}
    connection.send(model, labels, seed, preview_every)
    while True:
        outputs, error, final = connection.next()
        if error:
            raise SystemExit(f"stream failed: {error}")
        if outputs is not None:
            row, step = int(outputs["row"][0, 0]), int(outputs["step"][0, 0])
            order.append((row, step))
            finals[row] = (outputs["image"][0], outputs["tokens"][0])
        if final:
            connection.close()
            return order, finals


def busy_then_cancel(url: str, model: str) -> dict:
    """Fill the decoupled model's queue (64 images, previews every step), be turned away, hang up with the requests
    cancelled, then be served a request that fits only an empty queue."""
    holder, report = Stream(url), {}
    holder.send(model, list(range(64)), 1, preview_every=1)
    holder.next()  # it runs
    refused = Stream(url)
    refused.send(model, [1, 2, 3, 4], 2)
    report["refused"] = refused.next()[1]
    refused.close()
    holder.close(cancel=True)
    deadline, report["accepted_after_s"] = time.monotonic() + 60, None
    start = time.monotonic()
    while time.monotonic() < deadline:  # 64 more images fit once the cancelled ones have left the queue
        retry = Stream(url)
        retry.send(model, list(range(64)), 3)
        outputs, error, final = retry.next()
        if error is None:
            accepted, images = time.monotonic(), 1 if outputs is not None else 0
            while not final:
                outputs, error, final = retry.next()
                images += outputs is not None
            report.update(accepted_after_s=round(accepted - start, 2), images=images,
                          served_in_s=round(time.monotonic() - accepted, 2))
            retry.close()
            break
        retry.close()
        time.sleep(0.2)
    return report


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
    models = sorted(p.name for p in args.repo.iterdir() if (p / "config.pbtxt").exists())
    summary = {"config": {model: validate_offline(args.repo / model) for model in models}}
    jobs = json.loads(args.jobs.read_text())
    workdir = Path(tempfile.mkdtemp(prefix="triton-"))
    http_port, grpc_port = free_port(), free_port()
    server = launch(args.repo, Path(sys.executable), workdir, http_port, grpc_port)
    urls = {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    modules = {"http": http_client, "grpc": grpc_client}
    try:
        for model in models:
            wait_ready(server, http_port, workdir / "log", args.timeout, model)
        calls = [(protocol, i, job) for i, job in enumerate(jobs["infer"]) for protocol in urls]
        streams = list(enumerate(jobs["stream"]))
        with ThreadPoolExecutor(len(calls) + len(streams)) as pool:  # every job over both protocols, and streams
            results = [pool.submit(infer, modules[protocol], urls[protocol], *job) for protocol, _, job in calls]
            streamed = [pool.submit(stream, urls["grpc"], *job) for _, job in streams]
            results, streamed = [r.result() for r in results], [r.result() for r in streamed]
        arrays = {}
        for (protocol, i, _), (image, tokens) in zip(calls, results):
            arrays[f"{protocol}_{i}_image"], arrays[f"{protocol}_{i}_tokens"] = image, tokens
        summary["stream"] = []
        for (i, _), (order, finals) in zip(streams, streamed):
            summary["stream"].append(order)
            for row, (image, tokens) in finals.items():
                arrays[f"stream_{i}_{row}_image"], arrays[f"stream_{i}_{row}_tokens"] = image, tokens
        np.savez(args.out, **arrays)
        summary["invalid"] = {protocol: invalid_request(modules[protocol], url) for protocol, url in urls.items()}
        if jobs.get("busy"):
            summary["busy"] = busy_then_cancel(urls["grpc"], jobs["busy"])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            summary["exit_code"] = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            summary["exit_code"] = "killed after 60 s"
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
