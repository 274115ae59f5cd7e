"""Speculative Jacobi decoding (rar-generate --parallel-window) against the sequential loop, on one export made with
rar-export --parallel-decoding, in one process:

1. passes (decode calls) per image, tokens per pass and wall time per image at the published sampling, for every
   batch size and window (rar-bench's rows, tools/bench.py:bench_parallel);
2. per sampling temperature (the published guidance): the entropy of the distributions the model samples from (on
   its own sequential samples: guided logits / T) and the share of tokens whose top-1 probability is under 5 %
   (GSD, arXiv 2508.07747, reports 50-95 % for ImageNet models), with the passes and wall time at batch 1 and
   --temperature-window, so a model's speed-up can be read at the flatness of a real model's distributions.

    python benchmarks/parallel_decoding.py --artifacts DIR [--batch-sizes 1,4] [--windows 2,4,8,16]
        [--temperatures 0.9,1.2,1.5,2] [--temperature-window 8] [--rounds 3] [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from rar_deploy.runtime import RARSampling, open_pipeline
from rar_deploy.tools.bench import bench_parallel
from rar_deploy.tools.parity import drive_keeping_logits


def flatness(pipeline, temperature: float, images: int, seed: int = 0) -> dict:
    """Entropy (bits) and the share of tokens with top-1 probability under 0.05 of the distributions softmax(guided
    logits / T) along `images` sequential samples at temperature T (labels 0, 1, ...)."""
    c, family = pipeline.config, pipeline.family
    sampling = family.check_sampling(RARSampling(temperature=temperature), pipeline.artifacts.sampling_defaults)
    labels = np.arange(images) % c.num_classes
    _, logits = drive_keeping_logits(pipeline.loop, family.inputs(c, labels, sampling, seed))
    z = logits.astype(np.float64) / temperature
    z -= z.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    entropy = -(p * np.log2(np.maximum(p, 1e-300))).sum(-1)
    return {"temperature": temperature, "entropy_bits": float(entropy.mean()),
            "top1_under_5_percent": float((p.max(-1) < 0.05).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--windows", default="2,4,8,16")
    parser.add_argument("--temperatures", default="")
    parser.add_argument("--temperature-window", type=int, default=8)
    parser.add_argument("--entropy-images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="batches of other images per row")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json")
    args = parser.parse_args()
    pipeline = open_pipeline(args.artifacts, threads=args.threads)
    c, defaults = pipeline.config, pipeline.artifacts.sampling_defaults
    results = {"model": c.preset_name or "custom", "image_seq_len": c.image_seq_len, "defaults": vars(defaults)
               if hasattr(defaults, "__dict__") else str(defaults), "windows": [], "temperatures": []}
    print(f"{args.artifacts}: N = {c.image_seq_len}, published sampling {defaults}")
    print("| batch | window | images | passes/image (sequential N + 1) | tokens/pass | sequential ms/image "
          "| parallel ms/image | wall | host ms/pass |")
    print("|" + " --- |" * 9)
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for window in [int(w) for w in args.windows.split(",")]:
            r = bench_parallel(pipeline, batch, window, rounds=args.rounds)
            results["windows"].append(r)
            print(f"| {batch} | {window} | {r['images']} | {r['passes']:.1f} ({r['sequential_passes']}) "
                  f"| {r['tokens_per_pass']:.2f} | {r['sequential_ms_per_image']:.1f} | "
                  f"{r['parallel_ms_per_image']:.1f} | {r['wall_speedup']:.2f}x | {r['host_ms_per_pass']:.2f} |",
                  flush=True)
    if args.temperatures:
        print()
        print(f"| temperature | entropy (bits) | top-1 under 5 % | passes/image at window {args.temperature_window}, "
              f"batch 1, {args.rounds} images | tokens/pass | wall |")
        print("|" + " --- |" * 6)
        for temperature in [float(t) for t in args.temperatures.split(",")]:
            flat = flatness(pipeline, temperature, args.entropy_images)
            r = bench_parallel(pipeline, 1, args.temperature_window, rounds=args.rounds,
                               sampling=RARSampling(temperature=temperature))
            results["temperatures"].append({**flat, **r})
            print(f"| {temperature:g} | {flat['entropy_bits']:.2f} | {flat['top1_under_5_percent']:.1%} | "
                  f"{r['passes']:.1f} of {r['sequential_passes']} | {r['tokens_per_pass']:.2f} | "
                  f"{r['wall_speedup']:.2f}x |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
