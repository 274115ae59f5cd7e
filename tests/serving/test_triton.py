"""rar-deploy triton-repo: the repository it writes, and (slow) the real tritonserver of nvidia-pytriton serving
it over HTTP and gRPC in its own environment, with images identical to local generation."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rar_deploy.cli import main
from rar_deploy.runtime import RARPipeline

HERE = Path(__file__).parent / "triton_env"
REPO_ROOT = Path(__file__).parents[2]


def triton_repo(*args: str | Path):
    return CliRunner().invoke(main, ["triton-repo", *map(str, args)])


@pytest.fixture(scope="module")
def artifacts(export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("triton") / "fp32", "fp32")


def test_config_comes_from_the_manifest(artifacts, tmp_path):
    result = triton_repo("--artifacts", artifacts, "--out", tmp_path / "repo", "--max-batch-size", "4",
                         "--instances", "2", "--threads", "1")
    assert result.exit_code == 0, result.output
    config = (tmp_path / "repo" / "rar" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in config and "count: 2 kind: KIND_CPU" in config
    assert 'name: "image" data_type: TYPE_UINT8 dims: [ 64, 64, 3 ]' in config  # the tiny decoder's 64 x 64
    assert 'name: "tokens" data_type: TYPE_INT64 dims: [ 16 ]' in config  # its 4 x 4 tokens
    assert f'string_value: "{artifacts.resolve()}"' in config
    model = (tmp_path / "repo" / "rar" / "1" / "model.py").read_text()
    assert "class TritonPythonModel" in model


def test_output_rules(artifacts, tmp_path):
    repo = tmp_path / "repo"
    assert triton_repo("--artifacts", artifacts, "--out", repo).exit_code == 0
    refused = triton_repo("--artifacts", artifacts, "--out", repo)
    assert refused.exit_code == 1 and "--force" in refused.output
    other_model = repo / "other" / "config.pbtxt"  # a repository holds other models: they are never touched
    other_model.parent.mkdir()
    other_model.write_text('name: "other"')
    (repo / "notes.txt").write_text("mine")
    assert triton_repo("--artifacts", artifacts, "--out", repo, "--force").exit_code == 0
    assert other_model.read_text() == 'name: "other"' and (repo / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "foreign" / "rar"  # a model named rar that this tool did not write
    foreign.mkdir(parents=True)
    (foreign / "config.pbtxt").write_text('name: "rar"')
    refused = triton_repo("--artifacts", artifacts, "--out", foreign.parent, "--force")
    assert "was not written by rar-deploy triton-repo" in refused.output
    assert (foreign / "config.pbtxt").read_text() == 'name: "rar"'
    for out, phrase in ((artifacts, "input"), (artifacts / "notes.txt", "input"), (tmp_path / "file", "is a file")):
        if phrase == "is a file":
            out.write_text("x")
        refused = triton_repo("--artifacts", artifacts, "--out", out)
        assert refused.exit_code == 1 and phrase in refused.output, refused.output
    refused = triton_repo("--artifacts", artifacts, "--out", tmp_path / "big", "--max-batch-size", "1000")
    assert refused.exit_code == 1 and "outside the artifacts' profile" in refused.output
    refused = triton_repo("--artifacts", artifacts, "--out", tmp_path / "dev", "--device", "banana")
    assert refused.exit_code == 1 and "device must be" in refused.output


def test_config_strings_are_escaped(artifacts, tmp_path):
    """A quote in the artifacts' path must not break config.pbtxt (Triton's text format)."""
    import shutil

    odd = Path(shutil.copytree(artifacts, tmp_path / 'we"ird dir' / "art"))
    assert triton_repo("--artifacts", odd, "--out", tmp_path / "repo").exit_code == 0
    config = (tmp_path / "repo" / "rar" / "config.pbtxt").read_text()
    assert 'string_value: "' + str(odd.resolve()).replace('"', '\\"') + '"' in config


@pytest.fixture(scope="session")
def triton_python() -> Path:
    """The interpreter of the Triton environment (tests/triton_env/requirements.txt), created once and cached."""
    requirements = HERE / "requirements.txt"
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    env = Path(os.environ.get("RAR_TRITON_ENV") or Path.home() / ".cache" / "rar-deploy" / f"triton-env-{key}")
    python = env / "bin" / "python"
    if not (env / "ready").exists():
        subprocess.run([sys._base_executable, "-m", "venv", "--clear", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
        (env / "ready").write_text(key)
    return python


@pytest.mark.slow
def test_tritonserver_serves_the_images_of_local_generation(artifacts, triton_python, tmp_path):
    repo = tmp_path / "repo"
    written = triton_repo("--artifacts", artifacts, "--out", repo, "--max-batch-size", "4", "--threads", "1")
    assert written.exit_code == 0, written.output
    jobs = [[[3, 500], 7], [[999], 8], [[1, 2, 3], 9]]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run = subprocess.run([str(triton_python), str(HERE / "serve_and_query.py"), "--repo", str(repo), "--jobs",
                          str(tmp_path / "jobs.json"), "--out", str(tmp_path / "results.npz")],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # rar_deploy for the model's stub
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["config"]["max_batch_size"] == 4  # parsed by tritonclient's ModelConfig
    assert summary["config"]["outputs"] == {"image": [64, 64, 3], "tokens": [16]}
    results = np.load(tmp_path / "results.npz")
    pipeline = RARPipeline.from_artifacts(artifacts)
    for i, (labels, seed) in enumerate(jobs):
        tokens, images = pipeline.generate(labels, seed=seed)
        for protocol in ("http", "grpc"):
            np.testing.assert_array_equal(results[f"{protocol}_{i}_tokens"], tokens)
            np.testing.assert_array_equal(results[f"{protocol}_{i}_image"], images)
    assert summary["invalid"]["http"].startswith("400") and "out of range" in summary["invalid"]["http"]
    assert "INVALID_ARGUMENT" in summary["invalid"]["grpc"] and "out of range" in summary["invalid"]["grpc"]
    assert summary["exit_code"] == 0
