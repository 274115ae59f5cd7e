"""rar-parity passes on honest exports, from the stored record or recomputed from the checkpoints, and
fails, naming the metric, on a numerically wrong decode graph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rar_deploy.cli import parity_command
from rar_deploy.contract.integrity import file_record
from rar_deploy.model.checkpoint import read_state_dict


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def artifacts(request, export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("parity") / request.param, request.param)


def _report(result) -> dict:
    return json.loads(result.output[result.output.index("{"):])


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_parity_passes_on_honest_exports(artifacts, backend):
    result = CliRunner().invoke(parity_command, ["--artifacts", str(artifacts), "--backend", backend, "--json"])
    assert result.exit_code == 0, result.output
    report = _report(result)
    assert report["failures"] == []
    assert set(report["graphs"]) == {"condition", "decode_step", "vq_decoder"}
    for mode in ("table", "per_step"):
        assert report["teacher_forced"][mode]["logits"]["steps"] == 16
        assert report["teacher_forced"][mode]["logits"]["top1_agreement"] == 1.0
    if report["precision"] == "fp32":
        for mode in ("guided", "unguided"):
            assert report["free_running"][mode]["token_agreement"] == 1.0
            assert report["free_running"][mode]["first_divergent_step"] is None
        assert report["decoder"]["psnr_db"] > 40


def test_parity_recomputes_the_reference_from_the_checkpoints(artifacts):
    result = CliRunner().invoke(parity_command, ["--artifacts", str(artifacts), "--batch", "3", "--seed", "5",
                                                 "--json"])
    assert result.exit_code == 0, result.output
    report = _report(result)
    assert (report["batch"], report["seed"], report["failures"]) == (3, 5, [])


def test_parity_table_is_readable(artifacts):
    result = CliRunner().invoke(parity_command, ["--artifacts", str(artifacts)])
    assert result.exit_code == 0, result.output
    assert "teacher_forced.per_step" in result.output and "PSNR" in result.output and "PASSED" in result.output


def test_parity_fails_on_a_numerically_wrong_decode_graph(official_dir, export_tiny, tmp_path):
    """An export whose decode graph computes something else (as an exporter bug would), listed in its
    manifest as if honest: the files check passes, the numbers do not."""
    good = export_tiny(tmp_path / "good", "fp32")
    state = read_state_dict(official_dir / "tiny_rar.bin")
    state["blocks.1.mlp.fc2.weight"] = state["blocks.1.mlp.fc2.weight"] * 1.05  # a 5% error in one matrix
    torch.save(state, tmp_path / "perturbed.bin")
    bad = export_tiny(tmp_path / "bad", "fp32", ckpt=tmp_path / "perturbed.bin")
    shutil.copyfile(bad / "decode_step.onnx", good / "decode_step.onnx")
    manifest = json.loads((good / "manifest.json").read_text())
    manifest["files"]["decode_step.onnx"] = file_record(good / "decode_step.onnx")
    (good / "manifest.json").write_text(json.dumps(manifest))

    result = CliRunner().invoke(parity_command, ["--artifacts", str(good), "--backend", "onnxruntime"])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output
    failed = result.output.split("FAILED")[1]
    assert "decode_step.logits: max error" in failed and "allowed 0.0001" in failed
    assert "teacher_forced.table.logits" in failed
    assert "condition.condition" not in failed  # the honest graphs still pass
