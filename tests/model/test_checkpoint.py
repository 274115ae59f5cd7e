"""Checkpoint loading: official format, safetensors, and an actionable error for each bad input."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from rar_deploy import CheckpointError, load_rar_generator, load_rar_tokenizer
from rar_deploy.model.checkpoint import read_state_dict


def _save(state, path):
    torch.save(state, path)
    return path


def test_official_tokenizer_file_with_encoder_keys_loads(official_dir, official_tokenizer):
    state = read_state_dict(official_dir / "tiny_vq.bin")
    assert any(k.startswith("encoder.") for k in state)  # the released layout: encoder present
    assert not any(k.startswith("encoder.") for k in official_tokenizer.state_dict())


def test_config_is_read_off_the_tensors(official_generator):
    config = official_generator.config
    assert (config.hidden_size, config.depth, config.num_heads, config.mlp_size) == (32, 2, 2, 128)
    assert (config.image_seq_len, config.codebook_size, config.num_classes) == (16, 1024, 1000)
    with pytest.raises(Exception):
        config.depth = 3  # frozen


def test_safetensors_and_module_prefix(official_dir, official_generator, tmp_path):
    state = read_state_dict(official_dir / "tiny_rar.bin")
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, tmp_path / "g.safetensors")
    loaded = load_rar_generator(tmp_path / "g.safetensors")
    labels, ids = torch.tensor([1]), torch.zeros(1, 4, dtype=torch.long)
    assert torch.equal(loaded.logits(labels, ids), official_generator.logits(labels, ids))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_rar_generator(tmp_path / "nope.bin")


def test_truncated_file(official_dir, tmp_path):
    data = (official_dir / "tiny_rar.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_rar_generator(tmp_path / "cut.bin")


def test_wrong_file_type(tmp_path):
    (tmp_path / "notes.bin").write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_rar_generator(tmp_path / "notes.bin")
    _save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.bin")
    with pytest.raises(CheckpointError, match="not a RAR or VAR generator checkpoint.*fc.weight"):
        load_rar_generator(tmp_path / "other.bin")


def test_tokenizer_passed_as_generator_and_back(official_dir):
    with pytest.raises(CheckpointError, match="tokenizer checkpoint.*--tokenizer"):
        load_rar_generator(official_dir / "tiny_vq.bin")
    with pytest.raises(CheckpointError, match="generator checkpoint.*--ckpt"):
        load_rar_tokenizer(official_dir / "tiny_rar.bin")


def test_renamed_key_is_named(official_dir, tmp_path):
    state = read_state_dict(official_dir / "tiny_rar.bin")
    state["blocks.1.attn.projection.weight"] = state.pop("blocks.1.attn.proj.weight")
    with pytest.raises(CheckpointError) as err:
        load_rar_generator(_save(state, tmp_path / "renamed.bin"))
    message = str(err.value)
    assert "1 missing: blocks.1.attn.proj.weight" in message
    assert "1 unexpected: blocks.1.attn.projection.weight" in message
    assert "renamed.bin" in message


def test_reshaped_tensor_is_named(official_dir, tmp_path):
    state = read_state_dict(official_dir / "tiny_rar.bin")
    state["blocks.0.mlp.fc2.weight"] = state["blocks.0.mlp.fc2.weight"][:, :64].clone()
    expected = r"1 mis-shaped: blocks.0.mlp.fc2.weight \(32, 64\) \(expected \(32, 128\)\)"
    with pytest.raises(CheckpointError, match=expected):
        load_rar_generator(_save(state, tmp_path / "reshaped.bin"))


def test_many_bad_keys_are_counted(official_dir, tmp_path):
    state = {k: v for k, v in read_state_dict(official_dir / "tiny_vq.bin").items() if ".mid." not in k}
    with pytest.raises(CheckpointError, match=r"12 missing: decoder.mid.0.norm1.weight, .*\(12 in all\)"):
        load_rar_tokenizer(_save(state, tmp_path / "partial.bin"))


def test_missing_decoder_level_is_named(official_dir, tmp_path):
    state = {k: v for k, v in read_state_dict(official_dir / "tiny_vq.bin").items() if ".up.1." not in k}
    with pytest.raises(CheckpointError, match="missing decoder.up.1.block.0.conv1.weight"):
        load_rar_tokenizer(_save(state, tmp_path / "partial.bin"))


def test_released_name_offline_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="yucornetto/RAR/rar_l.bin.*download it and pass its path"):
        load_rar_generator("rar_l")


def test_a_copy_loads_the_same_weights_and_a_truncated_copy_is_named(official_dir, tmp_path):
    copy = shutil.copy(official_dir / "tiny_rar.bin", tmp_path / "copy.bin")
    original = load_rar_generator(official_dir / "tiny_rar.bin").state_dict()
    copied = load_rar_generator(copy).state_dict()
    assert original.keys() == copied.keys()
    assert all(torch.equal(original[name], copied[name]) for name in original)
    data = (official_dir / "tiny_rar.bin").read_bytes()
    (tmp_path / "half.bin").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"half\.bin is not a readable checkpoint \(truncated"):
        load_rar_generator(tmp_path / "half.bin")
