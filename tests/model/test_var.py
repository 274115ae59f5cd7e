"""VAR reference against the OFFICIAL implementation's golden outputs (tests/data/official_var_tiny, computed by
FoundationVision/VAR on a tiny random model; see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rar_deploy.contract.config import VAR_PRESETS
from rar_deploy.errors import CheckpointError
from rar_deploy.model.checkpoint import load_var_generator, load_var_tokenizer
from rar_deploy.model.reference import var_reference_generate
from rar_deploy.model.var import VARGenerator

DATA = Path(__file__).parents[1] / "data" / "official_var_tiny"
TOL = 1e-4


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "var_tiny_golden.npz"))


@pytest.fixture(scope="module")
def var():
    return load_var_generator(DATA / "var_tiny_var.pth"), load_var_tokenizer(DATA / "var_tiny_vae.pth")


def test_config_is_read_off_the_tensors(var):
    official = json.loads((DATA / "var_tiny_config.json").read_text())
    generator, vqvae = var
    c = generator.config
    assert (c.patch_nums, c.codebook_size, c.vae_channels, c.depth, c.embed_dim, c.num_heads) == (
        tuple(official["patch_nums"]), official["V"], official["Cvae"], official["depth"], official["embed_dim"],
        official["num_heads"])
    assert c.attn_l2_norm and c.seq_len == 30
    assert (vqvae.config.hidden_channels, vqvae.config.num_phi) == (official["ch"], official["share_quant_resi"])


@pytest.mark.parametrize("which", ["cond", "uncond"])
def test_teacher_forced_logits_equal_the_official(var, golden, which):
    generator, vqvae = var
    labels = torch.as_tensor(golden["labels"])
    if which == "uncond":
        labels = torch.full_like(labels, generator.config.null_class)
    with torch.no_grad():
        inputs = vqvae.teacher_forcing_inputs(torch.as_tensor(golden["tf_ids"]), generator.config.patch_nums)
        logits = generator(labels, inputs)
    np.testing.assert_allclose(logits.numpy(), golden[f"tf_logits_{which}"], atol=TOL, rtol=0)


@pytest.mark.parametrize("cfg, key", [(4.0, "cfg4"), (1.5, "cfg1_5")])
def test_greedy_generation_equals_the_official(var, golden, cfg, key):
    generator, vqvae = var
    out = var_reference_generate(generator, vqvae, golden["labels"].tolist(), cfg, top_k=1)
    np.testing.assert_array_equal(out.tokens.numpy(), golden[f"greedy_tokens_{key}"])
    np.testing.assert_allclose(out.guided_logits.numpy(), golden[f"greedy_logits_{key}"], atol=TOL, rtol=0)
    np.testing.assert_allclose(out.images.numpy(), golden[f"images_{key}"], atol=TOL, rtol=0)
    uint8 = lambda images: (np.clip(images, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    assert np.abs(uint8(out.images.numpy()).astype(int) - uint8(golden[f"images_{key}"])).max() <= 1


def test_decoding_tokens_equals_the_official(var, golden):
    generator, vqvae = var
    with torch.no_grad():
        images = vqvae(torch.as_tensor(golden["greedy_tokens_cfg4"]), generator.config.patch_nums)
    np.testing.assert_allclose(images.numpy(), golden["decode_images_cfg4"], atol=TOL, rtol=0)


def test_released_sizes_build_with_the_official_key_layout(var):
    """The tiny official checkpoint's keys, per block, are what our module names; the released presets build."""
    generator, _ = var
    official = set(torch.load(DATA / "var_tiny_var.pth", map_location="cpu", weights_only=True))
    assert set(generator.state_dict()) == official
    for name, config in VAR_PRESETS.items():
        if name == "var_tiny":
            assert config == generator.config  # make-checkpoint's tiny VAR has the official tiny model's shape
            continue
        with torch.device("meta"):
            model = VARGenerator(config)
        params = sum(p.numel() for p in model.parameters())
        assert model.config.seq_len == 680 and params > 300e6, (name, params)


def test_a_rar_checkpoint_is_not_a_var_generator(official_dir):
    with pytest.raises(CheckpointError, match="not a VAR generator"):
        load_var_generator(official_dir / "tiny_rar.bin")
    with pytest.raises(CheckpointError, match="is a RAR .MaskGIT-VQGAN. tokenizer: a VAR generator decodes with"):
        load_var_tokenizer(official_dir / "tiny_vq.bin")


def test_rar_export_refuses_a_mixed_pair(demo_checkpoints, tmp_path):
    """A VAR generator with RAR's tokenizer, a RAR generator with VAR's VQVAE, or the two swapped: one line
    naming what the file is and what to pass, nothing written."""
    from click.testing import CliRunner

    from rar_deploy.cli import export_command

    var_ckpt, var_vae = DATA / "var_tiny_var.pth", DATA / "var_tiny_vae.pth"
    for ckpt, tokenizer, message in (
            (var_ckpt, demo_checkpoints[1], "is a RAR (MaskGIT-VQGAN) tokenizer: a VAR generator decodes with its "
                                            "multi-scale VQVAE"),
            (demo_checkpoints[0], var_vae, "is a VAR VQVAE checkpoint: a RAR generator decodes with the MaskGIT"),
            (var_vae, var_ckpt, "is a VAR VQVAE checkpoint, not a generator: pass it as --tokenizer"),
            (var_ckpt, var_ckpt, "is a VAR generator checkpoint, not a tokenizer: pass it as --ckpt")):
        args = ["--ckpt", str(ckpt), "--tokenizer", str(tokenizer), "--out", str(tmp_path / "out"), "--no-engine"]
        result = CliRunner().invoke(export_command, args)
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_resize_matrices_reproduce_interpolation():
    """contract's numpy matrices (what the manifest holds) against torch's F.interpolate, every released scale."""
    from rar_deploy.contract.config import VAR_PATCH_NUMS
    from rar_deploy.contract.graphs import area_matrix, bicubic_matrix

    torch.manual_seed(0)
    f = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    for pn in VAR_PATCH_NUMS:
        h = torch.randn(2, 8, pn, pn, dtype=torch.float64)
        down, up = torch.from_numpy(area_matrix(16, pn)), torch.from_numpy(bicubic_matrix(pn, 16))
        torch.testing.assert_close(down @ f @ down.t(), torch.nn.functional.interpolate(f, size=(pn, pn), mode="area"))
        expected_up = h if pn == 16 else torch.nn.functional.interpolate(h, size=(16, 16), mode="bicubic")
        torch.testing.assert_close(up @ h @ up.t(), expected_up)
