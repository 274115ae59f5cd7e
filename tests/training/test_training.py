"""The demo model's training machinery on a shortened recipe: the same bytes twice, files the official loaders and
make-checkpoint take, the output folder's promises; and the yardsticks' formulas against independent ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rar_deploy.cli import main
from rar_deploy.errors import RARDeployError
from rar_deploy.model.checkpoint import load_rar_generator, load_rar_tokenizer
from rar_deploy.training.classifier import frechet_distance
from rar_deploy.training.demo_model import demo_files, read_record, train_demo
from rar_deploy.training.recipe import DemoRecipe

QUICK = DemoRecipe().shortened(200)  # a few steps of each training, 10 training images a class
pytestmark = pytest.mark.slow  # three short trainings (about 40 s); .ci/run runs tests/training -m slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "weights"
    return out, train_demo(out, QUICK)


def test_training_gives_the_same_bytes_twice(trained, tmp_path):
    out, record = trained
    again = train_demo(tmp_path / "again", QUICK)
    assert {name: f["sha256"] for name, f in again["files"].items()} == \
           {name: f["sha256"] for name, f in record["files"].items()}
    assert again["held_out"] == record["held_out"]


def test_the_weights_are_official_checkpoints_that_make_checkpoint_writes_in_float32(trained, tmp_path):
    out, record = trained
    assert read_record(out)["recipe"] == QUICK.to_dict()
    result = CliRunner().invoke(main, ["make-checkpoint", "--preset", "demo", "--weights", str(out),
                                       "--out", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    generator = load_rar_generator(tmp_path / "ckpt" / "rar_demo.bin")
    assert generator.config == QUICK.generator
    shipped = torch.load(out / "rar_demo.fp16.bin", weights_only=True)
    assert shipped["lm_head.weight"].dtype == torch.float16
    assert torch.equal(generator.lm_head.weight, shipped["lm_head.weight"].float())
    official = torch.load(tmp_path / "ckpt" / "maskgit-vqgan-demo.bin", weights_only=True)
    assert any(key.startswith("encoder.") for key in official) and official["encoder.conv_in.weight"].dtype == \
        torch.float32
    assert load_rar_tokenizer(tmp_path / "ckpt" / "maskgit-vqgan-demo.bin").config == QUICK.tokenizer


def test_a_damaged_weight_file_is_refused_by_its_sha256(trained, tmp_path):
    out, _ = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    data = bytearray((copy / "rar_demo.fp16.bin").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "rar_demo.fp16.bin").write_bytes(bytes(data))
    with pytest.raises(RARDeployError, match="does not match its SHA-256"):
        read_record(copy)


def test_train_demo_replaces_only_its_own_folder_and_refuses_before_training(trained, tmp_path):
    out, _ = trained
    assert demo_files(out) == {"demo.json", "rar_demo.fp16.bin", "maskgit-vqgan-demo.fp16.bin", "shape_classifier.bin"}
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    for path in out.iterdir():
        (earlier / path.name).write_bytes(path.read_bytes())
    (earlier / "thesis.txt").write_text("keep me")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for folder, named in ((earlier, "thesis.txt"), (mine, "was not written by rar-deploy train-demo")):
        result = CliRunner().invoke(main, ["train-demo", "--out", str(folder), "--quick", "200", "--force"])
        assert result.exit_code == 1 and named in result.output and "making" not in result.output
    assert (earlier / "thesis.txt").read_text() == "keep me" and (mine / "notes.txt").read_text() == "mine"
    assert read_record(earlier) == read_record(out)


def test_frechet_distance_equals_the_symmetric_square_root_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(0.5, 1.0, size=(300, 6)) @ rng.normal(size=(6, 6))
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)


def test_the_record_says_how_it_was_made(trained):
    _, record = trained
    assert record["command"] == "rar-deploy train-demo --out DIR"
    assert set(record["seconds"]) == {"data", "tokenizer", "encoding", "generator", "classifier", "measuring"}
    assert json.loads(json.dumps(record)) == record


def test_bfloat16_generator_training_is_repeatable_and_not_the_float32_one():
    """The recipe's generator_bfloat16 switch: the same weights twice, and not float32's (autocast took effect)."""
    import dataclasses

    import numpy as np

    from rar_deploy.training.generator_training import train_generator

    recipe = dataclasses.replace(QUICK, generator_steps=4, generator_batch=8)
    rng = np.random.default_rng(0)
    tokens, labels = rng.integers(0, 1024, (32, 64)), rng.integers(0, 10, 32)

    def weights(bfloat16: bool) -> list:
        model = train_generator(dataclasses.replace(recipe, generator_bfloat16=bfloat16), tokens, labels)
        return [p.detach().clone() for p in model.parameters()]

    first, second, float32 = weights(True), weights(True), weights(False)
    assert all(a.equal(b) for a, b in zip(first, second))
    assert not all(a.equal(b) for a, b in zip(first, float32))
