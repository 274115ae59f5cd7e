"""The performance model of a batch-1 decode step: the bytes it must read, before (every block weight,
adaLN included, as the official step and this project's first graphs read them) and after (the decode
step graph's weights and one condition row; the adaLN weights are read once per generation, into the
table), with the live half of the KV cache, and the floor those bytes give at a memory bandwidth.

    python benchmarks/performance_model.py [--bandwidth-gbs 27.1]   # this machine's, from machine_bandwidth.py

Parameter counts come from the reference modules on the meta device (the released shapes), not a formula;
embedding and position tables, of which a step reads a few rows, are left out.
"""

from __future__ import annotations

import argparse

import torch

from rar_deploy import GENERATOR_PRESETS, RARGenerator

H100_GBS = 3350.0  # HBM3 bandwidth of an H100 SXM (NVIDIA's data sheet)
TABLES = ("embeddings.weight", "pos_embed", "target_aware_pos_embed", "timesteps_embeddings")


def step_bytes(preset: str, itemsize: int) -> tuple[int, int]:
    with torch.device("meta"):
        model = RARGenerator(GENERATOR_PRESETS[preset])
    c = model.config
    streamed = {name: p.numel() for name, p in model.named_parameters() if name not in TABLES}
    norms = sum(n for name, n in streamed.items() if "norm" in name)  # kept in float32
    adaln = sum(n for name, n in streamed.items() if "adaLN_modulation" in name)

    def size(parameters: int, norm_parameters: int) -> int:
        return (parameters - norm_parameters) * itemsize + norm_parameters * 4

    cache = 2 * c.depth * 2 * c.num_heads * c.head_dim * itemsize * c.cache_len // 2  # keys+values, 2 rows, half full
    condition_row = 2 * (6 * c.depth + 3) * c.hidden_size * itemsize
    before = size(sum(streamed.values()), norms) + cache
    after = size(sum(streamed.values()) - adaln, norms) + condition_row + cache
    return before, after


# memory bandwidth from NVIDIA's data sheets (GB/s): the floor of a batch-1 step is its bytes over these
GPUS = {"H100 SXM": 3350.0, "A100 80GB SXM": 2039.0, "L4": 300.0, "Jetson AGX Orin 64GB": 204.8,
        "Jetson Orin Nano 8GB": 68.0}
FP8_GPUS = {"H100 SXM", "L4"}  # FP8 GEMMs from SM89 on: not Ampere (A100 SM80, Orin SM87)


def linear_bytes(k: int, n: int, weights: str) -> int:
    """A [n, k] Linear's stored weight bytes as rar-export --weights writes it: fp16, int8 per channel, int4 in
    blocks of 128 with fp16 scales, fp8 per tensor (its scale and the input's)."""
    return {"fp16": 2 * k * n, "int8": k * n + 2 * n, "int4": k * n // 2 + 2 * (k // 128) * n,
            "fp8": k * n + 2 + 2}[weights]


def quantized_step_bytes(preset: str, weights: str) -> int:
    """A batch-1 fp16 decode step's bytes with the block Linears stored as `weights`; the rest fp16."""
    from rar_deploy.model.quantized import quantized_linears

    with torch.device("meta"):
        model = RARGenerator(GENERATOR_PRESETS[preset])
    _, after = step_bytes(preset, 2)
    for linear in quantized_linears(model).values():
        after += linear_bytes(linear.in_features, linear.out_features, weights) - 2 * linear.in_features * \
            linear.out_features
    return after


# Jetson boards: memory shared by the CPU and the GPU (GB) and its bandwidth (GB/s), from NVIDIA's data sheets
# (Orin Nano: 102 GB/s in JetPack 6.2's Super mode, 68 GB/s otherwise)
JETSONS = {"Orin Nano 8GB": (8, 102.0), "Orin NX 16GB": (16, 102.4), "AGX Orin 32GB": (32, 204.8),
           "AGX Orin 64GB": (64, 204.8), "Thor T5000": (128, 273.0)}
RESERVE_GB = 3.0  # kept for the OS, the CUDA context, TensorRT's libraries and workspace: an assumption
CONDITION_BUDGET = 2 << 30  # the runtime's default cap on a batch's condition table (loops.RARLoop)


def pipeline_memory(preset: str, weights: str) -> tuple[int, int, int]:
    """(weights, per image, condition table per image) bytes of an fp16 RAR pipeline on the device: every
    generator parameter (the block Linears stored as `weights`, norms float32) and the tokenizer's decoder; per
    image the KV cache of its two rows (guided and unguided), its sampling noise; the condition table (two rows a
    position, all positions) counts up to CONDITION_BUDGET a batch. Activations are in RESERVE_GB."""
    from rar_deploy import TOKENIZER_PRESETS
    from rar_deploy.model.quantized import quantized_linears
    from rar_deploy.model.tokenizer import VQDecoder

    with torch.device("meta"):
        model = RARGenerator(GENERATOR_PRESETS[preset])
        decoder = VQDecoder(TOKENIZER_PRESETS["maskgit-vqgan-imagenet-f16-256"])
    c = model.config
    stored = sum(p.numel() * (4 if "norm" in name else 2) for name, p in model.named_parameters())
    for linear in quantized_linears(model).values():
        stored += linear_bytes(linear.in_features, linear.out_features, weights) - 2 * linear.in_features * \
            linear.out_features
    stored += 2 * sum(p.numel() for p in decoder.parameters())
    rows = 2
    cache = 2 * c.depth * rows * c.num_heads * c.cache_len * c.head_dim * 2
    noise = c.cache_len * c.codebook_size * 4
    condition = rows * c.cache_len * (6 * c.depth + 3) * c.hidden_size * 2
    return stored, cache + noise, condition


def largest_batch(memory_gb: float, preset: str, weights: str, limit: int = 256) -> int:
    """The largest batch whose pipeline fits the board's memory less RESERVE_GB (0: not even one image)."""
    fixed, per_image, condition = pipeline_memory(preset, weights)
    free = (memory_gb - RESERVE_GB) * 1e9 - fixed
    fits = [b for b in range(1, limit + 1) if b * per_image + min(b * condition, CONDITION_BUDGET) <= free]
    return max(fits, default=0)


# dense fp16 tensor throughput (TFLOPS) from NVIDIA's data sheets, for the compute of a multi-position pass; the
# Jetsons' GPU figures are not on their sheets (only sparse int8 TOPS for the module): left out of that table
FP16_TFLOPS = {"H100 SXM": 989.0, "A100 80GB SXM": 312.0, "L4": 121.0}
TENSOR_EFFICIENCY = 0.5  # the share of that peak a batch-1 pass's small GEMMs reach: an assumption
ROUND_TRIP_MS = 0.05  # a pass's synchronisation and logits download (P x V float32, ~0.6 MB for RAR-B): an assumption


def speculative_estimate(preset: str, passes: float, positions: int, host_ms: float) -> list[tuple[str, float, float]]:
    """Batch-1 fp16 generation time (ms) on each GPU of FP16_TFLOPS, sequential and speculative: a sequential step
    at its bandwidth floor (N + 1 of them, replayed from a CUDA graph: no host work between steps); a speculative
    pass reads the same bytes and computes `positions` positions for both guidance rows, so it takes the larger of
    the floor and its GEMMs' time at TENSOR_EFFICIENCY, plus `host_ms` of host work (acceptance, drafts: measured
    on the CPU that would drive the GPU) and ROUND_TRIP_MS."""
    with torch.device("meta"):
        model = RARGenerator(GENERATOR_PRESETS[preset])
    c = model.config
    weights = sum(p.numel() for name, p in model.named_parameters()
                  if name not in TABLES and "adaLN_modulation" not in name)
    floor_bytes = quantized_step_bytes(preset, "fp16")
    rows = []
    for gpu, tflops in FP16_TFLOPS.items():
        floor = floor_bytes / GPUS[gpu] / 1e6
        compute = 2 * weights * 2 * positions / (tflops * 1e12 * TENSOR_EFFICIENCY) * 1e3
        rows.append((gpu, c.cache_len * floor, passes * (max(floor, compute) + host_ms + ROUND_TRIP_MS)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bandwidth-gbs", type=float, default=27.1)
    parser.add_argument("--speculative", action="append", default=[], metavar="PRESET:PASSES:POSITIONS:HOST_MS",
                        help="Also estimate speculative decoding from measured passes per image, positions per pass "
                             "(window + 1) and host ms per pass (benchmarks/parallel_decoding.py). Repeatable.")
    args = parser.parse_args()
    if args.speculative:
        print(f"Speculative decoding at batch 1, fp16 (a pass: max(bandwidth floor, its GEMMs at "
              f"{TENSOR_EFFICIENCY:.0%} of the dense fp16 peak) + the host's work)")
        print("| model | passes/image | positions | host ms/pass | " + " | ".join(
            f"{gpu}: sequential / speculative ms (speed-up)" for gpu in FP16_TFLOPS) + " |")
        print("|" + " --- |" * (4 + len(FP16_TFLOPS)))
        for spec in args.speculative:
            preset, passes, positions, host_ms = spec.split(":")
            rows = speculative_estimate(preset, float(passes), int(positions), float(host_ms))
            print(f"| {preset} | {float(passes):g} | {positions} | {float(host_ms):g} | " + " | ".join(
                f"{sequential:.1f} / {parallel:.1f} ({sequential / parallel:.2f}x)" for _, sequential, parallel in rows)
                + " |")
        return
    print(f"| model | precision | bytes/step before | after | ratio | floor H100 ({H100_GBS:.0f} GB/s) before | after "
          f"| floor here ({args.bandwidth_gbs:g} GB/s) before | after |")
    print("|" + " --- |" * 9)
    for preset in ("rar_b", "rar_l", "rar_xl", "rar_xxl"):
        for precision, itemsize in (("fp16", 2), ("fp32", 4)):
            before, after = step_bytes(preset, itemsize)
            print(f"| {preset} | {precision} | {before / 1e6:.0f} MB | {after / 1e6:.0f} MB | {before / after:.2f}x "
                  f"| {before / H100_GBS / 1e6:.3f} ms | {after / H100_GBS / 1e6:.3f} ms "
                  f"| {before / args.bandwidth_gbs / 1e6:.1f} ms | {after / args.bandwidth_gbs / 1e6:.1f} ms |")
    print()
    print("| model | weights (fp16 activations) | bytes/step | " + " | ".join(
        f"floor {gpu} ({gbs:g} GB/s)" for gpu, gbs in GPUS.items()) + " |")
    print("|" + " --- |" * (3 + len(GPUS)))
    for preset in ("rar_b", "rar_l", "rar_xl", "rar_xxl"):
        for weights in ("fp16", "int8", "int4", "fp8"):
            size = quantized_step_bytes(preset, weights)
            print(f"| {preset} | {weights} | {size / 1e6:.0f} MB | " + " | ".join(
                "no FP8" if weights == "fp8" and gpu not in FP8_GPUS else f"{size / gbs / 1e6:.3f} ms"
                for gpu, gbs in GPUS.items()) + " |")
    print()
    print(f"Jetson boards (fp16 activations; {RESERVE_GB:g} GB kept for the OS, CUDA and TensorRT): the largest batch "
          "that fits, and the batch-1 step floor")
    print("| model | weights | loaded weights | per image | " + " | ".join(
        f"{board} ({gb} GB, {gbs:g} GB/s)" for board, (gb, gbs) in JETSONS.items()) + " |")
    print("|" + " --- |" * (4 + len(JETSONS)))
    for preset in ("rar_b", "rar_l", "rar_xl", "rar_xxl"):
        for weights in ("fp16", "int8", "int4"):
            fixed, per_image, condition = pipeline_memory(preset, weights)
            floor = quantized_step_bytes(preset, weights)
            cells = []
            for gb, gbs in JETSONS.values():
                batch = largest_batch(gb, preset, weights)
                cells.append("does not fit" if batch == 0 else
                             f"batch {batch if batch < 256 else '256+'}, {floor / gbs / 1e6:.2f} ms")
            print(f"| {preset} | {weights} | {fixed / 1e9:.2f} GB | {(per_image + condition) / 1e6:.0f} MB | "
                  + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
