"""rar-export --weights int8|int4: the rounding rule, the DequantizeLinear + MatMul step graph, exactness against
the quantized reference (and the float model's gap, reported), every backend's tokens, TensorRT-RTX builds, bad
flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from rar_deploy.cli import export_command
from rar_deploy.contract.weights import WeightQuantization, dequantize, quantize
from rar_deploy.runtime import RARPipeline, RARSampling, VARPipeline, VARSampling
from rar_deploy.runtime.engines import find_tensorrt
from rar_deploy.tools.engine_build import BatchProfile

needs_tensorrt = pytest.mark.skipif(find_tensorrt() is None, reason="no TensorRT or TensorRT-RTX installed")
DATA = Path(__file__).parents[1] / "data"
TINY_LINEARS = 8  # 2 blocks x (qkv, proj, fc1, fc2), in both tiny models
SCHEMES = {"int8": WeightQuantization("int8"), "int4": WeightQuantization("int4", 32)}


# -- the rounding rule, against a plain loop over channels and blocks -------------------------------------------

@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("scale_dtype", [np.float32, np.float16])
def test_rounding_rule_matches_a_loop_over_every_channel_and_block(scheme, scale_dtype):
    quantization = SCHEMES[scheme]
    weight = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
    weight[:, 3] = 0  # an all-zero output channel
    weight[7, 1] = 40.0  # an outlier: only its own channel (int8) or block (int4) gets the large scale
    q, scale = quantize(weight, quantization, scale_dtype)
    rows = 64 if quantization.group_size is None else quantization.group_size
    for n in range(5):
        for start in range(0, 64, rows):
            block = [float(x) for x in weight[start:start + rows, n]]
            peak = max(abs(x) for x in block)
            s = float(scale_dtype(peak / quantization.levels)) or 1.0
            stored = scale[n] if quantization.group_size is None else scale[start // rows, n]
            assert float(stored) == s
            for i, x in enumerate(block):
                expected = min(max(round(x / s), -quantization.levels), quantization.levels)  # half to even
                assert q[start + i, n] == expected, (n, start + i)
                assert abs(x - expected * s) <= s / 2 * (1 + 1e-3) + 1e-6  # within half a step (scale rounded)
    assert scale.dtype == scale_dtype and q.dtype == np.int8
    assert np.abs(q).max() == quantization.levels  # the peak of a channel or block lands on the last level
    np.testing.assert_array_equal(dequantize(q, scale, quantization),
                                  q.astype(np.float32) * np.repeat(scale.astype(np.float32).reshape(-1, 5),
                                                                   rows, axis=0))


# -- exports --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantized_exports(export_tiny, export_var_tiny, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("quantized")
    folders = {}
    for precision, weights in (("fp32", "int8"), ("fp32", "int4"), ("fp16", "int4")):
        folders[f"rar_{precision}_{weights}"] = export_tiny(base / f"rar_{precision}_{weights}", precision,
                                                            weights=weights)
    folders["var_fp32_int8"] = export_var_tiny(base / "var_fp32_int8", "fp32", weights="int8")
    folders["rar_fp32"] = export_tiny(base / "rar_fp32", "fp32")
    return folders


def _dequantize_nodes(path: Path) -> tuple[onnx.ModelProto, list[onnx.NodeProto]]:
    model = onnx.load(str(path))
    return model, [node for node in model.graph.node if node.op_type == "DequantizeLinear"]


@pytest.mark.parametrize("name", ["rar_fp32_int8", "rar_fp32_int4", "rar_fp16_int4", "var_fp32_int8"])
def test_step_graph_reads_integer_weights_through_dequantize_linear(quantized_exports, name):
    folder = quantized_exports[name]
    manifest = json.loads((folder / "manifest.json").read_text())
    scheme = name.rsplit("_", 1)[1]
    step = "var_step" if name.startswith("var") else "decode_step"
    model, nodes = _dequantize_nodes(folder / f"{step}.onnx")
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {21}
    assert len(nodes) == TINY_LINEARS and len(manifest["weights"]["tensors"][step]) == TINY_LINEARS
    initializers = {t.name: t for t in model.graph.initializer}
    consumers = {i for node in model.graph.node if node.op_type == "MatMul" for i in node.input}
    for node in nodes:
        q, scale = initializers[node.input[0]], initializers[node.input[1]]
        assert q.data_type == (onnx.TensorProto.INT8 if scheme == "int8" else onnx.TensorProto.INT4)
        assert scale.data_type == (onnx.TensorProto.FLOAT16 if "fp16" in name else onnx.TensorProto.FLOAT)
        assert node.output[0] in consumers
        if scheme == "int4":
            assert {a.name: a.i for a in node.attribute} == {"axis": 0, "block_size": 32}
            assert list(scale.dims) == [q.dims[0] // 32, q.dims[1]]
        else:
            assert {a.name: a.i for a in node.attribute} == {"axis": 1} and list(scale.dims) == [q.dims[1]]
    assert manifest["weights"]["scheme"] == scheme
    assert manifest["weights"]["group_size"] == (32 if scheme == "int4" else None)
    assert (folder / "manifest.json").read_text().count('"calibration": null') == 1


def test_quantized_bytes_are_what_the_scheme_stores(quantized_exports):
    """The step graph shrinks by exactly the float bytes of the quantized weights minus their integers and
    scales (int4 packed two to a byte)."""
    float_bytes = json.loads((quantized_exports["rar_fp32"] / "manifest.json").read_text())[
        "graphs"]["decode_step"]["weight_bytes"]
    for name, bits in (("rar_fp32_int8", 8), ("rar_fp32_int4", 4)):
        manifest = json.loads((quantized_exports[name] / "manifest.json").read_text())
        shapes = manifest["weights"]["tensors"]["decode_step"].values()
        group = manifest["weights"]["group_size"]
        saved = sum(4 * k * n - math.ceil(k * n * bits / 8) - 4 * (n if group is None else k // group * n)
                    for k, n in shapes)
        assert manifest["graphs"]["decode_step"]["weight_bytes"] == float_bytes - saved, name


@pytest.mark.parametrize("name", ["rar_fp32_int8", "rar_fp32_int4", "rar_fp16_int4", "var_fp32_int8"])
def test_export_verifies_against_the_quantized_reference_and_reports_the_float_gap(quantized_exports, name):
    parity = json.loads((quantized_exports[name] / "parity.json").read_text())
    assert parity["failures"] == []
    if "fp32" in name:  # float32 activations: the graph computes the quantized model's own tokens
        assert all(mode["token_agreement"] == 1.0 for mode in parity["free_running"].values())
    gap = parity["float32_weights"]  # the quantization's own cost, against the float model: far larger

    def worst(report: dict) -> float:
        return max(mode["logits"]["max_rel_to_peak"] for mode in report["teacher_forced"].values())
    assert worst(gap) > 3 * worst(parity) and worst(gap) > 1e-3


def test_every_backend_draws_the_same_tokens_from_a_quantized_folder(quantized_exports):
    """ONNX Runtime (MatMulNBits, float32 compute) and the torch backend (the checkpoint, quantized again from the
    manifest's scheme) agree token for token at fp32."""
    labels, sampling = [1, 5, 9], RARSampling(guidance_scale=4.0, guidance_pow=0.0, temperature=1.0)
    for name in ("rar_fp32_int8", "rar_fp32_int4"):
        tokens = [RARPipeline.from_artifacts(quantized_exports[name], backend).generate(
            labels, sampling=sampling, seed=3, batch_size=3).tokens for backend in ("onnxruntime", "torch")]
        np.testing.assert_array_equal(tokens[0], tokens[1], err_msg=name)
    var = [VARPipeline.from_artifacts(quantized_exports["var_fp32_int8"], backend).generate(
        labels, sampling=VARSampling(temperature=0.0), seed=0, batch_size=3)[0] for backend in ("onnxruntime", "torch")]
    np.testing.assert_array_equal(var[0], var[1])
    float_tokens = RARPipeline.from_artifacts(quantized_exports["rar_fp32"], "onnxruntime").generate(
        labels, sampling=sampling, seed=3, batch_size=3).tokens
    assert not np.array_equal(float_tokens, tokens[0])  # int4's tokens are its own, not the float model's


@pytest.mark.slow
@needs_tensorrt
def test_tensorrt_rtx_builds_quantized_engines(export_tiny, tmp_path):
    for precision, weights in (("fp16", "int8"), ("fp16", "int4")):
        out = export_tiny(tmp_path / weights, precision, weights=weights, engine=True, verify=False,
                          profile=BatchProfile(1, 2, 4))
        manifest = json.loads((out / "manifest.json").read_text())
        assert set(manifest["engines"]) == set(manifest["graphs"])
        assert (out / manifest["engines"]["decode_step"]["file"]).stat().st_size > 0


# -- bad flags: one line, before anything is read or written -----------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--weights", "int3"], "'int3' is not one of 'float', 'int8', 'int4'"),
    (["--weights", "int4", "--group-size", "7"], "--group-size 7 is not supported: choose 128, 64, 32"),
    (["--weights", "int8", "--group-size", "32"], "--group-size applies to --weights int4 only"),
    (["--group-size", "32"], "--group-size applies to --weights int4 only"),
    (["--weights", "int4", "--group-size", "64"],
     "--group-size 64 does not divide the input width 32 of blocks.0.attn.qkv: choose 32"),
])
def test_bad_weight_flags_are_one_line(flags, message, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(export_command, ["--ckpt", str(DATA / "official_tiny" / "tiny_rar.bin"), "--tokenizer",
                                                 str(DATA / "official_tiny" / "tiny_vq.bin"), "--out", str(out),
                                                 "--no-engine", *flags])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()
    assert not list(tmp_path.glob(".*partial"))


def test_quantized_reference_is_the_dequantized_weights(official_generator):
    """The torch side quantizes the Linears the graph does and no other: adaLN, embeddings and the head stay."""
    import copy

    from rar_deploy.model.quantized import quantize_generator, quantized_linears

    generator = copy.deepcopy(official_generator)
    before = {name: p.detach().clone() for name, p in generator.named_parameters()}
    stored = quantize_generator(generator, SCHEMES["int4"], np.float32)
    assert set(stored) == set(quantized_linears(generator)) and len(stored) == TINY_LINEARS
    changed = {name.removesuffix(".weight") for name, p in generator.named_parameters() if not p.equal(before[name])}
    assert changed == set(stored)
    rows = SCHEMES["int4"].group_size
    for name, weight in stored.items():
        np.testing.assert_array_equal(generator.get_submodule(name).weight.detach().numpy().T,
                                      weight.q.astype(np.float32) * np.repeat(weight.scale, rows, axis=0))


def test_onnx_runtime_fuses_every_quantized_matmul_and_computes_in_float32(quantized_exports, tmp_path):
    """The runtime's session options turn every DequantizeLinear + MatMul into MatMulNBits (the fast kernel) at
    accuracy level 1 (float32 activations: the model the folder holds)."""
    import onnxruntime as ort

    from rar_deploy.runtime.backends import EXACT_QUANTIZED_MATMUL

    for name, bits in (("rar_fp32_int8", 8), ("rar_fp16_int4", 4)):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        for key, value in EXACT_QUANTIZED_MATMUL.items():
            options.add_session_config_entry(key, value)
        ort.InferenceSession(str(quantized_exports[name] / "decode_step.onnx"), options,
                             providers=["CPUExecutionProvider"])
        fused = [n for n in onnx.load(str(tmp_path / f"{name}.onnx")).graph.node if n.op_type == "MatMulNBits"]
        assert len(fused) == TINY_LINEARS, name
        assert all({a.name: a.i for a in n.attribute}["accuracy_level"] == 1 and
                   {a.name: a.i for a in n.attribute}["bits"] == bits for n in fused), name


def test_int8_activations_is_opt_in_approximate_and_refused_where_it_does_not_apply(quantized_exports):
    """--int8-activations (ONNX Runtime's accuracy level 4): close to the folder's model but not it; refused for a
    float folder and for other backends."""
    from rar_deploy.errors import RARDeployError
    from rar_deploy.tools.parity import load_record, run_parity

    folder = quantized_exports["rar_fp32_int4"]
    exact_pipeline = RARPipeline.from_artifacts(folder)
    record = load_record(exact_pipeline.artifacts)
    exact = run_parity(exact_pipeline, record)
    fast = run_parity(RARPipeline.from_artifacts(folder, int8_activations=True), record)
    error = fast["graphs"]["decode_step"]["logits"]["max_rel_to_peak"]
    assert exact["failures"] == [] and 10 * exact["graphs"]["decode_step"]["logits"]["max_rel_to_peak"] < error < 0.1
    for directory, backend in ((quantized_exports["rar_fp32"], "onnxruntime"), (folder, "torch")):
        with pytest.raises(RARDeployError, match="--int8-activations applies to a folder exported with --weights"):
            RARPipeline.from_artifacts(directory, backend, int8_activations=True)


def test_cli_reports_the_scheme_the_exactness_and_the_float_gap(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(export_command, ["--ckpt", str(DATA / "official_tiny" / "tiny_rar.bin"), "--tokenizer",
                                                 str(DATA / "official_tiny" / "tiny_vq.bin"), "--out", str(out),
                                                 "--no-engine", "--fp32", "--weights", "int4", "--max-batch", "2"])
    assert result.exit_code == 0, result.output
    assert "(fp32, weights int4 in blocks of 32)" in result.output
    assert "parity vs the int4 model's float32 reference" in result.output
    assert "tokens 1.000 equal: PASSED" in result.output
    assert "cost of the int4 weights vs the float model" in result.output
