"""The rar-deploy command group: demo checkpoints and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from rar_deploy import load_rar_generator, load_rar_tokenizer
from rar_deploy.cli import main


def test_make_checkpoint_writes_loadable_nontrivial_models(tmp_path):
    result = CliRunner().invoke(main, ["make-checkpoint", "--preset", "tiny", "--out", str(tmp_path), "--seed", "1"])
    assert result.exit_code == 0, result.output
    generator = load_rar_generator(tmp_path / "rar_tiny.bin")
    tokenizer = load_rar_tokenizer(tmp_path / "maskgit-vqgan-tiny.bin")
    assert generator.config.image_seq_len == 16 and tokenizer.config.z_channels == 32
    for name, param in list(generator.named_parameters()) + list(tokenizer.named_parameters()):
        assert param.std() > 0 or param.numel() == 1, f"{name} is constant"
    assert generator.blocks[0].adaLN_modulation[1].weight.std() > 0.01  # adaLN is not zero-initialised
    assert not list(tmp_path.glob(".*partial"))


def test_our_refusal_is_one_line_on_stderr_and_exit_status_1(tmp_path):
    """A refusal raised by rar-deploy itself (not by click's option parsing), in a real process: one line on
    stderr naming the file and what to do, no traceback, and the user's file untouched."""
    (tmp_path / "rar_tiny.bin").write_bytes(b"my own weights")
    result = subprocess.run([str(Path(sys.executable).with_name("rar-deploy")), "make-checkpoint", "--out",
                             str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"Error: {tmp_path / 'rar_tiny.bin'} exists and holds other weights: "
                                          "remove it yourself or choose another --out"]
    assert (tmp_path / "rar_tiny.bin").read_bytes() == b"my own weights"


def test_an_unknown_preset_is_a_usage_error_listing_the_presets(tmp_path):
    result = CliRunner().invoke(main, ["make-checkpoint", "--preset", "huge", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Invalid value for '--preset'" in result.output and "'rar_xxl'" in result.output
    assert not any(tmp_path.iterdir())
