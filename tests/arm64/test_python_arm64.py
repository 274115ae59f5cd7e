"""The torch-free Python runtime on arm64 (aarch64 Linux, what Jetson boards run), here under emulation: a Debian
12 arm64 root (make_root.sh: debootstrap, qemu-user through binfmt_misc), `pip install rar-deploy` into a venv
there from aarch64 wheels only, then rar-generate and rar-parity on the tiny RAR and VAR exports made on this
x86-64 machine: the same tokens as the x86-64 runtime, pixels within one level, and the stored parity record met.

pytest -m arm64 tests/arm64: needs root, debootstrap, qemu-user-static 8 or newer and network to Debian and
PyPI; the root is kept in build/arm64-root (RAR_ARM64_ROOT) between runs. About 10 minutes the first time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.arm64
REPO = Path(__file__).parents[2]
VENV = "/opt/rar-deploy"  # inside the root
# The CPU qemu-user emulates: a Jetson Orin-class core (Cortex-A78AE, Armv8.2-A), as the C++ arm64 tests use
CPU = {"QEMU_CPU": "cortex-a76"}
# arm64's ONNX Runtime kernels round float sums otherwise than x86-64's: the same tokens, and pixel values that may
# be one level off, for at most this share of them (the C++ arm64 tests' rule, cpp/tests/cpp_parity.py)
CROSS_PIXELS = 5e-3


def chroot(root: Path, *command, check: bool = True) -> subprocess.CompletedProcess:
    environment = {"PATH": f"{VENV}/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", **CPU}
    result = subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", str(root), *map(str, command)],
                            capture_output=True, text=True, env=environment)
    if check:
        assert result.returncode == 0, f"{' '.join(map(str, command))}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def arm64_root(tmp_path_factory) -> Path:
    """The arm64 root with rar-deploy installed in VENV from the wheel of this checkout and PyPI's aarch64 wheels."""
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.fail("the arm64 tests need root and debootstrap (README: 'arm64 and Jetson')")
    root = Path(os.environ.get("RAR_ARM64_ROOT", REPO / "build" / "arm64-root")).resolve()
    subprocess.run(["bash", str(Path(__file__).with_name("make_root.sh")), str(root)], check=True)
    wheels = root / "tmp" / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                   check=True)
    shutil.copy(REPO / "constraints.txt", wheels / "constraints.txt")
    if not (root / VENV.lstrip("/") / "bin" / "python").exists():
        chroot(root, "/usr/bin/python3", "-m", "venv", VENV)
    (wheel,) = wheels.glob("rar_deploy-*.whl")
    chroot(root, "pip", "install", "-q", "--disable-pip-version-check", "--only-binary=:all:", "--force-reinstall",
           "-c", "/tmp/wheels/constraints.txt", f"/tmp/wheels/{wheel.name}")
    return root


def test_the_runtime_installs_on_aarch64_without_torch(arm64_root):
    report = chroot(arm64_root, "python", "-c",
                    "import json, platform, sys, onnxruntime, numpy, rar_deploy.cli; "
                    "print(json.dumps({'machine': platform.machine(), 'torch': 'torch' in sys.modules, "
                    "'onnxruntime': onnxruntime.__version__, 'numpy': numpy.__version__}))")
    installed = json.loads(report.stdout)
    assert installed["machine"] == "aarch64" and not installed["torch"], installed
    assert chroot(arm64_root, "python", "-c", "import torch", check=False).returncode != 0
    libraries = subprocess.run(["file", "-L", *map(str, (arm64_root / VENV.lstrip("/")).rglob("libonnxruntime.so*"))],
                               capture_output=True, text=True, check=True).stdout
    assert "ARM aarch64" in libraries and "x86-64" not in libraries, libraries


@pytest.mark.parametrize("family,labels", [("rar", "3,500,999"), ("var", "1,7")])
def test_generate_and_parity_on_aarch64_equal_x86_64(arm64_root, shared_export, family, labels, tmp_path):
    artifacts = shared_export(family, "fp32")
    inside = arm64_root / "tmp" / "work" / family
    shutil.rmtree(inside.parent / family, ignore_errors=True)
    shutil.copytree(artifacts, inside / "artifacts")
    args = ["--artifacts", "ARTIFACTS", "--class-labels", labels, "--seed", "5", "--batch-size", "2"]

    x86 = subprocess.run([str(Path(sys.executable).with_name("rar-generate")),
                          *[str(artifacts) if a == "ARTIFACTS" else a for a in args],
                          "--out", str(tmp_path / "x86"), "--save-tokens", str(tmp_path / "x86.npy")],
                         capture_output=True, text=True)
    assert x86.returncode == 0, x86.stderr
    work = f"/tmp/work/{family}"
    chroot(arm64_root, "rar-generate", *[f"{work}/artifacts" if a == "ARTIFACTS" else a for a in args],
           "--out", f"{work}/arm64", "--save-tokens", f"{work}/arm64.npy")

    np.testing.assert_array_equal(np.load(inside / "arm64.npy"), np.load(tmp_path / "x86.npy"))
    pngs = sorted(p.name for p in (tmp_path / "x86").glob("*.png"))
    assert pngs and pngs == sorted(p.name for p in (inside / "arm64").glob("*.png"))
    for png in pngs:
        arm64, x86 = (np.asarray(Image.open(folder / png), dtype=np.int16) for folder in (inside / "arm64",
                                                                                          tmp_path / "x86"))
        difference = np.abs(arm64 - x86)
        assert difference.max() <= 1 and np.count_nonzero(difference) <= CROSS_PIXELS * difference.size, \
            f"{png}: {np.count_nonzero(difference)} of {difference.size} values differ, by up to {difference.max()}"

    parity = chroot(arm64_root, "rar-parity", "--artifacts", f"{work}/artifacts", "--json")
    assert json.loads(parity.stdout)["failures"] == []
