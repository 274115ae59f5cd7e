"""One clear line instead of a traceback, before any heavy work (docs/RELIABILITY.md, "One line"): each test is
named by the promise it checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from probe import TINY, copy_of, edit_manifest, export_args, generate, invoke, refused

from rar_deploy import RARDeployError, RARPipeline, RARSampling, VARSampling
from rar_deploy.cli import bench_command, export_command, generate_command, main, parity_command
from rar_deploy.runtime.engines import find_tensorrt

needs_tensorrt = pytest.mark.skipif(find_tensorrt() is None, reason="no TensorRT or TensorRT-RTX installed")


@pytest.fixture(scope="module")
def fp32(export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("messages") / "fp32", "fp32")


@pytest.mark.parametrize("option, value", [("--temperature", "nan"), ("--guidance-scale", "nan"),
                                           ("--guidance-scale", "inf"), ("--guidance-pow", "nan"),
                                           ("--guidance-pow", "-1"), ("--temperature", "-0.5")])
def test_non_finite_or_negative_sampling_values_are_refused(fp32, tmp_path, option, value):
    refused(generate(fp32, tmp_path / "out", option, value), option.removeprefix("--").replace("-", " "))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs", [{"temperature": float("nan")}, {"guidance_scale": float("inf")},
                                    {"guidance_pow": float("nan")}])
def test_the_python_api_refuses_non_finite_values(fp32, kwargs):
    with pytest.raises(RARDeployError, match="finite"):
        RARPipeline.from_artifacts(fp32).generate([1], sampling=RARSampling(**kwargs))


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_parity_refuses_a_meaningless_tolerance(fp32, value):
    refused(invoke(parity_command, "--artifacts", fp32, "--tolerance", value), "--tolerance")


@pytest.mark.parametrize("value", [float("nan"), 1e300, -2.0])
def test_a_bad_default_in_a_manifest_names_the_manifest(fp32, tmp_path, value):
    artifacts = copy_of(fp32, tmp_path)
    edit_manifest(artifacts, lambda m: m["sampling"]["defaults"].update(temperature=value))
    line = refused(generate(artifacts, tmp_path / "out"), "manifest.json", "sampling.defaults", "temperature")
    assert "export the artifacts again" in line


@pytest.mark.parametrize("labels", ["1_0", "1e3", "0x10", "٣", "9" * 5000])
def test_class_labels_are_plain_decimal_integers(fp32, tmp_path, labels):
    refused(generate(fp32, tmp_path / "out", "--class-labels", labels), "--class-labels", "decimal integers")


def test_a_two_dimensional_label_array_is_refused(fp32):
    with pytest.raises(RARDeployError, match="1-D"):
        RARPipeline.from_artifacts(fp32).generate(np.array([[1, 2], [3, 4]]))


@pytest.mark.parametrize("size, phrase", [("0", "at least 1"), ("-3", "at least 1"), ("9", "outside the artifacts'")])
def test_a_batch_size_outside_the_profile_says_which_way(fp32, tmp_path, size, phrase):
    refused(generate(fp32, tmp_path / "out", "--batch-size", size), phrase)


def test_an_unknown_checkpoint_is_named_before_any_tokenizer(tmp_path):
    line = refused(invoke(export_command, "--ckpt", tmp_path / "nope.bin", "--out", tmp_path / "o", "--no-engine"),
                   "nope.bin", "not found")
    assert "tokenizer" not in line and "maskgit" not in line


def test_long_output_names_work_up_to_the_file_system_limit(fp32, tmp_path):
    name = "n" * 250  # the limit is 255 bytes: rar-deploy's temporary and lock names must not exceed it
    assert generate(fp32, tmp_path / name, "--save-tokens", tmp_path / ("t" * 251 + ".npy")).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "t" * 251 + ".npy"])
    assert generate(fp32, tmp_path / name, "--force").exit_code == 0
    refused(generate(fp32, tmp_path / ("m" * 256)), "256 bytes long", "shorter")


@pytest.mark.parametrize("args, phrase", [
    (["--class-labels", "1001"], "out of range"),
    (["--batch-size", "9"], "outside the artifacts' profile"),
    (["--guidance-scale", "nan"], "finite"),
    (["--seed", "-1"], "seed must lie in"),
])
def test_every_option_is_checked_before_any_heavy_work(fp32, tmp_path, args, phrase):
    result = invoke(generate_command, "--artifacts", fp32, "--class-labels", "1", "--out", tmp_path / "out",
                    *args)
    refused(result, phrase)
    assert "generating" not in result.output and not (tmp_path / "out").exists()


def test_the_torch_backend_names_moved_checkpoints(fp32, tmp_path, official_dir):
    exported_from = Path(json.loads((fp32 / "manifest.json").read_text())["checkpoints"]["generator"]["path"])
    moved = copy_of(fp32, tmp_path)
    edit_manifest(moved, lambda m: m["checkpoints"]["generator"].update(path=str(tmp_path / "gone.bin")))
    refused(generate(moved, tmp_path / "o1", "--backend", "torch"), "no longer at", "--ckpt")
    refused(invoke(parity_command, "--artifacts", moved, "--seed", "1"), "no longer at", "--ckpt")
    refused(invoke(bench_command, "--artifacts", moved, "--batch-sizes", "1", "--baseline"), "no longer at", "--ckpt")
    refused(generate(fp32, tmp_path / "o2", "--backend", "torch", "--ckpt", official_dir), "is a folder")
    assert exported_from.exists()


@pytest.mark.parametrize("command", ["rar-generate", "rar-parity"])
def test_a_negative_seed_is_refused(fp32, tmp_path, command):
    if command == "rar-generate":
        refused(generate(fp32, tmp_path / "out", "--seed", "-1"), "seed")
    else:
        refused(invoke(parity_command, "--artifacts", fp32, "--seed", "-1"), "seed")


@needs_tensorrt
@pytest.mark.parametrize("name", ["__doc__", "CURRENT", "NONE", "SM90", "sm"])
def test_an_unknown_compute_capability_lists_the_valid_ones_before_loading(tmp_path, name):
    line = refused(invoke(export_command, *export_args(tmp_path / "out")[:-3], "--engine",
                          "--compute-capability", name), "SM89", "SM120")
    assert "loading" not in line and not (tmp_path / "out").exists()


@needs_tensorrt
def test_compute_capabilities_accept_lower_case_and_dotted_names(tmp_path):
    from rar_deploy.tools.engine_build import parse_compute_capabilities

    assert parse_compute_capabilities(find_tensorrt(), ("sm89", "8.6", "SM120", "sm89")) == ("SM89", "SM86", "SM120")


def test_a_tensor_that_breaks_config_inference_is_named(tmp_path):
    from rar_deploy.model.checkpoint import read_state_dict

    state = read_state_dict(TINY / "tiny_rar.bin")
    state["pos_embed"] = state["pos_embed"][:, :100]
    torch.save(state, tmp_path / "bad.bin")
    refused(invoke(export_command, *export_args(tmp_path / "out"), "--ckpt", tmp_path / "bad.bin"),
            "pos_embed", "bad.bin")


def test_a_pickle_of_objects_is_not_a_safe_state_dict(tmp_path):
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.bin")
    line = refused(invoke(export_command, *export_args(tmp_path / "out"), "--ckpt", tmp_path / "module.bin"),
                   "not a safe state dict")
    assert "weights_only=False" not in line


def test_a_folder_as_checkpoint_is_named(tmp_path):
    refused(invoke(export_command, *export_args(tmp_path / "out"), "--ckpt", tmp_path), "is a folder")


def test_nan_weights_are_named_and_fp16_overflow_suggests_fp32(tmp_path):
    from rar_deploy.model.checkpoint import read_state_dict

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
def test_a_timing_cache_with_tensorrt_rtx_is_said_to_be_unused(tmp_path):
    if find_tensorrt().flavour != "tensorrt-rtx":
        pytest.skip("standard TensorRT uses the timing cache")
    result = invoke(export_command, *export_args(tmp_path / "out")[:-3], "--engine", "--no-verify",
                    "--timing-cache", tmp_path / "cache.bin")
    assert result.exit_code == 0, result.output
    assert "TensorRT-RTX has no timing cache" in result.output


def test_parity_with_another_models_checkpoint_is_named(fp32, demo_checkpoints):
    refused(invoke(parity_command, "--artifacts", fp32, "--ckpt", demo_checkpoints[0]),
            "is not the generator these artifacts were exported from")


@pytest.mark.parametrize("sizes, phrase", [("abc", "--batch-sizes must be"), ("", "--batch-sizes is empty"),
                                           (",", "--batch-sizes is empty")])
def test_bench_batch_sizes_are_checked(fp32, sizes, phrase):
    refused(invoke(bench_command, "--artifacts", fp32, "--batch-sizes", sizes), phrase)


def test_bench_refuses_negative_warmup(fp32):
    result = invoke(bench_command, "--artifacts", fp32, "--warmup-steps", "-1")
    assert result.exit_code == 2 and "-1 is not in the range x>=0" in result.output


@pytest.mark.parametrize("call, message", [
    (lambda p: p.generate("207"), "list of integer class ids"),
    (lambda p: p.generate([None]), "integer class ids"),
    (lambda p: p.generate([207.0]), "integer class ids"),
    (lambda p: p.generate([True]), "integer class ids"),
    (lambda p: p.generate([1], seed=None), "seed must be an integer"),
    (lambda p: p.generate([1], seed=-1), "seed must lie in"),
    (lambda p: p.generate([1], batch_size="2"), "batch size must be an integer"),
    (lambda p: p.generate([1], sampling=RARSampling(temperature="1")), "temperature must be a number"),
    (lambda p: p.generate([1], sampling=VARSampling(top_k=5)), "a RAR model takes sampling=RARSampling"),
    (lambda p: p.generate([1], sampling={"temperature": 1.0}), "a RAR model takes sampling=RARSampling"),
    (lambda p: p.decode(np.zeros((1, 16), np.float32)), "tokens must be integers"),
    (lambda p: p.decode(np.zeros((1, 15), np.int64)), "tokens must be [B, 16]"),
])
def test_python_api_wrong_types_are_one_line(fp32, call, message):
    with pytest.raises(RARDeployError, match=message.replace("[", r"\[")):
        call(RARPipeline.from_artifacts(fp32))


@pytest.mark.parametrize("kwargs, message", [({"directory": None}, "must be a path"),
                                             ({"device": "tpu"}, "device must be"),
                                             ({"backend": "tflite"}, "unknown backend")])
def test_python_api_wrong_construction_is_one_line(fp32, kwargs, message):
    with pytest.raises(RARDeployError, match=message):
        RARPipeline.from_artifacts(**{"directory": fp32, **kwargs})


def test_grid_has_one_row_per_class_or_rows_of_eight(fp32, tmp_path):
    from PIL import Image

    result = invoke(generate_command, "--artifacts", fp32, "--class-labels", "1,2", "--num-per-class", "3",
                    "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    grid = np.array(Image.open(tmp_path / "a" / "grid.png"))
    assert grid.shape == (2 * 64, 3 * 64, 3)
    np.testing.assert_array_equal(grid[64:, 128:], np.array(Image.open(tmp_path / "a" / "0005_class2.png")))
    labels = ",".join(str(i) for i in range(10))
    result = invoke(generate_command, "--artifacts", fp32, "--class-labels", labels, "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    grid = np.array(Image.open(tmp_path / "b" / "grid.png"))
    assert grid.shape == (2 * 64, 8 * 64, 3) and not grid[64:, 128:].any()  # the short last row is black
    samples = json.loads((tmp_path / "b" / "samples.json").read_text())
    assert samples["schema"] == "rar-deploy/samples" and len(samples["images"]) == 10


def test_first_contact_is_quiet_and_names_the_targets(tmp_path):
    result = invoke(main, "make-checkpoint", "--out", tmp_path / "demo")
    assert result.exit_code == 0
    result = invoke(export_command, "--ckpt", tmp_path / "demo" / "rar_tiny.bin", "--tokenizer",
                    tmp_path / "demo" / "maskgit-vqgan-tiny.bin", "--out", tmp_path / "art", "--max-batch", "4",
                    "--no-verify")
    assert result.exit_code == 0, result.output
    assert "torchvision" not in result.output and "Warning" not in result.output
    if find_tensorrt() is not None and find_tensorrt().flavour == "tensorrt-rtx":
        assert "RTX 40xx" in result.output and "H100/H200 (SM90) need standard TensorRT" in result.output
