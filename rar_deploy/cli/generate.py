"""rar-generate: images from an artifact folder, written as they are made."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from rar_deploy.cli.common import (
    BACKEND_CHOICE,
    INT8_ACTIVATIONS_OPTION,
    PATH_TYPE,
    THREADS_OPTION,
    friendly_errors,
)
from rar_deploy.errors import RARDeployError


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
@click.option("--parallel-window", default=0, show_default=True, type=int,
              help="RAR: speculative Jacobi decoding with this many draft tokens per image (1-16; the folder needs "
                   "rar-export --parallel-decoding). Same distribution as one token a call, other draws. 0: off.")
@THREADS_OPTION
@INT8_ACTIVATIONS_OPTION
@friendly_errors
def generate_command(artifacts_dir, class_labels, num_per_class, seed, backend, device, out, guidance_scale,
                     guidance_pow, temperature, top_k, top_p, batch_size, save_tokens, ckpt, tokenizer, force,
                     verify_files, condition_budget, parallel_window, threads, int8_activations) -> None:
    """Generate images from exported artifacts (RAR or VAR): one PNG per image, grid.png and samples.json."""
    from tqdm import tqdm

    from rar_deploy.contract.checks import MAX_IMAGES, check_class_labels, check_seed, parse_integers
    from rar_deploy.outputs import Output, atomic_outputs
    from rar_deploy.runtime import Artifacts, open_pipeline
    from rar_deploy.runtime.jacobi import check_parallel_window
    from rar_deploy.tools.sample_files import SamplesWriter, TokensWriter, samples_written, tokens_written
    from rar_deploy.version import __version__

    # Every check before any heavy work: the manifest, the values, both outputs.
    artifacts = Artifacts.load(artifacts_dir, verify="all" if verify_files else "fingerprint")
    family = artifacts.family
    per_class = parse_integers(class_labels, "--class-labels")
    if len(per_class) * num_per_class > MAX_IMAGES:  # before the label list is built: it could fill the memory
        raise RARDeployError(f"{len(per_class) * num_per_class} images (--class-labels x --num-per-class) are more "
                             f"than one call makes ({MAX_IMAGES}): split the request")
    labels = check_class_labels([label for label in per_class for _ in range(num_per_class)],
                                artifacts.config.num_classes)
    given = {"guidance_scale": guidance_scale, "guidance_pow": guidance_pow, "temperature": temperature,
             "top_k": top_k, "top_p": top_p, "condition_budget": condition_budget}
    family.refuse_options(given, artifacts.directory)
    sampling = family.check_sampling(family.sampling_from(given), artifacts.sampling_defaults)
    seed, batch_size = check_seed(seed), artifacts.check_batch_size(batch_size)
    parallel_window = check_parallel_window(artifacts, parallel_window)
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
                                 threads=threads, int8_activations=int8_activations)
        if condition_budget is not None:
            pipeline.loop.condition_table_budget = condition_budget
        per_image = family.tokens_per_image(pipeline.config)
        height, width = artifacts.image_size
        images_out = SamplesWriter(temporaries[0], labels, num_per_class, height, width)
        tokens_out = TokensWriter(temporaries[1], len(labels), per_image) if save_tokens else None
        with tqdm(total=len(labels) * per_image, unit="token", desc="generating") as bar:
            def progress(done: int, total: int) -> None:
                bar.update(done - bar.n)

            for tokens, images in pipeline.generate_batches(labels, sampling=sampling, seed=seed,
                                                            batch_size=batch_size, progress=progress,
                                                            parallel_window=parallel_window):
                images_out.add(images)  # written as they are made: memory stays one batch
                tokens_out and tokens_out.add(tokens)
        tokens_out and tokens_out.close()
        images_out.finish({"rar_deploy_version": __version__, "artifacts": str(artifacts.directory.resolve()),
                           "family": family.name, "backend": backend, "device": str(pipeline.backend.device),
                           "seed": seed, **asdict(sampling), "batch_size": batch_size, "num_per_class": num_per_class,
                           **({} if parallel_window else pipeline.loop.details()), "parallel_window": parallel_window,
                           "decode_calls_per_image": float(pipeline.decode_calls.mean()),
                           "tokens": str(save_tokens) if save_tokens else None})
    click.echo(f"wrote {len(labels)} images, grid.png and samples.json to {out} ({backend})")


def _overlap(a: Path, b: Path) -> bool:
    """Two paths that are one, or one inside the other."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents
