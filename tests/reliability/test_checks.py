"""Nothing is silently wrong (docs/RELIABILITY.md, "Nothing is silently wrong"): each test is named by the promise it
checks. Real exports, real ONNX Runtime sessions."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from probe import copy_of, edit_manifest, generate, invoke, refused

from rar_deploy import RARDeployError, RARPipeline, RARSampling, reference_generate
from rar_deploy.cli import bench_command, parity_command
from rar_deploy.contract.sampling import sampling_noise
from rar_deploy.runtime.engines import find_tensorrt

needs_tensorrt = pytest.mark.skipif(find_tensorrt() is None, reason="no TensorRT or TensorRT-RTX installed")


@pytest.fixture(scope="module")
def fp32(export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("checks") / "fp32", "fp32")


@pytest.fixture(scope="module")
def fp16(export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("checks") / "fp16", "fp16")


@pytest.fixture(scope="module")
def var_fp16(export_var_tiny, tmp_path_factory) -> Path:
    return export_var_tiny(tmp_path_factory.mktemp("checks") / "var16", "fp16")


# -- every manifest value a graph depends on is checked ---------------------------------------------------------------

EDITS = {
    "a shape": lambda m: m["graphs"]["decode_step"]["inputs"][3].update(shape=["rows", 2, 99, 16]),
    "the depth": lambda m: m["model"].update(depth=3),
    "the sequence length": lambda m: m["model"].update(image_seq_len=25),
    "the number of classes": lambda m: m["model"].update(num_classes=5),
    "the number of classes, up": lambda m: m["model"].update(num_classes=2000),
    "the MLP width": lambda m: m["model"].update(mlp_size=64),
    "the null class": lambda m: m["guidance"].update(null_class=3),
    "the noise": lambda m: m["sampling"]["noise"].update(bits=24),
    "a missing key": lambda m: m.pop("kv_cache"),
    "a wrong type": lambda m: m["model"].update(hidden_size="32"),
    "a zero batch profile": lambda m: m["batch_profile"].update(max=0),
    "an unlisted file": lambda m: m["files"].pop("decode_step.onnx"),
    "another precision": lambda m: m.update(precision="fp16"),
    "no contract hash": lambda m: m.pop("contract_sha256"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_manifest_is_refused_by_every_tool(fp32, tmp_path, edit):
    artifacts = copy_of(fp32, tmp_path)
    edit_manifest(artifacts, EDITS[edit])
    for result in (generate(artifacts, tmp_path / "out"), invoke(parity_command, "--artifacts", artifacts),
                   invoke(bench_command, "--artifacts", artifacts, "--batch-sizes", "1")):
        refused(result, "manifest")


def test_sampling_defaults_may_be_edited(fp32, tmp_path):
    artifacts = copy_of(fp32, tmp_path)
    edit_manifest(artifacts, lambda m: m["sampling"]["defaults"].update(temperature=0.0))
    pipeline = RARPipeline.from_artifacts(artifacts)
    np.testing.assert_array_equal(pipeline.generate([1, 2]).tokens, RARPipeline.from_artifacts(fp32).generate(
        [1, 2], sampling=RARSampling(temperature=0.0)).tokens)


def test_an_old_manifest_gets_the_re_export_line(fp32, tmp_path):
    artifacts = copy_of(fp32, tmp_path)
    edit_manifest(artifacts, lambda m: m.update(schema_version=3))
    refused(generate(artifacts, tmp_path / "out"), "schema version 3", "export the artifacts again")


@pytest.mark.parametrize("damage", ["truncated", "swapped with another graph", "fp32 graph in an fp16 folder"])
def test_damaged_graph_files_are_refused(fp32, fp16, tmp_path, damage):
    from rar_deploy.contract.integrity import file_record

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


def test_a_graph_from_another_export_is_refused_before_running(fp32, demo_checkpoints, export_tiny, tmp_path):
    other = export_tiny(tmp_path / "other", "fp32", ckpt=demo_checkpoints[0])  # same shapes, other weights
    artifacts = copy_of(fp32, tmp_path)
    shutil.copyfile(other / "decode_step.onnx", artifacts / "decode_step.onnx")
    assert (artifacts / "decode_step.onnx").stat().st_size == (fp32 / "decode_step.onnx").stat().st_size
    for result in (generate(artifacts, tmp_path / "out"), invoke(parity_command, "--artifacts", artifacts),
                   invoke(bench_command, "--artifacts", artifacts, "--batch-sizes", "1")):
        refused(result, "decode_step.onnx", "not the file this manifest lists")


def unsampled_weight_byte(path: Path, data: bytearray) -> int:
    """Offset of the low byte of a float weight that no fingerprint chunk reads."""
    from rar_deploy.contract.integrity import FINGERPRINT_CHUNK, FINGERPRINT_CHUNKS

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


def test_the_full_hash_catches_a_change_the_fingerprint_cannot_see(fp32, tmp_path):
    artifacts = copy_of(fp32, tmp_path)
    path = artifacts / "vq_decoder.onnx"
    data = bytearray(path.read_bytes())
    data[unsampled_weight_byte(path, data)] ^= 1  # the lowest mantissa bit of one weight
    path.write_bytes(bytes(data))
    assert generate(artifacts, tmp_path / "out1").exit_code == 0  # the fingerprint samples chunks ...
    refused(generate(artifacts, tmp_path / "out2", "--verify-files"), "SHA-256")  # ... the full hash sees all
    refused(invoke(parity_command, "--artifacts", artifacts), "SHA-256")


@pytest.mark.parametrize("name", ["parity.json", "reference.npz"])
def test_parity_and_verify_files_check_every_file_the_manifest_lists(fp32, tmp_path, name):
    artifacts = copy_of(fp32, tmp_path)
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert {"parity.json", "reference.npz"} <= set(manifest["files"])
    with open(artifacts / name, "r+b") as f:
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 1]))
    refused(invoke(parity_command, "--artifacts", artifacts), name, "SHA-256")
    refused(generate(artifacts, tmp_path / "out", "--verify-files"), name, "SHA-256")
    assert generate(artifacts, tmp_path / "out").exit_code == 0  # not a graph: a plain run does not read it


@pytest.mark.slow
@needs_tensorrt
def test_an_engine_from_another_export_is_refused(export_tiny, demo_checkpoints, tmp_path):
    from rar_deploy.runtime.artifacts import Artifacts

    mine = export_tiny(tmp_path / "mine", "fp16", engine=True, verify=False)
    other = export_tiny(tmp_path / "other", "fp16", ckpt=demo_checkpoints[0], engine=True, verify=False)
    shutil.copyfile(other / "engines" / "decode_step.plan", mine / "engines" / "decode_step.plan")
    with pytest.raises(RARDeployError, match="decode_step.plan .*(differs|bytes)"):
        Artifacts.load(mine).check_files("decode_step", engine=True)
    with pytest.raises(RARDeployError, match="decode_step.plan"):
        Artifacts.load(mine, verify="all")


# -- rar-parity's verdicts mean something at every precision ----------------------------------------------------------

def _alter_record(folder: Path, key: str, alter) -> None:
    """Change the record's `key` and re-record its hash, as someone covering their tracks would."""
    from rar_deploy.contract.integrity import file_record

    with np.load(folder / "reference.npz") as npz:
        record = dict(npz)
    record[key] = alter(record[key])
    with open(folder / "reference.npz", "wb") as f:
        np.savez(f, **record)
    edit_manifest(folder, lambda m: m["files"].update({"reference.npz": file_record(folder / "reference.npz")}))


@pytest.mark.parametrize("key", ["tokens", "unguided_tokens"])
def test_parity_fails_a_rar_record_whose_tokens_were_altered_at_fp16(fp16, tmp_path, key):
    artifacts = copy_of(fp16, tmp_path)
    assert invoke(parity_command, "--artifacts", artifacts).exit_code == 0
    _alter_record(artifacts, key, lambda tokens: np.where(np.arange(tokens.shape[1]) >= 9, (tokens + 1) % 1024, tokens))
    result = invoke(parity_command, "--artifacts", artifacts)
    assert result.exit_code == 1 and "not what its own logits and noise draw" in result.output, result.output


@pytest.mark.parametrize("key", ["tokens", "greedy_tokens"])
def test_parity_fails_a_var_record_whose_tokens_were_altered_at_fp16(var_fp16, tmp_path, key):
    artifacts = copy_of(var_fp16, tmp_path)
    assert invoke(parity_command, "--artifacts", artifacts).exit_code == 0
    _alter_record(artifacts, key, lambda tokens: (tokens + 1) % 64)
    result = invoke(parity_command, "--artifacts", artifacts)
    assert result.exit_code == 1 and "not what its own logits and noise draw" in result.output, result.output


def test_parity_fails_a_divergence_rounding_cannot_explain(fp16, tmp_path):
    """Logits altered at one step (tokens consistent with them): the backend's logits there are far off."""
    artifacts = copy_of(fp16, tmp_path)

    def boost(logits: np.ndarray) -> np.ndarray:
        logits = logits.copy()
        logits[:, 5, 7] += 1e3  # token 7 at step 5 now wins in the record ...
        return logits

    _alter_record(artifacts, "guided_logits", boost)
    with np.load(artifacts / "reference.npz") as npz:
        record = dict(npz)
    # ... and the record's tokens are redrawn from its logits, as a consistent but wrong record would be
    from rar_deploy.tools.parity import gumbel_max

    noise = sampling_noise(int(record["seed"]), len(record["labels"]), 16, 1024)
    _alter_record(artifacts, "tokens", lambda tokens: gumbel_max(record["guided_logits"], noise, 1.0))
    result = invoke(parity_command, "--artifacts", artifacts)
    assert result.exit_code == 1 and "more than rounding explains" in result.output, result.output


# -- the same values give the same images ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_guidance_scale_zero_equals_the_reference_without_guidance(fp32, official_generator, backend, temperature):
    labels = [3, 500, 999]
    pipeline = RARPipeline.from_artifacts(fp32, backend)
    tokens = pipeline.generate(labels, sampling=RARSampling(guidance_scale=0.0, guidance_pow=1.0,
                                                            temperature=temperature), seed=4).tokens
    reference = reference_generate(official_generator, labels, 0.0, 1.0, temperature,
                                   noise=sampling_noise(4, 3, 16, 1024))
    np.testing.assert_array_equal(tokens, reference.tokens.numpy())
    assert pipeline.loop.dims[1] == 3  # no unconditional rows were computed


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_one_pipeline_shared_by_many_threads_gives_the_sequential_images(fp32, backend):
    pipeline = RARPipeline.from_artifacts(fp32, backend)
    jobs = [([i, i + 1], 100 + i) for i in range(8)]
    expected = [pipeline.generate(labels, seed=seed).tokens for labels, seed in jobs]
    results: dict[int, np.ndarray] = {}

    def work(index: int) -> None:
        labels, seed = jobs[index]
        results[index] = pipeline.generate(labels, seed=seed).tokens

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, tokens in enumerate(expected):
        np.testing.assert_array_equal(results[index], tokens)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_an_image_does_not_depend_on_its_batch(fp32, backend):
    """The promise on CPU: the same tokens and the same pixels whatever the batch size (see README)."""
    pipeline = RARPipeline.from_artifacts(fp32, backend)
    labels = [5, 6, 7, 8]
    batched = pipeline.generate(labels, seed=2, batch_size=4)
    alone = pipeline.generate(labels, seed=2, batch_size=1)
    np.testing.assert_array_equal(batched.tokens, alone.tokens)
    np.testing.assert_array_equal(batched.images, alone.images)
    batched = batched.tokens
    np.testing.assert_array_equal(pipeline.decode(batched, batch_size=4), pipeline.decode(batched, batch_size=1))


def test_threads_are_bounded_by_the_machines_cores(fp32, tmp_path):
    from rar_deploy.contract.checks import cpu_cores

    result = generate(fp32, tmp_path / "out", "--threads", "100000")
    assert result.exit_code == 2 and f"from 1 to {cpu_cores()}" in result.output, result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(RARDeployError, match="threads must be"):
        RARPipeline.from_artifacts(fp32, threads=cpu_cores() + 1)
    assert generate(fp32, tmp_path / "ok", "--threads", str(cpu_cores())).exit_code == 0
