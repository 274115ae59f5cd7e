"""rar-export: ONNX graphs vs the reference in ONNX Runtime, one copy of the weights, TensorRT-RTX builds,
the manifest, bad input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from rar_deploy import RARTokenizerConfig
from rar_deploy.cli import export_command
from rar_deploy.contract.graphs import resolve_shape
from rar_deploy.contract.sampling import guidance_rows
from rar_deploy.model.demo import random_tokenizer, save_state_dict
from rar_deploy.model.graphs import ConditionGraph, DecodeStepGraph
from rar_deploy.runtime.engines import find_tensorrt
from rar_deploy.tools.engine_build import BatchProfile
from rar_deploy.tools.metrics import TOLERANCES, failures

PROFILE = BatchProfile(1, 2, 6)
needs_tensorrt = pytest.mark.skipif(find_tensorrt() is None, reason="no TensorRT or TensorRT-RTX installed")
SHARED_CONSTANT_BYTES = 64  # scalars and shape constants the exporter may write into both graphs


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def official_export(request, export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("export") / request.param, request.param, engine=None, profile=PROFILE)


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_artifact_directory_is_complete(official_export):
    manifest = _manifest(official_export)
    assert set(manifest["graphs"]) == {"condition", "decode_step", "vq_decoder"}
    for graph in manifest["graphs"].values():
        onnx.checker.check_model(str(official_export / graph["file"]), full_check=True)
    assert manifest["model"]["depth"] == 2 and manifest["tokenizer"]["z_channels"] == 32
    assert len(manifest["checkpoints"]["generator"]["sha256"]) == 64
    assert manifest["kv_cache"]["shape"] == [2, "rows", 2, 17, 16]
    assert manifest["condition"]["width"] == (6 * 2 + 3) * 32
    decode_inputs = [t["name"] for t in manifest["graphs"]["decode_step"]["inputs"]]
    assert decode_inputs[:7] == ["tokens", "position", "condition", "k_cache.0", "k_cache.1", "v_cache.0", "v_cache.1"]
    assert manifest["tools"]["opset"] == 18
    for name, record in manifest["files"].items():  # every file listed with its size and SHA-256
        data = (official_export / name).read_bytes()
        assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
    assert {"reference.npz", "condition.onnx", "decode_step.onnx", "vq_decoder.onnx"} <= set(manifest["files"])
    assert not list(official_export.parent.glob(".*partial"))


def test_export_time_parity_is_within_tolerance(official_export):
    parity = json.loads((official_export / "parity.json").read_text())
    assert parity["failures"] == [] and parity["batch"] == 2
    limit = TOLERANCES[parity["precision"]]["max_rel_to_peak"]
    for graph in parity["graphs"].values():
        assert all(stats["max_rel_to_peak"] <= limit for stats in graph.values())
    assert list(parity["teacher_forced"]) == ["table"]  # the per-step condition is checked per graph at export
    assert parity["teacher_forced"]["table"]["logits"]["top1_agreement"] == 1.0
    assert parity["teacher_forced"]["table"]["logits"]["steps"] == 16
    if parity["precision"] == "fp32":
        assert parity["teacher_forced"]["table"]["logits"]["max_abs"] < 1e-4
        assert parity["free_running"]["guided"]["token_agreement"] == 1.0
        assert parity["free_running"]["unguided"]["token_agreement"] == 1.0


def test_failures_names_the_metric_over_tolerance():
    report = {"decode_step": {"logits": {"max_rel_to_peak": 0.5, "cosine": 0.9, "nonfinite": 2}}}
    found = failures(report, TOLERANCES["fp32"])
    assert "decode_step.logits: max error 0.5 of the reference's peak, allowed 0.0001" in found
    assert any("inf/nan" in f for f in found)


def _initializers(path: Path) -> dict[str, bytes]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


def test_generator_weights_are_stored_once(official_export, official_generator):
    """The condition graph holds the adaLN weights and the class rows, the decode step every other
    weight and the token rows: no weight is in both, and together they are the generator's size."""
    manifest = _manifest(official_export)
    condition = _initializers(official_export / "condition.onnx")
    step = _initializers(official_export / "decode_step.onnx")
    digests = {hashlib.sha256(v).hexdigest(): len(v) for v in condition.values()}
    shared = [len(v) for v in step.values() if digests.get(hashlib.sha256(v).hexdigest())]
    assert all(size <= SHARED_CONSTANT_BYTES for size in shared), shared
    itemsize = 2 if manifest["precision"] == "fp16" else 4
    norms = sum(p.numel() for n, p in official_generator.named_parameters() if "norm" in n)  # kept float32
    generator = sum(p.numel() for p in official_generator.parameters()) * itemsize + norms * (4 - itemsize)
    stored = manifest["graphs"]["condition"]["weight_bytes"] + manifest["graphs"]["decode_step"]["weight_bytes"]
    mask_row = official_generator.config.hidden_size * itemsize  # the unused mask token's embedding row
    assert generator - mask_row - 1024 <= stored <= generator + 1024


def _condition(generator, labels: np.ndarray, guided: bool, positions: int | np.ndarray) -> tuple:
    rows = guidance_rows(labels, guided, generator.config.null_class)
    grid = np.broadcast_to(np.asarray(positions).reshape(-1, 1), (np.size(positions), len(rows))).copy()
    return rows, grid, ConditionGraph(generator)(torch.from_numpy(rows), torch.from_numpy(grid)).numpy()


@pytest.mark.parametrize("batch, guided", [(1, True), (3, True), (5, False)])
def test_graphs_at_many_batch_sizes(official_export, official_generator, batch, guided):
    manifest = _manifest(official_export)
    dtype = np.float16 if manifest["precision"] == "fp16" else np.float32
    tol = TOLERANCES[manifest["precision"]]["max_rel_to_peak"]
    c = official_generator.config
    rng = np.random.default_rng(batch)
    labels = rng.integers(0, 1000, batch)
    rows, grid, expected = _condition(official_generator, labels, guided, np.arange(c.cache_len))
    (table,) = _session(official_export / "condition.onnx").run(None, {"class_labels": rows, "positions": grid})
    assert np.abs(table - expected).max() / np.abs(expected).max() <= tol

    shape = (c.depth, len(rows), c.num_heads, c.cache_len, c.head_dim)
    k_cache, v_cache = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    position = rng.integers(0, c.cache_len, batch)  # each image at its own position, prefill included
    feeds = {"tokens": rng.integers(0, 1024, batch), "position": position, "condition": expected.astype(dtype),
             **{f"k_cache.{i}": k for i, k in enumerate(k_cache)}, **{f"v_cache.{i}": v for i, v in enumerate(v_cache)},
             "guidance_scale": rng.uniform(1, 5, batch).astype(np.float32),
             "temperature": np.zeros(batch, np.float32), "noise": np.full((batch, 1024), 0.5, np.float32)}
    tokens, logits, keys, _ = _session(official_export / "decode_step.onnx").run(None, feeds)
    assert keys.shape == (c.depth, len(rows), c.num_heads, 1, c.head_dim)
    args = {k: torch.from_numpy(v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in feeds.items()}
    reference = DecodeStepGraph(official_generator)(
        args["tokens"], args["position"], args["condition"], [args[f"k_cache.{i}"] for i in range(c.depth)],
        [args[f"v_cache.{i}"] for i in range(c.depth)], args["guidance_scale"], args["temperature"], args["noise"])
    peak = reference[1].abs().max().item()
    assert np.abs(logits - reference[1].numpy()).max() / peak <= tol
    if dtype == np.float32:
        np.testing.assert_array_equal(tokens, reference[0].numpy())


def _cache_consumers(model: onnx.ModelProto, caches: set[str]) -> set[tuple[str, str]]:
    return {(node.op_type, name) for node in model.graph.node for name in node.input if name in caches}


def test_decode_graph_never_copies_the_cache(official_export, tmp_path):
    """No output has the cache's sequence length, and the cache inputs are only read by matrix
    multiplies (and Shape, which reads no data): no Gather, Slice, Concat or Cast of the cache. The one
    Transpose (of K, before the score MatMul) swaps the last two dims and feeds only a MatMul: TensorRT folds
    it into the GEMM, and so does ONNX Runtime where it has the kernel (checked on its optimised fp32 graph; its CPU
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
    assert {op for op, _ in consumers} <= {"MatMul", "Transpose", "Shape"}, consumers  # Shape reads no data
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
        assert {op for op, _ in optimized} <= {"MatMul", "FusedMatMul", "Shape"}, optimized


def test_step_reads_one_condition_row_and_writes_the_same_size_at_every_position(official_export, official_generator):
    """The table holds every position: the step gathers its rows (no copy of the table) and its outputs
    do not grow with the position."""
    manifest = _manifest(official_export)
    model = onnx.load(str(official_export / "decode_step.onnx"))
    assert {n.op_type for n in model.graph.node if "condition" in n.input} <= {"GatherND", "Gather", "Shape"}
    session = _session(official_export / "decode_step.onnx")
    c = official_generator.config
    dtype = np.float16 if manifest["precision"] == "fp16" else np.float32
    _, _, table = _condition(official_generator, np.array([3, 4]), True, np.arange(c.cache_len))
    cache = np.zeros((c.depth, 4, c.num_heads, c.cache_len, c.head_dim), dtype)
    shapes = set()
    for p in (0, 1, 8, 16):
        feeds = {"tokens": np.array([1, 2]), "position": np.array([p, p]), "condition": table.astype(dtype),
                 **{f"{kv}_cache.{i}": cache[i] for kv in "kv" for i in range(c.depth)},
                 "guidance_scale": np.ones(2, np.float32), "temperature": np.zeros(2, np.float32),
                 "noise": np.full((2, 1024), 0.5, np.float32)}
        shapes.add(tuple(o.shape for o in session.run(None, feeds)))
    assert len(shapes) == 1


@needs_tensorrt
def test_engines_match_the_manifest(official_export):
    manifest = _manifest(official_export)
    assert set(manifest["engines"]) == set(manifest["graphs"])
    cache_len = manifest["model"]["image_seq_len"] + 1
    dims = [{"batch": 1, "rows": 1, "positions": 1}, {"batch": 2, "rows": 4, "positions": cache_len},
            {"batch": 6, "rows": 12, "positions": cache_len}]
    for name, engine in manifest["engines"].items():
        assert manifest["files"][engine["file"]]["size"] == (official_export / engine["file"]).stat().st_size
        assert engine["profile"]["batch"] == [PROFILE.min, PROFILE.opt, PROFILE.max]
        assert engine["profile"]["dims"] == dims
        io = {t["name"]: t for t in engine["io"]}
        graph = manifest["graphs"][name]
        assert list(io) == [t["name"] for t in graph["inputs"] + graph["outputs"]]
        for spec in graph["inputs"] + graph["outputs"]:
            assert io[spec["name"]]["dtype"] == spec["dtype"], (name, spec["name"])
            assert io[spec["name"]]["shape"] == [-1 if isinstance(d, str) else d for d in spec["shape"]]
        for spec in graph["inputs"]:
            assert io[spec["name"]]["profile"] == [resolve_shape(spec["shape"], d) for d in dims], (name, spec["name"])
        assert (engine["timing_cache"] is None) == (engine["flavour"] == "tensorrt-rtx")


@pytest.mark.slow
@needs_tensorrt
def test_forced_external_data_exports_parses_and_builds(export_tiny, tmp_path):
    out = export_tiny(tmp_path / "ext", "fp16", engine=None, profile=PROFILE, external_data=True)
    manifest = _manifest(out)
    for name, graph in manifest["graphs"].items():
        assert graph["external_data"] == f"{name}.onnx.data"
        assert (out / graph["external_data"]).stat().st_size >= 0.9 * graph["weight_bytes"]  # small ones stay inline
        assert graph["external_data"] in manifest["files"]
    assert json.loads((out / "parity.json").read_text())["failures"] == []
    assert set(manifest["engines"]) == set(manifest["graphs"])


def test_the_manifest_lists_every_file_the_export_wrote(export_tiny, tmp_path):
    """Integrity covers the whole folder: every file but the manifest itself is listed (weights torch moves to
    `.onnx.data` on its own, above 1.5 GiB, included: the listing is of what was written). Every file has the same
    permissions, so that a folder copied to a server or container of another user loads: onnx.save writes external
    data owner-only (0600), the quantized step graph's included."""
    umask = os.umask(0o022)
    os.umask(umask)
    for out in (export_tiny(tmp_path / "inline", "fp32"),
                export_tiny(tmp_path / "ext", "fp32", external_data=True, weights="int8")):
        written = {str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()} - {"manifest.json"}
        assert written == set(_manifest(out)["files"]), out
        modes = {f.name: oct(f.stat().st_mode & 0o777) for f in out.rglob("*") if f.is_file()}
        assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
    assert "decode_step.onnx.data" in written


def test_cli_exports_a_demo_model(demo_checkpoints, tmp_path):
    generator, tokenizer = demo_checkpoints
    out = tmp_path / "artifacts"
    result = CliRunner().invoke(export_command, ["--ckpt", str(generator), "--tokenizer", str(tokenizer), "--out",
                                                 str(out), "--fp16", "--no-engine", "--max-batch", "4"])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "decode_step" in result.output
    assert "torchvision" not in result.output  # the exporter's per-op log lines stay quiet
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
    _assert_clean_failure(result, out, "not a RAR or VAR generator checkpoint")


def test_tokenizer_codebook_mismatch(official_dir, tmp_path):
    config = RARTokenizerConfig(hidden_channels=32, channel_mult=(1, 2), z_channels=32, codebook_size=512)
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
    import rar_deploy.runtime.engines as engines_module

    monkeypatch.setattr(engines_module, "FLAVOURS", (("no_such_tensorrt_module", "tensorrt"),))
    out = tmp_path / "out"
    result = _run_cli(["--ckpt", str(official_dir / "tiny_rar.bin"), "--tokenizer", str(official_dir / "tiny_vq.bin"),
                       "--out", str(out), "--engine"])
    _assert_clean_failure(result, out, "pip install .[rtx]")


def test_failed_verification_leaves_nothing(official_dir, tmp_path, monkeypatch):
    """A verification failure after the graphs were written must not leave an artifact directory."""
    import rar_deploy.tools.metrics as metrics_module

    monkeypatch.setitem(metrics_module.TOLERANCES, "fp32", {**metrics_module.TOLERANCES["fp32"],
                                                            "max_rel_to_peak": 0.0, "min_cosine": 1.1})
    out = tmp_path / "out"
    result = _run_cli(["--ckpt", str(official_dir / "tiny_rar.bin"), "--tokenizer", str(official_dir / "tiny_vq.bin"),
                       "--out", str(out), "--fp32", "--no-engine"])
    _assert_clean_failure(result, out, "export verification failed")
    assert not out.exists()
