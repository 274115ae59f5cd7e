"""The hostile probe of the reliability issue, re-runnable as one suite: `python -m pytest tests/test_hostile.py`
(the slow kill tests too: add `-m "slow or not slow"`). Each test id starts with the issue's item number.

Nothing lost (1-5), nothing silently wrong (6-10), one clear line instead of a traceback (11-16). Real
files, real ONNX Runtime sessions, real processes and signals for the kill and race tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from rar_deploy import RARDeployError, RARPipeline, reference_generate
from rar_deploy.cli import bench_command, export_command, generate_command, main, parity_command
from rar_deploy.engines import find_tensorrt
from rar_deploy.sampling import sampling_noise

needs_tensorrt = pytest.mark.skipif(find_tensorrt() is None, reason="no TensorRT or TensorRT-RTX installed")
TINY = Path(__file__).parent / "data" / "official_tiny"


@pytest.fixture(scope="module")
def fp32(export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("hostile") / "fp32", "fp32")


@pytest.fixture(scope="module")
def fp16(export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("hostile") / "fp16", "fp16")


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


def rar(*args: str | Path, **kwargs) -> subprocess.Popen:
    """A real rar-deploy process (module entry points, so that no install step is assumed)."""
    code = "import sys; from rar_deploy.cli import {0}; sys.exit({0}())"
    command = {"rar-export": "export_command", "rar-generate": "generate_command"}[str(args[0])]
    return subprocess.Popen([sys.executable, "-c", code.format(command), *map(str, args[1:])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


# -- 1-5: data loss --------------------------------------------------------------------------------------------

def _complete(directory: Path) -> dict | None:
    """The manifest of a complete export at `directory`, else None."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if all((directory / name).is_file() for name in manifest["files"]) else None


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["during the export", "after the swap, while the old export is removed"])
def test_1_force_over_an_export_killed_at_any_moment_leaves_a_complete_export(tmp_path, moment):
    out = tmp_path / "out"
    assert invoke(export_command, *export_args(out, "--no-verify")).exit_code == 0
    clutter = out / "clutter"  # a slow-to-delete old export, so that the kill can land after the swap
    clutter.mkdir()
    for i in range(20000):
        (clutter / str(i)).touch()
    old = _complete(out)
    process = rar("rar-export", *export_args(out, "--force", "--no-verify", "--max-batch", "3"))
    seen = set()
    while process.poll() is None:
        manifest = _complete(out)
        assert manifest is not None, "the output was incomplete at some instant"
        seen.add(manifest["batch_profile"]["max"])
        partials = list(tmp_path.glob(".out.*.partial"))
        swapped = any((p / "clutter").exists() for p in partials)
        if (moment == "during the export" and partials and not swapped) or (moment != "during the export" and swapped):
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    after = _complete(out)
    assert after is not None
    assert after["batch_profile"]["max"] == (4 if moment == "during the export" else 3)
    assert after == old or moment != "during the export"
    assert list(tmp_path.glob(".out.*.partial"))  # the killed run's leftover ...
    rerun = invoke(export_command, *export_args(out, "--force", "--no-verify"))
    assert rerun.exit_code == 0, rerun.output
    assert "left by an interrupted run" in rerun.output  # ... named and removed by the next run
    assert not list(tmp_path.glob(".out.*"))


def test_1_force_replaces_an_export_in_one_swap(fp32, tmp_path):
    out = Path(shutil.copytree(fp32, tmp_path / "out"))
    (out / "mine.txt").write_text("an extra file in an export is part of the export")
    result = invoke(export_command, *export_args(out, "--force", "--no-verify", "--max-batch", "3"))
    assert result.exit_code == 0, result.output
    assert _complete(out)["batch_profile"]["max"] == 3 and not (out / "mine.txt").exists()
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.slow
def test_2_a_second_export_to_the_same_out_fails_at_once(tmp_path):
    out = tmp_path / "out"
    first = rar("rar-export", *export_args(out))
    lock = tmp_path / ".out.lock"
    deadline = time.time() + 60
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.05)
    second = rar("rar-export", *export_args(out, "--force"))
    output, _ = second.communicate(timeout=60)
    assert second.returncode == 1 and "is being written by another process" in output, output
    assert first.wait(timeout=300) == 0, first.stdout.read()
    assert _complete(out) is not None and not lock.exists()


@pytest.mark.slow
def test_2_what_appears_at_out_during_an_export_is_kept(tmp_path):
    out = tmp_path / "out"
    process = rar("rar-export", *export_args(out))
    while not list(tmp_path.glob(".out.*.partial")):
        time.sleep(0.05)
    out.mkdir()
    (out / "mine.txt").write_text("weeks of work")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1 and "appeared while this command ran and was left untouched" in output, output
    assert (out / "mine.txt").read_text() == "weeks of work" and list(out.iterdir()) == [out / "mine.txt"]
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("where", ["the checkpoint", "its folder"])
def test_3_export_out_never_is_or_holds_an_input(tmp_path, where):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    ckpt = Path(shutil.copy(TINY / "tiny_rar.bin", inputs / "rar.bin"))
    shutil.copy(TINY / "tiny_vq.bin", inputs / "vq.bin")
    out = {"the checkpoint": ckpt, "its folder": inputs}[where]
    result = invoke(export_command, "--ckpt", ckpt, "--tokenizer", inputs / "vq.bin", "--out", out, "--force",
                    "--no-engine")
    refused(result, "--out")
    assert ckpt.read_bytes() == (TINY / "tiny_rar.bin").read_bytes()


def test_3_force_never_replaces_what_rar_export_did_not_write(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"not ours")
    refused(invoke(export_command, *export_args(out, "--force")), "was not written by rar-export")
    assert (out / "holiday.png").read_bytes() == b"not ours"


@pytest.mark.parametrize("out", ["artifacts", "inside", "checkpoint"])
def test_3_generate_out_never_is_or_holds_an_input(fp32, tmp_path, out):
    artifacts = copy_of(fp32, tmp_path)
    target = {"artifacts": artifacts, "inside": artifacts / "samples",
              "checkpoint": Path(json.loads((artifacts / "manifest.json").read_text())["checkpoints"]["generator"]
                                 ["path"])}[out]
    before = sorted(p.name for p in artifacts.iterdir())
    refused(generate(artifacts, target, "--force"), "--out")
    assert sorted(p.name for p in artifacts.iterdir()) == before


def test_4_save_tokens_never_overwrites_without_force_nor_a_non_numpy_file(fp32, tmp_path):
    checkpoint = Path(shutil.copy(TINY / "tiny_rar.bin", tmp_path / "precious.bin"))
    refused(generate(fp32, tmp_path / "a", "--save-tokens", checkpoint), "exists", "--force")
    refused(generate(fp32, tmp_path / "b", "--save-tokens", checkpoint, "--force"), "was not written by rar-generate")
    assert checkpoint.read_bytes() == (TINY / "tiny_rar.bin").read_bytes()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any work
    tokens = tmp_path / "tokens.npy"
    assert generate(fp32, tmp_path / "c", "--save-tokens", tokens).exit_code == 0
    refused(generate(fp32, tmp_path / "d", "--save-tokens", tokens), "exists")
    assert generate(fp32, tmp_path / "d", "--save-tokens", tokens, "--force", "--seed", "3").exit_code == 0


def test_5_make_checkpoint_is_reproducible_and_never_overwrites(tmp_path):
    for folder in ("a", "b"):
        assert invoke(main, "make-checkpoint", "--out", tmp_path / folder).exit_code == 0
    for name in ("rar_tiny.bin", "maskgit-vqgan-tiny.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert invoke(main, "make-checkpoint", "--out", tmp_path / "a").exit_code == 0  # identical: kept, not an error
    real = tmp_path / "a" / "rar_tiny.bin"
    real.write_bytes((TINY / "tiny_rar.bin").read_bytes())  # somebody's real checkpoint of the same name
    refused(invoke(main, "make-checkpoint", "--out", tmp_path / "a", "--seed", "1"), "holds other weights")
    assert real.read_bytes() == (TINY / "tiny_rar.bin").read_bytes()


# -- 6-10: wrong results with exit 0 ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_6_guidance_scale_zero_equals_the_reference_without_guidance(fp32, official_generator, backend, temperature):
    labels = [3, 500, 999]
    pipeline = RARPipeline.from_artifacts(fp32, backend)
    tokens = pipeline.generate_tokens(labels, 0.0, 1.0, temperature, seed=4)
    reference = reference_generate(official_generator, labels, 0.0, 1.0, temperature,
                                   noise=sampling_noise(4, 3, 16, 1024))
    np.testing.assert_array_equal(tokens, reference.tokens.numpy())
    assert pipeline.backend.dims[1] == 3  # no unconditional rows were computed


@pytest.mark.parametrize("option, value", [("--temperature", "nan"), ("--guidance-scale", "nan"),
                                           ("--guidance-scale", "inf"), ("--guidance-pow", "nan"),
                                           ("--guidance-pow", "-1"), ("--temperature", "-0.5")])
def test_7_non_finite_or_negative_sampling_values_are_refused(fp32, tmp_path, option, value):
    refused(generate(fp32, tmp_path / "out", option, value), option.removeprefix("--").replace("-", " "))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs", [{"temperature": float("nan")}, {"guidance_scale": float("inf")},
                                    {"guidance_pow": float("nan")}])
def test_7_the_python_api_refuses_non_finite_values(fp32, kwargs):
    with pytest.raises(RARDeployError, match="finite"):
        RARPipeline.from_artifacts(fp32).generate_tokens([1], **kwargs)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_7_parity_refuses_a_meaningless_tolerance(fp32, value):
    refused(invoke(parity_command, "--artifacts", fp32, "--tolerance", value), "--tolerance")


def test_8_a_graph_from_another_export_is_refused_before_running(fp32, demo_checkpoints, export_tiny, tmp_path):
    other = export_tiny(tmp_path / "other", "fp32", ckpt=demo_checkpoints[0])  # same shapes, other weights
    artifacts = copy_of(fp32, tmp_path)
    shutil.copyfile(other / "decode_step.onnx", artifacts / "decode_step.onnx")
    assert (artifacts / "decode_step.onnx").stat().st_size == (fp32 / "decode_step.onnx").stat().st_size
    for result in (generate(artifacts, tmp_path / "out"), invoke(parity_command, "--artifacts", artifacts),
                   invoke(bench_command, "--artifacts", artifacts, "--batch-sizes", "1")):
        refused(result, "decode_step.onnx", "not the file this manifest lists")


def unsampled_weight_byte(path: Path, data: bytearray) -> int:
    """Offset of the low byte of a float weight that no fingerprint chunk reads."""
    from rar_deploy.integrity import FINGERPRINT_CHUNK, FINGERPRINT_CHUNKS

    size = len(data)
    assert size > FINGERPRINT_CHUNKS * FINGERPRINT_CHUNK  # a file sampled by the fingerprint, not hashed whole
    sampled = [i * (size - FINGERPRINT_CHUNK) // (FINGERPRINT_CHUNKS - 1) for i in range(FINGERPRINT_CHUNKS)]
    largest = max(onnx.load(str(path)).graph.initializer, key=lambda tensor: len(tensor.raw_data))
    start = bytes(data).find(largest.raw_data)
    assert start > 0
    for offset in range(start, start + len(largest.raw_data), 4):
        if all(not first <= offset < first + FINGERPRINT_CHUNK for first in sampled):
            return offset
    raise AssertionError("every byte of the largest weight is sampled by the fingerprint")


def test_8_full_hash_catches_a_change_the_fingerprint_cannot_see(fp32, tmp_path):
    artifacts = copy_of(fp32, tmp_path)
    path = artifacts / "vq_decoder.onnx"
    data = bytearray(path.read_bytes())
    data[unsampled_weight_byte(path, data)] ^= 1  # the lowest mantissa bit of one weight
    path.write_bytes(bytes(data))
    assert generate(artifacts, tmp_path / "out1").exit_code == 0  # the fingerprint samples chunks ...
    refused(generate(artifacts, tmp_path / "out2", "--verify-files"), "SHA-256")  # ... the full hash sees all
    refused(invoke(parity_command, "--artifacts", artifacts), "SHA-256")


@needs_tensorrt
def test_8_an_engine_from_another_export_is_refused(export_tiny, demo_checkpoints, tmp_path):
    from rar_deploy.runtime.artifacts import Artifacts

    mine = export_tiny(tmp_path / "mine", "fp16", engine=True)
    other = export_tiny(tmp_path / "other", "fp16", ckpt=demo_checkpoints[0], engine=True)
    shutil.copyfile(other / "engines" / "decode_step.plan", mine / "engines" / "decode_step.plan")
    with pytest.raises(RARDeployError, match="decode_step.plan .*(differs|bytes)"):
        Artifacts.load(mine).check_files("decode_step", engine=True)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_9_one_pipeline_shared_by_many_threads_gives_the_sequential_images(fp32, backend):
    pipeline = RARPipeline.from_artifacts(fp32, backend)
    jobs = [([i, i + 1], 100 + i) for i in range(8)]
    expected = [pipeline.generate_tokens(labels, seed=seed) for labels, seed in jobs]
    results: dict[int, np.ndarray] = {}

    def work(index: int) -> None:
        labels, seed = jobs[index]
        results[index] = pipeline.generate_tokens(labels, seed=seed)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, tokens in enumerate(expected):
        np.testing.assert_array_equal(results[index], tokens)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_10_an_image_does_not_depend_on_its_batch(fp32, backend):
    """The promise on CPU: the same tokens and the same pixels whatever the batch size (see README)."""
    pipeline = RARPipeline.from_artifacts(fp32, backend)
    labels = [5, 6, 7, 8]
    batched = pipeline.generate_tokens(labels, seed=2, batch_size=4)
    alone = pipeline.generate_tokens(labels, seed=2, batch_size=1)
    np.testing.assert_array_equal(batched, alone)
    np.testing.assert_array_equal(pipeline.decode(batched, batch_size=4), pipeline.decode(batched, batch_size=1))


# -- 11-12: tracebacks ----------------------------------------------------------------------------------------------

EDITS = {
    "a shape": lambda m: m["graphs"]["decode_step"]["inputs"][3].update(shape=["rows", 2, 99, 16]),
    "the depth": lambda m: m["model"].update(depth=3),
    "the sequence length": lambda m: m["model"].update(image_seq_len=25),
    "a missing key": lambda m: m.pop("kv_cache"),
    "a wrong type": lambda m: m["model"].update(hidden_size="32"),
    "a zero batch profile": lambda m: m["batch_profile"].update(max=0),
    "an unlisted file": lambda m: m["files"].pop("decode_step.onnx"),
    "another precision": lambda m: m.update(precision="fp16"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_11_an_edited_manifest_is_one_line_in_every_tool(fp32, tmp_path, edit):
    artifacts = copy_of(fp32, tmp_path)
    edit_manifest(artifacts, EDITS[edit])
    for result in (generate(artifacts, tmp_path / "out"), invoke(parity_command, "--artifacts", artifacts),
                   invoke(bench_command, "--artifacts", artifacts, "--batch-sizes", "1")):
        refused(result, "manifest")


@pytest.mark.parametrize("damage", ["truncated", "swapped with another graph", "fp32 graph in an fp16 folder"])
def test_11_damaged_graph_files_are_one_line(fp32, fp16, tmp_path, damage):
    from rar_deploy.integrity import file_record

    artifacts = copy_of(fp16, tmp_path)
    graph = artifacts / "decode_step.onnx"
    if damage == "truncated":
        graph.write_bytes(graph.read_bytes()[:1000])
    elif damage == "swapped with another graph":
        shutil.copyfile(artifacts / "condition.onnx", graph)
    else:
        shutil.copyfile(fp32 / "decode_step.onnx", graph)
    refused(generate(artifacts, tmp_path / "out"), "decode_step.onnx")
    # even where the manifest was made to list the damaged file, the graph's own I/O gives it away
    edit_manifest(artifacts, lambda m: m["files"].update({"decode_step.onnx": file_record(graph)}))
    refused(generate(artifacts, tmp_path / "out"), "decode_step.onnx")


def test_12_torch_backend_with_moved_checkpoints_or_a_folder(fp32, tmp_path, official_dir):
    exported_from = Path(json.loads((fp32 / "manifest.json").read_text())["checkpoints"]["generator"]["path"])
    moved = copy_of(fp32, tmp_path)
    edit_manifest(moved, lambda m: m["checkpoints"]["generator"].update(path=str(tmp_path / "gone.bin")))
    refused(generate(moved, tmp_path / "o1", "--backend", "torch"), "no longer at", "--ckpt")
    refused(invoke(parity_command, "--artifacts", moved, "--seed", "1"), "no longer at", "--ckpt")
    refused(invoke(bench_command, "--artifacts", moved, "--batch-sizes", "1", "--baseline"), "no longer at", "--ckpt")
    refused(generate(fp32, tmp_path / "o2", "--backend", "torch", "--ckpt", official_dir), "is a folder")
    assert exported_from.exists()


@pytest.mark.parametrize("command", ["rar-generate", "rar-parity"])
def test_12_negative_seed(fp32, tmp_path, command):
    if command == "rar-generate":
        refused(generate(fp32, tmp_path / "out", "--seed", "-1"), "seed")
    else:
        refused(invoke(parity_command, "--artifacts", fp32, "--seed", "-1"), "seed")


def test_12_unwritable_save_tokens_is_refused_before_generating(fp32, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    refused(generate(fp32, tmp_path / "out", "--save-tokens", blocker / "tokens.npy"), "cannot write to")
    assert not (tmp_path / "out").exists()


@needs_tensorrt
@pytest.mark.parametrize("name", ["__doc__", "CURRENT", "NONE", "SM90", "sm"])
def test_12_13_unknown_compute_capability_lists_the_valid_ones_before_loading(tmp_path, name):
    line = refused(invoke(export_command, *export_args(tmp_path / "out")[:-3], "--engine",
                          "--compute-capability", name), "SM89", "SM120")
    assert "loading" not in line and not (tmp_path / "out").exists()


@needs_tensorrt
def test_13_compute_capability_accepts_lower_case_and_dotted_names(tmp_path):
    from rar_deploy.engines import parse_compute_capabilities

    assert parse_compute_capabilities(find_tensorrt(), ("sm89", "8.6", "SM120", "sm89")) == ("SM89", "SM86", "SM120")


# -- 13-16: poor messages and late checks ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, phrase", [
    (["--class-labels", "1001"], "out of range"),
    (["--batch-size", "9"], "outside the artifacts' profile"),
    (["--guidance-scale", "nan"], "finite"),
    (["--seed", "-1"], "seed must lie in"),
])
def test_13_every_option_is_checked_before_any_heavy_work(fp32, tmp_path, args, phrase):
    result = invoke(generate_command, "--artifacts", fp32, "--class-labels", "1", "--out", tmp_path / "out",
                    *args)
    refused(result, phrase)
    assert "generating" not in result.output and not (tmp_path / "out").exists()


def test_14_a_tensor_that_breaks_config_inference_is_named(tmp_path):
    from rar_deploy.checkpoint import read_state_dict

    state = read_state_dict(TINY / "tiny_rar.bin")
    state["pos_embed"] = state["pos_embed"][:, :100]
    torch.save(state, tmp_path / "bad.bin")
    refused(invoke(export_command, *export_args(tmp_path / "out"), "--ckpt", tmp_path / "bad.bin"),
            "pos_embed", "bad.bin")


def test_14_a_pickle_of_objects_is_not_a_safe_state_dict(tmp_path):
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.bin")
    line = refused(invoke(export_command, *export_args(tmp_path / "out"), "--ckpt", tmp_path / "module.bin"),
                   "not a safe state dict")
    assert "weights_only=False" not in line


def test_14_a_folder_as_checkpoint(tmp_path):
    refused(invoke(export_command, *export_args(tmp_path / "out"), "--ckpt", tmp_path), "is a folder")


def test_14_nan_weights_are_named_and_fp16_overflow_suggests_fp32(tmp_path):
    from rar_deploy.checkpoint import read_state_dict

    state = read_state_dict(TINY / "tiny_rar.bin")
    state["blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.bin")
    refused(invoke(export_command, *export_args(tmp_path / "o1"), "--ckpt", tmp_path / "nan.bin"),
            "blocks.0.mlp.fc1.weight", "NaN")
    state = read_state_dict(TINY / "tiny_rar.bin")
    state["blocks.0.mlp.fc2.weight"][0, 0] = 1e6
    torch.save(state, tmp_path / "big.bin")
    refused(invoke(export_command, *export_args(tmp_path / "o2"), "--ckpt", tmp_path / "big.bin"),
            "blocks.0.mlp.fc2.weight", "--fp32")


@needs_tensorrt
def test_14_timing_cache_with_tensorrt_rtx_says_it_is_unused(tmp_path):
    if find_tensorrt().flavour != "tensorrt-rtx":
        pytest.skip("standard TensorRT uses the timing cache")
    result = invoke(export_command, *export_args(tmp_path / "out")[:-3], "--engine", "--no-verify",
                    "--timing-cache", tmp_path / "cache.bin")
    assert result.exit_code == 0, result.output
    assert "TensorRT-RTX has no timing cache" in result.output


def test_14_parity_with_another_models_checkpoint(fp32, demo_checkpoints):
    refused(invoke(parity_command, "--artifacts", fp32, "--ckpt", demo_checkpoints[0]),
            "is not the generator these artifacts were exported from")


@pytest.mark.parametrize("sizes, phrase", [("abc", "--batch-sizes must be"), ("", "--batch-sizes is empty"),
                                           (",", "--batch-sizes is empty")])
def test_14_bench_batch_sizes(fp32, sizes, phrase):
    refused(invoke(bench_command, "--artifacts", fp32, "--batch-sizes", sizes), phrase)


def test_14_bench_negative_warmup(fp32):
    result = invoke(bench_command, "--artifacts", fp32, "--warmup-steps", "-1")
    assert result.exit_code == 2 and "-1 is not in the range x>=0" in result.output


@pytest.mark.parametrize("call, message", [
    (lambda p: p.generate_tokens("207"), "list of integer class ids"),
    (lambda p: p.generate_tokens([None]), "integer class ids"),
    (lambda p: p.generate_tokens([207.0]), "integer class ids"),
    (lambda p: p.generate_tokens([True]), "integer class ids"),
    (lambda p: p.generate_tokens([1], seed=None), "seed must be an integer"),
    (lambda p: p.generate_tokens([1], seed=-1), "seed must lie in"),
    (lambda p: p.generate_tokens([1], batch_size="2"), "batch size must be an integer"),
    (lambda p: p.generate_tokens([1], temperature="1"), "temperature must be a number"),
    (lambda p: p.decode(np.zeros((1, 16), np.float32)), "tokens must be integers"),
    (lambda p: p.decode(np.zeros((1, 15), np.int64)), "tokens must be [B, 16]"),
])
def test_15_python_api_wrong_types(fp32, call, message):
    with pytest.raises(RARDeployError, match=message.replace("[", r"\[")):
        call(RARPipeline.from_artifacts(fp32))


@pytest.mark.parametrize("kwargs, message", [({"directory": None}, "must be a path"),
                                             ({"device": "tpu"}, "device must be"),
                                             ({"backend": "tflite"}, "unknown backend")])
def test_15_python_api_wrong_construction(fp32, kwargs, message):
    with pytest.raises(RARDeployError, match=message):
        RARPipeline.from_artifacts(**{"directory": fp32, **kwargs})


def test_16_first_contact(tmp_path):
    result = invoke(main, "make-checkpoint", "--out", tmp_path / "demo")
    assert result.exit_code == 0
    result = invoke(export_command, "--ckpt", tmp_path / "demo" / "rar_tiny.bin", "--tokenizer",
                    tmp_path / "demo" / "maskgit-vqgan-tiny.bin", "--out", tmp_path / "art", "--max-batch", "4",
                    "--no-verify")
    assert result.exit_code == 0, result.output
    assert "torchvision" not in result.output
    if find_tensorrt() is not None and find_tensorrt().flavour == "tensorrt-rtx":
        assert "RTX 40xx" in result.output and "H100/H200 (SM90) need standard TensorRT" in result.output
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "rows of 8" in readme and "--force" in readme.split("## Generate")[1].split("```")[1]
    assert "SM90" in readme


def test_16_grid_has_one_row_per_class_or_rows_of_eight(fp32, tmp_path):
    from PIL import Image

    result = invoke(generate_command, "--artifacts", fp32, "--class-labels", "1,2", "--num-per-class", "3",
                    "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "a" / "grid.png").size == (3 * 64, 2 * 64)
    labels = ",".join(str(i) for i in range(10))
    result = invoke(generate_command, "--artifacts", fp32, "--class-labels", labels, "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "b" / "grid.png").size == (8 * 64, 2 * 64)
    samples = json.loads((tmp_path / "b" / "samples.json").read_text())
    assert samples["schema"] == "rar-deploy/samples" and len(samples["images"]) == 10


def test_samples_folder_force_replaces_only_rar_generate_output(fp32, tmp_path):
    out = tmp_path / "samples"
    assert generate(fp32, out).exit_code == 0
    assert generate(fp32, out, "--force", "--seed", "4").exit_code == 0
    assert json.loads((out / "samples.json").read_text())["seed"] == 4
    os.remove(out / "samples.json")  # no longer recognisably ours
    refused(generate(fp32, out, "--force"), "was not written by rar-generate")
