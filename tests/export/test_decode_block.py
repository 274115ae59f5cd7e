"""RAR's decode_block graph (`rar-export --parallel-decoding`): the decode step over several consecutive positions per
image, for speculative Jacobi decoding. Checked against the float32 reference's teacher-forced logits by the export's
own verification and by rar-parity on ONNX Runtime and torch; refused where it does not apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rar_deploy.errors import ExportError
from rar_deploy.runtime.pipeline import open_pipeline
from rar_deploy.tools.engine_build import find_tensorrt
from rar_deploy.tools.parity import load_record, run_parity, teacher_forced_blocks

VAR_DATA = Path(__file__).parents[1] / "data" / "official_var_tiny"


@pytest.fixture
def block_export(parallel_export) -> Path:
    return parallel_export


def test_the_export_lists_decode_block_and_verifies_it(block_export):
    manifest = json.loads((block_export / "manifest.json").read_text())
    assert list(manifest["graphs"]) == ["condition", "decode_step", "vq_decoder", "decode_block"]
    assert manifest["files"]["decode_block.onnx"]["size"] == (block_export / "decode_block.onnx").stat().st_size
    block = json.loads((block_export / "parity.json").read_text())["teacher_forced"]["block"]["logits"]
    assert block["steps"] == manifest["model"]["image_seq_len"] and block["top1_agreement"] == 1.0
    assert block["max_rel_to_peak"] < 1e-5


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_rar_parity_checks_decode_block_on_every_backend(block_export, backend):
    pipeline = open_pipeline(block_export, backend, device="cpu")
    report = run_parity(pipeline, load_record(pipeline.artifacts))
    assert report["failures"] == []
    assert report["teacher_forced"]["block"]["logits"]["max_rel_to_peak"] < 1e-5


def test_every_block_size_gives_the_same_logits(block_export):
    pipeline = open_pipeline(block_export, "onnxruntime", device="cpu")
    record = load_record(pipeline.artifacts)
    n = pipeline.config.image_seq_len
    results = [teacher_forced_blocks(pipeline, record, block)["logits"] for block in (1, 3, n + 1)]
    assert all(r["top1_agreement"] == 1.0 and r["max_rel_to_peak"] < 1e-5 for r in results)


@pytest.mark.skipif(find_tensorrt() is None, reason="no TensorRT or TensorRT-RTX installed")
def test_rar_build_builds_decode_block_with_a_profile_over_the_block(block_export, tmp_path):
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "built"
    shutil.copytree(block_export, folder)
    subprocess.run([str(Path(sys.executable).parent / "rar-build"), "--artifacts", str(folder)], check=True,
                   capture_output=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["engines"]) == {"condition", "decode_step", "vq_decoder", "decode_block"}
    tokens = next(io for io in manifest["engines"]["decode_block"]["io"] if io["name"] == "tokens")
    cache_len = manifest["model"]["image_seq_len"] + 1
    assert tokens["profile"] == [[1, 1], [2, min(9, cache_len)], [4, min(17, cache_len)]]


def test_parallel_decoding_is_refused_where_it_does_not_apply(export_tiny, tmp_path):
    from rar_deploy.export.exporter import ExportRequest, export_artifacts

    with pytest.raises(ExportError, match="--parallel-decoding with --weights int8"):
        export_artifacts(ExportRequest(ckpt="missing.bin", tokenizer="missing.bin", out=tmp_path / "q",
                                       weights="int8", parallel_decoding=True, engine=False), progress=print)
    with pytest.raises(ExportError, match="applies to RAR checkpoints"):
        export_artifacts(ExportRequest(ckpt=str(VAR_DATA / "var_tiny_var.pth"),
                                       tokenizer=str(VAR_DATA / "var_tiny_vae.pth"), out=tmp_path / "v",
                                       parallel_decoding=True, engine=False), progress=print)
    assert not (tmp_path / "q").exists() and not (tmp_path / "v").exists()
