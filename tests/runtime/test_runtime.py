"""The runtime: rar-generate and RARPipeline over ONNX Runtime and torch against the official goldens,
cross-backend determinism, the TensorRT backend as far as a CPU machine allows, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from rar_deploy import RARDeployError, RARPipeline, RARSampling, reference_generate, sampling_noise
from rar_deploy.cli import generate_command
from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.runtime.engines import check_engines, find_tensorrt

RUNS = {"const": ("4", "0"), "powcos": ("16", "2.75")}


@pytest.fixture(scope="module")
def fp32_artifacts(shared_export) -> Path:
    return shared_export("rar", "fp32")


def _generate(args: list[str]):
    return CliRunner().invoke(generate_command, args)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("run", RUNS)
def test_rar_generate_reproduces_official_greedy_images(fp32_artifacts, golden, tmp_path, backend, run):
    scale, pow = RUNS[run]
    out = tmp_path / "samples"
    labels = ",".join(str(x) for x in golden["labels"])
    budget = ["--condition-budget", "0"] if run == "powcos" else []  # one position of condition rows a step
    # one ONNX Runtime thread (torch's thread count is global to this process: left alone)
    threads = ["--threads", "1"] if run == "powcos" and backend == "onnxruntime" else []
    result = _generate(["--artifacts", str(fp32_artifacts), "--class-labels", labels, "--temperature", "0",
                        "--guidance-scale", scale, "--guidance-pow", pow, "--backend", backend, "--out", str(out),
                        "--save-tokens", str(tmp_path / "tokens.npy"), *budget, *threads])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "samples.json").read_text())["condition_window"] == (1 if budget else 17)
    np.testing.assert_array_equal(np.load(tmp_path / "tokens.npy"), golden[f"greedy_tokens_{run}"])
    if run == "const":  # the golden images decode the const run
        official = (np.clip(golden["images_const"], 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
        for index, label in enumerate(golden["labels"]):
            png = np.asarray(Image.open(out / f"{index:04d}_class{label}.png"))
            assert np.abs(png.astype(int) - official[index]).max() <= 1
        assert Image.open(out / "grid.png").size == (128, 64)


def test_same_seed_same_tokens_across_backends_and_reference(fp32_artifacts, official_generator):
    labels = [3, 500, 999]
    kwargs = dict(sampling=RARSampling(guidance_scale=3.0, guidance_pow=1.0, temperature=1.0), seed=21)
    ort_tokens = RARPipeline.from_artifacts(fp32_artifacts, "onnxruntime").generate(labels, **kwargs).tokens
    torch_tokens = RARPipeline.from_artifacts(fp32_artifacts, "torch").generate(labels, **kwargs).tokens
    noise = sampling_noise(21, 3, 16, 1024)
    reference = reference_generate(official_generator, labels, 3.0, 1.0, 1.0, noise=noise).tokens.numpy()
    np.testing.assert_array_equal(ort_tokens, reference)
    np.testing.assert_array_equal(torch_tokens, reference)
    assert len({tuple(row) for row in reference}) == 3  # sampling, not a constant


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_every_condition_window_gives_the_same_tokens(fp32_artifacts, official_generator, backend):
    """The whole table (17 positions), one position per step, and windows of 5 (17 = 3 x 5 + 2) and 4."""
    pipeline = RARPipeline.from_artifacts(fp32_artifacts, backend)
    kwargs = dict(sampling=RARSampling(guidance_scale=3.0, guidance_pow=1.0, temperature=1.0), seed=21)
    runs = {}
    for window in (17, 1, 5, 4):
        per_position = 4 * pipeline.artifacts.condition_width * pipeline.backend.float_dtype.itemsize  # 2 x 2 rows
        pipeline.loop.condition_table_budget = window * per_position
        runs[window] = pipeline.generate([3, 500], **kwargs).tokens
        assert pipeline.loop.window == window
    for tokens in runs.values():
        np.testing.assert_array_equal(tokens, runs[17])
    reference = reference_generate(official_generator, [3, 500], 3.0, 1.0, 1.0, noise=sampling_noise(21, 2, 16, 1024))
    np.testing.assert_array_equal(runs[17], reference.tokens.numpy())


def test_a_batch_of_samples_each_with_its_own_seed_and_sampling_values(fp32_artifacts):
    """Serving: rows of different requests in one batch give the images each request gives alone."""
    from rar_deploy.runtime import Sample

    pipeline = RARPipeline.from_artifacts(fp32_artifacts, "onnxruntime")
    samples = [Sample(3, seed=11),
               Sample(7, seed=5, index=1, sampling=RARSampling(guidance_scale=2.0, temperature=0.0)),
               Sample(9, seed=5, sampling=RARSampling(guidance_scale=0.0)),
               Sample(1, seed=2, sampling=RARSampling(guidance_pow=3.0, temperature=0.5))]
    together = pipeline.generate_samples(samples, batch_size=4)
    for sample, tokens in zip(samples, together):
        alone = pipeline.generate([0] * sample.index + [sample.class_label], sampling=sample.sampling,
                                  seed=sample.seed).tokens[-1]
        np.testing.assert_array_equal(tokens, alone)


def test_image_does_not_depend_on_batch_size(fp32_artifacts):
    pipeline = RARPipeline.from_artifacts(fp32_artifacts, "onnxruntime")
    labels = [7, 8, 9]
    sampling = RARSampling(guidance_scale=4.0, guidance_pow=0.0, temperature=1.0)
    one_batch = pipeline.generate(labels, sampling=sampling, seed=3, batch_size=3).tokens
    one_by_one = pipeline.generate(labels, sampling=sampling, seed=3, batch_size=1).tokens
    np.testing.assert_array_equal(one_batch, one_by_one)
    # a batch above the profile (max 4) is split transparently
    many = pipeline.generate(labels * 2, sampling=sampling, seed=3).tokens
    np.testing.assert_array_equal(many[:3], one_batch)


def test_defaults_come_from_the_manifest(fp32_artifacts):
    pipeline = RARPipeline.from_artifacts(fp32_artifacts, "onnxruntime")
    defaults = pipeline.artifacts.sampling_defaults
    explicit = pipeline.generate([1], sampling=RARSampling(guidance_scale=defaults.guidance_scale,
                                                           guidance_pow=defaults.guidance_pow,
                                                           temperature=defaults.temperature)).tokens
    np.testing.assert_array_equal(pipeline.generate([1]).tokens, explicit)
    images = pipeline.generate([1, 2], sampling=RARSampling(temperature=0)).pil()
    assert len(images) == 2 and images[0].size == (64, 64)


# -- TensorRT backend on a machine without a GPU -----------------------------------------------------------

needs_tensorrt = pytest.mark.skipif(find_tensorrt() is None, reason="no TensorRT or TensorRT-RTX installed")


@pytest.fixture(scope="module")
def engine_artifacts(export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("runtime") / "fp16", "fp16", engine=True)


@needs_tensorrt
def test_tensorrt_engines_are_checked_before_loading(engine_artifacts):
    artifacts = Artifacts.load(engine_artifacts)
    engine = artifacts.manifest["engines"]["decode_step"]
    flavour, version = engine["flavour"], engine["tensorrt_version"]
    check_engines(artifacts.manifest, artifacts.directory, version, flavour, "SM89")  # a GPU it was built for: accepted
    with pytest.raises(RARDeployError, match="built with .* this machine has tensorrt 10.0.1: rebuild them here"):
        check_engines(artifacts.manifest, artifacts.directory, "10.0.1", "tensorrt", "SM89")
    with pytest.raises(RARDeployError, match="this GPU is SM90: rebuild"):
        check_engines(artifacts.manifest, artifacts.directory, version, flavour, "SM90")
    with pytest.raises(RARDeployError, match="needs an NVIDIA GPU"):
        check_engines(artifacts.manifest, artifacts.directory, version, flavour, None)


@needs_tensorrt
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_tensorrt_backend_without_gpu_says_so(engine_artifacts, tmp_path):
    result = _generate(["--artifacts", str(engine_artifacts), "--class-labels", "1", "--backend", "tensorrt",
                        "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "needs an NVIDIA GPU" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_tensorrt_backend_without_tensorrt(fp32_artifacts, tmp_path, monkeypatch):
    import rar_deploy.runtime.engines as tensorrt_module

    monkeypatch.setattr(tensorrt_module, "FLAVOURS", (("no_such_tensorrt_module", "tensorrt"),))
    result = _generate(["--artifacts", str(fp32_artifacts), "--class-labels", "1", "--backend", "tensorrt",
                        "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "--backend tensorrt needs TensorRT" in result.output, result.output


def test_artifacts_without_engines_refuse_tensorrt(fp32_artifacts):
    with pytest.raises(RARDeployError, match="has no TensorRT engines"):
        check_engines(Artifacts.load(fp32_artifacts).manifest, fp32_artifacts, "1.0", "tensorrt", "SM89")


# -- bad input: one line, non-zero exit, nothing in --out ----------------------------------------------------

def _assert_refused(result, out: Path, message: str) -> None:
    assert result.exit_code != 0, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("labels, message", [("1000", "class id 1000 is out of range"), ("-3", "out of range"),
                                             (",", "no class labels"), ("cat", "comma-separated decimal integers")])
def test_bad_class_labels(fp32_artifacts, tmp_path, labels, message):
    out = tmp_path / "out"
    _assert_refused(_generate(["--artifacts", str(fp32_artifacts), "--class-labels", labels, "--out", str(out)]),
                    out, message)


def test_batch_above_profile(fp32_artifacts, tmp_path):
    out = tmp_path / "out"
    result = _generate(["--artifacts", str(fp32_artifacts), "--class-labels", "1", "--batch-size", "5",
                        "--out", str(out)])
    _assert_refused(result, out, "batch size 5 is outside the artifacts' profile [1, 4]")


def _copy(artifacts: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifacts, tmp_path / "copy"))


def test_missing_and_corrupt_manifest(fp32_artifacts, tmp_path):
    copy = _copy(fp32_artifacts, tmp_path)
    (copy / "manifest.json").write_text('{"schema": "rar-deploy/manifest", "schema_')
    out = tmp_path / "out"
    _assert_refused(_generate(["--artifacts", str(copy), "--class-labels", "1", "--out", str(out)]), out,
                    "is corrupt")
    (copy / "manifest.json").unlink()
    _assert_refused(_generate(["--artifacts", str(copy), "--class-labels", "1", "--out", str(out)]), out,
                    "has no manifest.json")
    _assert_refused(_generate(["--artifacts", str(tmp_path / "nowhere"), "--class-labels", "1", "--out", str(out)]),
                    out, "artifact directory not found")


def test_artifacts_from_another_tokenizer(fp32_artifacts, demo_checkpoints, tmp_path):
    from rar_deploy.contract.manifest import contract_sha256

    copy = _copy(fp32_artifacts, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tokenizer"]["codebook_size"] = 512
    manifest["contract_sha256"] = contract_sha256(manifest)  # consistent hash, inconsistent model: still refused
    (copy / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    _assert_refused(_generate(["--artifacts", str(copy), "--class-labels", "1", "--out", str(out)]), out,
                    "it mixes two models")
    _, other_tokenizer = demo_checkpoints
    result = _generate(["--artifacts", str(fp32_artifacts), "--class-labels", "1", "--backend", "torch",
                        "--tokenizer", str(other_tokenizer), "--out", str(out)])
    _assert_refused(result, out, "is not the tokenizer these artifacts were exported from")


def test_non_empty_out_is_kept(fp32_artifacts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.png").write_bytes(b"x")
    result = _generate(["--artifacts", str(fp32_artifacts), "--class-labels", "1", "--out", str(out)])
    assert result.exit_code != 0 and "exists and is not empty" in result.output
    assert [p.name for p in out.iterdir()] == ["mine.png"]
