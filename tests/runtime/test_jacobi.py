"""Speculative Jacobi decoding (runtime/jacobi.py) on the official-tiny fixture exported with decode_block: greedy
gives the sequential greedy tokens on every backend, and sampling keeps the model's own distribution (a stated
statistical test, with its power shown on a sampler of another temperature)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from rar_deploy.cli import bench_command, generate_command
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.families import RARSampling, rar_inputs
from rar_deploy.runtime.jacobi import jacobi_generate
from rar_deploy.runtime.pipeline import open_pipeline
from rar_deploy.tools.parity import drive_keeping_logits


def _inputs(pipeline, labels, sampling: RARSampling, first: int = 0):
    resolved = pipeline.family.check_sampling(sampling, pipeline.artifacts.sampling_defaults)
    seeds = [(0, first + i) for i in range(len(labels))]
    return rar_inputs(pipeline.config, np.asarray(labels), [resolved] * len(labels), seeds), seeds


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("guidance", [0.0, 4.0])
def test_greedy_gives_the_sequential_tokens(parallel_export, backend, guidance):
    pipeline = open_pipeline(parallel_export, backend, device="cpu")
    labels = [0, 3, 5, 9]
    sampling = RARSampling(temperature=0.0, guidance_scale=guidance)
    sequential = pipeline.generate(labels, sampling=sampling, batch_size=4).tokens
    inputs, seeds = _inputs(pipeline, labels, sampling)
    n = pipeline.config.image_seq_len
    for window in (1, 4, 16):
        tokens, stats = jacobi_generate(pipeline.backend, inputs, seeds, window)
        np.testing.assert_array_equal(tokens, sequential)
        assert (stats.calls <= n + 1).all()


def _z_score(pipeline, tokens: np.ndarray, inputs, temperature: float) -> float:
    """sum_t (p_t(x_t) - sum p_t^2) / sqrt(sum_t Var): p_t the model's distribution of token t given the image's own
    earlier tokens (teacher-forced through the sequential loop). Exact sampling makes each term a zero-mean martingale
    difference of variance sum p^3 - (sum p^2)^2, so the score is about standard normal."""
    _, logits = drive_keeping_logits(pipeline.loop, inputs, lambda p: tokens[:, p - 2] if p >= 2 else None)
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    drawn = np.take_along_axis(p, tokens[..., None], -1)[..., 0]
    s2, s3 = (p ** 2).sum(-1), (p ** 3).sum(-1)
    return float((drawn - s2).sum() / np.sqrt((s3 - s2 ** 2).sum()))


def test_sampling_keeps_the_model_distribution(parallel_export):
    """64 images x 16 tokens at temperature 0.5 (peaked enough that drafts are accepted): |z| < 4 (a false alarm
    once in 15,000 runs). Power: the same tokens judged as draws at temperature 0.4 score far outside (measured: z
    0.06 at 0.5, -4.5 at 0.45, -10.1 at 0.4)."""
    pipeline = open_pipeline(parallel_export, "onnxruntime", device="cpu")
    sampling = RARSampling(temperature=0.5, guidance_scale=2.0)
    tokens, inputs_all, accepted = [], [], []
    for first in range(0, 64, 4):
        inputs, seeds = _inputs(pipeline, [(first + i) % 10 for i in range(4)], sampling, first)
        drawn, stats = jacobi_generate(pipeline.backend, inputs, seeds, 4)
        tokens.append(drawn), inputs_all.append(inputs), accepted.append(stats.tokens_per_call)
    assert np.mean(accepted) > 1.1  # drafts were accepted: the test checks the acceptance rule, not plain sampling
    scores = [_z_score(pipeline, t, i, 0.5) for t, i in zip(tokens, inputs_all)]
    z = sum(scores) / np.sqrt(len(scores))
    assert abs(z) < 4, z
    wrong = sum(_z_score(pipeline, t, i, 0.4) for t, i in zip(tokens, inputs_all)) / np.sqrt(len(scores))
    assert abs(wrong) > 6, wrong


def test_refusals(parallel_export, shared_export):
    plain = open_pipeline(shared_export("rar", "fp32"), "onnxruntime", device="cpu")
    inputs, seeds = _inputs(plain, [1], RARSampling())
    with pytest.raises(RARDeployError, match="rar-export --parallel-decoding"):
        jacobi_generate(plain.backend, inputs, seeds, 4)
    pipeline = open_pipeline(parallel_export, "onnxruntime", device="cpu")
    for window in (0, 17):
        with pytest.raises(RARDeployError, match="--parallel-window must be 1 .. 16"):
            jacobi_generate(pipeline.backend, inputs, seeds, window)


def test_the_pipeline_and_rar_generate_decode_in_parallel(parallel_export, tmp_path):
    """generate(parallel_window=K) and rar-generate --parallel-window K: greedy images equal the sequential ones (the
    decoder included), the passes each image took are recorded, and fewer than the sequential N + 1 when drafts hit."""
    pipeline = open_pipeline(parallel_export, "onnxruntime", device="cpu")
    n, labels = pipeline.config.image_seq_len, [0, 3, 5, 9, 1]
    greedy = RARSampling(temperature=0.0)
    sequential = pipeline.generate(labels, sampling=greedy, batch_size=2)
    assert (pipeline.decode_calls == n + 1).all()
    parallel = pipeline.generate(labels, sampling=greedy, batch_size=2, parallel_window=4)
    np.testing.assert_array_equal(parallel.tokens, sequential.tokens)
    np.testing.assert_array_equal(parallel.images, sequential.images)
    assert pipeline.decode_calls.shape == (5,) and (pipeline.decode_calls <= n + 1).all()
    assert pipeline.decode_calls.mean() < n + 1

    out = tmp_path / "samples"
    result = CliRunner().invoke(generate_command, [
        "--artifacts", str(parallel_export), "--class-labels", "0,3,5,9,1", "--temperature", "0", "--batch-size", "2",
        "--parallel-window", "4", "--out", str(out), "--save-tokens", str(tmp_path / "tokens.npy")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(tmp_path / "tokens.npy"), sequential.tokens)
    details = json.loads((out / "samples.json").read_text())
    assert details["parallel_window"] == 4
    assert details["decode_calls_per_image"] == pytest.approx(pipeline.decode_calls.mean())


def test_rar_generate_refuses_parallel_decoding_it_cannot_do_before_writing(parallel_export, shared_export, tmp_path):
    cases = [(shared_export("rar", "fp32"), "4", "rar-export --parallel-decoding"),
             (shared_export("var", "fp32"), "4", "a VAR model samples a whole scale"),
             (parallel_export, "17", "--parallel-window must be 0 .. 16"),
             (parallel_export, "-1", "--parallel-window must be 0 .. 16")]
    for folder, window, message in cases:
        out = tmp_path / "out"
        result = CliRunner().invoke(generate_command, ["--artifacts", str(folder), "--class-labels", "1",
                                                       "--parallel-window", window, "--out", str(out)])
        assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1
        assert not out.exists()
    pipeline = open_pipeline(shared_export("var", "fp32"), "onnxruntime", device="cpu")
    with pytest.raises(RARDeployError, match="a VAR model"):
        pipeline.generate([1], parallel_window=2)


def test_rar_bench_times_parallel_decoding_against_sequential(parallel_export):
    result = CliRunner().invoke(bench_command, ["--artifacts", str(parallel_export), "--batch-sizes", "1,2",
                                                "--parallel-window", "2", "--parallel-window", "4", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["parallel"]
    n = open_pipeline(parallel_export, "onnxruntime", device="cpu").config.image_seq_len
    assert [(r["batch"], r["window"]) for r in rows] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    for r in rows:
        assert r["sequential_passes"] == n + 1 and 1 + (n - 1) / (r["window"] + 1) <= r["passes"] <= n + 1
        assert r["tokens_per_pass"] == pytest.approx(n / (r["passes"] - 1))
        assert r["wall_speedup"] == pytest.approx(r["sequential_ms_per_image"] / r["parallel_ms_per_image"])
    result = CliRunner().invoke(bench_command, ["--artifacts", str(parallel_export), "--parallel-window", "0"])
    assert result.exit_code == 1 and "--parallel-window must be 1 .. 16" in result.output
