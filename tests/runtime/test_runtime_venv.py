"""The runtime install on its own: a fresh venv with `pip install rar-deploy[rtx]` (no torch: importing it
fails there) runs artifacts exported by the full install, gets the same tokens and PNGs, passes rar-parity
from the stored record, and builds engines with rar-build, atomically even when killed.

It installs from PyPI (and pip's cache) into a temporary folder: about a minute the first time."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rar_deploy.runtime.engines import find_tensorrt

ROOT = Path(__file__).parents[2]
needs_rtx = pytest.mark.skipif(find_tensorrt() is None or find_tensorrt().flavour != "tensorrt-rtx",
                               reason="TensorRT-RTX is not installed in the test environment")


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"),
                              f"{ROOT}[rtx]"], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


def tool(venv: Path, name: str, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / name), *map(str, args)], capture_output=True, text=True, **kwargs)


def test_the_runtime_install_has_no_torch(runtime_venv):
    result = subprocess.run([str(runtime_venv / "bin" / "python"), "-c", "import torch"], capture_output=True,
                            text=True)
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr
    imported = subprocess.run([str(runtime_venv / "bin" / "python"), "-c",
                               "import sys, rar_deploy.runtime, rar_deploy.tools.parity, rar_deploy.tools.rebuild, "
                               "rar_deploy.cli; "
                               "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert imported.stdout.strip() == "False", imported.stderr


def test_torch_free_generate_and_parity_equal_the_full_install(runtime_venv, export_tiny, tmp_path):
    artifacts = export_tiny(tmp_path / "artifacts", "fp16")
    outputs = {}
    for install, venv in (("full", Path(sys.executable).parent.parent), ("runtime", runtime_venv)):
        result = tool(venv, "rar-generate", "--artifacts", artifacts, "--class-labels", "3,7,11", "--seed", "5",
                      "--out", tmp_path / install, "--save-tokens", tmp_path / f"{install}.npy")
        assert result.returncode == 0, result.stderr
        outputs[install] = np.load(tmp_path / f"{install}.npy")
    np.testing.assert_array_equal(outputs["runtime"], outputs["full"])
    for png in ("0000_class3.png", "0001_class7.png", "0002_class11.png", "grid.png"):
        assert (tmp_path / "runtime" / png).read_bytes() == (tmp_path / "full" / png).read_bytes()
    parity = tool(runtime_venv, "rar-parity", "--artifacts", artifacts, "--json")
    assert parity.returncode == 0, parity.stdout + parity.stderr
    assert json.loads(parity.stdout)["failures"] == []
    recompute = tool(runtime_venv, "rar-parity", "--artifacts", artifacts, "--seed", "3")
    assert recompute.returncode == 1 and "needs torch" in recompute.stderr and "Traceback" not in recompute.stderr


@needs_rtx
def test_rar_build_without_torch_and_a_kill_during_it(runtime_venv, export_tiny, tmp_path):
    artifacts = export_tiny(tmp_path / "artifacts", "fp16", engine=False)
    before = (artifacts / "manifest.json").read_text()
    process = subprocess.Popen([str(runtime_venv / "bin" / "rar-build"), "--artifacts", str(artifacts),
                                "--compute-capability", "SM89"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while not list(tmp_path.glob(".artifacts.*.partial/engines/*.plan")) and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (artifacts / "manifest.json").read_text() == before  # the old folder, complete and untouched
    usable = tool(runtime_venv, "rar-generate", "--artifacts", artifacts, "--class-labels", "1",
                  "--out", tmp_path / "samples")
    assert usable.returncode == 0, usable.stderr

    built = tool(runtime_venv, "rar-build", "--artifacts", artifacts, "--compute-capability", "SM89")
    assert built.returncode == 0, built.stdout + built.stderr
    assert "left by an interrupted run" in built.stderr
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert set(manifest["engines"]) == {"condition", "decode_step", "vq_decoder"}
    for engine in manifest["engines"].values():
        assert engine["compute_capabilities"] == ["SM89"]
        assert manifest["files"][engine["file"]]["size"] == (artifacts / engine["file"]).stat().st_size
    assert not list(tmp_path.glob(".artifacts.*"))
