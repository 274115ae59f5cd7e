"""rar-bench: per-stage latency of a backend, with the official-style eager loop (`baseline.py`, torch)
as the baseline. Times are taken with CUDA events on GPU (no synchronisation inside the loop) and
perf_counter on CPU."""

from __future__ import annotations

import itertools
import time
from typing import Callable

import numpy as np

from rar_deploy.runtime.families import RARSampling
from rar_deploy.runtime.jacobi import JacobiStats, jacobi_generate
from rar_deploy.runtime.loops import drive
from rar_deploy.runtime.pipeline import Pipeline, open_pipeline
from rar_deploy.runtime.timing import StageClock, memory_usage, stage_summary

# peak memory bandwidth (bytes/s) by device name, from NVIDIA's datasheets: the per-step floor of a device
# named here (most specific name first); no floor is reported for others
PEAK_BANDWIDTH = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100-SXM4-80GB", 2.039e12),
                  ("A100", 1.555e12), ("L40S", 0.864e12), ("L4", 0.3e12), ("RTX 4090", 1.008e12))


def bench_pipeline(pipeline: Pipeline, batch: int, warmup_steps: int = 3, seed: int = 0) -> dict:
    """One warm-up (RAR: the prefill and a few steps; VAR: every scale, as each has its own shapes; then the
    decoder), then one timed generation through the driver: the start (the inputs uploaded), the prefill (RAR:
    positions 0-1, with the first window of condition rows, all of them when the table fits; VAR: scale 0),
    every later step, the decoder. Labels 0 .. B-1, the published sampling values."""
    loop, c, family = pipeline.loop, pipeline.config, pipeline.family
    inputs = family.published_inputs(c, pipeline.artifacts.sampling_defaults, batch, seed)
    loop.start(inputs)
    for _ in range(loop.steps if loop.distinct_step_shapes else min(2 + warmup_steps, loop.steps)):
        loop.step()
    loop.images()

    clock = StageClock(loop.memory)
    clock.mark()

    def on_step(loop) -> None:  # after the start, then after every step that sampled
        if loop.position == 0 or loop.tokens_done():
            clock.mark()

    drive(loop, inputs, on_step)
    decode_start = time.perf_counter()
    loop.images()
    decoder_ms = (time.perf_counter() - decode_start) * 1e3  # includes the host copy of the images
    intervals = clock.intervals_ms()
    summary = stage_summary(intervals[0], intervals[1], intervals[2:], decoder_ms, batch)
    bytes_per_step = loop.step_bytes()
    return {**summary, **loop.details(), "step_ms": intervals[1:], "step_bytes": bytes_per_step,
            "step_gb_per_s": bytes_per_step / summary["step_p50_ms"] / 1e6, **memory_usage(loop.memory)}


def bench_parallel(pipeline: Pipeline, batch: int, window: int, rounds: int = 3, seed: int = 0,
                   sampling: RARSampling | None = None) -> dict:
    """Speculative Jacobi decoding against the sequential loop (`sampling`; None: the published values), same
    process: after a warm-up of each, `rounds` batches of other images each (round r: images r B .. r B + B - 1 of
    the seed, labels the same modulo the classes), sequential then speculative on the same batch. Decode calls
    (passes) and tokens per pass over every image; the wall time of the tokens per image summed over the rounds
    (decoder excluded: the same for both); the host's share of a pass."""
    loop, c, family = pipeline.loop, pipeline.config, pipeline.family
    resolved = family.check_sampling(sampling, pipeline.artifacts.sampling_defaults)
    sequential = parallel = host = 0.0
    passes = []
    for r in range(rounds + 1):  # round 0 warms both up
        images = np.arange(max(r - 1, 0) * batch, max(r - 1, 0) * batch + batch)
        inputs = family.inputs(c, images % c.num_classes, resolved, seed, int(images[0]))
        start = time.perf_counter()
        drive(loop, inputs)
        loop.memory.synchronize()
        middle = time.perf_counter()
        _, stats = jacobi_generate(pipeline.backend, inputs, [(seed, int(i)) for i in images], window)
        end = time.perf_counter()
        if r:
            sequential, parallel = sequential + middle - start, parallel + end - middle
            host += stats.host_ms_per_call / rounds
            passes.append(stats.calls)
    every = JacobiStats(calls=np.concatenate(passes), tokens=c.image_seq_len)
    images = rounds * batch
    return {"batch": batch, "window": window, "images": images, "sequential_passes": loop.steps,
            "passes": float(every.calls.mean()), "tokens_per_pass": every.tokens_per_call,
            "sequential_ms_per_image": sequential * 1e3 / images, "parallel_ms_per_image": parallel * 1e3 / images,
            "wall_speedup": sequential / parallel, "host_ms_per_pass": host}


def step_floor_ms(bytes_per_step: float, device: str | None) -> float | None:
    """Reading every byte a step must read once at the device's peak bandwidth: the batch-1 floor of a step
    (None for a device not in PEAK_BANDWIDTH)."""
    bandwidth = next((b for name, b in PEAK_BANDWIDTH if device and name in device), None)
    return None if bandwidth is None else bytes_per_step / bandwidth * 1e3


def bench_results(artifacts, backends: list[str], batch_sizes: list[int], device: str | None, baseline: bool,
                  ckpt: str | None, tokenizer: str | None, warmup_steps: int = 3,
                  progress: Callable[[str], None] = lambda message: None, threads: int | None = None,
                  condition_budgets: list[int] | None = None, int8_activations: bool = False,
                  parallel_windows: list[int] | None = None) -> dict:
    """Every backend at every batch size (and condition budget: none given is the backend's default; and
    speculative decoding at each parallel window against the sequential loop), then the baseline (needs torch),
    in this one process."""
    import os
    import platform

    from rar_deploy.runtime.gpu import device_name

    if baseline:  # found and checked before the backends run for minutes
        from rar_deploy.model.baseline import baseline_checkpoints

        reference = baseline_checkpoints(artifacts, ckpt, tokenizer)
    c = artifacts.config
    results = {"family": artifacts.family.name, "model": {**c.to_dict(), "preset": c.preset_name},
               "precision": artifacts.precision,
               "weights": None if artifacts.weights is None else artifacts.weights.label
               + (", int8 activations" if int8_activations else ""),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "gpu": device_name(),
                           "onnxruntime": _version("onnxruntime"), "torch": _version("torch")},
               "runs": [], "parallel": []}
    for name in backends:
        pipeline = open_pipeline(artifacts.directory, backend=name, device=device, ckpt=ckpt, tokenizer=tokenizer,
                                 threads=threads, int8_activations=int8_activations)
        for batch, budget in itertools.product(batch_sizes, condition_budgets or [None]):
            progress(f"{name}, batch {batch}" + ("" if budget is None else f", condition budget {budget} bytes"))
            if budget is not None:
                pipeline.loop.condition_table_budget = budget
            measured = bench_pipeline(pipeline, batch, warmup_steps)
            run = {"backend": name, "device": pipeline.backend.device, **measured}
            floor = step_floor_ms(run["step_bytes"], results["machine"]["gpu"]) if run["device"] != "cpu" else None
            if floor is not None:
                run["floor_step_ms"] = floor
            results["runs"].append(run)
        for batch, window in itertools.product(batch_sizes, parallel_windows or []):
            progress(f"{name}, batch {batch}, speculative decoding with {window} drafts against sequential")
            results["parallel"].append({"backend": name, **bench_parallel(pipeline, batch, window)})
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
             f"{results['precision']}{' ' + results['weights'] + ' weights' if results.get('weights') else ''} "
             f"artifacts, onnxruntime {results['machine']['onnxruntime']}, "
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
    if results.get("parallel"):
        lines += ["", "speculative Jacobi decoding (--parallel-window) against the sequential loop, same images",
                  f"{'backend':<12} {'batch':>5} {'window':>6} {'passes/image':>12} {'tokens/pass':>11} "
                  f"{'sequential ms/image':>19} {'parallel ms/image':>17} {'wall':>6} {'host ms/pass':>12}"]
        for r in results["parallel"]:
            lines.append(f"{r['backend']:<12} {r['batch']:>5} {r['window']:>6} "
                         f"{r['passes']:>5.1f} of {r['sequential_passes']:<3} {r['tokens_per_pass']:11.2f} "
                         f"{r['sequential_ms_per_image']:19.1f} {r['parallel_ms_per_image']:17.1f} "
                         f"{r['wall_speedup']:5.2f}x {r['host_ms_per_pass']:12.3f}")
        lines.append("passes = decode calls an image took (sequential: N + 1); tokens/pass = N / (passes - 1), the "
                     "prefill samples one token in both; ms/image of the tokens alone (decoder excluded), over 3 "
                     "rounds of other images, each sequential then speculative; wall = sequential / parallel; "
                     "host ms/pass = the acceptance, drafts and noise on the host, per decode call")
    return "\n".join(lines)
