"""A check against the official VAR code (not a timing): the key and shape lists of the official `VAR` modules of
the released sizes (d16, d20, d24, d30) and of the VQVAE's decoding side against ours, and our configuration
read back off the official state dicts.

    python benchmarks/official_var_layout.py --official-repo /path/to/FoundationVision/VAR

The official modules are built on the CPU (their constructor cannot run on the meta device) without their
weight initialisation: about 8 GB of RAM for d30.
"""

from __future__ import annotations

import argparse
import sys
import types

import torch

from rar_deploy.contract.config import VAR_PATCH_NUMS, VAR_PRESETS, VARConfig, VARTokenizerConfig
from rar_deploy.model.checkpoint import VAR_VQVAE_UNUSED
from rar_deploy.model.var import VARVQVAE, VARGenerator


def shapes(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.startswith(skip)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official-repo", required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.official_repo)
    hub = types.ModuleType("huggingface_hub")  # the official models import only a mixin from it
    hub.PyTorchModelHubMixin = object
    sys.modules.setdefault("huggingface_hub", hub)
    from models import build_vae_var
    from models.var import VAR

    VAR.init_weights = lambda self, **kwargs: None  # shapes only
    print("| official module | keys | keys and shapes equal ours | config read back equals our preset |")
    print("| --- | --- | --- | --- |")
    for depth in (16, 20, 24, 30):
        vae, var = build_vae_var(V=4096, Cvae=32, ch=160, share_quant_resi=4, device="cpu", patch_nums=VAR_PATCH_NUMS,
                                 num_classes=1000, depth=depth, shared_aln=False, attn_l2_norm=True,
                                 flash_if_available=False, fused_if_available=False, init_adaln=0.5,
                                 init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
        preset = VAR_PRESETS[f"var_d{depth}"]
        with torch.device("meta"):
            ours = VARGenerator(preset)
        state = {k: v if k == "lvl_1L" else torch.empty(v.shape, device="meta") for k, v in var.state_dict().items()}
        official = shapes(var)
        print(f"| VAR d{depth} | {len(official)} | {official == shapes(ours)} | "
              f"{VARConfig.from_state_dict(state) == preset} |")
        del var
    with torch.device("meta"):
        decoding = VARVQVAE(VARTokenizerConfig())
    official = shapes(vae, VAR_VQVAE_UNUSED)
    print(f"| VQVAE vae_ch160v4096z32 (decoding side) | {len(official)} | {official == shapes(decoding)} | - |")


if __name__ == "__main__":
    main()
