"""Command-line entry points. Bad input ends in one line on stderr and a non-zero exit."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Callable

import click

from rar_deploy.errors import RARDeployError

BACKEND_CHOICE = click.Choice(["onnxruntime", "torch", "tensorrt"])
PATH_TYPE = click.Path(path_type=Path)


def _threads(context, parameter, value: int | None) -> int | None:
    from rar_deploy.runtime.checks import check_threads

    try:
        return check_threads(value)
    except RARDeployError as exc:
        raise click.BadParameter(str(exc)) from None


THREADS_OPTION = click.option("--threads", type=int, callback=_threads,
                              help="CPU threads of ONNX Runtime's and torch's pools, at most this machine's cores "
                                   "[default: every core].")


def friendly_errors(command: Callable) -> Callable:
    """Turn RARDeployError into click's one-line 'Error: ...' and exit status 1; so too an OS error no output
    layer named (a file that cannot be read or written), with the file and the reason."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RARDeployError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"cannot use{where}: {exc.strerror or exc}") from None

    return wrapper


@click.group()
def main() -> None:
    """rar-deploy: RAR image generators as ONNX graphs and TensorRT engines."""


@main.command("make-checkpoint")
@click.option("--preset", default="tiny", show_default=True,
              type=click.Choice(["tiny", "rar_b", "rar_l", "rar_xl", "rar_xxl", "var_tiny", "var_d16", "var_d20",
                                 "var_d24", "var_d30"]),
              help="Model size; rar_* / var_d* presets get the released tokenizer's / VQVAE's shape.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder to write into; identical files already there are kept, others are never replaced.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Seed of the random weights.")
@friendly_errors
def make_checkpoint(preset: str, out_dir: str, seed: int) -> None:
    """Write a randomly initialised generator and tokenizer in the official checkpoint format (the same
    bytes for the same preset and seed)."""
    from rar_deploy.model.demo import make_demo_checkpoints

    generator_path, tokenizer_path = make_demo_checkpoints(preset, out_dir, seed)
    click.echo(f"generator: {generator_path}\ntokenizer: {tokenizer_path}")


def _progress_printer() -> Callable[[str], None]:
    start = time.perf_counter()
    return lambda message: click.echo(f"[{time.perf_counter() - start:7.1f}s] {message}", err=True)


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
def export_command(ckpt, tokenizer, out, fp16, engine, min_batch, opt_batch, max_batch, opt_level, capabilities,
                   timing_cache, verify, external_data, force) -> None:
    """Export a RAR (or VAR) generator and its tokenizer to ONNX graphs, TensorRT engines and a manifest."""
    from rar_deploy.export.exporter import ExportRequest, export_artifacts
    from rar_deploy.tools.engine_build import RTX_DEFAULT_CAPABILITIES, BatchProfile

    precision = "fp16" if fp16 else "fp32"
    request = ExportRequest(
        ckpt=ckpt, tokenizer=tokenizer or _default_tokenizer(ckpt),
        out=out or Path(f"{Path(ckpt).name.split('.')[0]}-{precision}"), precision=precision, engine=engine,
        profile=BatchProfile(min_batch, opt_batch or max(min_batch, min(8, max_batch)), max_batch),
        verify=verify, force=force, opt_level=opt_level,
        compute_capabilities=tuple(capabilities) or RTX_DEFAULT_CAPABILITIES, external_data=external_data,
        timing_cache=timing_cache,
    )
    result = export_artifacts(request, progress=_progress_printer())
    click.echo(export_summary(result))


def export_summary(result) -> str:
    """Graphs with sizes, the worst parity numbers, engines: what a person checks after an export."""
    from rar_deploy.tools.engine_build import describe_targets

    def size(path: Path) -> str:
        return f"{path.stat().st_size / 2**20:9.1f} MiB" if path.exists() else "        -"

    lines = [f"wrote {result.out} in {result.seconds:.1f} s ({result.manifest['precision']})",
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
        logits = next(iter(parity["teacher_forced"].values()))["logits"]  # RAR: the table; VAR: every scale
        tokens = next(iter(parity["free_running"].values()))["token_agreement"]  # guided (RAR), sampled (VAR)
        lines.append(f"parity vs float32 reference (ONNX Runtime CPU): worst error {worst:.2e} of peak, teacher-forced "
                     f"logits max abs {logits['max_abs']:.2e}, top-1 {logits['top1_agreement']:.3f}, free-running "
                     f"tokens {tokens:.3f} equal: PASSED")
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


@click.command("rar-generate")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE,
              help="Artifact directory written by rar-export.")
@click.option("--class-labels", required=True, help="Comma-separated ImageNet class ids, e.g. 207,360.")
@click.option("--num-per-class", default=1, show_default=True, type=click.IntRange(1), help="Images per class.")
@click.option("--seed", default=0, show_default=True, type=int, help="Image i's noise comes from (seed, i).")
@click.option("--backend", default="onnxruntime", show_default=True, type=BACKEND_CHOICE)
@click.option("--device", type=click.Choice(["cpu", "cuda"]),
              help="[default: cuda where available, cpu for onnxruntime]")
@click.option("--out", required=True, type=PATH_TYPE, help="Folder for the PNGs, grid.png and samples.json.")
@click.option("--guidance-scale", type=float, help="0 is no guidance [default: the model size's published value]")
@click.option("--guidance-pow", type=float, help="RAR: [default: the model size's published value]")
@click.option("--temperature", type=float, help="0 is greedy [default: the model size's published value]")
@click.option("--top-k", type=int, help="VAR: keep the k most likely tokens, 0 all [default: 900].")
@click.option("--top-p", type=float, help="VAR: nucleus of mass p, 0 off [default: 0.96].")
@click.option("--batch-size", type=int, help="Images per batch [default: the artifacts' max batch].")
@click.option("--save-tokens", type=PATH_TYPE, help="Also save the tokens (.npy).")
@click.option("--ckpt", help="torch backend: generator checkpoint, if it moved since export.")
@click.option("--tokenizer", help="torch backend: tokenizer checkpoint, if it moved since export.")
@click.option("--force", is_flag=True,
              help="Replace an earlier rar-generate --out / --save-tokens (never anything else).")
@click.option("--verify-files", is_flag=True,
              help="Check every byte of every file the manifest lists (SHA-256) before running.")
@click.option("--condition-budget", type=click.IntRange(0),
              help="Bytes of condition rows a generation may hold (0: one position a step) [default: 2 GiB].")
@THREADS_OPTION
@friendly_errors
def generate_command(artifacts_dir, class_labels, num_per_class, seed, backend, device, out, guidance_scale,
                     guidance_pow, temperature, top_k, top_p, batch_size, save_tokens, ckpt, tokenizer, force,
                     verify_files, condition_budget, threads) -> None:
    """Generate images from exported artifacts (RAR or VAR): one PNG per image, grid.png and samples.json."""
    from tqdm import tqdm

    from rar_deploy.files import Output, atomic_outputs
    from rar_deploy.runtime import Artifacts, open_pipeline
    from rar_deploy.runtime.checks import MAX_IMAGES, check_class_labels, check_seed, parse_integers
    from rar_deploy.tools.sample_files import SamplesWriter, TokensWriter, samples_written, tokens_written
    from rar_deploy.version import __version__

    # Every check before any heavy work: the manifest, the values, both outputs.
    artifacts = Artifacts.load(artifacts_dir, verify="all" if verify_files else "fingerprint")
    var = artifacts.family == "var"
    per_class = parse_integers(class_labels, "--class-labels")
    if len(per_class) * num_per_class > MAX_IMAGES:  # before the label list is built: it could fill the memory
        raise RARDeployError(f"{len(per_class) * num_per_class} images (--class-labels x --num-per-class) are more "
                             f"than one call makes ({MAX_IMAGES}): split the request")
    labels = check_class_labels([label for label in per_class for _ in range(num_per_class)],
                                artifacts.config.num_classes)
    family_options = (("--top-k", top_k), ("--top-p", top_p)) if not var else (
        ("--guidance-pow", guidance_pow), ("--condition-budget", condition_budget))
    artifacts.refuse_options(family_options)
    if var:
        values = artifacts.var_sampling_values(guidance_scale, top_k, top_p, temperature)
        sampling = dict(zip(("guidance_scale", "top_k", "top_p", "temperature"), values))
    else:
        values = artifacts.sampling_values(guidance_scale, guidance_pow, temperature)
        sampling = dict(zip(("guidance_scale", "guidance_pow", "temperature"), values))
    seed, batch_size = check_seed(seed), artifacts.check_batch_size(batch_size)
    inputs = (artifacts.directory, *artifacts.checkpoint_paths(), *filter(None, [ckpt, tokenizer]))
    outputs = [Output(out, "--out", force, written=samples_written, owner="rar-generate", inputs=inputs)]
    if save_tokens:
        if _overlap(save_tokens, out):
            raise RARDeployError(f"--save-tokens {save_tokens} is --out {out}, lies inside it or holds it: save the "
                                 "tokens outside --out")
        outputs.append(Output(save_tokens, "--save-tokens", force, written=tokens_written, owner="rar-generate",
                              inputs=inputs, directory=False))

    with atomic_outputs(outputs) as temporaries:  # all published together at the end, or none
        pipeline = open_pipeline(artifacts_dir, backend=backend, device=device, ckpt=ckpt, tokenizer=tokenizer,
                                 threads=threads)
        if condition_budget is not None:
            pipeline.backend.condition_table_budget = condition_budget
        per_image, unit = (pipeline.config.seq_len, "token") if var else (pipeline.config.image_seq_len, "step")
        height, width = artifacts.image_size
        images_out = SamplesWriter(temporaries[0], labels, num_per_class, height, width)
        tokens_out = TokensWriter(temporaries[1], len(labels), per_image) if save_tokens else None
        with tqdm(total=len(labels) * per_image, unit=unit, desc="generating") as bar:
            def progress(done: int, total: int) -> None:
                bar.update(done - bar.n)

            for tokens, images in pipeline.generate_batches(labels, *values, seed, batch_size, progress):
                images_out.add(images)  # written as they are made: memory stays one batch
                tokens_out and tokens_out.add(tokens)
        tokens_out and tokens_out.close()
        images_out.finish({"rar_deploy_version": __version__, "artifacts": str(artifacts.directory.resolve()),
                           "family": artifacts.family, "backend": backend, "device": str(pipeline.backend.device),
                           "seed": seed, **sampling, "batch_size": batch_size, "num_per_class": num_per_class,
                           **({} if var else {"condition_window": pipeline.backend.window}),
                           "tokens": str(save_tokens) if save_tokens else None})
    click.echo(f"wrote {len(labels)} images, grid.png and samples.json to {out} ({backend})")


def _overlap(a: Path, b: Path) -> bool:
    """Two paths that are one, or one inside the other."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


@click.command("rar-parity")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE, help="Artifact directory.")
@click.option("--backend", default="onnxruntime", show_default=True, type=BACKEND_CHOICE)
@click.option("--ckpt", help="Recompute the reference from this generator checkpoint (needs torch).")
@click.option("--tokenizer", help="Recompute the reference from this tokenizer checkpoint (needs torch).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Device of the backend.")
@click.option("--batch", type=click.IntRange(1), help="Images compared; recomputes the reference [default: 2].")
@click.option("--seed", type=int, help="Seed of the inputs and of the shared noise; recomputes the reference [0].")
@click.option("--tolerance", type=float, help="Max error relative to the reference's peak [default: per precision].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@THREADS_OPTION
@friendly_errors
def parity_command(artifacts_dir, backend, ckpt, tokenizer, device, batch, seed, tolerance, as_json, threads) -> None:
    """Compare a backend with the float32 PyTorch reference: per graph, teacher-forced, free-running, decoder.

    By default against the reference record stored at export (reference.npz): no torch, no checkpoints.
    Exits 1 when a metric is over its tolerance, naming it with its value and the allowed value."""
    import json

    from rar_deploy.errors import RARDeployError
    from rar_deploy.runtime import Artifacts, open_pipeline
    from rar_deploy.runtime.checks import check_finite, check_seed
    from rar_deploy.tools.parity import format_report, load_record, run_parity

    if seed is not None:
        check_seed(seed)
    if tolerance is not None and not check_finite("--tolerance", tolerance) > 0:
        raise RARDeployError(f"--tolerance must be > 0, got {tolerance}")
    artifacts = Artifacts.load(artifacts_dir, verify="all")
    if ckpt or tokenizer or batch is not None or seed is not None:
        record = _recompute_record(artifacts, ckpt, tokenizer, 2 if batch is None else batch, seed or 0)
    else:
        record = load_record(artifacts)
    pipeline = open_pipeline(artifacts_dir, backend=backend, device=device, ckpt=ckpt, tokenizer=tokenizer,
                             threads=threads)
    report = run_parity(pipeline, record, rel_tol=tolerance, progress=_progress_printer())
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))
    if report["failures"]:
        raise SystemExit(1)


def _recompute_record(artifacts, ckpt: str | None, tokenizer: str | None, batch: int, seed: int) -> dict:
    """The reference record from the checkpoints the artifacts were exported from (SHA-256 checked)."""
    from rar_deploy.errors import RARDeployError

    try:
        from rar_deploy.model.checkpoint import load_exported_from
        from rar_deploy.model.reference import reference_record, var_reference_record
    except ImportError as exc:
        raise RARDeployError(f"recomputing the reference needs torch ({exc.name} is not installed): install "
                             "rar-deploy[export], or drop --ckpt/--tokenizer/--batch/--seed to use the stored record")
    generator = load_exported_from(artifacts.manifest, "generator", ckpt)
    decoder = load_exported_from(artifacts.manifest, "tokenizer", tokenizer)
    make_record = var_reference_record if artifacts.family == "var" else reference_record
    return make_record(generator, decoder, str(artifacts.cache_dtype), batch, seed)


@click.command("rar-bench")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE, help="Artifact directory.")
@click.option("--backend", "backends", multiple=True, default=["onnxruntime"], show_default=True,
              type=BACKEND_CHOICE, help="Repeatable: all run in one process.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Device of the backends and the baseline.")
@click.option("--baseline", is_flag=True, help="Also time the official-style eager loop and print ratios to it.")
@click.option("--ckpt", help="Checkpoint for torch/baseline [default: the one recorded in the manifest].")
@click.option("--tokenizer", help="Tokenizer for torch/baseline [default: the one recorded in the manifest].")
@click.option("--warmup-steps", default=3, show_default=True, type=click.IntRange(0),
              help="Decode steps run before timing (VAR: one whole generation warms up every scale).")
@click.option("--condition-budget", "condition_budgets", multiple=True, type=click.IntRange(0),
              help="Bytes of condition rows a generation may hold (0: one position a step). Repeatable: every "
                   "backend runs at each [default: 2 GiB].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@THREADS_OPTION
@friendly_errors
def bench_command(artifacts_dir, backends, batch_sizes, device, baseline, ckpt, tokenizer, warmup_steps,
                  condition_budgets, as_json, threads):
    """Per-stage latency (prefill, decode step mean/p50/p99, decoder), per image, images/s, peak memory."""
    import json

    from rar_deploy.errors import RARDeployError
    from rar_deploy.runtime import Artifacts
    from rar_deploy.runtime.checks import parse_integers
    from rar_deploy.tools.bench import bench_results, format_results

    artifacts = Artifacts.load(artifacts_dir)
    if artifacts.family == "var":
        artifacts.refuse_options((("--condition-budget", condition_budgets or None),))
    sizes = [artifacts.check_batch_size(b) for b in parse_integers(batch_sizes, "--batch-sizes")]
    if not sizes:
        raise RARDeployError("--batch-sizes is empty: give at least one batch size, e.g. 1,8")
    results = bench_results(artifacts, list(backends), sizes, device, baseline, ckpt, tokenizer,
                            warmup_steps, progress=_progress_printer(), threads=threads,
                            condition_budgets=list(condition_budgets))
    click.echo(json.dumps(results, indent=1) if as_json else format_results(results))


@click.command("rar-build")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE, help="Artifact directory.")
@click.option("--min-batch", type=click.IntRange(1), help="[default: the folder's batch profile]")
@click.option("--opt-batch", type=click.IntRange(1), help="[default: the folder's batch profile]")
@click.option("--max-batch", type=click.IntRange(1), help="[default: the folder's batch profile]")
@click.option("--opt-level", type=click.IntRange(0, 5), help="TensorRT builder optimization level [default: 3].")
@click.option("--compute-capability", "capabilities", multiple=True,
              help="TensorRT-RTX build target (repeatable) [default: the folder's engines', "
                   "else SM80 SM86 SM89 SM120].")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="TensorRT timing cache to reuse across builds (read, then updated).")
@friendly_errors
def build_command(artifacts_dir, min_batch, opt_batch, max_batch, opt_level, capabilities, timing_cache) -> None:
    """Build (or rebuild) the TensorRT engines of an artifact folder on this machine, from its ONNX graphs:
    no torch, no checkpoint. The folder's engines and manifest are replaced in one atomic swap."""
    from rar_deploy.contract.manifest import read_manifest
    from rar_deploy.tools.engine_build import describe_targets
    from rar_deploy.tools.rebuild import rebuild_engines, recorded_options

    options = recorded_options(read_manifest(artifacts_dir), min_batch=min_batch, opt_batch=opt_batch,
                               max_batch=max_batch, opt_level=opt_level, compute_capabilities=tuple(capabilities),
                               timing_cache=timing_cache)
    manifest = rebuild_engines(artifacts_dir, options, progress=_progress_printer())
    engine = next(iter(manifest["engines"].values()))
    click.echo(f"built {', '.join(manifest['engines'])} in {artifacts_dir}: {engine['flavour']} "
               f"{engine['tensorrt_version']}, batch {engine['profile']['batch']}, for "
               f"{describe_targets(engine['compute_capabilities'])}")


@click.command("rar-serve")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE,
              help="Artifact directory (on storage every node of the cluster sees, at the same path).")
@click.option("--backend", type=BACKEND_CHOICE, default="onnxruntime", show_default=True)
@click.option("--device", help="cpu, cuda or cuda:N [default: the backend's].")
@THREADS_OPTION
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True, help="Replicas of the model.")
@click.option("--max-replicas", type=click.IntRange(1),
              help="Autoscale from --replicas up to this many under load [default: no autoscaling].")
@click.option("--num-cpus", type=click.FloatRange(0), default=1.0, show_default=True, help="CPUs each replica holds.")
@click.option("--num-gpus", type=click.FloatRange(0), default=0.0, show_default=True,
              help="GPUs each replica holds (1 for --backend tensorrt; a fraction shares a GPU).")
@click.option("--max-batch-size", type=click.IntRange(1),
              help="Most images a replica generates together [default: the artifacts' profile].")
@click.option("--batch-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long a replica waits to fill a batch.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--address", help="A running Ray cluster to join (e.g. auto) [default: start Ray on this machine, "
                                "every port on loopback].")
@click.option("--drain-timeout", "drain_s", type=click.FloatRange(0), default=30.0, show_default=True,
              help="On Ctrl-C or SIGTERM, seconds the requests in flight may still take (new ones are turned away).")
@friendly_errors
def serve_command(artifacts_dir, backend, device, threads, replicas, max_replicas, num_cpus, num_gpus,
                  max_batch_size, batch_wait_ms, host, port, address, drain_s) -> None:
    """Serve an artifact folder over HTTP with Ray Serve: POST /generate, GET /healthz, GET /ready.
    Runs until interrupted (Ctrl-C or SIGTERM), then stops its replicas."""
    from rar_deploy.runtime import Artifacts
    from rar_deploy.serving.server import ServeOptions, check_before_start, serve_until_stopped

    artifacts = Artifacts.load(artifacts_dir)
    artifacts.require_family("rar", "rar-serve")
    artifacts.check_batch_size(max_batch_size)
    if max_replicas is not None and max_replicas < replicas:
        raise RARDeployError(f"--max-replicas {max_replicas} is below --replicas {replicas}")
    if backend == "tensorrt" and num_gpus == 0:
        raise RARDeployError("--backend tensorrt runs on a GPU: give each replica one with --num-gpus 1")
    options = ServeOptions(str(artifacts.directory.resolve()), backend, device, threads, replicas, max_replicas,
                           num_cpus, num_gpus, max_batch_size, batch_wait_ms / 1000, host, port, address, drain_s)
    check_before_start(options)
    serve_until_stopped(options, echo=lambda message: click.echo(message, err=True))


@main.command("triton-repo")
@click.option("--artifacts", "artifacts_dir", required=True, type=PATH_TYPE,
              help="Artifact directory (the server reads it at this absolute path).")
@click.option("--out", required=True, type=PATH_TYPE,
              help="Model repository (tritonserver --model-repository), new or holding other models: only its "
                   "'rar' model folder is written.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--device", help="cpu, cuda or cuda:N [default: the backend's].")
@THREADS_OPTION
@click.option("--max-batch-size", type=click.IntRange(1),
              help="Triton's max_batch_size: most images an instance generates together "
                   "[default: the artifacts' profile].")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True, help="Model instances.")
@click.option("--queue-delay-us", type=click.IntRange(0), default=5000, show_default=True,
              help="Dynamic batching: how long a request may wait for others.")
@click.option("--force", is_flag=True, help="Replace the 'rar' model this command wrote earlier.")
@friendly_errors
def triton_repo_command(artifacts_dir, out, backend, device, threads, max_batch_size, instances, queue_delay_us,
                        force) -> None:
    """Write a Triton Inference Server model repository that serves an artifact folder (Python backend,
    the whole loop in one model instance, dynamic batching)."""
    from rar_deploy.files import Output, atomic_directory
    from rar_deploy.runtime import Artifacts
    from rar_deploy.runtime.checks import check_device
    from rar_deploy.serving.triton import MODEL_NAME, model_files, write_model

    artifacts = Artifacts.load(artifacts_dir)
    artifacts.require_family("rar", "rar-deploy triton-repo")
    artifacts.check_batch_size(max_batch_size)
    check_device(device)
    if out.exists() and not out.is_dir():
        raise RARDeployError(f"--out {out} is a file: give a model repository folder (new or existing)")
    output = Output(out / MODEL_NAME, "--out", force, written=model_files, owner="rar-deploy triton-repo",
                    inputs=(artifacts.directory,))
    with atomic_directory(output) as folder:
        write_model(folder, artifacts, backend, device, threads, max_batch_size, instances, queue_delay_us)
    click.echo(f"wrote {out / MODEL_NAME}: tritonserver --model-repository {out} (model {MODEL_NAME!r})")


main.add_command(export_command, name="export")
main.add_command(generate_command, name="generate")
main.add_command(parity_command, name="parity")
main.add_command(bench_command, name="bench")
main.add_command(build_command, name="build")
main.add_command(serve_command, name="serve")
