"""The OFFICIAL RAR `generate()` (bytedance/1d-tokenizer, KV cache on) against our ONNX Runtime loop, on the
same weights, in one process, tokens only (no decoder): the ratio the speed issue asks for.

The official repository is not part of rar-deploy: clone it yourself and pass its path. Only its
`modeling/rar.py` and `modeling/modules/base_model.py` are imported; the two third-party pieces they
import are replaced by equivalents: timm's `Mlp` (fc1 -> GELU -> fc2, the same parameters) and the
omegaconf config (a namespace).

    python benchmarks/official_generate.py --official-repo ~/src/1d-tokenizer --ckpt rar_b.bin \
        --artifacts rar_b-fp32 --batch-sizes 1,4
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rar_deploy import RARPipeline, Sample, load_rar_generator
from rar_deploy.model.checkpoint import read_state_dict


class Mlp(nn.Module):
    """What the official block needs of timm.layers.Mlp: fc1 -> act -> fc2 (dropout 0 at inference)."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0, **_):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def official_rar(repo: Path):
    """The official RAR class, imported from a clone of the official repository."""
    timm = types.ModuleType("timm")
    timm.layers = types.ModuleType("timm.layers")
    timm.layers.Mlp = Mlp
    sys.modules.update({"timm": timm, "timm.layers": timm.layers})
    modeling = types.ModuleType("modeling")
    modeling.__path__ = [str(repo / "modeling")]
    modules = types.ModuleType("modeling.modules")
    spec = importlib.util.spec_from_file_location("modeling.modules.base_model",
                                                  repo / "modeling" / "modules" / "base_model.py")
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    modules.BaseModel = base.BaseModel
    sys.modules.update({"modeling": modeling, "modeling.modules": modules})
    spec = importlib.util.spec_from_file_location("modeling.rar", repo / "modeling" / "rar.py")
    rar = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rar)
    return rar.RAR


class Config(dict):
    """Attribute access and .get(), all the official constructor uses of its omegaconf config."""

    __getattr__ = dict.__getitem__


def official_model(repo: Path, ckpt: Path) -> nn.Module:
    c = load_rar_generator(ckpt).config
    generator = Config(hidden_size=c.hidden_size, num_hidden_layers=c.depth, num_attention_heads=c.num_heads,
                       intermediate_size=c.mlp_size, image_seq_len=c.image_seq_len, condition_num_classes=c.num_classes,
                       dropout=0.0, attn_drop=0.0)
    config = Config(model=Config(generator=generator, vq_model=Config(codebook_size=c.codebook_size)))
    model = official_rar(repo)(config)
    missing, unexpected = model.load_state_dict(read_state_dict(ckpt), strict=False)
    if missing or unexpected:
        raise SystemExit(f"the official model does not take this checkpoint: missing {missing}, "
                         f"unexpected {unexpected}")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official-repo", type=Path, required=True)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--artifacts", type=Path, required=True,
                        help="fp32 artifacts exported from --ckpt (any --weights)")
    parser.add_argument("--int8-activations", action="store_true", help="a quantized folder's fast kernels")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    official = official_model(args.official_repo, args.ckpt)
    pipeline = RARPipeline.from_artifacts(args.artifacts, "onnxruntime", int8_activations=args.int8_activations)
    defaults = pipeline.artifacts.sampling_defaults
    print(f"model {pipeline.config.preset_name}, torch {torch.__version__}, {torch.get_num_threads()} threads",
          flush=True)
    print("| batch | official generate() s | ours (onnxruntime) s | speed-up |\n| --- | --- | --- | --- |")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        labels = list(range(batch))
        times = {"official": [], "ours": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            official.generate(torch.tensor(labels), defaults.guidance_scale, defaults.temperature,
                              defaults.guidance_pow, kv_cache=True)
            times["official"].append(time.perf_counter() - start)
            start = time.perf_counter()
            pipeline.generate_samples([Sample(label, 0, i) for i, label in enumerate(labels)])  # tokens alone
            times["ours"].append(time.perf_counter() - start)
        official_s, ours_s = np.median(times["official"]), np.median(times["ours"])
        print(f"| {batch} | {official_s:.1f} | {ours_s:.1f} | {official_s / ours_s:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
