"""rar-export: a checkpoint to verified ONNX graphs, TensorRT engines and a manifest."""

from __future__ import annotations

from pathlib import Path

import click

from rar_deploy.cli.common import PATH_TYPE, friendly_errors, progress_printer


def _default_tokenizer(ckpt: str) -> str:
    """The released tokenizer beside the checkpoint (a VAR generator's, as its keys say: the released VQVAE), else
    its released name (hub)."""
    from rar_deploy.model.checkpoint import is_var_generator, read_state_dict

    var = Path(ckpt).is_file() and is_var_generator(read_state_dict(ckpt))  # read as a memory map: cheap
    name = "vae_ch160v4096z32.pth" if var else "maskgit-vqgan-imagenet-f16-256.bin"
    beside = Path(ckpt).parent / name
    return str(beside) if beside.exists() else name.rpartition(".")[0]


@click.command("rar-export")
@click.option("--ckpt", required=True, help="Generator checkpoint (.bin/.safetensors) or a released name (rar_l).")
@click.option("--tokenizer", help="Tokenizer checkpoint [default: maskgit-vqgan-imagenet-f16-256.bin beside --ckpt; "
                                  "for var_*: vae_ch160v4096z32.pth].")
@click.option("--out", type=PATH_TYPE, help="Artifact directory [default: <ckpt>-<precision>].")
@click.option("--fp16/--fp32", "fp16", default=True, show_default=True, help="Precision the graphs carry.")
@click.option("--weights", type=click.Choice(["float", "int8", "int4", "fp8"]), default="float", show_default=True,
              help="The step graph's Linear weights: the precision's, or weight-only int8 (per output channel) or "
                   "int4 (per block of --group-size input channels), symmetric, as DequantizeLinear + MatMul; fp8: "
                   "E4M3 weights and inputs (W8A8, static scales; TensorRT on SM89 and later).")
@click.option("--group-size", type=int, help="int4 block size: 32, 64 or 128 [default: the largest dividing every "
                                             "quantized width].")
@click.option("--calibration", type=click.Choice(["rtn", "gptq"]), default="rtn", show_default=True,
              help="How --weights int8/int4 are chosen: round to nearest, or GPTQ on the model's own generations "
                   "(NVIDIA Model Optimizer: pip install 'rar-deploy[calibrate]'; lower error, slower export).")
@click.option("--parallel-decoding", is_flag=True,
              help="RAR: also export decode_block, the decode step over several positions, for speculative Jacobi "
                   "decoding (rar-generate --parallel-window; the generator's weights are stored a second time).")
@click.option("--engine/--no-engine", default=None,
              help="Build TensorRT engines [default: when TensorRT is importable].")
@click.option("--min-batch", default=1, show_default=True, help="Smallest batch of the engine profile.")
@click.option("--opt-batch", type=int, help="Batch the engines are tuned for [default: 8, or --max-batch if smaller].")
@click.option("--max-batch", default=64, show_default=True, help="Largest batch of the engine profile.")
@click.option("--opt-level", default=3, show_default=True, type=click.IntRange(0, 5),
              help="TensorRT builder optimization level.")
@click.option("--compute-capability", "capabilities", multiple=True,
              help="TensorRT-RTX build target, e.g. SM89 or 8.9 (repeatable) [default: SM80 SM86 SM89 SM120; "
                   "TensorRT-RTX 1.7 has no SM90: Hopper needs standard TensorRT].")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="TensorRT timing cache to reuse across exports (read, then updated).")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check the graphs against the reference.")
@click.option("--external-data", is_flag=True, help="Store weights in .onnx.data files even below 2 GB.")
@click.option("--force", is_flag=True, help="Replace an earlier export at --out (never anything else).")
@friendly_errors
def export_command(ckpt, tokenizer, out, fp16, weights, group_size, calibration, parallel_decoding, engine,
                   min_batch, opt_batch, max_batch, opt_level, capabilities, timing_cache, verify, external_data,
                   force) -> None:
    """Export a RAR (or VAR) generator and its tokenizer to ONNX graphs, TensorRT engines and a manifest."""
    from rar_deploy.export.exporter import ExportRequest, export_artifacts
    from rar_deploy.tools.engine_build import RTX_DEFAULT_CAPABILITIES, BatchProfile

    precision = "fp16" if fp16 else "fp32"
    request = ExportRequest(
        ckpt=ckpt, tokenizer=tokenizer or _default_tokenizer(ckpt),
        out=out or Path(f"{Path(ckpt).name.split('.')[0]}-{precision}{'' if weights == 'float' else '-' + weights}"),
        precision=precision, engine=engine,
        profile=BatchProfile(min_batch, opt_batch or max(min_batch, min(8, max_batch)), max_batch),
        verify=verify, force=force, opt_level=opt_level,
        compute_capabilities=tuple(capabilities) or RTX_DEFAULT_CAPABILITIES, external_data=external_data,
        timing_cache=timing_cache, weights=weights, group_size=group_size, calibration=calibration,
        parallel_decoding=parallel_decoding,
    )
    result = export_artifacts(request, progress=progress_printer())
    click.echo(export_summary(result))


def export_summary(result) -> str:
    """Graphs with sizes, the worst parity numbers, engines: what a person checks after an export."""
    from rar_deploy.tools.engine_build import describe_targets

    def size(path: Path) -> str:
        return f"{path.stat().st_size / 2**20:9.1f} MiB" if path.exists() else "        -"

    from rar_deploy.contract.weights import WeightQuantization

    weights = result.manifest.get("weights")
    scheme = "" if weights is None else f", weights {WeightQuantization.from_manifest(weights).description}" + (
        f" by {weights['calibration']['method'].upper()}" if weights.get("calibration") else "")
    lines = [f"wrote {result.out} in {result.seconds:.1f} s ({result.manifest['precision']}{scheme})",
             f"{'graph':<12} {'onnx':>13} {'weights':>13} {'engine':>13}"]
    for name, graph in result.manifest["graphs"].items():
        data = result.out / graph["external_data"] if graph["external_data"] else Path("/nonexistent")
        engine = result.out / "engines" / f"{name}.plan"
        lines.append(f"{name:<12} {size(result.out / graph['file'])} {size(data)} {size(engine)}")
    if result.parity:
        parity = result.parity
        checks = [s for g in parity["graphs"].values() for s in g.values()]
        checks += [mode["logits"] for mode in parity["teacher_forced"].values()]
        worst = max(stats["max_rel_to_peak"] for stats in checks)
        logits, tokens = _headline(parity)
        reference = "float32" if weights is None else f"the {weights['scheme']} model's float32"
        lines.append(f"parity vs {reference} reference (ONNX Runtime CPU): worst error {worst:.2e} of peak, "
                     f"teacher-forced logits max abs {logits['max_abs']:.2e}, top-1 {logits['top1_agreement']:.3f}, "
                     f"free-running tokens {tokens:.3f} equal: PASSED")
        if "float32_weights" in parity:
            logits, tokens = _headline(parity["float32_weights"])
            lines.append(f"cost of the {weights['scheme']} weights vs the float model: teacher-forced top-1 "
                         f"{logits['top1_agreement']:.3f}, logits max abs {logits['max_abs']:.2e}, free-running "
                         f"tokens {tokens:.3f} equal (reported, not enforced)")
    else:
        lines.append("parity: not verified (--no-verify)")
    engines = result.manifest["engines"]
    if engines:
        first = next(iter(engines.values()))
        lines.append(f"engines: {first['flavour']} {first['tensorrt_version']}, batch {first['profile']['batch']}, "
                     f"for {describe_targets(first['compute_capabilities'])}")
        if first["flavour"] == "tensorrt-rtx":
            lines.append("other GPUs: --compute-capability (repeatable); H100/H200 (SM90) need standard TensorRT")
    else:
        lines.append("engines: none (no TensorRT importable, or --no-engine)")
    return "\n".join(lines)


def _headline(parity: dict) -> tuple[dict, float]:
    """A parity report's teacher-forced logit statistics (RAR: the table; VAR: every scale) and free-running token
    agreement (guided for RAR, sampled for VAR)."""
    logits = next(iter(parity["teacher_forced"].values()))["logits"]
    return logits, next(iter(parity["free_running"].values()))["token_agreement"]
