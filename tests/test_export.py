"""rar-export: ONNX graphs vs the reference in ONNX Runtime, TensorRT-RTX builds, the manifest, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from rar_deploy import TokenizerConfig
from rar_deploy.cli import export_command
from rar_deploy.demo import random_tokenizer, save_state_dict
from rar_deploy.engines import BatchProfile, find_tensorrt, resolve_shape
from rar_deploy.export.graphs import DecodeStepGraph
from rar_deploy.export.verify import (
    TOLERANCES,
    cache_feeds,
    decode_step_reference,
    failures,
    ort_session,
    verify_generator_graphs,
)

PROFILE = BatchProfile(1, 2, 6)
needs_tensorrt = pytest.mark.skipif(find_tensorrt() is None, reason="no TensorRT or TensorRT-RTX installed")


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def official_export(request, export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("export") / request.param, request.param, engine=None, profile=PROFILE)


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def test_artifact_directory_is_complete(official_export):
    manifest = _manifest(official_export)
    names = {"prefill", "decode_step", "vq_decoder"}
    assert set(manifest["graphs"]) == names
    for graph in manifest["graphs"].values():
        onnx.checker.check_model(str(official_export / graph["file"]), full_check=True)
    assert manifest["model"]["depth"] == 2 and manifest["tokenizer"]["z_channels"] == 32
    assert len(manifest["checkpoints"]["generator"]["sha256"]) == 64
    assert manifest["kv_cache"]["shape"] == [2, "2*batch", 2, 17, 16]
    decode_inputs = [t["name"] for t in manifest["graphs"]["decode_step"]["inputs"]]
    assert decode_inputs[3:7] == ["k_cache.0", "k_cache.1", "v_cache.0", "v_cache.1"]
    assert manifest["tools"]["opset"] == 18
    assert not list(official_export.parent.glob(".*partial"))


def test_export_time_parity_is_within_tolerance(official_export):
    parity = json.loads((official_export / "parity.json").read_text())
    assert parity["failures"] == [] and parity["batch"] == 3
    graphs = parity["graphs"]
    limit = TOLERANCES[parity["precision"]]["max_rel_to_peak"]
    for graph in ("prefill", "decode_step"):
        for output in ("logits", "keys", "values"):
            assert graphs[graph][output]["max_rel_to_peak"] <= limit
    if parity["precision"] == "fp32":
        assert graphs["teacher_forced"]["logits"]["max_abs"] < 1e-4
        assert graphs["teacher_forced"]["logits"]["top1_agreement"] == 1.0


def test_failures_names_the_metric_over_tolerance():
    report = {"decode_step": {"logits": {"max_rel_to_peak": 0.5, "cosine": 0.9, "nonfinite": 2}}}
    found = failures(report, "fp32")
    assert any("decode_step.logits: max_rel_to_peak 0.5" in f for f in found)
    assert any("inf/nan" in f for f in found)


def test_runtime_written_cache_reproduces_teacher_forced_logits(official_export, official_generator):
    """The whole decode (15 steps), the cache written between steps on the runtime side."""
    precision = _manifest(official_export)["precision"]
    paths = {name: official_export / f"{name}.onnx" for name in ("prefill", "decode_step")}
    cache_dtype = np.float16 if precision == "fp16" else np.float32
    report = verify_generator_graphs(official_generator, paths, np.dtype(cache_dtype), steps=15, seed=5)
    assert failures(report, precision) == []
    stats = report["teacher_forced"]["logits"]
    if precision == "fp32":
        assert stats["max_abs"] < 1e-4 and stats["top1_agreement"] == 1.0


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_decode_step_at_many_batch_sizes(official_export, official_generator, batch):
    manifest = _manifest(official_export)
    fp16 = manifest["precision"] == "fp16"
    c = official_generator.config
    rng = np.random.default_rng(batch)
    shape = (c.depth, 2 * batch, c.num_heads, c.cache_len, c.head_dim)
    k_cache, v_cache = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    feeds = {"tokens": rng.integers(0, 1024, batch), "step": rng.integers(1, 16, batch),
             "class_labels": rng.integers(0, 1000, batch), **cache_feeds(k_cache, v_cache),
             "guidance_scale": rng.uniform(1, 5, batch).astype(np.float32),
             "temperature": np.zeros(batch, np.float32), "noise": np.full((batch, 1024), 0.5, np.float32)}
    expected = decode_step_reference(DecodeStepGraph(official_generator), feeds)
    if fp16:
        feeds.update(cache_feeds(k_cache.astype(np.float16), v_cache.astype(np.float16)))
    tokens, logits, keys, _ = ort_session(official_export / "decode_step.onnx").run(None, feeds)
    assert keys.shape == (c.depth, 2 * batch, c.num_heads, 1, c.head_dim)
    peak = np.abs(expected["logits"]).max()
    assert np.abs(logits - expected["logits"]).max() / peak <= TOLERANCES[manifest["precision"]]["max_rel_to_peak"]
    if not fp16:
        np.testing.assert_array_equal(tokens, expected["next_tokens"])


def _cache_consumers(model: onnx.ModelProto, caches: set[str]) -> set[tuple[str, str]]:
    return {(node.op_type, name) for node in model.graph.node for name in node.input if name in caches}


def test_decode_graph_never_copies_the_cache(official_export, tmp_path):
    """No output has the cache's sequence length, and the cache inputs are only read by matrix
    multiplies: no Gather, Slice, Concat or Cast of the cache. The one Transpose (of K, before the
    score MatMul) swaps the last two dims and feeds only a MatMul: TensorRT folds it into the GEMM,
    and so does ONNX Runtime where it has the kernel (checked on its optimised fp32 graph; its CPU
    provider has no fp16 MatMul and casts, so fp16 on ORT CPU is for verification, not speed)."""
    import onnxruntime as ort

    manifest = _manifest(official_export)
    seq = manifest["model"]["image_seq_len"] + 1
    model = onnx.load(str(official_export / "decode_step.onnx"))
    for output in model.graph.output:
        dims = [d.dim_value for d in output.type.tensor_type.shape.dim]
        assert seq not in dims and seq + 1 not in dims, output.name

    caches = {t["name"] for t in manifest["graphs"]["decode_step"]["inputs"] if "_cache." in t["name"]}
    consumers = _cache_consumers(model, caches)
    assert {name for _, name in consumers} == caches
    assert {op for op, _ in consumers} <= {"MatMul", "Transpose"}, consumers
    for node in model.graph.node:
        if node.op_type == "Transpose" and set(node.input) & caches:
            perm = list(onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "perm")))
            assert perm == [0, 1, 3, 2]
            readers = {n.op_type for n in model.graph.node if node.output[0] in n.input}
            assert readers == {"MatMul"}

    if manifest["precision"] == "fp32":
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(str(official_export / "decode_step.onnx"), options, providers=["CPUExecutionProvider"])
        optimized = _cache_consumers(onnx.load(str(tmp_path / "optimized.onnx")), caches)
        assert {op for op, _ in optimized} <= {"MatMul", "FusedMatMul"}, optimized


def test_step_writes_the_same_size_at_every_step(official_export):
    session = ort_session(official_export / "decode_step.onnx")
    c = _manifest(official_export)["model"]
    dtype = np.float16 if _manifest(official_export)["precision"] == "fp16" else np.float32
    cache = np.zeros((c["depth"], 4, c["num_heads"], c["image_seq_len"] + 1, 16), dtype)
    shapes = set()
    for t in (1, 8, 15):
        feeds = {"tokens": np.array([1, 2]), "step": np.array([t, t]), "class_labels": np.array([3, 4]),
                 **cache_feeds(cache, cache), "guidance_scale": np.ones(2, np.float32),
                 "temperature": np.zeros(2, np.float32), "noise": np.full((2, 1024), 0.5, np.float32)}
        shapes.add(tuple(o.shape for o in session.run(None, feeds)))
    assert len(shapes) == 1


@needs_tensorrt
def test_engines_match_the_manifest(official_export):
    manifest = _manifest(official_export)
    assert set(manifest["engines"]) == set(manifest["graphs"])
    for name, engine in manifest["engines"].items():
        assert (official_export / engine["file"]).stat().st_size > 0
        assert engine["profile"]["batch"] == [PROFILE.min, PROFILE.opt, PROFILE.max]
        io = {t["name"]: t for t in engine["io"]}
        graph = manifest["graphs"][name]
        assert list(io) == [t["name"] for t in graph["inputs"] + graph["outputs"]]
        for spec in graph["inputs"] + graph["outputs"]:
            assert io[spec["name"]]["dtype"] == spec["dtype"], (name, spec["name"])
            assert io[spec["name"]]["shape"] == [-1 if isinstance(d, str) else d for d in spec["shape"]]
        for spec in graph["inputs"]:
            expected = [resolve_shape(spec["shape"], b) for b in (PROFILE.min, PROFILE.opt, PROFILE.max)]
            assert io[spec["name"]]["profile"] == expected, (name, spec["name"])
        assert (engine["timing_cache"] is None) == (engine["flavour"] == "tensorrt-rtx")


@needs_tensorrt
def test_forced_external_data_exports_parses_and_builds(export_tiny, tmp_path):
    out = export_tiny(tmp_path / "ext", "fp16", engine=None, profile=PROFILE, external_data=True)
    manifest = _manifest(out)
    for name, graph in manifest["graphs"].items():
        assert graph["external_data"] == f"{name}.onnx.data"
        assert (out / graph["external_data"]).stat().st_size > (out / graph["file"]).stat().st_size
    assert json.loads((out / "parity.json").read_text())["failures"] == []
    assert set(manifest["engines"]) == set(manifest["graphs"])


def test_cli_exports_a_demo_model(demo_checkpoints, tmp_path):
    generator, tokenizer = demo_checkpoints
    out = tmp_path / "artifacts"
    result = CliRunner().invoke(export_command, ["--ckpt", str(generator), "--tokenizer", str(tokenizer), "--out",
                                                 str(out), "--fp16", "--no-engine", "--max-batch", "4"])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "prefill" in result.output
    assert _manifest(out)["engines"] == {} and _manifest(out)["batch_profile"]["max"] == 4


# -- bad input: one line, non-zero exit, no artifact directory ------------------------------------------

def _run_cli(args: list[str]):
    return CliRunner().invoke(export_command, args)


def _assert_clean_failure(result, out: Path, message: str) -> None:
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: "), result.output  # progress lines before it
    assert not out.exists() or not any(out.iterdir()) or (out / "keep.txt").exists()
    assert not list(out.parent.glob(".*partial"))


def test_not_a_rar_checkpoint(official_dir, tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.bin")
    out = tmp_path / "out"
    result = _run_cli(["--ckpt", str(tmp_path / "other.bin"), "--tokenizer", str(official_dir / "tiny_vq.bin"),
                       "--out", str(out), "--no-engine"])
    _assert_clean_failure(result, out, "not a RAR generator checkpoint")


def test_tokenizer_codebook_mismatch(official_dir, tmp_path):
    config = TokenizerConfig(hidden_channels=32, channel_mult=(1, 2), z_channels=32, codebook_size=512)
    save_state_dict(random_tokenizer(config), tmp_path / "small_vq.bin")
    out = tmp_path / "out"
    result = _run_cli(["--ckpt", str(official_dir / "tiny_rar.bin"), "--tokenizer", str(tmp_path / "small_vq.bin"),
                       "--out", str(out), "--no-engine"])
    _assert_clean_failure(result, out, "codebook of 512 entries but the generator predicts 1024")


def test_non_empty_out_needs_force(official_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _run_cli(["--ckpt", str(official_dir / "tiny_rar.bin"), "--tokenizer", str(official_dir / "tiny_vq.bin"),
                       "--out", str(out), "--no-engine"])
    _assert_clean_failure(result, out, "exists and is not empty")
    assert (out / "keep.txt").read_text() == "mine"


def test_unwritable_out(official_dir, tmp_path):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "out"
    result = _run_cli(["--ckpt", str(official_dir / "tiny_rar.bin"), "--tokenizer", str(official_dir / "tiny_vq.bin"),
                       "--out", str(out), "--no-engine"])
    assert result.exit_code != 0 and "cannot write to" in result.output, result.output


def test_max_batch_zero(official_dir, tmp_path):
    out = tmp_path / "out"
    result = _run_cli(["--ckpt", str(official_dir / "tiny_rar.bin"), "--tokenizer", str(official_dir / "tiny_vq.bin"),
                       "--out", str(out), "--max-batch", "0"])
    _assert_clean_failure(result, out, "1 <= min <= opt <= max")


def test_engine_without_tensorrt_is_actionable(official_dir, tmp_path, monkeypatch):
    import rar_deploy.engines as tensorrt_module

    monkeypatch.setattr(tensorrt_module, "FLAVOURS", (("no_such_tensorrt_module", "tensorrt"),))
    out = tmp_path / "out"
    result = _run_cli(["--ckpt", str(official_dir / "tiny_rar.bin"), "--tokenizer", str(official_dir / "tiny_vq.bin"),
                       "--out", str(out), "--engine"])
    _assert_clean_failure(result, out, "pip install .[rtx]")


def test_failed_verification_leaves_nothing(official_dir, tmp_path, monkeypatch):
    """A verification failure after the graphs were written must not leave an artifact directory."""
    import rar_deploy.export.verify as verify_module

    monkeypatch.setitem(verify_module.TOLERANCES, "fp32", {"max_rel_to_peak": 0.0, "min_cosine": 1.1,
                                                           "max_uint8_levels": 0})
    out = tmp_path / "out"
    result = _run_cli(["--ckpt", str(official_dir / "tiny_rar.bin"), "--tokenizer", str(official_dir / "tiny_vq.bin"),
                       "--out", str(out), "--fp32", "--no-engine"])
    _assert_clean_failure(result, out, "export verification failed")
    assert not out.exists()
