"""The shipped demo model: its files match their record, it loads in the official layouts, exports with
verification, passes rar-parity, and draws images its classifier labels right; the yardsticks measure an export
through the export's own graphs."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from rar_deploy.cli import main, parity_command
from rar_deploy.contract.config import GENERATOR_PRESETS, SAMPLING_DEFAULTS
from rar_deploy.runtime import RARSampling, open_pipeline
from rar_deploy.training.demo_model import SHIPPED, demo_split, load_full_tokenizer, read_record
from rar_deploy.training.generator_training import held_out_nll
from rar_deploy.training.recipe import DemoRecipe
from rar_deploy.training.tokenizer_training import encode_images
from rar_deploy.training.yardsticks import Yardsticks

pytestmark = pytest.mark.slow  # an export of the demo model and 100 images (about 40 s); .ci/run runs it

# Measured on the shipped weights (fp32 export, ONNX Runtime CPU, 10 images a class, seed 0, the published
# sampling): 0.95 of the generated images (0.95 with window 8 too; 0.952 on 500 images) and 0.999 of the 1000 real
# held-out images are labelled right (README, "The demo model"). Bounds: three binomial standard errors below
# (sqrt(0.95 * 0.05 / 100) = 0.022; 0.95 - 0.065 = 0.885, rounded down to 0.88), for another machine's rounding;
# the real images' 0.999 moves only with the classifier's arithmetic, bound 0.95; chance is 0.1.
MIN_GENERATED_ACCURACY, MIN_REAL_ACCURACY = 0.88, 0.95


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    from rar_deploy.export.exporter import ExportRequest, export_artifacts
    from rar_deploy.tools.engine_build import BatchProfile

    folder = tmp_path_factory.mktemp("shipped")
    result = CliRunner().invoke(main, ["make-checkpoint", "--preset", "demo", "--out", str(folder / "ckpt")])
    assert result.exit_code == 0, result.output
    out = folder / "artifacts"
    export_artifacts(ExportRequest(ckpt=str(folder / "ckpt" / "rar_demo.bin"),
                                   tokenizer=str(folder / "ckpt" / "maskgit-vqgan-demo.bin"), out=out,
                                   precision="fp32", engine=False, profile=BatchProfile(1, 8, 50),
                                   parallel_decoding=True),
                     progress=lambda message: None)
    return out


def test_the_shipped_files_match_their_record_and_the_recipe():
    record = read_record(SHIPPED)
    assert DemoRecipe(**record["recipe"]) == DemoRecipe()
    assert sum(f["bytes"] for f in record["files"].values()) < 12 << 20


def test_the_export_passes_rar_parity(demo_export):
    result = CliRunner().invoke(parity_command, ["--artifacts", str(demo_export)])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output


def test_the_export_carries_the_published_sampling_values(demo_export):
    pipeline = open_pipeline(demo_export)
    assert pipeline.config == GENERATOR_PRESETS["demo"]
    assert pipeline.artifacts.sampling_defaults == SAMPLING_DEFAULTS["demo"]


def test_generated_images_are_labelled_right_by_the_classifier(demo_export):
    yardsticks = Yardsticks(open_pipeline(demo_export))
    quality, images = yardsticks.generated(sampling=None, per_class=10)
    assert images.shape == (100, 64, 64, 3)
    assert quality.accuracy >= MIN_GENERATED_ACCURACY, quality
    assert yardsticks.real_accuracy >= MIN_REAL_ACCURACY


# Measured on the fp32 export, published sampling, window 8: alone (batch 1, the 10 images of the test) 30.9 passes
# an image of the sequential 65; in the yardsticks' batches (100 images) 31.72. Bounds: 40 for both, 8 passes of
# margin for another machine's rounding and well under the sequential 65.
MAX_PASSES_ALONE, MAX_PASSES_BATCHED = 40, 40


def test_speculative_decoding_on_the_trained_model(demo_export):
    """Greedy: the sequential tokens on a trained model. Sampling: fewer passes than the sequential N + 1 and images
    the classifier labels right as often as the sequential ones' bound."""
    pipeline = open_pipeline(demo_export)
    greedy = RARSampling(temperature=0.0)
    labels = list(range(10))
    sequential = pipeline.generate(labels, sampling=greedy).tokens
    np.testing.assert_array_equal(pipeline.generate(labels, sampling=greedy, parallel_window=8).tokens, sequential)
    pipeline.generate(labels, batch_size=1, parallel_window=8)
    assert pipeline.decode_calls.mean() <= MAX_PASSES_ALONE, pipeline.decode_calls
    yardsticks = Yardsticks(pipeline)
    quality, _ = yardsticks.generated(sampling=None, per_class=10, parallel_window=8)
    assert quality.accuracy >= MIN_GENERATED_ACCURACY, quality
    assert quality.passes_per_image <= MAX_PASSES_BATCHED, quality


def test_the_export_s_teacher_forced_nll_is_the_torch_models(demo_export):
    """Through the ONNX decode step, position by position, against the torch generator's causal forward."""
    yardsticks = Yardsticks(open_pipeline(demo_export))
    yardsticks.real_images, yardsticks.real_labels = yardsticks.real_images[::25], yardsticks.real_labels[::25]
    likelihood = yardsticks.likelihood()
    from rar_deploy.model.checkpoint import load_rar_generator

    generator = load_rar_generator(demo_export.parent / "ckpt" / "rar_demo.bin")
    tokens = encode_images(load_full_tokenizer(SHIPPED / "maskgit-vqgan-demo.fp16.bin"), yardsticks.real_images)
    assert likelihood.token_nll_nats == pytest.approx(held_out_nll(generator, tokens, yardsticks.real_labels),
                                                      rel=1e-4)
    assert 0 < likelihood.top1_under_5_percent < 1 and likelihood.entropy_bits > 0


def test_demo_split_is_the_recipe_s_held_out_images():
    images, labels = demo_split(DemoRecipe(), "held_out")
    assert images.shape == (1000, 64, 64, 3) and np.bincount(labels).tolist() == [100] * 10


def test_divergence_between_exports_is_the_kl_between_their_torch_models(demo_export):
    """Yardsticks.divergence (int4 export against the fp32 one, through their ONNX decode steps) equals the KL and
    top-1 agreement of the torch generator and its quantized reference, computed by their causal forwards."""
    import torch

    from rar_deploy.contract.weights import WeightQuantization
    from rar_deploy.export.exporter import ExportRequest, export_artifacts
    from rar_deploy.model.checkpoint import load_rar_generator
    from rar_deploy.model.quantized import quantize_generator
    from rar_deploy.tools.engine_build import BatchProfile

    ckpt = demo_export.parent / "ckpt"
    int4 = demo_export.parent / "int4"
    export_artifacts(ExportRequest(ckpt=str(ckpt / "rar_demo.bin"), tokenizer=str(ckpt / "maskgit-vqgan-demo.bin"),
                                   out=int4, precision="fp32", engine=False, verify=False,
                                   profile=BatchProfile(1, 8, 50), weights="int4", group_size=64),
                     progress=lambda message: None)
    yardsticks = Yardsticks(open_pipeline(int4))
    yardsticks.real_images, yardsticks.real_labels = yardsticks.real_images[::25], yardsticks.real_labels[::25]
    divergence = yardsticks.divergence(open_pipeline(demo_export))

    tokens = torch.from_numpy(encode_images(load_full_tokenizer(SHIPPED / "maskgit-vqgan-demo.fp16.bin"),
                                            yardsticks.real_images))
    labels = torch.from_numpy(yardsticks.real_labels)
    generator, quantized = (load_rar_generator(ckpt / "rar_demo.bin") for _ in range(2))
    quantize_generator(quantized, WeightQuantization("int4", 64), np.float32)
    with torch.no_grad():
        log_p, log_q = (torch.log_softmax(model.forward_prefix(labels, tokens[:, :-1])[0].double(), -1)
                        for model in (generator, quantized))
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    assert divergence.sequences == 40 and divergence.kl_nats == pytest.approx(kl, rel=1e-3) and kl > 1e-3
    assert divergence.top1_agreement == pytest.approx(float((log_p.argmax(-1) == log_q.argmax(-1)).float().mean()),
                                                      abs=2 / tokens.numel())
