"""ONNX Runtime session options for the decode step, measured in one process: threads, spinning, graph
optimisation level, the transformer optimizer's fusions, and leaving the logits output unbound.

    python benchmarks/ort_options.py --artifacts /tmp/rar-bench/rar_b-fp32 --batch-sizes 1,4,16

Prints the median time of one decode step (ms) per option set and batch size, the ratio to the
runtime's own session (the first row), and whether the tokens and logits stayed equal to it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rar_deploy.contract.sampling import guidance_rows
from rar_deploy.runtime import Artifacts


def step_feeds(artifacts: Artifacts, batch: int, position: int) -> dict[str, np.ndarray]:
    """Realistic inputs: a condition table from the condition graph, a random cache, guided rows."""
    c, dtype = artifacts.config, artifacts.cache_dtype
    rng = np.random.default_rng(0)
    rows = guidance_rows(rng.integers(0, c.num_classes, batch), True, c.null_class)
    positions = np.repeat(np.arange(c.cache_len)[:, None], len(rows), axis=1)
    session = ort.InferenceSession(str(artifacts.graph_path("condition")), providers=["CPUExecutionProvider"])
    (table,) = session.run(None, {"class_labels": rows, "positions": positions})
    cache = (rng.standard_normal((c.depth, len(rows), c.num_heads, c.cache_len, c.head_dim)) * 0.5).astype(dtype)
    return {"tokens": rng.integers(0, c.codebook_size, batch), "position": np.full(batch, position),
            "condition": table, **{f"{kv}_cache.{i}": cache[i] for kv in "kv" for i in range(c.depth)},
            "guidance_scale": np.full(batch, 4.0, np.float32), "temperature": np.ones(batch, np.float32),
            "noise": rng.uniform(0.01, 0.99, (batch, c.codebook_size)).astype(np.float32)}


def time_step(session: ort.InferenceSession, feeds: dict, outputs: list[str], repeats: int) -> tuple[float, list]:
    """Median ms of one run over IOBinding (inputs bound once, outputs to ORT-allocated buffers)."""
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    for name in outputs:
        binding.bind_output(name, "cpu")
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[2:]), binding.copy_outputs_to_cpu()


def option_sets(path: Path, workdir: Path) -> dict[str, tuple[Path, ort.SessionOptions]]:
    def options(**settings) -> ort.SessionOptions:
        o = ort.SessionOptions()
        o.log_severity_level = 3
        for key, value in settings.items():
            if key.startswith("config:"):
                o.add_session_config_entry(key.removeprefix("config:"), value)
            else:
                setattr(o, key, value)
        return o

    sets = {
        "runtime default": (path, options()),
        "1 intra-op thread": (path, options(intra_op_num_threads=1)),
        "2 intra-op threads": (path, options(intra_op_num_threads=2)),
        "no spinning": (path, options(**{"config:session.intra_op.allow_spinning": "0"})),
        "optimisation: basic": (path, options(graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)),
        "optimisation: extended": (path, options(
            graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)),
        "sequential, memory pattern off": (path, options(execution_mode=ort.ExecutionMode.ORT_SEQUENTIAL,
                                                         enable_mem_pattern=False)),
    }
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        fused = workdir / "fused.onnx"
        optimize_model(str(path), model_type="gpt2", num_heads=0, hidden_size=0, opt_level=1,
                       use_gpu=False).save_model_to_file(str(fused))
        sets["transformer optimizer (gpt2 fusions)"] = (fused, options())
    except Exception as exc:  # report, do not hide: the row says why it is missing
        print(f"transformer optimizer: not applicable ({type(exc).__name__}: {exc})")
    return sets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    artifacts = Artifacts.load(args.artifacts)
    path = artifacts.graph_path("decode_step")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    feeds = {b: step_feeds(artifacts, b, position=artifacts.config.cache_len // 2) for b in sizes}
    with tempfile.TemporaryDirectory() as workdir:
        sets = option_sets(path, Path(workdir))
        sessions = {name: ort.InferenceSession(str(p), o, providers=["CPUExecutionProvider"])
                    for name, (p, o) in sets.items()}
        header = " | ".join(f"b{b} ms | vs default" for b in sizes)
        print(f"| options | {header} | same outputs |\n|" + " --- |" * (2 * len(sizes) + 2))
        base: dict[int, tuple[float, list]] = {}
        for name, session in sessions.items():
            cells, same = [], True
            for batch in sizes:
                ms, outs = time_step(session, feeds[batch], ["next_tokens", "logits", "keys", "values"], args.repeats)
                base.setdefault(batch, (ms, outs))
                ref = base[batch][1]
                same &= np.array_equal(outs[0], ref[0]) and np.allclose(outs[1], ref[1], rtol=0, atol=1e-3)
                cells.append(f"{ms:.1f} | {base[batch][0] / ms:.2f}x")
            print(f"| {name} | {' | '.join(cells)} | {'yes' if same else 'NO'} |", flush=True)
        cells = []
        for batch in sizes:  # the same default session, the logits output left unbound
            ms, _ = time_step(sessions["runtime default"], feeds[batch], ["next_tokens", "keys", "values"],
                              args.repeats)
            cells.append(f"{ms:.1f} | {base[batch][0] / ms:.2f}x")
        print(f"| logits output not bound | {' | '.join(cells)} | yes |")


if __name__ == "__main__":
    main()
