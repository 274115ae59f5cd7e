"""rar-export --weights fp8: E4M3 weights and inputs (W8A8, static scales) as standard QuantizeLinear/DequantizeLinear;
the rounding rule against ONNX Runtime's, exactness at fp32 on every backend, fp16 within its tolerance, TensorRT-RTX
engines for the FP8-capable targets only, bad flags."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from rar_deploy.cli import export_command
from rar_deploy.contract.weights import WeightQuantization, dequantize, fake_quantize_fp8, quantize
from rar_deploy.runtime import RARPipeline, RARSampling, VARPipeline, VARSampling
from rar_deploy.runtime.engines import find_tensorrt
from rar_deploy.tools.engine_build import BatchProfile
from rar_deploy.tools.metrics import FP8_ACTIVATIONS, TOLERANCES

needs_tensorrt = pytest.mark.skipif(find_tensorrt() is None, reason="no TensorRT or TensorRT-RTX installed")
DATA = Path(__file__).parents[1] / "data" / "official_tiny"
TINY_LINEARS = 8
FP8 = WeightQuantization("fp8")


def _values(scale: np.float32) -> np.ndarray:
    """Random values, exact E4M3 ties (halfway between neighbours, times `scale`) and values past +-448."""
    rng = np.random.default_rng(0)
    ties = np.array([1.0625, 2.625, 248.0], np.float32) * scale  # 1 | 1.125, 2.5 | 2.75, 240 | 256
    return np.concatenate([rng.standard_normal(4000).astype(np.float32) * 50, ties, -ties,
                           np.array([500, -1e4, 449, 0], np.float32) * scale]).astype(np.float32)


def test_fp8_rounding_is_onnx_runtimes_quantize_linear_and_torchs(tmp_path):
    """The contract's E4M3 rule (round to nearest even, saturate) equals ONNX Runtime's QuantizeLinear with
    saturate=1, and the torch reference's input quantization equals both."""
    import onnxruntime as ort

    from rar_deploy.model.quantized import _fp8_input

    scale = np.float32(0.75)
    x = _values(scale)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], saturate=1),
         helper.make_node("DequantizeLinear", ["q", "s"], ["y"])], "fp8",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(x)])],
        [numpy_helper.from_array(np.array(scale), "s"),
         numpy_helper.from_array(np.zeros((), ml_dtypes.float8_e4m3fn), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "fp8.onnx"))
    session = ort.InferenceSession(str(tmp_path / "fp8.onnx"), providers=["CPUExecutionProvider"])
    runtime = session.run(None, {"x": x})[0]
    np.testing.assert_array_equal(fake_quantize_fp8(x, scale), runtime)
    (reference,) = _fp8_input(float(scale), None, (torch.from_numpy(x),))
    np.testing.assert_array_equal(reference.numpy(), runtime)
    assert np.abs(runtime).max() == 448 * scale  # saturated, not infinite or NaN


def test_fp8_weights_are_one_scale_per_tensor_within_half_an_e4m3_step():
    weight = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    q, scale = quantize(weight, FP8, np.float16)
    assert q.dtype == ml_dtypes.float8_e4m3fn and scale.shape == () and scale.dtype == np.float16
    assert float(np.abs(q.astype(np.float32)).max()) == 448  # the peak lands on the largest value
    error = np.abs(dequantize(q, scale, FP8) - weight)
    assert np.all(error <= np.abs(weight) / 16 * (1 + 1e-3) + float(scale) * 2 ** -9)  # 3 mantissa bits


@pytest.fixture(scope="module")
def fp8_exports(export_tiny, export_var_tiny, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fp8")
    return {"rar_fp32": export_tiny(base / "rar_fp32", "fp32", weights="fp8"),
            "rar_fp16": export_tiny(base / "rar_fp16", "fp16", weights="fp8"),
            "var_fp32": export_var_tiny(base / "var_fp32", "fp32", weights="fp8")}


@pytest.mark.parametrize("name", ["rar_fp32", "rar_fp16", "var_fp32"])
def test_step_graph_reads_fp8_weights_and_inputs(fp8_exports, name):
    folder = fp8_exports[name]
    manifest = json.loads((folder / "manifest.json").read_text())
    section = manifest["weights"]
    assert section["scheme"] == "fp8" and section["group_size"] is None
    assert section["activations"]["dtype"] == "float8e4m3fn"
    assert section["calibration"]["method"] == "max" and len(section["calibration"]["data"]["sha256"]) == 64
    step = "var_step" if name.startswith("var") else "decode_step"
    model = onnx.load(str(folder / manifest["graphs"][step]["file"]))
    initializers = {t.name: t for t in model.graph.initializer}
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") == TINY_LINEARS and ops.count("DequantizeLinear") == 2 * TINY_LINEARS
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.name.endswith(".dequantize"):  # a weight
            assert initializers[node.input[0]].data_type == TensorProto.FLOAT8E4M3FN
            assert list(initializers[node.input[1]].dims) == []  # one scale per tensor
    by_output = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1].endswith("_dequantized"):  # reads its input through fp8
            assert by_output[node.input[0]].op_type == "DequantizeLinear"
            assert by_output[by_output[node.input[0]].input[0]].op_type == "QuantizeLinear"


def test_fp8_export_passes_fp8s_tolerances_and_is_far_from_the_float_model(fp8_exports):
    """Verified against the fp8 reference with fp8's tolerances (metrics.FP8_ACTIVATIONS); at fp32 the tiny models'
    tokens are all the reference's; the float model is much further away."""
    for name in ("rar_fp32", "var_fp32"):
        parity = json.loads((fp8_exports[name] / "parity.json").read_text())
        assert parity["failures"] == [] and all(m["token_agreement"] == 1.0 for m in parity["free_running"].values())
        assert parity["tolerances"] == {**TOLERANCES["fp32"], **FP8_ACTIVATIONS["fp32"]}
        worst = max(m["logits"]["max_rel_to_peak"] for m in parity["teacher_forced"].values())
        gap = parity["float32_weights"]["teacher_forced"]
        assert max(m["logits"]["max_rel_to_peak"] for m in gap.values()) > max(1e-3, 10 * worst)
    fp16 = json.loads((fp8_exports["rar_fp16"] / "parity.json").read_text())
    assert fp16["failures"] == [] and fp16["tolerances"] == {**TOLERANCES["fp16"], **FP8_ACTIVATIONS["fp16"]}


def test_every_backend_draws_the_same_tokens_from_an_fp8_folder(fp8_exports):
    """The torch backend reads the weights and input scales from the step graph: ONNX Runtime's tokens exactly."""
    labels, sampling = [1, 5, 9], RARSampling(guidance_scale=4.0, guidance_pow=0.0, temperature=1.0)
    tokens = [RARPipeline.from_artifacts(fp8_exports["rar_fp32"], backend).generate(
        labels, sampling=sampling, seed=3, batch_size=3).tokens for backend in ("onnxruntime", "torch")]
    np.testing.assert_array_equal(tokens[0], tokens[1])
    var = [VARPipeline.from_artifacts(fp8_exports["var_fp32"], backend).generate(
        labels, sampling=VARSampling(temperature=0.0), seed=0, batch_size=3)[0] for backend in ("onnxruntime", "torch")]
    np.testing.assert_array_equal(var[0], var[1])


def test_int8_activations_is_refused_for_fp8(fp8_exports):
    from rar_deploy.errors import RARDeployError

    with pytest.raises(RARDeployError, match="--int8-activations applies to a folder exported with --weights int8"):
        RARPipeline.from_artifacts(fp8_exports["rar_fp32"], int8_activations=True)


@pytest.mark.slow
@needs_tensorrt
def test_tensorrt_rtx_builds_fp8_engines_for_fp8_capable_targets_only(export_tiny, tmp_path):
    out = export_tiny(tmp_path / "fp8", "fp16", weights="fp8", engine=True, verify=False,
                      profile=BatchProfile(1, 2, 4))
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["engines"]) == set(manifest["graphs"])
    assert manifest["engines"]["decode_step"]["compute_capabilities"] == ["SM89", "SM120"]


@pytest.mark.parametrize("flags, message", [
    (["--weights", "fp8", "--group-size", "32"], "--group-size applies to --weights int4 only (fp8 has one scale"),
    (["--weights", "fp8", "--calibration", "gptq"], "(fp8 calibrates its activation ranges itself)"),
    (["--weights", "fp8", "--engine", "--compute-capability", "SM86"],
     "--weights fp8 runs FP8 GEMMs, which need SM89 or later: drop --compute-capability SM86"),
])
def test_bad_fp8_flags_are_one_line(flags, message, tmp_path):
    if "--engine" in flags and find_tensorrt() is None:
        pytest.skip("no TensorRT-RTX to check the targets against")
    out = tmp_path / "out"
    result = CliRunner().invoke(export_command, ["--ckpt", str(DATA / "tiny_rar.bin"), "--tokenizer",
                                                 str(DATA / "tiny_vq.bin"), "--out", str(out), *flags])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()
