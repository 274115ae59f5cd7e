"""Calibrated weight quantization: GPTQ (NVIDIA Model Optimizer's `mtq.quantize`, algorithm "gptq") on the model's
own generations, in exactly the graph form of round-to-nearest (contract.weights): symmetric integers, one scale
per channel or block, no extra operator. GPTQ moves each weight to the integer that best keeps the Linear's output
on the calibration activations (second-order error compensation); the scales stay max |weight| / levels.

Measured on the trained demo model (benchmarks/RESULTS.md): against round-to-nearest, GPTQ cut the KL to the
float model 2.5x at int4; ModelOpt's AWQ variants (`awq_clip`, `awq_lite`) gained far less, and `awq_lite`
needs a Mul before every MatMul.

The calibration data is the float model's own generations at its published sampling (class-conditional rows and
their guidance rows), so that the adaLN-modulated activations of both kinds of row are in the statistics.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import io
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from rar_deploy.contract.sampling import guidance_rows, is_guided, sampling_noise
from rar_deploy.contract.weights import WeightQuantization
from rar_deploy.errors import RARDeployError
from rar_deploy.model.generator import RARGenerator
from rar_deploy.model.quantized import input_peaks, quantized_linears

CALIBRATIONS = ("rtn", "gptq")
CALIBRATION_IMAGES = 32  # images generated for the statistics; guidance doubles the rows
CALIBRATION_SEED = 0
_GPTQ = {"method": "gptq", "perc_damp": 0.01, "block_size": 128}
_INSTALL = "pip install 'rar-deploy[calibrate]'"


@dataclass(frozen=True)
class CalibratedWeight:
    weight: np.ndarray  # float32 [in, out]: the weight GPTQ chose (on the integer grid of `peak`)
    peak: np.ndarray  # float32 [groups, out]: max |weight| / levels is the scale, as round-to-nearest's


@dataclass(frozen=True)
class Calibration:
    record: dict  # the manifest's `calibration`: method, library, settings, the data and its SHA-256
    weights: dict[str, CalibratedWeight] | None = None  # GPTQ's choice of weights (None: round to nearest)
    input_peaks: dict[str, float] | None = None  # fp8: max |input| of every quantized Linear


def check_calibration(calibration: str, quantization: WeightQuantization | None) -> None:
    """The --calibration flag against --weights, and the library it needs, before any heavy work."""
    if calibration not in CALIBRATIONS:
        raise RARDeployError(f"--calibration {calibration} is not a method: choose {', '.join(CALIBRATIONS)}")
    if calibration == "rtn":
        return
    if quantization is None or quantization.quantizes_activations:
        raise RARDeployError(f"--calibration {calibration} applies to --weights int8 or int4"
                             + (" (fp8 calibrates its activation ranges itself)" if quantization else ""))
    try:
        importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError:
        raise RARDeployError(f"--calibration {calibration} needs NVIDIA Model Optimizer: {_INSTALL}") from None


def calibrate(generator: nn.Module, tokenizer: nn.Module, quantization: WeightQuantization,
              images: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED,
              progress: Callable[[str], None] = print) -> Calibration:
    """GPTQ on a copy of `generator` (left unchanged), calibrated on its own generations of `images` images."""
    import modelopt.torch.quantization as mtq

    progress(f"generating {images} images to calibrate on (the float model, published sampling)")
    forward, data = calibration_forward(generator, tokenizer, images, seed)
    model = copy.deepcopy(generator).float().eval()
    names = list(quantized_linears(model))
    config = modelopt_config(names, quantization, dict(_GPTQ))
    progress(f"GPTQ on {len(names)} Linears (NVIDIA Model Optimizer)")
    with contextlib.redirect_stdout(_GPTQProgress(len(names), progress)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cannot find transformers")  # ModelOpt's, for LLM export only
        mtq.quantize(model, config, forward_loop=forward)
    modules = dict(model.named_modules())
    weights = {}
    for name in names:
        module = modules[name]
        amax = module.weight_quantizer.export_amax().detach().float()  # [out, groups] ([out, 1] for int8)
        weights[name] = CalibratedWeight(module.weight.detach().float().T.numpy().copy(),
                                         amax.reshape(module.weight.shape[0], -1).T.numpy().copy())
    record = {"method": "gptq", "library": f"nvidia-modelopt {importlib.metadata.version('nvidia-modelopt')}",
              "settings": {k: v for k, v in _GPTQ.items() if k != "method"}, "data": data}
    return Calibration(record, weights=weights)


def modelopt_config(names: list[str], quantization: WeightQuantization, algorithm: dict | str) -> dict:
    """ModelOpt's quantization config for our scheme on the Linears `names` alone (every other quantizer off):
    symmetric on our grid (narrow range: -7 .. 7, -127 .. 127), int8 per output channel, int4 in our blocks."""
    quantizer = {"num_bits": 8 if quantization.scheme == "int8" else 4, "narrow_range": True,
                 **({"axis": 0} if quantization.group_size is None else
                    {"block_sizes": {-1: quantization.group_size, "type": "static"}})}
    return {"quant_cfg": [{"quantizer_name": "*", "enable": False}]
            + [{"quantizer_name": f"{name}.weight_quantizer", "cfg": quantizer, "enable": True} for name in names],
            "algorithm": algorithm}


class _GPTQProgress(io.TextIOBase):
    """ModelOpt's printout during GPTQ, as the export's progress: a line per Linear it has updated."""

    def __init__(self, total: int, progress: Callable[[str], None]) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.startswith("[") and "Relative MSE error" in line:  # "[blocks.0.attn.qkv] Relative MSE error: ..."
                self.done += 1
                self.progress(f"GPTQ {self.done}/{self.total}: {line[1:line.index(']')]}")
            elif line.startswith("Computing Hessians"):
                self.progress("GPTQ: Hessians from the calibration generations")
        return len(text)


def calibrate_inputs(generator: nn.Module, tokenizer: nn.Module, images: int = CALIBRATION_IMAGES,
                     seed: int = CALIBRATION_SEED, progress: Callable[[str], None] = print) -> Calibration:
    """fp8's static activation ranges: max |input| of every quantized Linear over the float model's own generations
    (ModelOpt's and TensorRT-LLM's default FP8 calibration, "max")."""
    progress(f"generating {images} images to calibrate the fp8 activation ranges on (published sampling)")
    forward, data = calibration_forward(generator, tokenizer, images, seed)
    peaks = input_peaks(generator, forward)
    record = {"method": "max", "library": "rar-deploy", "settings": {"statistic": "max |input| per tensor"},
              "data": data}
    return Calibration(record, input_peaks=peaks)


def calibration_forward(generator: nn.Module, tokenizer: nn.Module, images: int, seed: int
                         ) -> tuple[Callable[[nn.Module], None], dict]:
    """The forward loop ModelOpt replays, and the record of its data. Labels spread evenly over the classes."""
    config = generator.config
    labels = (np.arange(images) * config.num_classes // images).astype(np.int64)
    if isinstance(generator, RARGenerator):
        from rar_deploy.model.reference import reference_generate

        sampling = config.sampling_defaults
        tokens = reference_generate(generator, labels, sampling.guidance_scale, sampling.guidance_pow,
                                    sampling.temperature, seed=seed).tokens
        rows = torch.from_numpy(guidance_rows(labels, is_guided(sampling.guidance_scale), config.null_class))
        sequences = tokens.repeat(rows.shape[0] // images, 1)

        @torch.no_grad()
        def forward(model: nn.Module) -> None:  # teacher-forced over the generated sequences: every step's input
            for i in range(0, rows.shape[0], 16):
                model.forward_prefix(rows[i:i + 16], sequences[i:i + 16, :-1])
        drawn = {"guidance_scale": sampling.guidance_scale, "guidance_pow": sampling.guidance_pow,
                 "temperature": sampling.temperature}
    else:
        from rar_deploy.contract.config import VARSamplingDefaults
        from rar_deploy.model.reference import var_reference_generate

        sampling = VARSamplingDefaults()
        noise = torch.from_numpy(sampling_noise(seed, images, config.seq_len, config.codebook_size))

        def generate(model: nn.Module) -> torch.Tensor:  # the scale steps of a generation, guidance rows included
            return var_reference_generate(model, tokenizer, labels.tolist(), sampling.guidance_scale, sampling.top_k,
                                          sampling.top_p, sampling.temperature, noise).tokens

        tokens = generate(generator)
        forward = generate
        drawn = {"guidance_scale": sampling.guidance_scale, "top_k": sampling.top_k, "top_p": sampling.top_p,
                 "temperature": sampling.temperature}
    digest = hashlib.sha256(labels.tobytes() + tokens.numpy().astype(np.int64).tobytes()).hexdigest()
    return forward, {"images": images, "seed": seed, "labels": "evenly spread: i * classes // images",
                     "sampling": drawn, "guidance_rows": True, "sha256": digest}

