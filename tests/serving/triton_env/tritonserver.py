"""Start the tritonserver that nvidia-pytriton bundles, from the Triton environment's interpreter, on loopback.
Standard library only: used from inside that environment (serve_and_query.py) and from the main one
(benchmarks/serving.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

PATHS = """import json, sys, sysconfig, pathlib, pytriton
root = pathlib.Path(pytriton.__file__).parent
print(json.dumps({"dist": str(root / "tritonserver"), "libs": str(root.parent / "nvidia_pytriton.libs"),
                  "libdir": sysconfig.get_config_var("LIBDIR"), "version": "%d.%d" % sys.version_info[:2]}))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(repo: Path, python: Path, workdir: Path, http_port: int, grpc_port: int,
           env: dict | None = None) -> subprocess.Popen:
    """tritonserver with the Python backend and the stub built for `python`'s version; its log in workdir/log."""
    paths = json.loads(subprocess.run([str(python), "-c", PATHS], capture_output=True, text=True, check=True).stdout)
    backends = workdir / "backends"
    shutil.copytree(Path(paths["dist"]) / "backends", backends)
    stub = Path(paths["dist"]) / "python_backend_stubs" / paths["version"] / "triton_python_backend_stub"
    shutil.copy(stub, backends / "python")
    environment = {**os.environ, **(env or {}),
                   # the stub must load this interpreter's libpython, not another 3.x of the system
                   "LD_LIBRARY_PATH": f"{paths['libdir']}:{paths['libs']}",
                   "PATH": f"{python.parent}:{os.environ['PATH']}"}
    command = [str(Path(paths["dist"]) / "bin" / "tritonserver"), "--model-repository", str(repo),
               "--backend-directory", str(backends), "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
               "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--allow-metrics", "false"]
    with open(workdir / "log", "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)


def wait_ready(server: subprocess.Popen, http_port: int, log: Path, timeout: float, model: str = "rar") -> None:
    """Until GET /v2/models/<model>/ready answers 200; SystemExit with the log's tail otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise SystemExit(f"tritonserver exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{model}/ready", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"tritonserver not ready after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(1)
