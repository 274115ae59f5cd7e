"""Reading official-format checkpoints (.bin state dicts or .safetensors) with actionable errors."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from rar_deploy.contract.config import RARConfig, RARTokenizerConfig, VARConfig, VARTokenizerConfig
from rar_deploy.contract.integrity import sha256_of
from rar_deploy.errors import CheckpointError
from rar_deploy.model.generator import RARGenerator
from rar_deploy.model.tokenizer import VQDecoder
from rar_deploy.model.var import VARVQVAE, VARGenerator, block_causal_mask

StateDict = dict[str, torch.Tensor]
_SHOWN = 5  # how many offending keys an error message lists

# Released files on the Hugging Face Hub, by the short names users type.
RELEASED_CHECKPOINTS = {
    **{name: ("yucornetto/RAR", f"{name}.bin") for name in ("rar_b", "rar_l", "rar_xl", "rar_xxl")},
    "maskgit-vqgan-imagenet-f16-256": ("fun-research/TiTok", "maskgit-vqgan-imagenet-f16-256.bin"),
    **{name: ("FoundationVision/var", f"{name}.pth") for name in ("var_d16", "var_d20", "var_d24", "var_d30",
                                                                  "vae_ch160v4096z32")},
}


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local path as is; a released name (`rar_l`, ...) downloaded from the hub where reachable."""
    path = Path(name_or_path)
    key = path.name.removesuffix(".bin").removesuffix(".pth")
    if path.exists() or str(name_or_path) not in (key, f"{key}.bin", f"{key}.pth") or key not in RELEASED_CHECKPOINTS:
        return path
    repo, filename = RELEASED_CHECKPOINTS[key]
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # ImportError, offline, hub errors: all mean "get the file yourself"
        raise CheckpointError(
            f"{name_or_path!r} is the released checkpoint {repo}/{filename}, and it could not be downloaded "
            f"({type(exc).__name__}: no network or no huggingface_hub here?); download it and pass its path"
        ) from None


def require_file(path: str | Path) -> Path:
    """A checkpoint path that exists and is a file, or one line saying what it is instead."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: pass the .bin or .safetensors file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def _check_zip(path: Path) -> None:
    """torch.save's zip archives carry a CRC per tensor that torch.load (mmap) never checks: check them, so
    that damaged bytes inside a weight are refused instead of exported and verified against themselves."""
    if not zipfile.is_zipfile(path):
        return  # a legacy pickle: torch.load judges it
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}): use a good copy") from None
    if damaged is not None:
        raise CheckpointError(f"{path} is damaged: {damaged} fails its checksum; use a good copy")


def read_state_dict(path: str | Path) -> StateDict:
    """Load a plain state dict from `.bin`/`.pt`/`.pth` (torch.save) or `.safetensors`."""
    path = require_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            _check_zip(path)
            # mmap: the weights stay file-backed pages the OS can drop, rather than a copy in anonymous memory
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:  # a pickle of Python objects, which weights-only loading refuses to run
        raise CheckpointError(f"{path} is not a safe state dict (it pickles Python objects, not only tensors): "
                              "save the model's state_dict() with torch.save and pass that file") from None
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt, or not a state dict): {reason}"
        ) from None
    if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
        state = next(iter(state.values()))  # {"state_dict": {...}} / {"model": {...}} wrappers
    if isinstance(state, dict) and isinstance(state.get("trainer"), dict) and "var_wo_ddp" in state["trainer"]:
        state = state["trainer"]["var_wo_ddp"]  # the official VAR trainer's checkpoint (ar-ckpt-*.pth)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (found {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_finite_weights(state: Mapping[str, torch.Tensor], path: Path, masks: tuple[str, ...] = ()) -> None:
    """Refuse NaN or infinite weights, naming the tensors that hold them (`masks`: attention masks, -inf by design)."""
    bad = [k for k, v in state.items()
           if v.is_floating_point() and k not in masks and not bool(torch.isfinite(v).all())]
    if bad:
        more = f", ... ({len(bad)} in all)" if len(bad) > _SHOWN else ""
        raise CheckpointError(f"{path} holds NaN or infinite weights in {', '.join(bad[:_SHOWN])}{more}: "
                              "the checkpoint is damaged; use a good copy")


def checkpoint_kind(state: Mapping[str, torch.Tensor]) -> str:
    """'generator', 'tokenizer', 'VAR generator', 'VAR VQVAE' or 'unknown', judged from characteristic keys."""
    if is_var_generator(state):
        return "VAR generator"
    if any(k.startswith("quantize.quant_resi.") for k in state):
        return "VAR VQVAE"
    if "lm_head.weight" in state or any(k.startswith("blocks.") for k in state):
        return "generator"
    if "quantize.embedding.weight" in state or any(k.startswith("decoder.") for k in state):
        return "tokenizer"
    return "unknown"


def expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], path: Path) -> None:
    """Raise one error naming missing, unexpected and mis-shaped keys (first few of each, and counts)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:_SHOWN])}{more}")
    if problems:
        raise CheckpointError(f"{path} does not match the official layout: " + "; ".join(problems))


def _wrong_kind_message(path: Path, state: StateDict, wanted: str) -> str:
    """Why the file at `path` is not the `wanted` ("generator", "tokenizer", "VAR VQVAE") and what to pass."""
    kind = checkpoint_kind(state)
    if kind in ("tokenizer", "VAR VQVAE") and wanted == "generator":
        return f"{path} is a {kind} checkpoint, not a generator: pass it as --tokenizer"
    if kind in ("generator", "VAR generator") and wanted != "generator":
        return f"{path} is a {kind} checkpoint, not a tokenizer: pass it as --ckpt"
    if kind == "VAR generator" and wanted == "generator":  # load_rar_generator is RAR's; rar-export takes both
        return f"{path} is a VAR generator checkpoint: load it with load_var_generator (rar-export detects it)"
    if kind == "VAR VQVAE":
        return (f"{path} is a VAR VQVAE checkpoint: a RAR generator decodes with the MaskGIT-VQGAN tokenizer "
                "(maskgit-vqgan-imagenet-f16-256.bin)")
    if kind == "tokenizer" and wanted == "VAR VQVAE":
        return (f"{path} is a RAR (MaskGIT-VQGAN) tokenizer: a VAR generator decodes with its multi-scale VQVAE "
                "(vae_ch160v4096z32.pth)")
    label = {"generator": "RAR or VAR generator", "tokenizer": "RAR tokenizer"}.get(wanted, wanted)
    return f"{path} is not a {label} checkpoint (its first keys: {', '.join(list(state)[:3])})"


def _build(module_type: type[nn.Module], config, state: StateDict, path: Path,
           masks: tuple[str, ...] = ()) -> nn.Module:
    with torch.device("meta"):
        module = module_type(config)
    check_keys(state, expected_shapes(module), path)
    check_finite_weights(state, path, masks)
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    return module.eval().requires_grad_(False)


def load_rar_generator(path: str | Path) -> RARGenerator:
    """Load a RAR generator in eval mode; its `.config` is read off the tensors."""
    path = resolve_checkpoint(path)
    return _rar_generator(path, read_state_dict(path))


def _rar_generator(path: Path, state: StateDict) -> RARGenerator:
    if checkpoint_kind(state) != "generator":
        raise CheckpointError(_wrong_kind_message(path, state, "generator"))
    return _build(RARGenerator, RARConfig.from_state_dict(state, path), state, path)


def load_models(ckpt: str | Path, tokenizer: str | Path) -> tuple[RARGenerator, VQDecoder] | tuple[VARGenerator,
                                                                                                   VARVQVAE]:
    """A generator and its tokenizer, RAR or VAR as the generator checkpoint's keys say (read once)."""
    ckpt = resolve_checkpoint(ckpt)
    state = read_state_dict(ckpt)
    if checkpoint_kind(state) == "VAR generator":
        return _var_generator(ckpt, state), load_var_tokenizer(tokenizer)
    return _rar_generator(ckpt, state), load_rar_tokenizer(tokenizer)


def load_rar_tokenizer(path: str | Path) -> VQDecoder:
    """Load the MaskGIT-VQGAN decoder in eval mode; `encoder.*` keys are accepted and dropped."""
    path = resolve_checkpoint(path)
    state = read_state_dict(path)
    if checkpoint_kind(state) != "tokenizer":
        raise CheckpointError(_wrong_kind_message(path, state, "tokenizer"))
    state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    config = RARTokenizerConfig.from_state_dict(state, path)
    return _build(VQDecoder, config, state, path)


# keys of the released VAR VQVAE that decoding never reads: the encoder side and training statistics
VAR_VQVAE_UNUSED = ("encoder.", "quant_conv.", "quantize.ema_vocab_hit_SV")


def is_var_generator(state: Mapping[str, torch.Tensor]) -> bool:
    return "lvl_1L" in state and "class_emb.weight" in state


def load_var_generator(path: str | Path) -> VARGenerator:
    """Load a VAR generator (`var_d16.pth` ...) in eval mode; its `.config` is read off the tensors."""
    path = resolve_checkpoint(path)
    return _var_generator(path, read_state_dict(path))


def _var_generator(path: Path, state: StateDict) -> VARGenerator:
    if not is_var_generator(state):
        raise CheckpointError(f"{path} is not a VAR generator checkpoint (no lvl_1L / class_emb.weight; its first "
                              f"keys: {', '.join(list(state)[:3])})")
    config = VARConfig.from_state_dict(state, path)
    if not torch.equal(state["attn_bias_for_masking"].reshape(-1), block_causal_mask(config).reshape(-1)):
        raise CheckpointError(f"{path}: attn_bias_for_masking is not the block-causal mask of its scales "
                              f"{config.patch_nums}: not an official VAR generator")
    return _build(VARGenerator, config, state, path, masks=("attn_bias_for_masking",))


def load_var_tokenizer(path: str | Path) -> VARVQVAE:
    """Load VAR's multi-scale VQVAE (`vae_ch160v4096z32.pth`) for decoding; the encoder side is dropped."""
    path = resolve_checkpoint(path)
    state = read_state_dict(path)
    if checkpoint_kind(state) != "VAR VQVAE":
        raise CheckpointError(_wrong_kind_message(path, state, "VAR VQVAE"))
    state = {k: v for k, v in state.items() if not k.startswith(VAR_VQVAE_UNUSED)}
    return _build(VARVQVAE, VARTokenizerConfig.from_state_dict(state, path), state, path)


def exported_checkpoint(manifest: dict, kind: str, path: str | Path | None = None) -> Path:
    """The generator or tokenizer file an artifact directory was exported from: `path` if given, else the
    one its manifest recorded; refused when its SHA-256 is not the recorded one."""
    record = manifest["checkpoints"][kind]
    flag = "--ckpt" if kind == "generator" else "--tokenizer"
    if path is None and not Path(record["path"]).exists():
        raise CheckpointError(f"the {kind} checkpoint these artifacts were exported from is no longer at "
                              f"{record['path']}: pass {flag} with its new place")
    path = require_file(record["path"] if path is None else path)
    if sha256_of(path) != record["sha256"]:
        raise CheckpointError(f"{path} is not the {kind} these artifacts were exported from "
                              f"({record['file']}, sha256 {record['sha256'][:12]}...): pass the right {flag}")
    return path


def load_exported_from(manifest: dict, kind: str, path: str | Path | None = None) -> nn.Module:
    """Load what `exported_checkpoint` finds."""
    path = exported_checkpoint(manifest, kind, path)
    if manifest.get("family") == "var":
        return load_var_generator(path) if kind == "generator" else load_var_tokenizer(path)
    return load_rar_generator(path) if kind == "generator" else load_rar_tokenizer(path)


# the names before VAR joined (both load RAR's): kept importable
load_generator, load_tokenizer = load_rar_generator, load_rar_tokenizer
