"""What every reliability test does: run a command as a user would, and judge its answer (one line, no traceback)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rar_deploy.cli import generate_command

TINY = Path(__file__).parents[1] / "data" / "official_tiny"
VAR_TINY = Path(__file__).parents[1] / "data" / "official_var_tiny"


def refused(result, *phrases: str) -> str:
    """One line on stderr/stdout naming the problem, a non-zero exit, no traceback."""
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("Error"), result.output
    for phrase in phrases:
        assert phrase in lines[0], result.output
    return lines[0]


def refused_process(completed: subprocess.CompletedProcess, *phrases: str) -> str:
    """The same judgement of a finished process (its stderr may carry a progress bar)."""
    output = completed.stdout + completed.stderr
    assert completed.returncode not in (0, None), output
    assert "Traceback" not in output, output
    lines = [line for line in output.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith(("[", "generating"))]
    assert len(lines) == 1 and lines[0].startswith("Error"), output
    for phrase in phrases:
        assert phrase in lines[0], output
    return lines[0]


def invoke(command, *args: str | Path):
    return CliRunner().invoke(command, [str(a) for a in args])


def export_args(out: Path, *more: str) -> list:
    return ["--ckpt", TINY / "tiny_rar.bin", "--tokenizer", TINY / "tiny_vq.bin", "--out", out, "--no-engine",
            "--max-batch", "4", *more]


def generate(artifacts: Path, out: Path, *more: str):
    return invoke(generate_command, "--artifacts", artifacts, "--class-labels", "1,2", "--out", out, *more)


def copy_of(artifacts: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifacts, tmp_path / "copy"))


def edit_manifest(directory: Path, edit) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))


COMMANDS = {"rar-export": "export_command", "rar-generate": "generate_command", "rar-build": "build_command",
            "rar-parity": "parity_command", "rar-deploy": "main"}


def command_line(tool: str, *args: str | Path) -> list[str]:
    """A real rar-deploy process (module entry points, so that no install step is assumed)."""
    code = "import sys; from rar_deploy.cli import {0}; sys.exit({0}())".format(COMMANDS[tool])
    return [sys.executable, "-c", code, *map(str, args)]


def rar(*args: str | Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(command_line(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def run(*args: str | Path, limit_kib: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a tool to its end (under `ulimit -f limit_kib` if given)."""
    def limit() -> None:
        if limit_kib is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kib * 1024, limit_kib * 1024))

    return subprocess.run(command_line(*args), capture_output=True, text=True, preexec_fn=limit, cwd=cwd,
                          timeout=600)


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (root only; the test is skipped with the reason elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("a full disk needs a small tmpfs, which only root can mount here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def leftovers(folder: Path) -> list[str]:
    """Locks and temporaries rar-deploy left beside its outputs."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".lock", ".partial", ".replaced")))
