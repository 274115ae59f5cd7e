"""VAR through the whole toolkit: rar-export (fp32/fp16, verification, TensorRT-RTX engines, manifest), the runtime
loop on ONNX Runtime and torch, rar-generate, rar-parity, rar-bench --baseline, make-checkpoint's var_tiny.
Expected tokens come from the OFFICIAL code (tests/data/official_var_tiny) or from our float32 reference sampler."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rar_deploy.contract.sampling import sampling_noise
from rar_deploy.errors import RARDeployError
from rar_deploy.export.exporter import ExportRequest, export_artifacts
from rar_deploy.model.checkpoint import load_var_generator, load_var_tokenizer
from rar_deploy.model.reference import var_reference_generate
from rar_deploy.runtime import Artifacts, RARPipeline, VARPipeline, VARSampling, open_pipeline
from rar_deploy.runtime.engines import find_tensorrt
from rar_deploy.tools.engine_build import BatchProfile

DATA = Path(__file__).parents[1] / "data" / "official_var_tiny"
OFFICIAL = (str(DATA / "var_tiny_var.pth"), str(DATA / "var_tiny_vae.pth"))


def export_var(out: Path, precision: str, **options) -> Path:
    options = {"engine": False, "profile": BatchProfile(1, 2, 4), **options}
    export_artifacts(ExportRequest(*OFFICIAL, out=out, precision=precision, **options), progress=lambda m: None)
    return out


@pytest.fixture(scope="module")
def var_exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("var-exports")
    return {precision: export_var(root / precision, precision) for precision in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "var_tiny_golden.npz"))


def test_export_writes_a_var_manifest(var_exports):
    for precision, folder in var_exports.items():
        artifacts = Artifacts.load(folder, verify="sha256")
        m = artifacts.manifest
        assert (m["family"], artifacts.graph_names, m["precision"]) == ("var", ("var_step", "var_decoder"), precision)
        assert [s["side"] for s in m["scales"]] == [1, 2, 3, 4] and m["scales"][-1]["end"] == 30
        assert m["sampling"]["defaults"] == {"guidance_scale": 1.5, "top_k": 900, "top_p": 0.96, "temperature": 1.0}
        assert m["kv_cache"]["dtype"] == {"fp32": "float32", "fp16": "float16"}[precision]
        parity = json.loads((folder / "parity.json").read_text())
        assert parity["failures"] == [] and parity["free_running"]["greedy"]["token_agreement"] == 1.0
        assert sorted(m["files"]) == sorted(p.name for p in folder.iterdir() if p.name != "manifest.json")


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("cfg, key", [(4.0, "cfg4"), (1.5, "cfg1_5")])
def test_every_backend_reproduces_the_official_greedy_generation(var_exports, golden, backend, cfg, key):
    pipeline = open_pipeline(var_exports["fp32"], backend=backend)
    assert isinstance(pipeline, VARPipeline)
    tokens, images = pipeline.generate(golden["labels"].tolist(),
                                       sampling=VARSampling(guidance_scale=cfg, temperature=0.0))
    np.testing.assert_array_equal(tokens, golden[f"greedy_tokens_{key}"])
    official = np.floor(golden[f"images_{key}"].transpose(0, 2, 3, 1) * 255)
    assert np.abs(images.astype(np.int64) - official).max() <= 1


@pytest.mark.parametrize("top_k, top_p", [(0, 0.0), (32, 0.9), (5, 0.0), (0, 0.5), (900, 0.96)])
def test_sampling_equals_the_reference_sampler_whatever_the_batch(var_exports, top_k, top_p):
    generator, vqvae = load_var_generator(OFFICIAL[0]), load_var_tokenizer(OFFICIAL[1])
    labels = [3, 141, 999]
    noise = torch.from_numpy(sampling_noise(5, 3, generator.config.seq_len, generator.config.codebook_size))
    reference = var_reference_generate(generator, vqvae, labels, 4.0, top_k, top_p, 1.0, noise)
    pipeline = VARPipeline.from_artifacts(var_exports["fp32"])
    sampling = VARSampling(guidance_scale=4.0, top_k=top_k, top_p=top_p, temperature=1.0)
    tokens = pipeline.generate(labels, sampling=sampling, seed=5).tokens
    np.testing.assert_array_equal(tokens, reference.tokens.numpy())
    one_at_a_time = pipeline.generate(labels, sampling=sampling, seed=5, batch_size=1).tokens
    np.testing.assert_array_equal(one_at_a_time, tokens)
    if top_k != 5:  # five candidates per token: another seed may well draw the same first scales
        assert (tokens[:, 1:] != pipeline.generate(labels, sampling=sampling, seed=6).tokens[:, 1:]).any()


def test_fp16_export_passes_rar_parity_on_every_backend(var_exports):
    from rar_deploy.cli import parity_command

    for folder, backend in ((var_exports["fp16"], "onnxruntime"), (var_exports["fp16"], "torch"),
                            (var_exports["fp32"], "torch")):
        result = CliRunner().invoke(parity_command, ["--artifacts", str(folder), "--backend", backend])
        assert result.exit_code == 0, result.output
        assert "teacher_forced.scales" in result.output and result.output.strip().endswith("PASSED")


def test_a_graph_from_another_export_is_refused(var_exports, tmp_path):
    """An fp32 folder whose var_step was replaced by the fp16 export's: refused before running, naming the file."""
    from rar_deploy.cli import parity_command

    folder = tmp_path / "mixed"
    shutil.copytree(var_exports["fp32"], folder)
    shutil.copy(var_exports["fp16"] / "var_step.onnx", folder / "var_step.onnx")
    result = CliRunner().invoke(parity_command, ["--artifacts", str(folder)])
    assert result.exit_code == 1 and "var_step.onnx" in result.output and "Traceback" not in result.output


def test_rar_generate_runs_var_artifacts(var_exports, tmp_path):
    from rar_deploy.cli import generate_command

    out, tokens = tmp_path / "images", tmp_path / "tokens.npy"
    args = ["--artifacts", str(var_exports["fp16"]), "--class-labels", "7,8", "--num-per-class", "2", "--out",
            str(out), "--save-tokens", str(tokens), "--top-k", "50", "--guidance-scale", "4", "--seed", "3"]
    result = CliRunner().invoke(generate_command, args)
    assert result.exit_code == 0, result.output
    samples = json.loads((out / "samples.json").read_text())
    assert (samples["family"], samples["top_k"], samples["top_p"], samples["guidance_scale"]) == ("var", 50, 0.96, 4.0)
    assert len(list(out.glob("0*_class*.png"))) == 4 and (out / "grid.png").exists()
    expected = VARPipeline.from_artifacts(var_exports["fp16"]).generate(
        [7, 7, 8, 8], sampling=VARSampling(guidance_scale=4.0, top_k=50), seed=3).tokens
    np.testing.assert_array_equal(np.load(tokens), expected)
    for option, value in (("--guidance-pow", "2"), ("--condition-budget", "0")):
        result = CliRunner().invoke(generate_command, [*args[:6], "--out", str(tmp_path / "x"), option, value])
        assert result.exit_code == 1 and f"{option} does not apply to a VAR model" in result.output
    for option, value, message in (("--top-p", "1.0", "top-p must lie in [0, 1)"), ("--top-k", "-1", "top-k must be"),
                                   ("--guidance-scale", "-1", "guidance scale must be >= 0")):
        result = CliRunner().invoke(generate_command, [*args[:6], "--out", str(tmp_path / "x"), option, value])
        assert result.exit_code == 1 and message in result.output and not (tmp_path / "x").exists()


def test_family_mismatches_are_one_line(var_exports, export_tiny, tmp_path):
    from rar_deploy.cli import generate_command

    rar = export_tiny(tmp_path / "rar", "fp32")
    result = CliRunner().invoke(generate_command, ["--artifacts", str(rar), "--class-labels", "1", "--out",
                                                   str(tmp_path / "x"), "--top-k", "5"])
    assert result.exit_code == 1 and "--top-k does not apply to a RAR model" in result.output
    with pytest.raises(RARDeployError, match="holds a VAR export: use VARPipeline"):
        RARPipeline.from_artifacts(var_exports["fp32"])
    with pytest.raises(RARDeployError, match="holds a RAR export: use RARPipeline"):
        VARPipeline.from_artifacts(rar)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["scales"][1].update(side=3), "scale 1's side is 3, its model gives 2"),
    (lambda m: m["scales"].pop(), "it lists 3 scales, its model has 4"),
    (lambda m: m["scales"][2].update(phi_index=3), "scale 2's phi_index is 3, its model gives 2"),
    (lambda m: m["scales"][2]["up"][0].__setitem__(0, 0.5), "scale 2's up is its matrix, its model gives another"),
    (lambda m: m["scales"][3].update(guidance_fraction=[3, 4]), "scale 3's guidance_fraction is [3, 4], its model "
                                                                "gives [3, 3]"),
    (lambda m: m.pop("family"), "is not a valid manifest"),
    (lambda m: m["model"].update(vae_channels=16), "not a VAR generator and its VQVAE"),
    (lambda m: m["sampling"]["defaults"].update(top_p=1.5), "is not a valid manifest at sampling.defaults.top_p"),
])
@pytest.mark.parametrize("rehashed", [False, True], ids=["edited", "rehashed"])
def test_an_edited_var_manifest_is_refused(var_exports, tmp_path, edit, message, rehashed):
    """An edit is refused by the contract hash; one whose hash was recomputed (an inconsistent manifest another
    tool might write) by the consistency checks behind it, each with its own message."""
    from rar_deploy.contract.manifest import contract_sha256

    folder = tmp_path / "edited"
    shutil.copytree(var_exports["fp32"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    if rehashed:
        manifest["contract_sha256"] = contract_sha256(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    schema = "not a valid manifest" in message
    with pytest.raises(RARDeployError, match=re.escape(message) if rehashed or schema or "defaults" in message
                       else "was edited"):
        Artifacts.load(folder)


def test_rar_bench_times_var_against_the_official_loop(var_exports):
    from rar_deploy.cli import bench_command

    result = CliRunner().invoke(bench_command, ["--artifacts", str(var_exports["fp32"]), "--batch-sizes", "1,2",
                                                "--baseline", "--json"])
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [(r["backend"], r["batch"]) for r in runs] == [("onnxruntime", 1), ("onnxruntime", 2), ("baseline", 1),
                                                         ("baseline", 2)]
    assert all(len(r.get("step_ms", [0] * 4)) == 4 and r["total_ms_per_image"] > 0 for r in runs)


@pytest.mark.skipif(find_tensorrt() is None, reason="needs TensorRT or TensorRT-RTX")
def test_fp16_var_graphs_build_strongly_typed_engines(tmp_path):
    folder = export_var(tmp_path / "engines", "fp16", engine=True, verify=False)
    engines = Artifacts.load(folder, verify="sha256").manifest["engines"]
    assert sorted(engines) == ["var_decoder", "var_step"]
    step = {io["name"]: io for io in engines["var_step"]["io"]}
    assert step["k_cache.0"]["dtype"] == "float16" and step["noise"]["profile"][0] == [1, 1, 1, 64]
    assert step["noise"]["profile"][2] == [4, 4, 4, 64] and step["k_cache.0"]["profile"][2][0] == 8


def test_make_checkpoint_var_tiny_exports_and_generates(tmp_path):
    from rar_deploy.cli import generate_command, main

    runner = CliRunner()
    result = runner.invoke(main, ["make-checkpoint", "--preset", "var_tiny", "--out", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    ckpt, vae = tmp_path / "ckpt" / "var_tiny.pth", tmp_path / "ckpt" / "vae_tiny.pth"
    first = ckpt.read_bytes()
    again = runner.invoke(main, ["make-checkpoint", "--preset", "var_tiny", "--out", str(tmp_path / "ckpt")])
    assert again.exit_code == 0
    assert ckpt.read_bytes() == first  # same seed, same bytes
    request = ExportRequest(str(ckpt), str(vae), out=tmp_path / "artifacts", precision="fp16", engine=False,
                            profile=BatchProfile(1, 2, 4))
    folder = export_artifacts(request, progress=lambda m: None).out
    assert Artifacts.load(folder).manifest["model"]["preset"] == "var_tiny"
    result = runner.invoke(generate_command, ["--artifacts", str(folder), "--class-labels", "1,2", "--out",
                                              str(tmp_path / "images")])
    assert result.exit_code == 0, result.output


def test_hostile_inputs_are_refused_before_work(var_exports, tmp_path):
    """Found by a hostile probe: each gets one line and leaves nothing behind."""
    from rar_deploy.cli import generate_command, parity_command

    folder = str(var_exports["fp32"])
    runner = CliRunner()
    cases = [
        (["--guidance-scale", "3e38"], "guidance scale must lie within +-10000"),
        (["--num-per-class", "100000000000"], "are more than one call makes (1000000)"),
        (["--save-tokens", str(tmp_path / "out")], "lies inside it or holds it: save the tokens outside --out"),
        (["--save-tokens", str(tmp_path / "out" / "t.npy")], "lies inside it or holds it: save the tokens outside"),
    ]
    for extra, message in cases:
        result = runner.invoke(generate_command, ["--artifacts", folder, "--class-labels", "1", "--out",
                                                  str(tmp_path / "out"), *extra])
        assert result.exit_code == 1 and message in result.output, (extra, result.output)
        assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    swapped = tmp_path / "swapped"
    shutil.copytree(var_exports["fp32"], swapped)
    shutil.copy(var_exports["fp16"] / "reference.npz", swapped / "reference.npz")
    result = runner.invoke(parity_command, ["--artifacts", str(swapped)])
    assert result.exit_code == 1 and "reference.npz has " in result.output and "truncated or replaced" in result.output


def test_checkpoints_users_really_have(tmp_path):
    """The official trainer's checkpoint layout is unwrapped; a damaged weight inside the zip is refused (torch
    itself would load it); the default VQVAE is found beside a VAR generator by its keys, not its name; RAR's
    loader names a VAR file."""
    from rar_deploy.cli import export_command
    from rar_deploy.errors import CheckpointError
    from rar_deploy.model.checkpoint import load_rar_generator, read_state_dict

    state = torch.load(OFFICIAL[0], weights_only=True)
    torch.save({"trainer": {"var_wo_ddp": state, "vae_local": {}}, "epoch": 3}, tmp_path / "ar-ckpt-best.pth")
    assert sorted(read_state_dict(tmp_path / "ar-ckpt-best.pth")) == sorted(state)
    import zipfile

    data = bytearray(Path(OFFICIAL[0]).read_bytes())
    largest = max(zipfile.ZipFile(OFFICIAL[0]).infolist(), key=lambda entry: entry.file_size)
    header = largest.header_offset
    start = header + 30 + int.from_bytes(data[header + 26:header + 28], "little") \
        + int.from_bytes(data[header + 28:header + 30], "little")  # past the local file header
    data[start + 64:start + 128] = bytes(64)  # zeros inside the largest weight
    (tmp_path / "damaged.pth").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged"):
        read_state_dict(tmp_path / "damaged.pth")
    with pytest.raises(CheckpointError, match="is a VAR generator checkpoint: load it with load_var_generator"):
        load_rar_generator(OFFICIAL[0])
    shutil.copy(OFFICIAL[1], tmp_path / "vae_ch160v4096z32.pth")
    result = CliRunner().invoke(export_command, ["--ckpt", str(tmp_path / "ar-ckpt-best.pth"), "--out",
                                                 str(tmp_path / "artifacts"), "--no-engine", "--no-verify"])
    assert result.exit_code == 0, result.output
    checkpoints = Artifacts.load(tmp_path / "artifacts").manifest["checkpoints"]
    assert checkpoints["tokenizer"]["file"] == "vae_ch160v4096z32.pth"
