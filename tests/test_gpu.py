"""GPU-only checks (pytest -m gpu): the torch backend's CUDA-graph replay and the TensorRT backend.
Skipped cleanly where torch sees no CUDA device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rar_deploy import RARPipeline, reference_generate, sampling_noise
from rar_deploy.engines import BatchProfile, find_tensorrt
from rar_deploy.gpu import cuda_capability
from rar_deploy.runtime.artifacts import Artifacts
from rar_deploy.runtime.torch_backend import TorchBackend

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
FP16_TOKEN_AGREEMENT = 0.9  # fp16 vs the float32 reference, greedy, tiny model: rounding flips a few ties


def _export(export_tiny, out: Path, precision: str, engine: bool) -> Path:
    return export_tiny(out, precision, engine=engine, profile=BatchProfile(1, 4, 8),
                       compute_capabilities=(cuda_capability() or "SM89",))


def test_cuda_graph_replay_equals_eager(export_tiny, tmp_path):
    artifacts = Artifacts.load(_export(export_tiny, tmp_path / "fp16", "fp16", engine=False))
    labels = [1, 2, 3]
    runs = []
    for cuda_graphs in (False, True):
        backend = TorchBackend(artifacts, "cuda", cuda_graphs=cuda_graphs)
        runs.append(RARPipeline(artifacts, backend).generate_tokens(labels, 4.0, 1.0, 1.0, seed=5))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_torch_cuda_fp32_matches_reference(export_tiny, official_generator, tmp_path):
    pipeline = RARPipeline.from_artifacts(_export(export_tiny, tmp_path / "fp32", "fp32", engine=False), "torch",
                                          device="cuda")
    tokens = pipeline.generate_tokens([3, 500], 4.0, 0.0, 1.0, seed=9)
    reference = reference_generate(official_generator, [3, 500], 4.0, 0.0, 1.0, noise=sampling_noise(9, 2, 16, 1024))
    assert np.mean(tokens == reference.tokens.numpy()) >= 0.99  # TF32/cuBLAS rounding may flip a rare tie


@pytest.mark.skipif(find_tensorrt() is None, reason="no TensorRT")
def test_tensorrt_backend_agrees_with_torch(export_tiny, golden, tmp_path):
    try:
        out = _export(export_tiny, tmp_path / "trt", "fp16", engine=True)
    except Exception as exc:  # e.g. TensorRT-RTX has no build target for Hopper (SM90)
        pytest.skip(f"no engine for this GPU: {exc}")
    labels = list(golden["labels"])
    trt = RARPipeline.from_artifacts(out, "tensorrt").generate_tokens(labels, 4.0, 0.0, 0.0)
    assert np.mean(trt == golden["greedy_tokens_const"]) >= FP16_TOKEN_AGREEMENT
    images = RARPipeline.from_artifacts(out, "tensorrt").decode(golden["greedy_tokens_const"])
    official = (np.clip(golden["images_const"], 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.abs(images.astype(int) - official).max() <= 6
