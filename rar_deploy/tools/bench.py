"""rar-bench: per-stage latency of a backend, with the official-style eager loop (`baseline.py`, torch)
as the baseline. Times are taken with CUDA events on GPU (no synchronisation inside the loop) and
perf_counter on CPU."""

from __future__ import annotations

import itertools
import resource
import time
from typing import Callable

import numpy as np

from rar_deploy.contract.sampling import guidance_rows, guidance_schedule, is_guided, sampling_noise
from rar_deploy.runtime.pipeline import RARPipeline, open_pipeline
from rar_deploy.runtime.var_pipeline import VARPipeline, var_loop_inputs

DRIFT_WINDOW = 20  # step drift compares the last 20 decode steps with the first 20 (models of 40+ steps)
HBM_BYTES_PER_S = 3.0e12  # H100 bandwidth measured in this workplace (RAR_FACTS.md); the per-step floor


class StageClock:
    """Marks between stages in a backend's memory: CUDA events on GPU (read once at the end, no
    synchronisation inside the loop), wall clock on CPU."""

    def __init__(self, memory) -> None:
        self.memory = memory
        self.marks: list = []

    def mark(self) -> None:
        self.marks.append(self.memory.mark())

    def intervals_ms(self) -> list[float]:
        self.memory.synchronize()
        return [self.memory.elapsed_ms(a, b) for a, b in zip(self.marks, self.marks[1:])]


def _summary(start_ms: float, prefill_ms: float, steps_ms: list[float], decoder_ms: float, batch: int) -> dict:
    steps = np.array(steps_ms)
    window = DRIFT_WINDOW
    total = start_ms + prefill_ms + steps.sum() + decoder_ms
    return {
        "batch": batch, "start_ms": start_ms, "prefill_ms": prefill_ms, "step_mean_ms": float(steps.mean()),
        "step_p50_ms": float(np.percentile(steps, 50)), "step_p99_ms": float(np.percentile(steps, 99)),
        "step_drift": float(steps[-window:].mean() / steps[:window].mean()) if len(steps) >= 2 * window else None,
        "steps": int(len(steps)),
        "decoder_ms": decoder_ms, "total_ms_per_image": float(total / batch),
        "images_per_s": float(batch * 1e3 / total),
    }


def _memory(memory) -> dict:
    usage = {"peak_host_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if hasattr(memory, "used_bytes"):
        usage["device_mib"] = memory.used_bytes() / 2**20
    return usage


def bench_pipeline(pipeline: RARPipeline, batch: int, warmup_steps: int = 3, seed: int = 0) -> dict:
    """One warm-up (the prefill, a few steps, the decoder), then one full timed generation: the start (the
    inputs uploaded), positions 0-1 (the prefill, with the first window of condition rows: all of them when
    the table fits), positions 2 .. N (the N - 1 decode steps, with the later windows), the decoder."""
    backend, c = pipeline.backend, pipeline.config
    labels = np.arange(batch) % c.num_classes
    defaults = pipeline.artifacts.sampling_defaults
    rows = guidance_rows(labels, is_guided(defaults.guidance_scale), c.null_class)
    schedule = np.repeat(guidance_schedule(c.image_seq_len, defaults.guidance_scale, defaults.guidance_pow)[:, None],
                         batch, axis=1)
    noise = sampling_noise(seed, batch, c.image_seq_len, c.codebook_size)
    temperature = np.full(batch, defaults.temperature, np.float32)

    backend.start(rows, schedule, temperature, noise)
    for p in range(min(2 + warmup_steps, c.cache_len)):
        backend.step(p)
    backend.decode_images(backend.tokens())

    clock = StageClock(backend.memory)
    clock.mark()
    backend.start(rows, schedule, temperature, noise)
    clock.mark()
    for p in range(c.cache_len):
        backend.step(p)
        if p >= 1:
            clock.mark()
    tokens = backend.tokens()
    decode_start = time.perf_counter()
    backend.decode_images(tokens)
    decoder_ms = (time.perf_counter() - decode_start) * 1e3  # includes the host copy of the images
    intervals = clock.intervals_ms()
    bytes_per_step = step_bytes(pipeline.artifacts, backend.window, len(rows))
    summary = _summary(intervals[0], intervals[1], intervals[2:], decoder_ms, batch)
    return {**summary, "condition_window": backend.window, "step_bytes": bytes_per_step,
            "step_gb_per_s": bytes_per_step / summary["step_p50_ms"] / 1e6, **_memory(backend.memory)}


def var_bench_inputs(config, defaults, batch: int, seed: int = 0) -> tuple:
    """The VAR loop's inputs for a benchmark: labels 0 .. B-1, the published sampling values."""
    return var_loop_inputs(config, np.arange(batch) % config.num_classes, defaults.guidance_scale, defaults.top_k,
                           defaults.top_p, defaults.temperature, seed)


def bench_var_pipeline(pipeline: VARPipeline, batch: int, seed: int = 0) -> dict:
    """One warm-up generation (every scale's shapes once), then one timed: the start, scale 0 (reported as the
    prefill), scales 1 .. K-1 (the steps), the decoder."""
    loop, c = pipeline.loop, pipeline.config
    inputs = var_bench_inputs(c, pipeline.artifacts.sampling_defaults, batch, seed)
    loop.start(*inputs)
    for k in range(c.num_scales):
        loop.step(k)
    loop.tokens(), loop.decode()

    clock = StageClock(loop.memory)
    clock.mark()
    loop.start(*inputs)
    clock.mark()
    for k in range(c.num_scales):
        loop.step(k)
        clock.mark()
    loop.tokens()
    decode_start = time.perf_counter()
    loop.decode()
    decoder_ms = (time.perf_counter() - decode_start) * 1e3  # includes the host copy of the images
    intervals = clock.intervals_ms()
    summary = _summary(intervals[0], intervals[1], intervals[2:], decoder_ms, batch)
    graph = pipeline.artifacts.manifest["graphs"]["var_step"]
    weights = graph["weight_bytes"] - graph["table_bytes"]
    return {**summary, "scale_ms": intervals[1:], "step_bytes": weights,
            "step_gb_per_s": weights / summary["step_p50_ms"] / 1e6, **_memory(loop.memory)}


def step_bytes(artifacts, window: int, rows: int) -> int:
    """Bytes a decode step reads at least: the decode graph's weights (and the condition graph's, shared
    by the W positions of a condition window), this position's condition rows, and the KV cache's live half
    on average. Weights are the real initializer bytes recorded at export (without the embedding tables, of
    which a step reads a few rows), not a formula."""
    c, itemsize = artifacts.config, artifacts.cache_dtype.itemsize
    graphs = artifacts.manifest["graphs"]
    weights = {name: graph["weight_bytes"] - graph["table_bytes"] for name, graph in graphs.items()}
    condition = rows * artifacts.condition_width * itemsize
    cache = 2 * c.depth * rows * c.num_heads * c.head_dim * itemsize * c.cache_len // 2
    return weights["decode_step"] + weights["condition"] // window + condition + cache


def step_floor_ms(generator_bytes_per_step: float) -> float:
    """Reading every weight once per step at HBM bandwidth: the batch-1 floor of a decode step."""
    return generator_bytes_per_step / HBM_BYTES_PER_S * 1e3


def bench_results(artifacts, backends: list[str], batch_sizes: list[int], device: str | None, baseline: bool,
                  ckpt: str | None, tokenizer: str | None, warmup_steps: int = 3,
                  progress: Callable[[str], None] = lambda message: None, threads: int | None = None,
                  condition_budgets: list[int] | None = None) -> dict:
    """Every backend at every batch size (and condition budget: none given is the backend's default), then
    the baseline (needs torch), in this one process."""
    import os
    import platform

    from rar_deploy.runtime.gpu import device_name

    if baseline:  # found and checked before the backends run for minutes
        from rar_deploy.model.baseline import baseline_checkpoints

        reference = baseline_checkpoints(artifacts, ckpt, tokenizer)
    c = artifacts.config
    results = {"family": artifacts.family, "model": {**c.to_dict(), "preset": c.preset_name},
               "precision": artifacts.precision,
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "gpu": device_name(),
                           "onnxruntime": _version("onnxruntime"), "torch": _version("torch")},
               "runs": []}
    for name in backends:
        pipeline = open_pipeline(artifacts.directory, backend=name, device=device, ckpt=ckpt, tokenizer=tokenizer,
                                 threads=threads)
        for batch, budget in itertools.product(batch_sizes, condition_budgets or [None]):
            progress(f"{name}, batch {batch}" + ("" if budget is None else f", condition budget {budget} bytes"))
            if budget is not None:
                pipeline.backend.condition_table_budget = budget
            measured = (bench_var_pipeline(pipeline, batch) if artifacts.family == "var"
                        else bench_pipeline(pipeline, batch, warmup_steps))
            run = {"backend": name, "device": pipeline.backend.device, **measured}
            if pipeline.backend.device != "cpu":
                run["floor_step_ms"] = step_floor_ms(run["step_bytes"])
            results["runs"].append(run)
        del pipeline
    if baseline:
        from rar_deploy.model.baseline import bench_baselines

        results["runs"] += bench_baselines(artifacts, reference, batch_sizes, device, warmup_steps, progress)
    return results


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def format_results(results: dict) -> str:
    m, var = results["model"], results.get("family") == "var"
    shape = (f"L={m['depth']}, D={m['embed_dim']}, {len(m['patch_nums'])} scales" if var
             else f"L={m['depth']}, D={m['hidden_size']}, N={m['image_seq_len']}")
    lines = [f"rar-bench: {m['preset'] or 'custom'} ({shape}), "
             f"{results['precision']} artifacts, onnxruntime {results['machine']['onnxruntime']}, "
             f"{results['machine']['gpu'] or str(results['machine']['cpus']) + ' CPUs'}",
             f"{'backend':<12} {'batch':>5} {'W':>4} {'start':>7} {'prefill':>9} {'step mean':>9} {'p50':>8} "
             f"{'p99':>8} {'GB/s':>7} {'drift':>6} {'decoder':>9} {'ms/image':>9} {'img/s':>8} {'RSS MiB':>8} "
             f"{'vs base':>8}"]
    base = {r["batch"]: r for r in results["runs"] if r["backend"] == "baseline"}
    for r in results["runs"]:
        speedup = base[r["batch"]]["total_ms_per_image"] / r["total_ms_per_image"] if r["batch"] in base else None
        ratio = f"{speedup:.2f}x" if speedup else "-"
        drift = "-" if r["step_drift"] is None else f"{r['step_drift']:.2f}"
        window = r.get("condition_window", "-")
        lines.append(f"{r['backend']:<12} {r['batch']:>5} {window:>4} {r['start_ms']:7.2f} {r['prefill_ms']:9.2f} "
                     f"{r['step_mean_ms']:9.2f} {r['step_p50_ms']:8.2f} {r['step_p99_ms']:8.2f} "
                     f"{r['step_gb_per_s']:7.1f} {drift:>6} "
                     f"{r['decoder_ms']:9.1f} "
                     f"{r['total_ms_per_image']:9.1f} {r['images_per_s']:8.3f} {r['peak_host_rss_mib']:8.0f} "
                     f"{ratio:>8}")
        if "floor_step_ms" in r:
            lines[-1] += f"  step/floor {r['step_p50_ms'] / r['floor_step_ms']:.2f}"
    if var:
        lines.append("times in ms; start = inputs uploaded; prefill = scale 0; steps = scales 1 .. K-1 (each a "
                     "whole scale, so p50/p99 spread with the scale size); GB/s = the var_step's weights / p50; "
                     "vs base = baseline ms/image / this ms/image (speed-up over the official "
                     "autoregressive_infer_cfg loop, its growing cache and interpolations, at the same batch)")
    else:
        lines.append("times in ms; W = positions of condition rows computed at a time (N + 1: the whole table, in "
                     "the prefill); start = inputs uploaded; prefill = positions 0-1; "
                     "GB/s = bytes a step reads (weights from the export, live KV cache) / p50; "
                     "drift = mean of the last 20 steps / first 20 (- under 40 steps); vs base = baseline ms/image / "
                     "this ms/image (speed-up over the official-style loop at the same batch)")
    return "\n".join(lines)
