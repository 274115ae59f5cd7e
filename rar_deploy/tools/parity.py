"""rar-parity and export-time verification: does a backend compute what the float32 reference computed?

The reference's inputs and outputs come as a record (`reference.reference_record`, shipped in an artifact
folder as reference.npz), so that the comparison itself needs neither torch nor the checkpoints. Checks:
each graph once through Polygraphy's comparator; the guided logits of every step with the reference's
tokens forced, with the condition table and computed per step; free-running tokens from the same noise,
with and without guidance; the decoder's images on identical tokens.
"""

from __future__ import annotations

import functools
import math
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from rar_deploy.contract.graphs import DEFAULT_PARALLEL_WINDOW, VAR_STEP_COMPARED
from rar_deploy.contract.manifest import RECORD_FILE
from rar_deploy.contract.sampling import guidance_rows, guidance_schedule, sampling_noise
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.families import VARSampling, var_inputs
from rar_deploy.runtime.jacobi import BlockDecoder
from rar_deploy.runtime.loops import RARInputs, drive
from rar_deploy.runtime.pipeline import RARPipeline
from rar_deploy.tools.metrics import error_stats, failures, tolerances_for, top1_agreement


def load_record(artifacts) -> dict[str, np.ndarray]:
    """The folder's reference.npz, its SHA-256 checked against the manifest, with the arrays its family's checks
    read; one line otherwise."""
    from rar_deploy.contract.integrity import check_file

    directory = artifacts.directory
    path = directory / RECORD_FILE
    if not path.is_file() or RECORD_FILE not in artifacts.manifest["files"]:
        raise RARDeployError(f"{directory} has no {RECORD_FILE} (exported with --no-verify?): pass --ckpt to compute "
                             "the reference here (needs the export extra: torch)")
    check_file(directory, RECORD_FILE, artifacts.manifest["files"][RECORD_FILE], "sha256")
    try:
        with np.load(path) as npz:
            record = dict(npz)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RARDeployError(f"{path} cannot be read ({exc}): export again, or pass --ckpt to recompute it") from None
    missing = [key for key in artifacts.family.record_keys if key not in record]
    if missing:
        raise RARDeployError(f"{path} lacks {', '.join(missing[:3])}: it is not this export's record; export again")
    return record


def save_record(record: dict[str, np.ndarray], directory: Path) -> None:
    with open(Path(directory) / RECORD_FILE, "wb") as f:
        np.savez(f, **record)


def polygraphy_compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], rel_tol: float,
                       backend: str) -> dict[str, dict]:
    """Polygraphy's `simple` comparator with an absolute tolerance of rel_tol x the reference's peak per
    output; its verdict and the tolerance that output needs, with our cosine/top-1/non-finite statistics."""
    from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.logger import G_LOGGER

    G_LOGGER.colors = False  # plain text; also spares users a hint to install 'colored'
    peaks = {name: float(np.abs(expected[name]).max()) or 1.0 for name in expected}
    results = RunResults()
    results.append(("reference", [IterationResult({k: np.ascontiguousarray(v, np.float32) for k, v in expected.items()},
                                                  runner_name="reference")]))
    results.append((backend, [IterationResult({k: np.ascontiguousarray(actual[k], np.float32) for k in expected},
                                              runner_name=backend)]))
    compare = SimpleCompareFunc(atol={name: rel_tol * peak for name, peak in peaks.items()},
                                rtol={name: 0.0 for name in peaks}, check_error_stat="max")
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        accuracy = Comparator.compare_accuracy(results, compare_func=compare)
    report = {}
    for name, result in accuracy[0][("reference", backend)][0].items():
        stats = error_stats(actual[name], expected[name])
        stats.update(passed=bool(result), required_atol=float(result.max_absdiff))
        if name == "logits":
            stats["top1_agreement"] = top1_agreement(actual[name], expected[name])
        report[name] = stats
    return report


def cache_feeds(record: dict[str, np.ndarray], graph: str, length: int) -> dict[str, np.ndarray]:
    """A step graph's k_cache.i / v_cache.i feeds: the record's stored prefix `<graph>.k_prefix` / `.v_prefix`
    [L, R, H, p, Dh] placed at the start of a zeroed static cache of `length` positions."""
    feeds = {}
    for kv in ("k", "v"):
        prefix = record[f"{graph}.{kv}_prefix"]
        cache = np.zeros(prefix.shape[:3] + (length, prefix.shape[-1]), prefix.dtype)
        cache[..., : prefix.shape[3], :] = prefix
        feeds.update({f"{kv}_cache.{i}": layer for i, layer in enumerate(cache)})
    return feeds


def step_inputs(record: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """The decode_step feeds of the record: the stored cache prefix placed in a full static cache."""
    feeds = {name: record[f"decode_step.{name}"] for name in ("tokens", "position", "condition", "guidance_scale",
                                                                 "temperature", "noise")}
    return {**feeds, **cache_feeds(record, "decode_step", config.cache_len)}


def compare_graphs(pipeline: RARPipeline, record: dict[str, np.ndarray], rel_tol: float) -> dict:
    """Each graph once on the record's inputs, backend vs reference."""
    backend = pipeline.backend
    name = backend.name
    condition = backend.run_host("condition", {"class_labels": record["condition.class_labels"],
                                               "positions": record["condition.positions"]})
    step = backend.run_host("decode_step", step_inputs(record, pipeline.config))
    images = backend.run_host("vq_decoder", {"tokens": record["vq_decoder.tokens"]})
    expected_step = {k: record[f"decode_step.expected.{k}"] for k in ("logits", "keys", "values")}
    return {"condition": polygraphy_compare({"condition": record["condition.condition"]}, condition, rel_tol, name),
            "decode_step": polygraphy_compare(expected_step, step, rel_tol, name),
            "vq_decoder": polygraphy_compare({"images": record["vq_decoder.images"]}, images, rel_tol, name)}


def _generation_inputs(pipeline: RARPipeline, record: dict[str, np.ndarray], guided: bool) -> RARInputs:
    """The RAR loop's inputs of the record (its labels, seed, schedule and temperature), with or without the
    guidance rows."""
    c = pipeline.config
    labels = record["labels"]
    schedule = guidance_schedule(c.image_seq_len, float(record["guidance_scale"]), float(record["guidance_pow"]))
    return RARInputs(rows=guidance_rows(labels, guided, c.null_class),
                     guidance=np.repeat(schedule[:, None], len(labels), axis=1),
                     temperature=np.full(len(labels), record["temperature"], np.float32),
                     noise=sampling_noise(int(record["seed"]), len(labels), c.image_seq_len, c.codebook_size))


def drive_keeping_logits(loop, inputs, forced=None) -> tuple[np.ndarray, np.ndarray]:
    """One generation through the driver: its tokens [B, L] and the logits every step sampled from [B, L, V]."""
    logits = []

    def keep(loop) -> None:
        if loop.tokens_done():
            logits.append(loop.logits())

    tokens = drive(loop, inputs, keep, forced)
    return tokens, np.concatenate(logits, axis=1)


def teacher_forced(pipeline: RARPipeline, record: dict[str, np.ndarray], per_step_condition: bool) -> dict:
    """Force the reference's tokens at every position; compare the guided logits of every image token."""
    loop, forced = pipeline.loop, record["tokens"]
    budget = loop.condition_table_budget
    loop.condition_table_budget = 0 if per_step_condition else 1 << 62  # a window of 1, or the whole table
    try:
        _, actual = drive_keeping_logits(loop, _generation_inputs(pipeline, record, guided=True),
                                         lambda p: forced[:, p - 2] if p >= 2 else None)
    finally:
        loop.condition_table_budget = budget
    expected = record["guided_logits"]
    stats = error_stats(actual, expected)
    per_step = np.abs(actual - expected).max(axis=(0, 2)) / (np.abs(expected).max() or 1.0)
    stats.update(top1_agreement=top1_agreement(actual, expected), worst_step=int(per_step.argmax()),
                 steps=int(actual.shape[1]))
    return {"logits": stats}


def teacher_forced_blocks(pipeline: RARPipeline, record: dict[str, np.ndarray], block: int) -> dict:
    """The decode_block graph (speculative decoding's multi-position step) with the reference's tokens forced: the
    prefill as one call at positions 0 and 1, then blocks of `block` positions, each writing its keys and values
    into a static cache on the host; the guided logits of every image token against the reference's."""
    c = pipeline.config
    inputs = _generation_inputs(pipeline, record, guided=True)
    batch = inputs.temperature.shape[0]
    decoder = BlockDecoder(pipeline.backend, inputs.rows)
    fed = np.concatenate([np.zeros((batch, 2), np.int64), record["tokens"]], axis=1)  # position p feeds fed[:, p]
    actual = np.zeros((batch, c.image_seq_len, c.codebook_size), np.float32)
    p = 0
    while p < c.cache_len:
        size = 2 if p == 0 else min(block, c.cache_len - p)
        sampled = np.maximum(np.arange(p, p + size) - 1, 0)  # the image token each position samples
        out = decoder(np.full(batch, p, np.int64), fed[:, p:p + size], inputs.guidance[sampled].T,
                      inputs.temperature, inputs.noise[:, sampled])
        actual[:, p + (p == 0) - 1:p + size - 1] = out["logits"][:, int(p == 0):]
        p += size
    expected = record["guided_logits"]
    stats = error_stats(actual, expected)
    stats.update(top1_agreement=top1_agreement(actual, expected), block=block, steps=int(actual.shape[1]))
    return {"logits": stats}


def free_running(pipeline: RARPipeline, record: dict[str, np.ndarray], guided: bool, rel_tol: float) -> dict:
    """Generate from the record's seed and noise through the backend's loop; compare the tokens with the
    reference's, and judge every divergence (free_running_report)."""
    c = pipeline.config
    inputs = _generation_inputs(pipeline, record, guided)
    tokens, logits = drive_keeping_logits(pipeline.loop, inputs)
    kind = "" if guided else "unguided_"
    sampler = functools.partial(gumbel_max, noise=inputs.noise, temperature=float(record["temperature"]))
    return free_running_report(tokens, logits, record[f"{kind}tokens"],
                               record[f"{kind}logits" if kind else "guided_logits"], sampler,
                               [(t, t + 1) for t in range(c.image_seq_len)], rel_tol)


def gumbel_max(logits: np.ndarray, noise: np.ndarray, temperature: float) -> np.ndarray:
    """The graphs' sampler in numpy: argmax(logits / T - log(-log u)) in float32, greedy at T = 0."""
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits.astype(np.float32) / np.float32(temperature) - np.log(-np.log(noise.astype(np.float32)))
    return scores.argmax(-1)


def var_filter(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """VAR's top-k then top-p filter (docs/CONTRACT.md) in numpy: logits with the removed ones at -inf."""
    logits = logits.astype(np.float64)
    if top_k > 0:
        kth = -np.sort(-logits, axis=-1)[..., min(top_k, logits.shape[-1]) - 1:min(top_k, logits.shape[-1])]
        logits = np.where(logits < kth, -np.inf, logits)
    if top_p > 0:
        order = np.argsort(logits, axis=-1, kind="stable")
        ordered = np.take_along_axis(logits, order, -1)
        probs = np.exp(ordered - ordered[..., -1:])
        remove = np.cumsum(probs / probs.sum(-1, keepdims=True), axis=-1) <= 1 - top_p
        remove[..., -1] = False
        np.put_along_axis(remove, order, remove.copy(), -1)
        logits = np.where(remove, -np.inf, logits)
    return logits


def free_running_report(tokens: np.ndarray, logits: np.ndarray, expected_tokens: np.ndarray,
                        expected_logits: np.ndarray, sampler: Callable[[np.ndarray], np.ndarray],
                        steps: list[tuple[int, int]], rel_tol: float) -> dict:
    """Token agreement, and the two facts that make a divergence acceptable (fp16 rounding):
    - the record's tokens are what its own logits and noise draw (`record_mismatches`, else it was altered);
    - where an image first diverges (step [begin, end) of its tokens), the backend's logits of that step, on the
      same context as the reference's, are within the tolerance (`unexplained_divergences` counts the images
      where they are not: a divergence that rounding cannot explain).
    sampler(logits [B, n, V]) -> tokens [B, n] of the record's noise."""
    report = _token_agreement(tokens, expected_tokens)
    report["record_mismatches"] = int((sampler(expected_logits) != expected_tokens).sum())
    peak = float(np.abs(expected_logits).max()) or 1.0
    unexplained, worst = 0, 0.0
    for image in range(tokens.shape[0]):
        differing = np.flatnonzero(tokens[image] != expected_tokens[image])
        if differing.size == 0:
            continue
        begin, end = next((b, e) for b, e in steps if b <= differing[0] < e)
        error = float(np.abs(logits[image, begin:end] - expected_logits[image, begin:end]).max()) / peak
        worst = max(worst, error)
        unexplained += error > rel_tol
    report.update(unexplained_divergences=unexplained, divergence_logit_error=worst)
    return report


def decoder_psnr(pipeline: RARPipeline, record: dict[str, np.ndarray]) -> dict:
    return _uint8_psnr(pipeline.decode(record["tokens"]), record["images_uint8"])


def run_parity(pipeline, record: dict[str, np.ndarray], rel_tol: float | None = None,
               progress: Callable[[str], None] = lambda message: None, per_step_teacher_forcing: bool = True) -> dict:
    """The whole report; `failures` lists each metric over its tolerance, with its value and the allowed one.
    per_step_teacher_forcing: also force the reference's tokens with the condition computed in every step
    (the per-graph decode_step check always runs with a per-step condition). RAR or VAR, as the pipeline."""
    precision = pipeline.artifacts.precision
    weights = pipeline.artifacts.weights
    tolerances = {**tolerances_for(precision, weights is not None and weights.quantizes_activations),
                  **({} if rel_tol is None else {"max_rel_to_peak": rel_tol})}
    report = {"precision": precision, "backend": pipeline.backend.name, "batch": int(len(record["labels"])),
              "reference": "float32" if weights is None else f"float32 with the folder's {weights.scheme} weights",
              "seed": int(record["seed"]),
              "guidance": {name: float(record[key]) for name, key in (
                  ("scale", "guidance_scale"), ("pow", "guidance_pow"), ("top_k", "top_k"), ("top_p", "top_p"),
                  ("temperature", "temperature")) if key in record},
              "tolerances": tolerances}
    family = pipeline.family
    if any(key not in record for key in family.record_keys):
        raise RARDeployError(f"the reference record is not a {family.title} record: it belongs to another export")
    results = FAMILY_PARITY[family.name](pipeline, record, tolerances["max_rel_to_peak"], progress,
                                         per_step_teacher_forcing)
    report.update(results)
    report["failures"] = failures(results, tolerances)
    return report


def rar_parity_results(pipeline, record: dict[str, np.ndarray], rel_tol: float, progress: Callable[[str], None],
                       per_step_teacher_forcing: bool) -> dict:
    """RAR's checks: each graph once; the guided logits of every step with the reference's tokens forced (the
    condition table, and per step); free-running tokens with and without guidance; the decoder."""
    results = {}
    progress("per graph, the record's inputs")
    results["graphs"] = compare_graphs(pipeline, record, rel_tol)
    modes = {"table": False, **({"per_step": True} if per_step_teacher_forcing else {})}
    progress(f"teacher-forced, {pipeline.config.image_seq_len} steps, condition {' and '.join(modes)}")
    results["teacher_forced"] = {mode: teacher_forced(pipeline, record, per_step_condition=per_step)
                                 for mode, per_step in modes.items()}
    if "decode_block" in pipeline.artifacts.graph_names:
        progress(f"teacher-forced through decode_block, {DEFAULT_PARALLEL_WINDOW + 1} positions a call")
        results["teacher_forced"]["block"] = teacher_forced_blocks(pipeline, record, DEFAULT_PARALLEL_WINDOW + 1)
    progress("free-running with the reference's noise, with and without guidance")
    results["free_running"] = {"guided": free_running(pipeline, record, True, rel_tol),
                               "unguided": free_running(pipeline, record, False, rel_tol)}
    progress("decoder on identical tokens")
    results["decoder"] = decoder_psnr(pipeline, record)
    return results


def var_parity_results(pipeline, record: dict[str, np.ndarray], rel_tol: float, progress: Callable[[str], None],
                       per_step_teacher_forcing: bool = False) -> dict:
    """VAR's checks: each graph once; every scale's guided logits with the reference's f_hat forced; free-running
    tokens, sampled from the record's noise and greedy; the decoder on the reference's last f_hat."""
    backend, loop, c, name = pipeline.backend, pipeline.loop, pipeline.config, pipeline.backend.name
    progress("per graph, the record's inputs")
    feeds = {key.removeprefix("var_step."): value for key, value in record.items()
             if key.startswith("var_step.") and not key.startswith(("var_step.expected.", "var_step.k_prefix",
                                                                     "var_step.v_prefix"))}
    step = backend.run_host("var_step", {**feeds, **cache_feeds(record, "var_step", c.seq_len)})
    images = backend.run_host("var_decoder", {"f_hat": record["var_decoder.f_hat"]})
    results = {"graphs": {
        "var_step": polygraphy_compare({k: record[f"var_step.expected.{k}"] for k in VAR_STEP_COMPARED}, step,
                                       rel_tol, name),
        "var_decoder": polygraphy_compare({"images": record["var_decoder.images"]}, images, rel_tol, name)}}

    progress(f"teacher-forced, {c.num_scales} scales")
    labels = record["labels"]
    sampling = VARSampling(guidance_scale=float(record["guidance_scale"]), top_k=int(record["top_k"]),
                           top_p=float(record["top_p"]), temperature=float(record["temperature"]))
    _, actual = drive_keeping_logits(loop, var_inputs(c, labels, sampling, int(record["seed"])),
                                     lambda k: record["f_hats"][k])
    expected = record["guided_logits"]
    stats = error_stats(actual, expected)
    stats.update(top1_agreement=top1_agreement(actual, expected), steps=int(actual.shape[1]))
    results["teacher_forced"] = {"scales": {"logits": stats}}

    progress("free-running with the reference's noise, and greedy")
    results["free_running"] = {}
    noise = sampling_noise(int(record["seed"]), len(labels), c.seq_len, c.codebook_size)
    for mode, temperature, kind in (("sampled", sampling.temperature, ""), ("greedy", 0.0, "greedy_")):
        tokens, logits = drive_keeping_logits(
            loop, var_inputs(c, labels, replace(sampling, temperature=temperature), int(record["seed"])))

        def sampler(guided: np.ndarray, temperature: float = temperature) -> np.ndarray:
            return gumbel_max(var_filter(guided, sampling.top_k, sampling.top_p), noise, temperature)

        results["free_running"][mode] = free_running_report(
            tokens, logits, record[f"{kind}tokens"], record[f"{kind}logits" if kind else "guided_logits"], sampler,
            c.scale_ranges(), rel_tol)
    progress("decoder on the reference's f_hat")
    results["decoder"] = _uint8_psnr(backend.run_host("var_decoder", {"f_hat": record["f_hats"][-1]})["images_uint8"],
                                     record["images_uint8"])
    return results


FAMILY_PARITY = {"rar": rar_parity_results, "var": var_parity_results}


def _token_agreement(tokens: np.ndarray, expected: np.ndarray) -> dict:
    equal = tokens == expected
    diverged = [int(np.argmin(row)) for row in equal if not row.all()]
    return {"token_agreement": float(equal.mean()), "first_divergent_step": min(diverged) if diverged else None,
            "images_identical": int(equal.all(axis=1).sum()), "images": int(equal.shape[0])}


def _uint8_psnr(actual: np.ndarray, expected: np.ndarray) -> dict:
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    mse = float(np.mean((actual - expected) ** 2))
    return {"psnr_db": math.inf if mse == 0 else 10 * math.log10(255**2 / mse),
            "max_levels": int(np.abs(actual - expected).max())}


def format_report(report: dict) -> str:
    """The terminal table."""
    lines = [f"rar-parity: {report['backend']} ({report['precision']}) vs PyTorch {report['reference']} reference, "
             f"batch {report['batch']}, seed {report['seed']}",
             f"{'check':<28} {'max abs':>10} {'mean abs':>10} {'rel/peak':>10} {'cosine':>10} {'top-1':>7} "
             f"{'inf/nan':>7}"]
    rows = [(f"{g}.{o}", s) for g, outs in report["graphs"].items() for o, s in outs.items()]
    rows += [(f"teacher_forced.{mode}", checks["logits"]) for mode, checks in report["teacher_forced"].items()]
    for name, s in rows:
        top1 = f"{s['top1_agreement']:.3f}" if "top1_agreement" in s else "-"
        lines.append(f"{name:<28} {s['max_abs']:10.3g} {s['mean_abs']:10.3g} {s['max_rel_to_peak']:10.3g} "
                     f"{s['cosine']:10.6f} {top1:>7} {s['nonfinite']:>7}")
    for mode, fr in report["free_running"].items():
        line = (f"free-running tokens ({mode}): {fr['token_agreement']:.4f} equal, "
                f"{fr['images_identical']}/{fr['images']} images identical, "
                f"first divergent step {fr['first_divergent_step']}")
        if fr["first_divergent_step"] is not None:
            line += f" (logits there {fr['divergence_logit_error']:.2g} of peak)"
        lines.append(line)
    dec = report["decoder"]
    lines.append(f"decoder on the reference's input: PSNR {dec['psnr_db']:.1f} dB, max {dec['max_levels']} levels")
    lines.append("PASSED" if not report["failures"] else "FAILED:\n  " + "\n  ".join(report["failures"]))
    return "\n".join(lines)
