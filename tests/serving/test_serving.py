"""rar-serve (Ray Serve) end to end on loopback: a real server process, concurrent HTTP requests with different
seeds, images byte-identical to rar-generate's files (in-flight: whatever joined beside them), streamed previews,
503 when the queue is full, a client that goes away freeing its slots, 400s for bad requests, a clean stop on
SIGTERM; a VAR folder served the same way (slow)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from rar_deploy.cli import generate_command, serve_command
from rar_deploy.runtime import VARSampling, open_pipeline
from rar_deploy.runtime.gpu import cuda_capability

SERVE_START_TIMEOUT = 240  # Ray and one replica on 2 busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/generate", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(url: str, route: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url + route, timeout=10) as response:
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def artifacts(shared_export) -> Path:
    return shared_export("rar", "fp32")


def start_server(artifacts: Path, log: Path, max_queue: int = 64) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(Path(sys.executable).with_name("rar-serve")), "--artifacts", str(artifacts), "--port", str(port),
               "--threads", "1", "--max-batch-size", "3", "--max-queue", str(max_queue)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVE_START_TIMEOUT
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if get(url, "/ready")[0] == 200:
                break
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(1)
    return process, url


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "rar-serve.log"
    process, url = start_server(artifacts, log)
    yield process, url, log
    if process.poll() is None:
        process.kill()
        process.wait()


def test_ready_and_health_routes(server):
    _, url, _ = server
    assert get(url, "/healthz") == (200, {"status": "ok"})
    status, ready = get(url, "/ready")
    assert status == 200 and ready["model"] == "tiny" and ready["backend"] == "onnxruntime"
    assert ready["family"] == "rar" and ready["tokens_per_image"] == 16
    assert ready["max_batch_size"] == 3  # the setting, not the artifacts' profile


def rar_generate_files(artifacts: Path, labels: list[int], seed: int, out: Path) -> list[bytes]:
    """The PNG files rar-generate writes for these labels and seed: what the server must answer."""
    result = CliRunner().invoke(generate_command, ["--artifacts", str(artifacts), "--class-labels",
                                                   ",".join(map(str, labels)), "--seed", str(seed), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return [(out / name).read_bytes() for name in json.loads((out / "samples.json").read_text())["images"]]


def concurrent_requests_match_rar_generate(url: str, artifacts: Path, tmp_path: Path, labels_of) -> None:
    jobs = [(labels_of(i), 100 + i) for i in range(8)]
    with ThreadPoolExecutor(len(jobs)) as pool:  # eight clients at once: their images join each other's batch
        replies = list(pool.map(lambda job: post(url, {"class_labels": job[0], "seed": job[1]}), jobs))
    for (labels, seed), (status, reply) in zip(jobs, replies):
        assert status == 200, reply
        assert reply["class_labels"] == labels and reply["seed"] == seed
        expected = rar_generate_files(artifacts, labels, seed, tmp_path / f"seed{seed}")
        assert [base64.b64decode(image) for image in reply["images"]] == expected
    assert len({reply["images"][0] for _, reply in replies}) == len(jobs)  # different seeds, different images


def test_concurrent_requests_give_the_images_rar_generate_writes(server, artifacts, tmp_path):
    concurrent_requests_match_rar_generate(server[1], artifacts, tmp_path, lambda i: [3 + i, 500 + i, 999 - i])


def stream(url: str, body: dict, on_event=None) -> list[tuple[str, dict]]:
    """POST /generate/stream; the server-sent events (event, data) as they come (on_event(event, data, response)
    sees each; returning False closes the connection: a client that goes away)."""
    request = urllib.request.Request(url + "/generate/stream", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    events = []
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        event = None
        for line in response:
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[len("data: "):])))
                if on_event and on_event(*events[-1]) is False:
                    break
    return events


def test_streamed_previews_then_the_images_rar_generate_writes(server, artifacts, tmp_path):
    labels, seed = [11, 12], 21
    events = stream(server[1], {"class_labels": labels, "seed": seed, "preview_every": 4})
    previews = [data for event, data in events if event == "preview"]
    finals = {data["image"]: base64.b64decode(data["png"]) for event, data in events if event == "image"}
    assert sorted((p["image"], p["step"]) for p in previews) == [(i, s) for i in (0, 1) for s in (4, 8, 12, 16)]
    assert all(base64.b64decode(p["png"]).startswith(b"\x89PNG") for p in previews)
    assert events[-1] == ("done", {"model": "tiny", "seed": seed, "class_labels": labels})
    assert [finals[0], finals[1]] == rar_generate_files(artifacts, labels, seed, tmp_path / "out")


def test_full_queue_answers_503_and_a_client_that_leaves_frees_its_slots(server):
    """A stream of 64 images holds the 3 slots and 61 places of the queue (64); another request of 64 images is
    turned away with 503 and Retry-After; then the streaming client hangs up and its images leave the slots and
    the queue."""
    url = server[1]
    refused = {}

    def on_event(event, data):
        request = urllib.request.Request(url + "/generate", data=json.dumps({"class_labels": list(range(64))}).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=30)
        refused.update(code=error.value.code, retry=error.value.headers["Retry-After"],
                       body=json.loads(error.value.read()))
        return False  # hang up after the first event

    before = get(url, "/stats")[1]["cancelled_requests"]
    stream(url, {"class_labels": list(range(64)), "preview_every": 1}, on_event)
    assert refused["code"] == 503 and refused["retry"] == "1", refused
    assert refused["body"]["error"].startswith("busy: ") and "try again later" in refused["body"]["error"]
    deadline = time.monotonic() + 30
    while (stats := get(url, "/stats")[1])["busy_slots"] or stats["waiting"]:
        assert time.monotonic() < deadline, stats  # 64 images would take far longer than their slots' release
        time.sleep(0.2)
    assert stats["cancelled_requests"] == before + 1 and stats["slots"] == 3, stats


def test_tokens_output_and_per_request_sampling_values(server, artifacts):
    from rar_deploy.runtime import RARPipeline, RARSampling

    _, url, _ = server
    status, reply = post(url, {"class_labels": [7, 8], "seed": 5, "temperature": 0, "guidance_scale": 2.0,
                               "output": "tokens"})
    assert status == 200, reply
    expected = RARPipeline.from_artifacts(artifacts).generate(
        [7, 8], sampling=RARSampling(guidance_scale=2.0, temperature=0.0), seed=5).tokens
    assert reply["tokens"] == expected.tolist()


@pytest.mark.parametrize("body, phrase", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    ({"seed": 1}, "class_labels is required"),
    ({"class_labels": [1000]}, "out of range"),
    ({"class_labels": ["7"]}, "integer class ids"),
    ({"class_labels": []}, "no class labels"),
    ({"class_labels": list(range(65))}, "at most 64"),
    ({"class_labels": [1], "temperature": -1}, "temperature must be >= 0"),
    ({"class_labels": [1], "guidance_scale": "high"}, "guidance scale must be a number"),
    ({"class_labels": [1], "seed": -3}, "seed must lie in"),
    ({"class_labels": [1], "output": "jpeg"}, "output must be one of"),
    ({"class_labels": [1], "labels": [2]}, "unknown field 'labels'"),
    ({"class_labels": [1], "top_k": 5}, "unknown field 'top_k'"),  # a VAR value, not RAR's
    ({"class_labels": [1], "preview_every": 2}, "previews: POST /generate/stream"),
    ({"class_labels": [2**64]}, "out of range"),  # beyond int64
    ({"class_labels": [1], "guidance_scale": 1e39}, "within float32's range"),
    (b'{"class_labels": [1], "guidance_scale": 1' + b"0" * 400 + b"}", "a 401-digit integer"),
    (b'{"class_labels": [1], "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", "not JSON"),  # too deep to decode
    (b'{"class_labels": [1], "seed": ' + b"7" * 5000 + b"}", "seed holds a 5000-digit integer"),
    (b'{"class_labels": [1, ' + b"7" * 5000 + b"]}", "class_labels holds a 5000-digit integer"),
])
def test_invalid_requests_get_400_with_one_line(server, body, phrase):
    status, reply = post(server[1], body)
    assert status == 400 and phrase in reply["error"] and "\n" not in reply["error"], reply


def test_other_routes_and_methods_answer_in_the_same_shape(server):
    for method, route, code in (("GET", "/generate", 405), ("POST", "/nope", 404)):
        request = urllib.request.Request(server[1] + route, method=method, data=b"{}" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=10)
        assert error.value.code == code and "routes: POST /generate" in json.loads(error.value.read())["error"]


def test_null_seed_is_the_default_seed(server):
    assert post(server[1], {"class_labels": [5], "seed": None}) == post(server[1], {"class_labels": [5], "seed": 0})


def test_non_finite_json_values_are_refused(server):
    status, reply = post(server[1], b'{"class_labels": [1], "guidance_pow": NaN}')
    assert status == 400 and "finite" in reply["error"], reply


def test_app_builder_for_serve_config_files(artifacts):
    """The import_path of a Serve config / KubeRay RayService: string args converted, unknown ones refused."""
    from ray.serve import Application

    from rar_deploy import RARDeployError
    from rar_deploy.serving.ray_serve import app_builder

    assert isinstance(app_builder({"artifacts": str(artifacts), "replicas": "2", "num_gpus": "0"}), Application)
    with pytest.raises(RARDeployError, match="unknown: colour"):
        app_builder({"artifacts": str(artifacts), "colour": "red"})
    with pytest.raises(RARDeployError, match=r"artifacts \(required\)"):
        app_builder({"replicas": "1"})


def test_rar_serve_refuses_a_port_in_use_before_starting_ray(artifacts):
    """Ray's proxy would share the port (SO_REUSEPORT) with whatever listens there: refused, one line."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(serve_command, ["--artifacts", str(artifacts), "--port", str(port)])
    assert result.exit_code == 1 and f"127.0.0.1:{port} is in use" in result.output, result.output


@pytest.mark.parametrize("args, phrase", [
    (["--artifacts", "/nonexistent"], "artifact directory not found"),
    (["--device", "banana"], "device must be"),
    pytest.param(["--num-gpus", "1"], "no CUDA GPU is visible here",
                 marks=pytest.mark.skipif(cuda_capability() is not None, reason="a GPU is visible here")),
    (["--host", "no.such.host.invalid"], "not an address of this machine"),
    (["--replicas", "3", "--max-replicas", "2"], "below --replicas"),
    (["--backend", "tensorrt"], "--num-gpus 1"),
    (["--max-batch-size", "1000"], "outside the artifacts' profile"),
])
def test_rar_serve_refuses_bad_options_before_starting_ray(artifacts, args, phrase):
    result = CliRunner().invoke(serve_command, ["--artifacts", str(artifacts), *args])
    assert result.exit_code == 1 and phrase in result.output and "Traceback" not in result.output, result.output


def listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket and bound UDP socket of the processes."""
    found = []
    for process in processes:
        try:
            for connection in process.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN or connection.type == socket.SOCK_DGRAM:
                    found.append((process.name(), connection.laddr.ip, connection.laddr.port))
        except psutil.NoSuchProcess:
            pass
    return found


def test_the_server_and_its_ray_processes_listen_on_loopback_only(server):
    process = psutil.Process(server[0].pid)
    sockets = listening([process, *process.children(recursive=True)])
    assert len(sockets) > 5  # GCS, raylet, agents, controller, proxy, replica ...
    exposed = [s for s in sockets if s[1] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not exposed, exposed


def test_sigterm_answers_the_requests_in_flight_then_stops_everything(server):
    process, url, log = server
    ray_processes = psutil.Process(process.pid).children(recursive=True)
    assert ray_processes  # Ray's GCS, raylet, controller, proxy and replica run under rar-serve
    labels = list(range(64))
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(post, url, {"class_labels": labels})
        time.sleep(1.0)  # the request is being generated (64 images in batches of 3) ...
        process.send_signal(signal.SIGTERM)  # ... when the server is told to stop
        status, reply = in_flight.result(timeout=120)
    assert status == 200 and len(reply["images"]) == 64, reply
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert "stopping: answering the requests in flight" in log.read_text()
    _, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert not alive, [p.info for p in alive]
    with pytest.raises(OSError):
        get(url, "/healthz")


@pytest.mark.slow  # a second Ray start (about a minute on 2 cores): with the VAR server in CI's slow line
def test_a_killed_server_leaves_no_ray_process_behind(artifacts, tmp_path):
    process, url = start_server(artifacts, tmp_path / "rar-serve.log")
    descendants = psutil.Process(process.pid).children(recursive=True)
    assert len(descendants) > 5
    process.kill()
    process.wait()
    _, alive = psutil.wait_procs(descendants, timeout=10)  # Ray alone leaves its agents for a minute
    assert not alive, [p.name() for p in alive]


@pytest.mark.slow
def test_a_var_folder_is_served_in_flight(shared_export, tmp_path):
    """rar-serve on a VAR export: concurrent requests give rar-generate's files, VAR's own sampling values apply
    (RAR's are refused), and the stream previews every scale's estimate before the image."""
    artifacts = shared_export("var", "fp32")
    process, url = start_server(artifacts, tmp_path / "rar-serve.log")
    try:
        ready = get(url, "/ready")[1]
        assert (ready["family"], ready["tokens_per_image"]) == ("var", 30)
        concurrent_requests_match_rar_generate(url, artifacts, tmp_path, lambda i: [7 * i, 990 - i])
        status, reply = post(url, {"class_labels": [4], "top_k": 5, "top_p": 0, "guidance_scale": 0,
                                   "output": "tokens"})
        expected = open_pipeline(artifacts).generate([4], sampling=VARSampling(top_k=5, top_p=0, guidance_scale=0))
        assert status == 200 and reply["tokens"] == expected.tokens.tolist(), reply
        status, reply = post(url, {"class_labels": [4], "guidance_pow": 1})
        assert status == 400 and "unknown field 'guidance_pow'" in reply["error"], reply
        events = stream(url, {"class_labels": [9], "seed": 3, "preview_every": 1})
        assert [(event, data.get("step")) for event, data in events] == [
            ("preview", 1), ("preview", 2), ("preview", 3), ("image", None), ("done", None)]
        assert base64.b64decode(events[3][1]["png"]) == rar_generate_files(artifacts, [9], 3, tmp_path / "one")[0]
    finally:
        process.terminate()
        assert process.wait(timeout=120) == 0
