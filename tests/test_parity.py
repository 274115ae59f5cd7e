"""rar-parity passes on honest exports and fails, naming the metric, on a perturbed decode graph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rar_deploy.checkpoint import read_state_dict
from rar_deploy.cli import parity_command


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def artifacts(request, export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("parity") / request.param, request.param)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_parity_passes_on_honest_exports(artifacts, backend):
    result = CliRunner().invoke(parity_command, ["--artifacts", str(artifacts), "--backend", backend, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["failures"] == []
    assert set(report["graphs"]) == {"prefill", "decode_step", "vq_decoder"}
    assert report["teacher_forced"]["logits"]["steps"] == 16
    assert report["teacher_forced"]["logits"]["top1_agreement"] == 1.0
    if report["precision"] == "fp32":
        assert report["free_running"]["token_agreement"] == 1.0
        assert report["free_running"]["first_divergent_step"] is None
        assert report["decoder"]["psnr_db"] > 40


def test_parity_table_is_readable(artifacts):
    result = CliRunner().invoke(parity_command, ["--artifacts", str(artifacts)])
    assert result.exit_code == 0, result.output
    assert "teacher_forced.logits" in result.output and "PSNR" in result.output and "PASSED" in result.output


def test_parity_fails_on_a_perturbed_decode_graph(official_dir, export_tiny, tmp_path):
    good = export_tiny(tmp_path / "good", "fp32")
    state = read_state_dict(official_dir / "tiny_rar.bin")
    state["blocks.1.mlp.fc2.weight"] = state["blocks.1.mlp.fc2.weight"] * 1.05  # a 5% error in one matrix
    torch.save(state, tmp_path / "perturbed.bin")
    bad = export_tiny(tmp_path / "bad", "fp32", ckpt=tmp_path / "perturbed.bin")
    shutil.copyfile(bad / "decode_step.onnx", good / "decode_step.onnx")  # only the decode graph is wrong

    result = CliRunner().invoke(parity_command, ["--artifacts", str(good), "--backend", "onnxruntime"])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output
    assert "decode_step.logits: max error" in result.output and "allowed 0.0001" in result.output
    assert "teacher_forced.logits" in result.output.split("FAILED")[1]
    assert "prefill.logits: max error" not in result.output  # the honest graphs still pass
