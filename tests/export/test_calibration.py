"""rar-export --calibration gptq: GPTQ (NVIDIA Model Optimizer) on the model's own generations, in round-to-nearest's
graph form; verified, closer to the float model than round-to-nearest, recorded, repeatable, and read back by every
backend."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from rar_deploy.cli import export_command
from rar_deploy.contract.weights import WeightQuantization
from rar_deploy.runtime import RARPipeline, RARSampling, VARPipeline, VARSampling

pytest.importorskip("modelopt", reason="pip install 'rar-deploy[calibrate]'")
pytestmark = pytest.mark.slow  # four exports and GPTQ runs (about a minute); .ci/run runs them
DATA = Path(__file__).parents[1] / "data" / "official_tiny"


@pytest.fixture(scope="module")
def folders(export_tiny, export_var_tiny, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("calibrated")
    return {"gptq": export_tiny(base / "gptq", "fp32", weights="int4", calibration="gptq"),
            "rtn": export_tiny(base / "rtn", "fp32", weights="int4"),
            "float": export_tiny(base / "float", "fp32", verify=False),
            "var_gptq": export_var_tiny(base / "var_gptq", "fp32", weights="int8", calibration="gptq")}


def _stored(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each quantized Linear's (integers, scales) as the step graph stores them."""
    graph = json.loads((folder / "manifest.json").read_text())["graphs"]
    model = onnx.load(str(folder / (graph.get("decode_step") or graph["var_step"])["file"]))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {node.name.removesuffix(".dequantize"): (initializers[node.input[0]].astype(np.int8),
                                                    initializers[node.input[1]])
            for node in model.graph.node if node.op_type == "DequantizeLinear"}


def test_gptq_export_is_exact_to_its_own_weights_and_closer_to_the_float_model(folders):
    gptq, rtn = (json.loads((folders[name] / "parity.json").read_text()) for name in ("gptq", "rtn"))
    assert gptq["failures"] == []
    assert all(mode["token_agreement"] == 1.0 for mode in gptq["free_running"].values())

    def gap(parity: dict) -> float:  # mean |logit error| of the export against the float model, teacher-forced
        return np.mean([m["logits"]["mean_abs"] for m in parity["float32_weights"]["teacher_forced"].values()])
    assert gap(gptq) < 0.9 * gap(rtn), (gap(gptq), gap(rtn))


def test_gptq_keeps_round_to_nearests_scales_and_grid_and_moves_integers(folders):
    """The same graph form: scales = max |float weight| / 7 per block (round-to-nearest's, to the bit), integers in
    -7 .. 7; GPTQ changes which integer some weights get."""
    gptq, rtn = _stored(folders["gptq"]), _stored(folders["rtn"])
    assert set(gptq) == set(rtn) and len(gptq) == 8
    moved = []
    for name, (q, scale) in gptq.items():
        np.testing.assert_array_equal(scale, rtn[name][1], err_msg=name)
        assert np.abs(q).max() <= 7
        moved.append(np.mean(q != rtn[name][0]))
    assert 0.02 < np.mean(moved) < 0.6, moved


def test_manifest_records_the_method_and_the_data_drawn_by_an_independent_path(folders):
    """The data hash is of the float model's own generation: the fp32 float export draws the same tokens."""
    section = json.loads((folders["gptq"] / "manifest.json").read_text())["weights"]
    calibration = section["calibration"]
    assert calibration["method"] == "gptq" and calibration["library"].startswith("nvidia-modelopt ")
    data = calibration["data"]
    pipeline = RARPipeline.from_artifacts(folders["float"], "onnxruntime")
    labels = (np.arange(data["images"]) * pipeline.artifacts.config.num_classes // data["images"]).astype(np.int64)
    sampling = RARSampling(**data["sampling"])
    tokens = pipeline.generate(labels.tolist(), sampling=sampling, seed=data["seed"], batch_size=4).tokens
    assert hashlib.sha256(labels.tobytes() + tokens.astype(np.int64).tobytes()).hexdigest() == data["sha256"]
    assert WeightQuantization.from_manifest(section) == WeightQuantization("int4", 32)


def test_every_backend_reads_the_folders_own_weights(folders):
    """The torch backend takes the integers from the step graph (it could not compute GPTQ's again): same tokens
    as ONNX Runtime, RAR and VAR; different from round-to-nearest's."""
    labels, sampling = [1, 5, 9], RARSampling(guidance_scale=4.0, guidance_pow=0.0, temperature=1.0)
    tokens = {(name, backend): RARPipeline.from_artifacts(folders[name], backend).generate(
        labels, sampling=sampling, seed=3, batch_size=3).tokens for name in ("gptq", "rtn")
        for backend in ("onnxruntime", "torch")}
    np.testing.assert_array_equal(tokens["gptq", "onnxruntime"], tokens["gptq", "torch"])
    np.testing.assert_array_equal(tokens["rtn", "onnxruntime"], tokens["rtn", "torch"])
    assert not np.array_equal(tokens["gptq", "torch"], tokens["rtn", "torch"])
    var = [VARPipeline.from_artifacts(folders["var_gptq"], backend).generate(
        labels, sampling=VARSampling(temperature=0.0), seed=0, batch_size=3)[0] for backend in ("onnxruntime", "torch")]
    np.testing.assert_array_equal(var[0], var[1])


def test_calibration_is_repeatable_and_leaves_the_model_alone(official_generator, official_tokenizer):
    from rar_deploy.model.calibration import calibrate

    generator = copy.deepcopy(official_generator)
    before = {name: p.detach().clone() for name, p in generator.named_parameters()}
    said: list[str] = []
    runs = [calibrate(generator, official_tokenizer, WeightQuantization("int8"), images=8, progress=said.append)
            for _ in range(2)]
    assert "GPTQ 8/8: blocks.1.mlp.fc2" in said  # ModelOpt's printout, shown as progress, a line per Linear
    assert all(p.equal(before[name]) for name, p in generator.named_parameters())
    assert runs[0].record == runs[1].record
    for name, weight in runs[0].weights.items():
        np.testing.assert_array_equal(weight.weight, runs[1].weights[name].weight, err_msg=name)
        np.testing.assert_array_equal(weight.peak, runs[1].weights[name].peak, err_msg=name)
        assert weight.peak.shape == (1, weight.weight.shape[1])  # int8: one range per output channel


@pytest.mark.parametrize("flags, message", [
    (["--calibration", "gptq"], "--calibration gptq applies to --weights int8 or int4"),
    (["--weights", "int4", "--calibration", "awq"], "'awq' is not one of 'rtn', 'gptq'"),
])
def test_bad_calibration_flags_are_one_line(flags, message, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(export_command, ["--ckpt", str(DATA / "tiny_rar.bin"), "--tokenizer",
                                                 str(DATA / "tiny_vq.bin"), "--out", str(out), "--no-engine", *flags])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()
