"""The rar-deploy command group: demo checkpoints and one-line errors."""

from __future__ import annotations

from click.testing import CliRunner

from rar_deploy import load_generator, load_tokenizer
from rar_deploy.cli import main


def test_make_checkpoint_writes_loadable_nontrivial_models(tmp_path):
    result = CliRunner().invoke(main, ["make-checkpoint", "--preset", "tiny", "--out", str(tmp_path), "--seed", "1"])
    assert result.exit_code == 0, result.output
    generator = load_generator(tmp_path / "rar_tiny.bin")
    tokenizer = load_tokenizer(tmp_path / "maskgit-vqgan-tiny.bin")
    assert generator.config.image_seq_len == 16 and tokenizer.config.z_channels == 32
    for name, param in list(generator.named_parameters()) + list(tokenizer.named_parameters()):
        assert param.std() > 0 or param.numel() == 1, f"{name} is constant"
    assert generator.blocks[0].adaLN_modulation[1].weight.std() > 0.01  # adaLN is not zero-initialised
    assert not list(tmp_path.glob(".*partial"))


def test_bad_input_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["make-checkpoint", "--preset", "huge", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "Invalid value" in result.output
