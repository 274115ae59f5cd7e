"""rar-parity: does a backend compute what the PyTorch reference computes?

Per graph on fresh random inputs (Polygraphy's comparator gives the verdict and the minimum
tolerance that would pass), then end to end: teacher-forced guided logits over every step,
free-running tokens from shared noise, and decoder PSNR on identical tokens.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .export.graphs import DecodeStepGraph, PrefillGraph, VQDecoderGraph
from .export.verify import TOLERANCES, decode_step_reference
from .metrics import error_stats, top1_agreement
from .model.generator import RARGenerator
from .model.tokenizer import VQDecoder, images_to_uint8
from .runtime.pipeline import RARPipeline
from .sampling import guidance_schedule, reference_generate, sampling_noise

# End-to-end thresholds per precision: free-running token agreement, decoder PSNR on uint8 images.
END_TO_END = {"fp32": {"min_token_agreement": 1.0, "min_psnr_db": 40.0},
              "fp16": {"min_token_agreement": 0.0, "min_psnr_db": 30.0}}  # fp16 reports where it diverges


def polygraphy_compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], rel_tol: float,
                       backend: str) -> dict[str, dict]:
    """Polygraphy's `simple` comparator with an absolute tolerance of rel_tol x the reference's peak per
    output; returns its verdict and required tolerance, with our cosine/top-1/non-finite statistics."""
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
    iterations = accuracy[0][("reference", backend)]
    report = {}
    for name, result in iterations[0].items():
        stats = error_stats(actual[name], expected[name])
        stats.update(passed=bool(result), required_atol=float(result.max_absdiff),
                     max_rel_to_peak=float(result.max_absdiff) / peaks[name])
        if name == "logits":
            stats["top1_agreement"] = top1_agreement(actual[name], expected[name])
        report[name] = stats
    return report


def _to_device(feeds: dict[str, np.ndarray], device: torch.device, cache_dtype: torch.dtype) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, cache_dtype if "_cache." in k else None)
            for k, v in feeds.items()}


def _numpy(outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in outputs.items()}


def compare_graphs(generator: RARGenerator, tokenizer: VQDecoder, pipeline: RARPipeline, batch: int, rel_tol: float,
                   seed: int) -> dict:
    """Each graph once, on random inputs, backend vs the float32 reference."""
    c, backend = generator.config, pipeline.backend
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c.num_classes, batch)
    sampling = {"guidance_scale": rng.uniform(1, 8, batch).astype(np.float32),
                "temperature": np.zeros(batch, np.float32),
                "noise": rng.uniform(1e-6, 1 - 1e-6, (batch, c.codebook_size)).astype(np.float32)}
    report = {}

    feeds = {"class_labels": labels, **sampling}
    with torch.no_grad():
        expected = _numpy(dict(zip(PrefillGraph.output_names, PrefillGraph(generator)(
            *(torch.from_numpy(v) for v in feeds.values())))))
    actual = _numpy(backend.run("prefill", _to_device(feeds, backend.device, backend.cache_dtype)))
    report["prefill"] = polygraphy_compare({k: expected[k] for k in ("logits", "keys", "values")}, actual,
                                           rel_tol, backend.name)

    ids = torch.from_numpy(rng.integers(0, c.codebook_size, (batch, c.image_seq_len)))
    rows = torch.cat([torch.from_numpy(labels), torch.full((batch,), c.null_class)])
    _, keys, values = generator.forward_prefix(rows, ids.repeat(2, 1))
    step = rng.integers(1, c.image_seq_len, batch)
    feeds = {"tokens": ids.numpy()[np.arange(batch), step - 1], "step": step, "class_labels": labels,
             **{f"k_cache.{i}": k for i, k in enumerate(keys[..., : c.cache_len, :].numpy())},
             **{f"v_cache.{i}": v for i, v in enumerate(values[..., : c.cache_len, :].numpy())}, **sampling}
    expected = decode_step_reference(DecodeStepGraph(generator), feeds)
    actual = _numpy(backend.run("decode_step", _to_device(feeds, backend.device, backend.cache_dtype)))
    report["decode_step"] = polygraphy_compare({k: expected[k] for k in ("logits", "keys", "values")}, actual,
                                               rel_tol, backend.name)

    tokens = ids.numpy()
    with torch.no_grad():
        expected = {"images": VQDecoderGraph(tokenizer)(ids)[0].numpy()}
    actual = _numpy(backend.run("vq_decoder", {"tokens": torch.from_numpy(tokens).to(backend.device)}))
    report["vq_decoder"] = polygraphy_compare(expected, actual, rel_tol, backend.name)
    return report


def teacher_forced(pipeline: RARPipeline, reference, labels: torch.Tensor, schedule: np.ndarray,
                   noise: np.ndarray, progress: Callable[[], None] | None) -> dict:
    """Feed the reference's tokens at every step; compare the guided logits of every step."""
    backend, steps = pipeline.backend, pipeline.config.image_seq_len
    batch = labels.shape[0]
    backend.start(labels, torch.from_numpy(schedule), torch.ones(batch),
                  torch.from_numpy(np.ascontiguousarray(noise.transpose(1, 0, 2))))
    backend.prefill()
    logits = [backend.last_logits.float().cpu().numpy()]
    forced = reference.tokens.to(backend.device)
    for t in range(1, steps):
        backend.out_tokens[t - 1].copy_(forced[:, t - 1])
        backend.step(t)
        logits.append(backend.last_logits.float().cpu().numpy())
        progress and progress()
    actual, expected = np.stack(logits, axis=1), reference.logits.numpy()
    stats = error_stats(actual, expected)
    per_step = np.abs(actual - expected).max(axis=(0, 2)) / (np.abs(expected).max() or 1.0)
    stats.update(top1_agreement=top1_agreement(actual, expected), worst_step=int(per_step.argmax()), steps=steps)
    return {"logits": stats}


def free_running(pipeline: RARPipeline, reference_tokens: np.ndarray, labels, scale, pow, seed: int) -> dict:
    tokens = pipeline.generate_tokens(labels, scale, pow, 1.0, seed=seed)
    equal = tokens == reference_tokens
    diverged = [int(np.argmin(row)) for row in equal if not row.all()]
    return {"token_agreement": float(equal.mean()), "first_divergent_step": min(diverged) if diverged else None,
            "images_identical": int(equal.all(axis=1).sum()), "images": int(equal.shape[0])}


def decoder_psnr(pipeline: RARPipeline, tokenizer: VQDecoder, tokens: np.ndarray) -> dict:
    actual = pipeline.decode(tokens).astype(np.float64)
    expected = images_to_uint8(tokenizer.decode(torch.from_numpy(tokens))).numpy().astype(np.float64)
    mse = float(np.mean((actual - expected) ** 2))
    return {"psnr_db": math.inf if mse == 0 else 10 * math.log10(255**2 / mse),
            "max_levels": int(np.abs(actual - expected).max())}


def run_parity(generator: RARGenerator, tokenizer: VQDecoder, pipeline: RARPipeline, batch: int = 2, seed: int = 0,
               rel_tol: float | None = None, progress: Callable[[str], None] = lambda message: None) -> dict:
    """The whole report; `failures` lists each metric over its tolerance, with its value and the allowed one."""
    precision = pipeline.artifacts.precision
    rel_tol = TOLERANCES[precision]["max_rel_to_peak"] if rel_tol is None else rel_tol
    c = generator.config
    defaults = pipeline.artifacts.sampling_defaults
    scale, pow = defaults.guidance_scale, defaults.guidance_pow
    labels = torch.from_numpy(np.random.default_rng(seed).integers(0, c.num_classes, batch))
    noise = sampling_noise(seed, batch, c.image_seq_len, c.codebook_size)

    progress("per graph, random inputs")
    report = {"precision": precision, "backend": pipeline.backend.name, "batch": batch, "seed": seed,
              "guidance": {"scale": scale, "pow": pow, "temperature": 1.0},
              "tolerances": {"max_rel_to_peak": rel_tol, **END_TO_END[precision]}}
    report["graphs"] = compare_graphs(generator, tokenizer, pipeline, batch, rel_tol, seed)
    progress("reference generation (float32, shared noise)")
    reference = reference_generate(generator, labels, scale, pow, 1.0, noise=noise, keep_logits=True)
    progress(f"teacher-forced decode, {c.image_seq_len} steps")
    schedule = guidance_schedule(c.image_seq_len, scale, pow)
    report["teacher_forced"] = teacher_forced(pipeline, reference, labels, schedule, noise, None)
    progress("free-running decode with the reference's noise")
    report["free_running"] = free_running(pipeline, reference.tokens.numpy(), labels.tolist(), scale, pow, seed)
    progress("decoder on identical tokens")
    report["decoder"] = decoder_psnr(pipeline, tokenizer, reference.tokens.numpy())
    report["failures"] = parity_failures(report, precision, rel_tol)
    return report


def parity_failures(report: dict, precision: str, rel_tol: float) -> list[str]:
    found = []
    checks = [(f"{g}.{o}", s) for g, outs in report["graphs"].items() for o, s in outs.items()]
    checks.append(("teacher_forced.logits", report["teacher_forced"]["logits"]))
    for where, stats in checks:
        if stats["max_rel_to_peak"] > rel_tol:
            found.append(f"{where}: max error {stats['max_rel_to_peak']:.3g} of the reference's peak, "
                         f"allowed {rel_tol:g}")
        if stats["nonfinite"]:
            found.append(f"{where}: {stats['nonfinite']} inf/nan values")
    limits = END_TO_END[precision]
    agreement = report["free_running"]["token_agreement"]
    if agreement < limits["min_token_agreement"]:
        found.append(f"free_running: token agreement {agreement:.4f}, at least {limits['min_token_agreement']:g} "
                     "required "
                     f"(first divergent step {report['free_running']['first_divergent_step']})")
    psnr = report["decoder"]["psnr_db"]
    if psnr < limits["min_psnr_db"]:
        found.append(f"decoder: PSNR {psnr:.1f} dB, at least {limits['min_psnr_db']:g} dB required")
    return found


def format_report(report: dict) -> str:
    """The terminal table."""
    lines = [f"rar-parity: {report['backend']} ({report['precision']}) vs PyTorch float32 reference, "
             f"batch {report['batch']}, seed {report['seed']}",
             f"{'check':<26} {'max abs':>10} {'mean abs':>10} {'rel/peak':>10} {'cosine':>10} {'top-1':>7} "
             f"{'inf/nan':>7}"]
    rows = [(f"{g}.{o}", s) for g, outs in report["graphs"].items() for o, s in outs.items()]
    rows.append(("teacher_forced.logits", report["teacher_forced"]["logits"]))
    for name, s in rows:
        top1 = f"{s['top1_agreement']:.3f}" if "top1_agreement" in s else "-"
        lines.append(f"{name:<26} {s['max_abs']:10.3g} {s['mean_abs']:10.3g} {s['max_rel_to_peak']:10.3g} "
                     f"{s['cosine']:10.6f} {top1:>7} {s['nonfinite']:>7}")
    fr, dec = report["free_running"], report["decoder"]
    lines.append(f"free-running tokens: {fr['token_agreement']:.4f} equal, "
                 f"{fr['images_identical']}/{fr['images']} images identical, "
                 f"first divergent step {fr['first_divergent_step']}")
    lines.append(f"decoder on identical tokens: PSNR {dec['psnr_db']:.1f} dB, max {dec['max_levels']} levels")
    lines.append("PASSED" if not report["failures"] else "FAILED:\n  " + "\n  ".join(report["failures"]))
    return "\n".join(lines)
