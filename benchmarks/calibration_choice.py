"""Which calibration for --weights int8/int4: NVIDIA Model Optimizer's algorithms against round-to-nearest, on the
trained demo generator (PyTorch, float32 activations), all calibrated on the same data as `rar-export
--calibration` (model.calibration: the float model's own generations, guidance rows included).

Per method: KL(float || quantized) per token and top-1 agreement, teacher-forced on the held-out token sequences
(unguided, T = 1), and the calibration's time. `rtn` and `gptq` are the weights rar-export stores; `awq_clip` and
`awq_lite` are ModelOpt's fake-quantized models as it runs them (`awq_lite` would need a Mul before every
MatMul, outside the graph form).

    python benchmarks/calibration_choice.py [--weights DIR] [--images 32]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rar_deploy.contract.weights import WeightQuantization
from rar_deploy.model.calibration import calibrate, calibration_forward, modelopt_config
from rar_deploy.model.checkpoint import load_rar_generator
from rar_deploy.model.quantized import quantize_generator, quantized_linears
from rar_deploy.training.demo_model import GENERATOR_FILE, SHIPPED, TOKENIZER_FILE, demo_split, load_full_tokenizer
from rar_deploy.training.recipe import DemoRecipe
from rar_deploy.training.tokenizer_training import encode_images

SCHEMES = (WeightQuantization("int8"), WeightQuantization("int4", 64), WeightQuantization("int4", 32))
METHODS = ("rtn", "awq_clip", "awq_lite", "gptq")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default=str(SHIPPED))
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()
    import modelopt.torch.quantization as mtq

    folder = Path(args.weights)
    torch.manual_seed(0)
    generator = load_rar_generator(folder / GENERATOR_FILE).float().eval()
    tokenizer = load_full_tokenizer(folder / TOKENIZER_FILE)
    images, labels = demo_split(DemoRecipe(), "held_out")
    tokens, labels = torch.from_numpy(encode_images(tokenizer, images)), torch.from_numpy(labels)

    @torch.no_grad()
    def log_p(model) -> torch.Tensor:
        return torch.cat([F.log_softmax(model.forward_prefix(labels[i:i + 250], tokens[i:i + 250, :-1])[0], -1)
                          for i in range(0, len(tokens), 250)])

    reference = log_p(generator)
    forward, _ = calibration_forward(generator, tokenizer, args.images, 0)
    print("| weights | calibration | KL nats/token | teacher-forced top-1 = float | calibration s |")
    print("| --- | --- | --- | --- | --- |")
    for scheme in SCHEMES:
        for method in METHODS:
            model = copy.deepcopy(generator)
            start = time.perf_counter()
            if method == "rtn":
                quantize_generator(model, scheme, np.float32)
            elif method == "gptq":  # exactly what rar-export --calibration gptq stores
                calibration = calibrate(generator, tokenizer, scheme, args.images, progress=lambda m: None)
                quantize_generator(model, scheme, np.float32, calibration)
            else:
                config = modelopt_config(list(quantized_linears(model)), scheme, method)
                with contextlib.redirect_stdout(io.StringIO()):
                    mtq.quantize(model, config, forward_loop=forward)
            seconds = time.perf_counter() - start
            log_q = log_p(model)
            kl = float((reference.exp() * (reference - log_q)).sum(-1).mean())
            top1 = float((reference.argmax(-1) == log_q.argmax(-1)).float().mean())
            print(f"| {scheme.label} | {method} | {kl:.2e} | {top1:.3f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
