"""ctest driver: the C++ runtime (rar_generate) against rar-deploy's Python runtime and the official golden
fixture, and its refusals. Runs with the project's Python (rar-deploy installed with the export extra).

    cpp_parity.py prepare WORK                 export the tiny artifacts (RAR and VAR, fp32 and fp16) and damaged
                                               copies
    cpp_parity.py parity WORK RAR_GENERATE     tokens and pixels equal to the Python runtime's
    cpp_parity.py jacobi WORK RAR_GENERATE     speculative decoding: the Python runtime's tokens; greedy = sequential
    cpp_parity.py official_greedy WORK RAR_GENERATE   the official greedy tokens at temperature 0
    cpp_parity.py var_parity WORK RAR_GENERATE        VAR: tokens and pixels equal to the Python runtime's
    cpp_parity.py var_official_greedy WORK RAR_GENERATE   VAR: the official greedy tokens at temperature 0
    cpp_parity.py var_scales WORK RAR_GENERATE        VAR: the scales of other models derived as Python does
    cpp_parity.py cli_refusals WORK RAR_GENERATE      bad input: one line, exit 1 or 2, nothing written
    cpp_parity.py outputs WORK RAR_GENERATE           docs/RELIABILITY.md's promises about outputs
    cpp_parity.py tensorrt WORK RAR_GENERATE   the tensorrt backend (GPU machines; exit 77 = skipped)

RAR_EMULATOR, if set, runs RAR_GENERATE under it (a cross build's programs under qemu-user).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "official_tiny"
VAR_TINY = REPO / "tests" / "data" / "official_var_tiny"
SKIP = 77
SEEDS, BATCH_SIZES, TEMPERATURES = (0, 1, 2), (1, 3), (0.0, 1.0)
SCHEDULES = {"const": (4.0, 0.0), "powcos": (16.0, 2.75)}
LABELS = [3, 500, 999]
# (precision, --weights, --calibration) of the quantized folders; GPTQ's manifest carries its calibration record
QUANTIZED = (("fp16", "int8", "rtn"), ("fp32", "int4", "gptq"), ("fp32", "fp8", "rtn"))
# VAR models whose scales only their manifests hold (patch_nums, num_phi): the released one, near and exact
# ties of the Phi rule, one Phi, sides above P (area up, bicubic down); ratios whose weights round in float32.
# one_phi's up matrices and unordered's Phi tie at k / (K - 1) = 0.5 come out otherwise with fused multiply-adds
OTHER_VAR_MODELS = {"var_d16": ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 4), "near_tie": ((1, 3, 7, 16), 3),
                    "tie": ((1, 2, 3), 2), "one_phi": ((3, 5, 7, 9, 21), 1), "unordered": ((16, 9, 4, 1, 7), 6)}
# edits of the tiny VAR export's scales, each refused with Python's message: a Phi index, one float32 ulp of a
# down and of an up value, and an up value one double away (it rounds to the same float32: Python compares
# the numbers, so it is refused too)
SCALE_EDITS = {
    "var_edited_phi": lambda scales: scales[2].update(phi_index=3),
    "var_edited_down": lambda scales: scales[2]["down"][1].__setitem__(1, float(np.nextafter(
        np.float32(scales[2]["down"][1][1]), np.float32(1)))),
    "var_edited_up": lambda scales: scales[1]["up"][1].__setitem__(0, float(np.nextafter(
        np.float32(scales[1]["up"][1][0]), np.float32(1)))),
    "var_rounded_up": lambda scales: scales[1]["up"][1].__setitem__(0, math.nextafter(scales[1]["up"][1][0], 1)),
}


def prepare(work: Path) -> None:
    from rar_deploy.contract.integrity import file_record
    from rar_deploy.export.exporter import ExportRequest, export_artifacts
    from rar_deploy.runtime.engines import find_tensorrt
    from rar_deploy.tools.engine_build import BatchProfile

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for precision in ("fp32", "fp16"):
        export_artifacts(ExportRequest(str(TINY / "tiny_rar.bin"), str(TINY / "tiny_vq.bin"), work / precision,
                                       precision, engine=False, profile=BatchProfile(1, 2, 4)), progress=lambda m: None)
    for precision, weights, calibration in QUANTIZED:  # weight-only quantized step graphs (DequantizeLinear + MatMul)
        export_artifacts(ExportRequest(str(TINY / "tiny_rar.bin"), str(TINY / "tiny_vq.bin"),
                                       work / f"{precision}_{weights}", precision, engine=False, verify=False,
                                       profile=BatchProfile(1, 2, 4), weights=weights, calibration=calibration),
                         progress=lambda m: None)
        export_artifacts(ExportRequest(str(VAR_TINY / "var_tiny_var.pth"), str(VAR_TINY / "var_tiny_vae.pth"),
                                       work / f"var_{precision}_{weights}", precision, engine=False, verify=False,
                                       profile=BatchProfile(1, 2, 4), weights=weights, calibration=calibration),
                         progress=lambda m: None)
    export_artifacts(ExportRequest(str(TINY / "tiny_rar.bin"), str(TINY / "tiny_vq.bin"), work / "fp32_parallel",
                                   "fp32", engine=False, verify=False, profile=BatchProfile(1, 2, 4),
                                   parallel_decoding=True), progress=lambda m: None)
    rtx = find_tensorrt() is not None
    export_artifacts(ExportRequest(str(TINY / "tiny_rar.bin"), str(TINY / "tiny_vq.bin"), work / "fp16_engines",
                                   "fp16", engine=rtx, verify=False, profile=BatchProfile(1, 2, 4)),
                     progress=lambda m: None)
    damaged = {name: Path(shutil.copytree(work / "fp32", work / name))
               for name in ("corrupt_manifest", "edited_manifest", "truncated_graph", "swapped_graph")}
    (damaged["corrupt_manifest"] / "manifest.json").write_text('{"schema": "rar-deploy/manifest", "sch')
    manifest = json.loads((work / "fp32" / "manifest.json").read_text())
    manifest["graphs"]["decode_step"]["inputs"][3]["shape"][2] = 99
    (damaged["edited_manifest"] / "manifest.json").write_text(json.dumps(manifest))
    graph = damaged["truncated_graph"] / "decode_step.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    shutil.copyfile(work / "fp16" / "decode_step.onnx", damaged["swapped_graph"] / "decode_step.onnx")
    manifest = json.loads((work / "fp32" / "manifest.json").read_text())  # listed as if honest: the I/O check finds it
    manifest["files"]["decode_step.onnx"] = file_record(work / "fp16" / "decode_step.onnx")
    listed = Path(shutil.copytree(work / "fp32", work / "listed_fp16_graph"))
    shutil.copyfile(work / "fp16" / "decode_step.onnx", listed / "decode_step.onnx")
    (listed / "manifest.json").write_text(json.dumps(manifest))
    for precision in ("fp32", "fp16"):  # the export's own parity check is the Python tests': skipped here
        export_artifacts(ExportRequest(str(VAR_TINY / "var_tiny_var.pth"), str(VAR_TINY / "var_tiny_vae.pth"),
                                       work / f"var_{precision}", precision, engine=False, verify=False,
                                       profile=BatchProfile(1, 2, 4)), progress=lambda m: None)
    # manifests refused before any graph is read: the folders hold nothing else
    manifest = json.loads((work / "var_fp32" / "manifest.json").read_text())
    manifest["scales"][2]["side"] = 4
    (work / "var_edited_manifest").mkdir()
    (work / "var_edited_manifest" / "manifest.json").write_text(json.dumps(manifest))
    for name, edit in SCALE_EDITS.items():
        manifest = json.loads((work / "var_fp32" / "manifest.json").read_text())
        edit(manifest["scales"])
        (work / name).mkdir()
        (work / name / "manifest.json").write_text(json.dumps(manifest))
    manifest = json.loads((work / "var_fp32" / "manifest.json").read_text())
    for name, (patch_nums, num_phi) in OTHER_VAR_MODELS.items():
        (work / f"var_scales_{name}").mkdir()
        (work / f"var_scales_{name}" / "manifest.json").write_text(json.dumps(other_var_model(manifest, patch_nums,
                                                                                               num_phi)))
    # forged manifests (edited, then re-hashed): the scales are data, read with the structure the loop relies on
    malformed = copy.deepcopy(manifest)
    malformed["scales"][2]["down"] = malformed["scales"][2]["down"][:-1]
    phi = copy.deepcopy(manifest)
    phi["scales"][1]["phi_index"] = manifest["tokenizer"]["num_phi"]
    fraction = copy.deepcopy(manifest)
    fraction["scales"][3]["guidance_fraction"] = [3, 0]
    for name, forged in (("var_forged_down_shape", malformed), ("var_forged_phi_index", phi),
                         ("var_forged_guidance_fraction", fraction)):
        (work / name).mkdir()
        (work / name / "manifest.json").write_text(json.dumps(rehashed(forged)))
    integers = copy.deepcopy(manifest)  # JSON numbers compared as numbers: 2.0 is the index 2, 1 the weight 1.0
    integers["scales"][2]["phi_index"] = float(integers["scales"][2]["phi_index"])
    integers["scales"][3]["up"] = [[int(value) for value in row] for row in integers["scales"][3]["up"]]
    (work / "var_scales_integers").mkdir()
    (work / "var_scales_integers" / "manifest.json").write_text(json.dumps(rehashed(integers)))
    manifest = json.loads((work / "fp32" / "manifest.json").read_text())
    manifest["model"]["num_classes"] = 5  # a value no I/O shape shows: the contract hash catches it
    (work / "edited_classes").mkdir()
    (work / "edited_classes" / "manifest.json").write_text(json.dumps(manifest))
    manifest = json.loads((work / "fp32" / "manifest.json").read_text())
    manifest["family"] = "diffusion"  # an honest manifest of a family newer than this runtime
    (work / "unknown_family").mkdir()
    (work / "unknown_family" / "manifest.json").write_text(json.dumps(rehashed(manifest)))


def other_var_model(manifest: dict, patch_nums: tuple[int, ...], num_phi: int) -> dict:
    """A VAR manifest for another model: its graphs' I/O, cache and scales from the contract (no graph files)."""
    from rar_deploy.contract.graphs import var_cache_layout, var_graph_specs, var_scales
    from rar_deploy.contract.manifest import FLOAT_DTYPES, manifest_generator_config, manifest_tokenizer_config

    manifest = copy.deepcopy(manifest)
    manifest["model"]["patch_nums"], manifest["tokenizer"]["num_phi"] = list(patch_nums), num_phi
    generator, tokenizer = manifest_generator_config(manifest), manifest_tokenizer_config(manifest)
    dtype = FLOAT_DTYPES[manifest["precision"]]
    for name, specs in var_graph_specs(generator, tokenizer, dtype).items():
        for kind in ("inputs", "outputs"):
            manifest["graphs"][name][kind] = [spec.to_dict() for spec in specs[kind]]
    manifest["kv_cache"], manifest["scales"] = var_cache_layout(generator, dtype), var_scales(generator, num_phi)
    return rehashed(manifest)


def rehashed(manifest: dict) -> dict:
    """A manifest whose contract hash is recomputed: an honest manifest of another model."""
    from rar_deploy.contract.manifest import contract_sha256

    return {**manifest, "contract_sha256": contract_sha256(manifest)}


def python_refusal(folder: Path) -> str:
    """The message Python's manifest check gives for a folder."""
    from rar_deploy.contract.manifest import read_manifest
    from rar_deploy.errors import RARDeployError

    try:
        read_manifest(folder)
    except RARDeployError as error:
        return str(error)
    raise AssertionError(f"Python opened {folder}")


# A cross build runs another architecture's ONNX Runtime kernels (arm64's), whose float sums round otherwise than
# the x86-64 ones of the Python runtime it is checked against: the same tokens, and pixel values that may differ by
# one level (measured: up to 39 of 36,864 values of an image set, VAR fp16). A native build's pixels are all equal.
# On an arm64 core with half-precision arithmetic (the Orin-class core the tests emulate) ONNX Runtime computes fp16
# graphs in fp16, where x86-64 computes them in float32: other numbers, not a fault of the runtime. fp16 folders are
# checked on FP16_FREE_CPU (Armv8.0, no half-precision arithmetic: float32 as on x86-64), and measured on the other.
CROSS = bool(os.environ.get("RAR_EMULATOR"))
CROSS_PIXELS = 5e-3  # the largest share of uint8 values a cross build may have off by one
FP16_FREE_CPU = "cortex-a72"


def on_target(exe: list[str], artifacts: Path) -> list[str]:
    """The command that runs rar_generate on `artifacts`: a cross build's fp16 folders on FP16_FREE_CPU."""
    fp16 = json.loads((artifacts / "manifest.json").read_text())["precision"] == "fp16"
    return ["env", f"QEMU_CPU={FP16_FREE_CPU}", *exe] if CROSS and fp16 else exe


def assert_pixels(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    if not CROSS:
        np.testing.assert_array_equal(actual, expected, err_msg=f"{what}: pixels")
        return
    difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    off = int(np.count_nonzero(difference))
    assert difference.max() <= 1 and off <= CROSS_PIXELS * difference.size, \
        f"{what}: {off} of {difference.size} pixel values differ, by up to {difference.max()}"
    PIXELS_OFF.append((off, difference.size))


PIXELS_OFF: list[tuple[int, int]] = []  # a cross build's (values off by one, values) of every image set compared


def pixels_checked() -> str:
    if not CROSS:
        return "every uint8 pixel"
    off, total = (sum(column) for column in zip(*PIXELS_OFF))
    return f"pixels within one level ({off} of {total} values off by one, in {sum(1 for o, _ in PIXELS_OFF if o)} of " \
           f"{len(PIXELS_OFF)} image sets)"


def run(exe: list[str], *args, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*exe, *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"rar_generate {' '.join(map(str, args))} failed: {result.stderr}")
    return result


def cpp_generate(exe: list[str], artifacts: Path, out: Path, labels, seed, batch, temperature, scale, pow_,
                 backend: str = "onnxruntime") -> tuple[np.ndarray, np.ndarray]:
    run(on_target(exe, artifacts), "--artifacts", artifacts, "--class-labels", ",".join(map(str, labels)),
        "--seed", seed, "--batch-size", batch, "--temperature", temperature, "--guidance-scale", scale,
        "--guidance-pow", pow_, "--backend", backend, "--out", out, "--save-tokens", out.with_suffix(".npy"), "--force")
    images = np.stack([np.asarray(Image.open(out / f"{i:04d}_class{label}.png")) for i, label in enumerate(labels)])
    return np.load(out.with_suffix(".npy")), images


def cpp_generate_var(exe: list[str], artifacts: Path, out: Path, labels, seed, batch,
                     **sampling) -> tuple[np.ndarray, np.ndarray]:
    """rar_generate on a VAR folder; sampling: guidance_scale, top_k, top_p, temperature (unset: the defaults)."""
    options = [item for name, value in sampling.items() for item in (f"--{name.replace('_', '-')}", value)]
    run(on_target(exe, artifacts), "--artifacts", artifacts, "--class-labels", ",".join(map(str, labels)),
        "--seed", seed, "--batch-size", batch, *options, "--out", out, "--save-tokens", out.with_suffix(".npy"),
        "--force")
    images = np.stack([np.asarray(Image.open(out / f"{i:04d}_class{label}.png")) for i, label in enumerate(labels)])
    return np.load(out.with_suffix(".npy")), images


def parity(work: Path, exe: list[str]) -> None:
    from rar_deploy import RARPipeline, RARSampling

    # a cross build checks its numbers on fewer seeds and schedules (a run costs seconds under qemu-user); the
    # loop's logic, the same code, is checked on the whole grid by the native build
    seeds, schedules = (SEEDS[:1], {"powcos": SCHEDULES["powcos"]}) if CROSS else (SEEDS, SCHEDULES)

    checked = 0
    for precision in ("fp32", "fp16", *(f"{p}_{w}" for p, w, _ in QUANTIZED)):
        pipeline = RARPipeline.from_artifacts(work / precision, "onnxruntime")
        for seed, batch, temperature, (scale, pow_) in itertools.product(seeds, BATCH_SIZES, TEMPERATURES,
                                                                        schedules.values()):
            tokens, images = cpp_generate(exe, work / precision, work / "out" / "samples", LABELS, seed, batch,
                                          temperature, scale, pow_)
            sampling = RARSampling(guidance_scale=scale, guidance_pow=pow_, temperature=temperature)
            expected = pipeline.generate(LABELS, sampling=sampling, seed=seed, batch_size=batch).tokens
            np.testing.assert_array_equal(tokens, expected, err_msg=f"{precision} seed {seed} batch {batch}")
            assert_pixels(images, pipeline.decode(expected), f"{precision} seed {seed} batch {batch}")
            checked += 1
    print(f"C++ == Python: tokens and {pixels_checked()}, {checked} runs (fp32/fp16 float, fp16 int8, fp32 int4 x "
          f"seeds {seeds} x batch "
          f"{BATCH_SIZES} x temperature {TEMPERATURES} x schedules {list(schedules)})")
    if CROSS:  # fp16 on the emulated core, half-precision arithmetic and all: measured, not compared
        for precision in ("fp16", "fp16_int8"):
            pipeline = RARPipeline.from_artifacts(work / precision, "onnxruntime")
            run(exe, "--artifacts", work / precision, "--class-labels", ",".join(map(str, LABELS)), "--seed", 0,
                "--temperature", 0.0, "--out", work / "out" / "fp16", "--save-tokens", work / "out" / "fp16.npy",
                "--force")
            tokens = np.load(work / "out" / "fp16.npy")
            images = np.stack([np.asarray(Image.open(work / "out" / "fp16" / f"{i:04d}_class{label}.png"))
                               for i, label in enumerate(LABELS)])
            expected = pipeline.generate(LABELS, sampling=RARSampling(temperature=0.0), seed=0).tokens
            psnr = 10 * np.log10(255 ** 2 / max(np.mean((images.astype(np.float64) - pipeline.decode(tokens)) ** 2),
                                                1e-12))
            print(f"{precision} on {os.environ.get('QEMU_CPU')}, greedy: {np.mean(tokens == expected):.3f} of the "
                  f"tokens x86-64 draws; the same tokens decoded at {psnr:.1f} dB PSNR")
    pipeline = RARPipeline.from_artifacts(work / "fp32", "onnxruntime")
    expected = pipeline.generate(LABELS, sampling=RARSampling(guidance_scale=4.0, guidance_pow=0.0, temperature=1.0),
                                 seed=4, batch_size=3).tokens  # the whole table: 17 positions
    per_position = 2 * len(LABELS) * pipeline.artifacts.condition_width * 4
    for window in (1, 5):
        out = work / "out" / "window"
        result = run(exe, "--artifacts", work / "fp32", "--class-labels", ",".join(map(str, LABELS)), "--seed", 4,
                     "--guidance-scale", 4.0, "--guidance-pow", 0.0, "--temperature", 1.0, "--batch-size", 3,
                     "--condition-budget", window * per_position, "--out", out, "--save-tokens",
                     out.with_suffix(".npy"), "--force")
        assert f"condition window {window}," in result.stdout, result.stdout
        np.testing.assert_array_equal(np.load(out.with_suffix(".npy")), expected, err_msg=f"window {window}")
    print("C++ condition windows of 1 and 5 positions == the whole table (Python)")


def jacobi(work: Path, exe: list[str]) -> None:
    """Speculative Jacobi decoding (rar_generate --parallel-window): greedy gives the sequential tokens; sampling draws
    the Python runtime's tokens from the same seeds (docs/CONTRACT.md fixes the loop and its noise), batch 1 and 3
    (images at different positions in one call), guided and unguided; refused on a folder without decode_block."""
    from rar_deploy import RARPipeline, RARSampling

    folder = work / "fp32_parallel"
    pipeline = RARPipeline.from_artifacts(folder, "onnxruntime")
    out = work / "out" / "jacobi"
    checked = 0
    for window, batch, temperature, scale in itertools.product((1, 4, 16), BATCH_SIZES, TEMPERATURES, (4.0, 0.0)):
        result = run(on_target(exe, folder), "--artifacts", folder, "--class-labels", ",".join(map(str, LABELS)),
                     "--seed", 5, "--batch-size", batch, "--temperature", temperature, "--guidance-scale", scale,
                     "--guidance-pow", 0.0, "--parallel-window", window, "--out", out, "--save-tokens",
                     out.with_suffix(".npy"), "--force")
        sampling = RARSampling(guidance_scale=scale, guidance_pow=0.0, temperature=temperature)
        expected = pipeline.generate(LABELS, sampling=sampling, seed=5, batch_size=batch, parallel_window=window)
        calls = pipeline.decode_calls.mean()
        what = f"window {window} batch {batch} temperature {temperature} guidance {scale}"
        np.testing.assert_array_equal(np.load(out.with_suffix(".npy")), expected.tokens, err_msg=what)
        if temperature == 0:
            sequential = pipeline.generate(LABELS, sampling=sampling, seed=5, batch_size=batch).tokens
            np.testing.assert_array_equal(expected.tokens, sequential, err_msg=what)
        record = json.loads((out / "samples.json").read_text())
        assert record["parallel_window"] == window, (what, record)
        assert math.isclose(record["decode_calls_per_image"], calls, rel_tol=1e-9), what
        assert f"{calls:g} decode calls an image" in result.stdout, result.stdout
        checked += 1
    refused = run(exe, "--artifacts", work / "fp32", "--class-labels", "1", "--parallel-window", 4, "--out",
                  work / "out" / "refused", check=False)
    assert refused.returncode != 0 and "rar-export --parallel-decoding" in refused.stderr, refused.stderr
    assert not (work / "out" / "refused").exists()
    print(f"C++ speculative decoding == Python: tokens in {checked} runs (windows 1, 4, 16 x batch {BATCH_SIZES} x "
          f"temperature {TEMPERATURES} x guidance 4, 0); greedy == sequential; refused without decode_block")


def official_greedy(work: Path, exe: list[str]) -> None:
    with np.load(TINY / "tiny_golden.npz") as npz:
        golden = dict(npz)
    for name, (scale, pow_) in SCHEDULES.items():
        tokens, _ = cpp_generate(exe, work / "fp32", work / "out" / f"official_{name}", list(golden["labels"]), 0, 2,
                                 0.0, scale, pow_)
        np.testing.assert_array_equal(tokens, golden[f"greedy_tokens_{name}"], err_msg=name)
    print("rar_generate reproduces the official greedy tokens for both guidance schedules")


def var_parity(work: Path, exe: list[str]) -> None:
    from rar_deploy.runtime import VARPipeline, VARSampling

    samplings = ({}, {"temperature": 0.0})  # the published defaults (sampled), and greedy
    seeds = SEEDS[:1] if CROSS else SEEDS[:2]
    checked = 0
    for precision in ("var_fp32", "var_fp16", *(f"var_{p}_{w}" for p, w, _ in QUANTIZED)):
        pipeline = VARPipeline.from_artifacts(work / precision, "onnxruntime")
        for seed, batch, sampling in itertools.product(seeds, BATCH_SIZES, samplings):
            tokens, images = cpp_generate_var(exe, work / precision, work / "out" / "var", LABELS, seed, batch,
                                              **sampling)
            expected_tokens, expected_images = pipeline.generate(LABELS, sampling=VARSampling(**sampling), seed=seed,
                                                                 batch_size=batch)
            what = f"{precision} seed {seed} batch {batch} {sampling}"
            np.testing.assert_array_equal(tokens, expected_tokens, err_msg=what)
            assert_pixels(images, expected_images, what)
            checked += 1
        sampling = {"guidance_scale": 4.0, "top_k": 5, "top_p": 0.5, "temperature": 1.3}  # every option given
        tokens, images = cpp_generate_var(exe, work / precision, work / "out" / "var", LABELS, 3, 2, **sampling)
        expected_tokens, expected_images = pipeline.generate(LABELS, sampling=VARSampling(**sampling), seed=3,
                                                             batch_size=2)
        np.testing.assert_array_equal(tokens, expected_tokens, err_msg=f"{precision} {sampling}")
        assert_pixels(images, expected_images, f"{precision} {sampling}")
        checked += 1
    print(f"C++ == Python (VAR): tokens and {pixels_checked()}, {checked} runs (fp32/fp16 float and quantized x "
          f"seeds {seeds} x "
          f"batch {BATCH_SIZES} x defaults/temperature 0, and every option given)")


def var_official_greedy(work: Path, exe: list[str]) -> None:
    with np.load(VAR_TINY / "var_tiny_golden.npz") as npz:
        golden = dict(npz)
    for key, scale in (("cfg4", 4.0), ("cfg1_5", 1.5)):
        tokens, _ = cpp_generate_var(exe, work / "var_fp32", work / "out" / f"var_official_{key}",
                                     list(golden["labels"]), 0, 2, guidance_scale=scale, temperature=0.0)
        np.testing.assert_array_equal(tokens, golden[f"greedy_tokens_{key}"], err_msg=key)
    print("rar_generate reproduces the official VAR greedy tokens (cfg 4 and 1.5) from the fp32 export")


def var_scales(work: Path, exe: list[str]) -> None:
    from rar_deploy.contract.manifest import read_manifest

    for folder in sorted(work.glob("var_scales_*")):
        read_manifest(folder)  # Python opens it
        result = run(exe, "--artifacts", folder, "--class-labels", "1", "--out", work / "out" / "scales", check=False)
        line = result.stderr.strip()
        assert f"{folder / 'var_decoder.onnx'} is missing" in line, f"{folder.name}: {line}"  # past the manifest
        print(f"ok   {folder.name}: C++ reads the scales Python wrote for this model")


def cli_refusals(work: Path, exe: list[str]) -> None:
    out = work / "refused"
    shutil.rmtree(out, ignore_errors=True)
    (work / "not_ours").mkdir(exist_ok=True)
    (work / "not_ours" / "photo.png").write_bytes(b"mine")
    (work / "precious.bin").write_bytes(b"a checkpoint")
    base = ["--class-labels", "1", "--out", out]
    cases = [
        ("missing folder", ["--artifacts", work / "nowhere", *base], "not found"),
        ("corrupt manifest", ["--artifacts", work / "corrupt_manifest", *base], "is corrupt"),
        ("edited manifest", ["--artifacts", work / "edited_manifest", *base], "was edited"),
        ("truncated graph", ["--artifacts", work / "truncated_graph", *base], "truncated"),
        ("swapped graph", ["--artifacts", work / "swapped_graph", *base], "replaced"),
        ("fp16 graph listed in an fp32 folder", ["--artifacts", work / "listed_fp16_graph", *base],
         "does not belong to this manifest"),
        ("unknown backend", ["--artifacts", work / "fp32", *base, "--backend", "tflite"], "backend"),
        ("class id out of range", ["--artifacts", work / "fp32", "--class-labels", "1000", "--out", out],
         "out of range"),
        ("labels not integers", ["--artifacts", work / "fp32", "--class-labels", "cat", "--out", out], "integers"),
        ("batch over the profile", ["--artifacts", work / "fp32", *base, "--batch-size", "5"], "profile"),
        ("NaN guidance", ["--artifacts", work / "fp32", *base, "--guidance-scale", "nan"], "finite"),
        ("infinite temperature", ["--artifacts", work / "fp32", *base, "--temperature", "inf"], "finite"),
        ("negative seed", ["--artifacts", work / "fp32", *base, "--seed", "-1"], "seed"),
        ("engines for another GPU or TensorRT", ["--artifacts", work / "fp16_engines", *base, "--backend", "tensorrt"],
         "TensorRT"),
        ("--out is the artifacts", ["--artifacts", work / "fp32", "--class-labels", "1", "--out", work / "fp32",
                                    "--force"], "input"),
        ("--out not ours, with --force", ["--artifacts", work / "fp32", "--class-labels", "1", "--out",
                                          work / "not_ours", "--force"], "was not written by rar-generate"),
        ("--save-tokens over a non-npy file", ["--artifacts", work / "fp32", *base, "--save-tokens",
                                               work / "precious.bin", "--force"], "was not written by rar-generate"),
        ("--save-tokens existing without --force", ["--artifacts", work / "fp32", *base, "--save-tokens",
                                                    work / "precious.bin"], "exists"),
        ("unknown model family", ["--artifacts", work / "unknown_family", *base], "does not know"),
        ("edited VAR manifest", ["--artifacts", work / "var_edited_manifest", *base], "was edited"),
        ("edited number of classes", ["--artifacts", work / "edited_classes", *base], "was edited"),
        ("no images per class", ["--artifacts", work / "fp32", *base, "--num-per-class", "0"],
         "--num-per-class: must be at least 1, got 0"),
        ("a name longer than the file system allows", ["--artifacts", work / "fp32", "--class-labels", "1",
                                                      "--out", work / ("m" * 256)], "256 bytes long"),
        ("--top-k on RAR", ["--artifacts", work / "fp32", *base, "--top-k", "5"], "top-k does not apply to a RAR"),
        ("--top-p on RAR", ["--artifacts", work / "fp32", *base, "--top-p", "0.5"], "top-p does not apply to a RAR"),
        ("--guidance-pow on VAR", ["--artifacts", work / "var_fp32", *base, "--guidance-pow", "1"],
         "guidance pow does not apply to a VAR"),
        ("--condition-budget on VAR", ["--artifacts", work / "var_fp32", *base, "--condition-budget", "0"],
         "does not apply to a VAR"),
        ("top-p 1.0", ["--artifacts", work / "var_fp32", *base, "--top-p", "1.0"], "top-p must lie in [0, 1)"),
        ("negative top-k", ["--artifacts", work / "var_fp32", *base, "--top-k", "-1"], "top-k must be >= 0"),
        ("negative VAR guidance", ["--artifacts", work / "var_fp32", *base, "--guidance-scale", "-1"], ">= 0"),
        ("VAR class id out of range", ["--artifacts", work / "var_fp32", "--class-labels", "1000", "--out", out],
         "out of range"),
        ("forged VAR scale matrix of the wrong shape", ["--artifacts", work / "var_forged_down_shape", *base],
         "scale 2's down is not a [3, 4] matrix of finite numbers"),
        ("forged VAR Phi index", ["--artifacts", work / "var_forged_phi_index", *base],
         "scale 1's phi_index is 4, not one of the tokenizer's 4 Phi convolutions"),
        ("forged VAR guidance fraction", ["--artifacts", work / "var_forged_guidance_fraction", *base],
         "scale 3's guidance_fraction is [3,0], not [n, d] with whole n >= 0 and d >= 1"),
        *[(f"{name} (Python's message)", ["--artifacts", work / name, *base], f"Error: {python_refusal(work / name)}")
          for name in ("var_edited_manifest", *SCALE_EDITS)],
        ("guidance over 1e4", ["--artifacts", work / "fp32", *base, "--guidance-scale", "100000"],
         "guidance scale must lie within +-10000 (published values are 1.5 to 16), got 100000"),
        ("VAR guidance under -1e4", ["--artifacts", work / "var_fp32", *base, "--guidance-scale", "-10000.5"],
         "guidance scale must lie within +-10000 (published values are 1.5 to 16), got -10000.5"),
        ("over a million images", ["--artifacts", work / "fp32", "--class-labels", "1,2", "--num-per-class",
                                   "500001", "--out", out],
         "1000002 images (--class-labels x --num-per-class) are more than one call makes (1000000): split the "
         "request"),
        ("images past 2**64", ["--artifacts", work / "fp32", "--class-labels", "1,2,3", "--num-per-class",
                               str(2**63 - 1), "--out", out],
         f"{3 * (2**63 - 1)} images (--class-labels x --num-per-class) are more than one call makes"),
        ("no labels", ["--artifacts", work / "fp32", "--class-labels", " , ", "--out", out],
         "no class labels given: pass at least one ImageNet class id"),
        ("--save-tokens is --out", ["--artifacts", work / "fp32", *base, "--save-tokens", f"{out}/"],
         f"--save-tokens {out}/ is --out {out}, lies inside it or holds it: save the tokens outside --out"),
        ("--save-tokens inside --out", ["--artifacts", work / "fp32", "--class-labels", "1", "--out",
                                        os.path.relpath(out), "--save-tokens", out / "tokens.npy"],
         "lies inside it or holds it"),
        ("--save-tokens holds --out", ["--artifacts", work / "fp32", "--class-labels", "1", "--out",
                                       out / "images", "--save-tokens", out], "lies inside it or holds it"),
    ]
    for name, args, phrase in cases:
        result = run(exe, *args, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode in (1, 2), f"{name}: exit {result.returncode}"  # 1 refused, 2 usage; not an abort
        assert len(lines) == 1 and phrase in lines[0], f"{name}: {result.stderr!r}"
        assert not out.exists(), f"{name}: wrote {out}"
        print(f"ok   {name}: {lines[0]}")
    assert (work / "not_ours" / "photo.png").read_bytes() == b"mine"
    assert (work / "precious.bin").read_bytes() == b"a checkpoint"


def outputs(work: Path, exe: list[str]) -> None:
    """docs/RELIABILITY.md's output promises for rar_generate: replace only what it wrote, all outputs together,
    no leftovers, one line for a failed write, links followed, long names, the tokens file Python recognises."""
    from rar_deploy.tools.sample_files import tokens_written

    root = work / "outputs"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    out, args = root / "g", ["--artifacts", work / "fp32", "--class-labels", "1,2"]

    def refused(result: subprocess.CompletedProcess, *phrases: str) -> None:
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert all(phrase in lines[0] for phrase in phrases), result.stderr
        assert not [p for p in root.rglob("*") if p.name.endswith((".lock", ".partial"))], "leftovers"

    run(exe, *args, "--out", out, "--save-tokens", root / "t.npy")
    assert tokens_written(root / "t.npy") is not None  # Python's --force recognises C++'s tokens file
    (out / "thesis.txt").write_text("weeks of work")
    refused(run(exe, *args, "--out", out, "--force", check=False), "thesis.txt", "did not write")
    (out / "thesis.txt").unlink()
    np.save(root / "mine.npy", np.zeros(3))
    refused(run(exe, *args, "--out", root / "h", "--save-tokens", root / "mine.npy", "--force", check=False),
            "was not written by rar-generate")
    link = root / "link"
    link.symlink_to(out)
    run(exe, *args, "--out", link, "--force", "--seed", "4", "--save-tokens", root / "t.npy")
    assert link.is_symlink() and json.loads((out / "samples.json").read_text())["seed"] == 4
    long_name = root / ("n" * 250)
    run(exe, *args, "--out", long_name)
    run(exe, *args, "--out", long_name, "--force")
    here = subprocess.run([*exe, *map(str, args), "--out", "."], capture_output=True, text=True, cwd=out)
    refused(here, "the folder you are in")
    limited = subprocess.run(["bash", "-c", 'ulimit -f 4 && exec "$@"', "limit", *exe, *map(str, args), "--out",
                              root / "big"], capture_output=True, text=True)
    refused(limited, "File too large", "ulimit -f")
    assert not (root / "big").exists()
    small = root / "small"  # tokens on a full disk: the images are not published either
    small.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small)]
    if os.geteuid() == 0 and subprocess.run(mount).returncode == 0:
        try:
            (small / "fill").write_bytes(b"\0" * 14000)
            refused(run(exe, "--artifacts", work / "fp32", "--class-labels", ",".join(["1"] * 60), "--out",
                        root / "together", "--save-tokens", small / "t.npy", check=False), "No space left on device",
                    "nothing was written")
            assert not (root / "together").exists() and sorted(p.name for p in small.iterdir()) == ["fill"]
        finally:
            subprocess.run(["umount", "-l", str(small)], check=True)
        print("ok   full disk: nothing published, nothing left")
    else:
        print("skipped: full disk (mounting a small tmpfs needs root)")
    print("ok   outputs")


def tensorrt(work: Path, exe: list[str]) -> None:
    from rar_deploy import RARPipeline, RARSampling
    from rar_deploy.runtime.gpu import cuda_capability

    probe = run(exe, "--artifacts", work / "fp16_engines", "--class-labels", "1", "--backend", "tensorrt",
                "--out", work / "out" / "probe", check=False)
    if cuda_capability() is None or "built without TensorRT" in probe.stderr:
        print(f"skipped: {probe.stderr.strip() or 'no GPU'}")
        raise SystemExit(SKIP)
    tokens, images = cpp_generate(exe, work / "fp16_engines", work / "out" / "trt", LABELS, 0, 3, 1.0, 4.0, 1.0,
                                  backend="tensorrt")
    expected = RARPipeline.from_artifacts(work / "fp16_engines", "tensorrt").generate(
        LABELS, sampling=RARSampling(guidance_scale=4.0, guidance_pow=1.0, temperature=1.0)).tokens
    agreement = float(np.mean(tokens == expected))
    print(f"C++ tensorrt vs Python tensorrt: {agreement:.4f} of tokens equal")
    assert agreement >= 0.99


if __name__ == "__main__":
    command, work = sys.argv[1], Path(sys.argv[2])
    if command == "prepare":
        prepare(work)
    else:
        {"parity": parity, "jacobi": jacobi, "official_greedy": official_greedy, "var_parity": var_parity,
         "var_official_greedy": var_official_greedy, "var_scales": var_scales, "cli_refusals": cli_refusals,
         "outputs": outputs,
         "tensorrt": tensorrt}[command](work, [*shlex.split(os.environ.get("RAR_EMULATOR", "")), sys.argv[3]])
