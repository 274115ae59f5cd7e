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
from rar_deploy.runtime import open_pipeline

HERE = Path(__file__).parent / "triton_env"
REPO_ROOT = Path(__file__).parents[2]


def triton_repo(*args: str | Path):
    return CliRunner().invoke(main, ["triton-repo", *map(str, args)])


@pytest.fixture(scope="module")
def artifacts(shared_export) -> Path:
    return shared_export("rar", "fp32")


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


def test_a_var_folder_gets_a_var_model_and_decoupled_is_a_choice(shared_export, artifacts, tmp_path):
    var = shared_export("var", "fp32")
    repo = tmp_path / "repo"
    assert triton_repo("--artifacts", var, "--out", repo).exit_code == 0
    config = (repo / "var" / "config.pbtxt").read_text()
    for line in ('name: "var"', 'name: "top_k" data_type: TYPE_INT64 dims: [ 1 ] optional: true',
                 'name: "top_p" data_type: TYPE_FP32', 'name: "tokens" data_type: TYPE_INT64 dims: [ 30 ]'):
        assert line in config
    assert "guidance_pow" not in config and "decoupled" not in config and "preview_every" not in config
    written = triton_repo("--artifacts", artifacts, "--out", repo, "--name", "rar_stream", "--decoupled")
    assert written.exit_code == 0 and "decoupled: gRPC streaming clients" in written.output
    config = (repo / "rar_stream" / "config.pbtxt").read_text()
    for line in ('name: "rar_stream"', "model_transaction_policy { decoupled: true }", 'name: "preview_every"',
                 'name: "row" data_type: TYPE_INT64 dims: [ 1 ]', 'name: "guidance_pow"'):
        assert line in config
    refused = triton_repo("--artifacts", artifacts, "--out", repo, "--name", "../up")
    assert refused.exit_code == 1 and "a model name is letters" in refused.output


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
def test_tritonserver_serves_the_images_of_local_generation(artifacts, shared_export, triton_python, tmp_path):
    """One repository, three models: rar (answered once, HTTP and gRPC), var (a VAR folder), rar_stream
    (decoupled: gRPC streams with previews, each image as it is done; a full queue refused, a cancel frees it)."""
    repo, var = tmp_path / "repo", shared_export("var", "fp32")
    for args in ((artifacts, "--max-batch-size", "4"), (var, "--max-batch-size", "4"),
                 (artifacts, "--name", "rar_stream", "--decoupled", "--max-batch-size", "2", "--max-queue", "64")):
        written = triton_repo("--artifacts", args[0], "--out", repo, "--threads", "1", *args[1:])
        assert written.exit_code == 0, written.output
    jobs = {"infer": [["rar", [3, 500], 7], ["rar", [999], 8], ["rar", [1, 2, 3], 9], ["var", [4, 40], 5]],
            "stream": [["rar_stream", [11, 12, 13], 21, 4], ["rar_stream", [14], 22, 0]], "busy": "rar_stream"}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run = subprocess.run([str(triton_python), str(HERE / "serve_and_query.py"), "--repo", str(repo), "--jobs",
                          str(tmp_path / "jobs.json"), "--out", str(tmp_path / "results.npz")],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # rar_deploy for the model's stub
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    config = summary["config"]  # parsed by tritonclient's ModelConfig
    assert config["rar"]["max_batch_size"] == 4 and not config["rar"]["decoupled"]
    assert config["rar"]["outputs"] == {"image": [64, 64, 3], "tokens": [16]}
    assert config["var"]["outputs"]["tokens"] == [30] and "top_k" in config["var"]["inputs"]
    assert config["rar_stream"]["decoupled"] and config["rar_stream"]["outputs"]["row"] == [1]
    results = np.load(tmp_path / "results.npz")
    pipelines = {"rar": open_pipeline(artifacts), "var": open_pipeline(var)}
    for i, (model, labels, seed) in enumerate(jobs["infer"]):
        tokens, images = pipelines[model].generate(labels, seed=seed)
        for protocol in ("http", "grpc"):
            np.testing.assert_array_equal(results[f"{protocol}_{i}_tokens"], tokens)
            np.testing.assert_array_equal(results[f"{protocol}_{i}_image"], images)
    for i, (model, labels, seed, every) in enumerate(jobs["stream"]):
        tokens, images = pipelines["rar"].generate(labels, seed=seed)
        for row in range(len(labels)):
            np.testing.assert_array_equal(results[f"stream_{i}_{row}_tokens"], tokens[row])
            np.testing.assert_array_equal(results[f"stream_{i}_{row}_image"], images[row])
        order = summary["stream"][i]
        previews = range(every, 17, every) if every else []  # RAR tiny: 17 positions
        expected = sorted([(row, step) for row in range(len(labels)) for step in previews]
                          + [(row, 17) for row in range(len(labels))])
        assert sorted(map(tuple, order)) == expected
        for row in range(len(labels)):  # each row's responses in step order, its image last
            assert [step for r, step in order if r == row] == sorted(step for r, step in expected if r == row)
    busy = summary["busy"]
    assert busy["refused"].startswith("busy: 62 images wait for a slot (at most 64)"), busy
    assert busy["accepted_after_s"] is not None and busy["images"] == 64, busy
    # 64 more images fit only in an empty queue: the cancelled request's 62 waiting images would have needed 31 of
    # the 32 rounds that serving 64 images takes to drain by themselves (and theirs ran with previews, slower)
    assert busy["accepted_after_s"] < 0.9 * busy["served_in_s"], busy
    assert summary["invalid"]["http"].startswith("400") and "out of range" in summary["invalid"]["http"]
    assert "INVALID_ARGUMENT" in summary["invalid"]["grpc"] and "out of range" in summary["invalid"]["grpc"]
    assert summary["exit_code"] == 0
