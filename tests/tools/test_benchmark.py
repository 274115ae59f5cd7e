"""rar-bench: the official-style baseline is the official loop, and the report has every stage."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rar_deploy import guidance_schedule, reference_generate, sampling_noise
from rar_deploy.cli import bench_command
from rar_deploy.model.baseline import OfficialStyleLoop


def test_official_style_loop_generates_what_the_reference_generates(official_generator, official_tokenizer):
    labels = torch.tensor([3, 500])
    noise = sampling_noise(4, 2, 16, 1024)
    schedule = torch.from_numpy(guidance_schedule(16, 16.0, 2.75))
    loop = OfficialStyleLoop(official_generator, official_tokenizer)
    tokens = loop.generate(labels, schedule, torch.ones(2), torch.from_numpy(noise.transpose(1, 0, 2).copy()))
    expected = reference_generate(official_generator, labels, 16.0, 2.75, 1.0, noise=noise).tokens
    assert torch.equal(tokens, expected)


@pytest.fixture(scope="module")
def artifacts(export_tiny, tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("bench") / "fp32", "fp32")


def test_bench_reports_every_stage_and_the_baseline(artifacts):
    result = CliRunner().invoke(bench_command, ["--artifacts", str(artifacts), "--backend", "onnxruntime",
                                                "--backend", "torch", "--batch-sizes", "1,2", "--baseline", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    runs = report["runs"]
    assert [(r["backend"], r["batch"]) for r in runs] == [
        ("onnxruntime", 1), ("onnxruntime", 2), ("torch", 1), ("torch", 2), ("baseline", 1), ("baseline", 2)]
    for run in runs:
        assert run["steps"] == 15
        assert 0 < run["step_p50_ms"] <= run["step_p99_ms"]
        assert run["prefill_ms"] > 0 and run["decoder_ms"] > 0 and run["peak_host_rss_mib"] > 0
        # the stages add up to the total, and the per-step times are the reported steps
        stages = run["start_ms"] + run["prefill_ms"] + run["step_mean_ms"] * run["steps"] + run["decoder_ms"]
        assert stages == pytest.approx(run["total_ms_per_image"] * run["batch"], rel=1e-9)
        if run["backend"] != "baseline":
            assert len(run["step_ms"]) == run["steps"] + 1 and run["step_ms"][0] == run["prefill_ms"]
        assert run["step_drift"] is None  # 15 steps: too few for a 20-step window


def test_bench_table_condition_budgets_and_bad_batch(artifacts):
    per_position = 4 * 15 * 32 * 4  # R = 4 rows of (6L + 3) D float32 values
    result = CliRunner().invoke(bench_command, ["--artifacts", str(artifacts), "--batch-sizes", "1,2", "--json",
                                                "--condition-budget", "0", "--condition-budget", str(5 * per_position)])
    runs = json.loads(result.output[result.output.index("{"):])["runs"]
    assert [(r["batch"], r["condition_window"]) for r in runs] == [(1, 1), (1, 10), (2, 1), (2, 5)], result.output
    result = CliRunner().invoke(bench_command, ["--artifacts", str(artifacts), "--batch-sizes", "1"])
    assert result.exit_code == 0 and "step mean" in result.output and "img/s" in result.output, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("onnxruntime "))
    assert row.split()[2] == "17", result.output  # W: the whole table
    result = CliRunner().invoke(bench_command, ["--artifacts", str(artifacts), "--batch-sizes", "1,9"])
    assert result.exit_code != 0 and "batch size 9 is outside the artifacts' profile [1, 4]" in result.output


def test_the_timed_generation_fits_inside_the_wall_clock_and_generates_real_tokens(artifacts):
    """An independent clock around one bench: the reported stages of the timed generation cannot add up to more
    than the call took, and the timed loop is the pipeline's own (its tokens are what generate gives)."""
    from rar_deploy.runtime import RARPipeline
    from rar_deploy.tools.bench import bench_pipeline

    pipeline = RARPipeline.from_artifacts(artifacts)
    start = time.perf_counter()
    run = bench_pipeline(pipeline, batch=2, seed=3)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    assert 0 < run["total_ms_per_image"] * 2 <= elapsed_ms
    np.testing.assert_array_equal(pipeline.loop.tokens(), pipeline.generate([0, 1], seed=3).tokens)
