"""In-flight against static batching (issue 22), in one run on one machine: open-loop Poisson arrivals of one-image
requests at several rates, served by
  static     a batcher as rar-serve had before (Ray Serve's @serve.batch: up to S images, 5 ms to fill, a request
             that arrives while a batch runs waits for the whole batch), over Pipeline.generate;
  in-flight  the runtime's Scheduler with S slots (every request joins at the next step);
  in-flight + previews   the same, every request asking a preview every --preview-every steps (RAR; VAR: every scale).
In process, no HTTP (benchmarks/serving.py measures what the servers add): the scheduling alone. Per rate:
throughput, p50/p99 latency (arrival to image), time to first preview, slot occupancy (mean busy slots / S).

    python benchmarks/inflight_serving.py --artifacts DIR [--slots 4] [--requests 48] [--rates 0.25,0.5,0.75]

Rates are fractions of the static capacity S / (time of one batch of S), measured first.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from rar_deploy.runtime import open_pipeline
from rar_deploy.runtime.scheduler import Scheduler


class StaticBatcher:
    """Batches formed at batch boundaries only: the first waiting image, then up to S - 1 more within `wait_s`."""

    def __init__(self, pipeline, slots: int, wait_s: float = 0.005) -> None:
        self.pipeline, self.slots, self.wait_s = pipeline, slots, wait_s
        self.queue: queue.Queue = queue.Queue()
        self.busy = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def submit(self, label: int, seed: int, on_done) -> None:
        self.queue.put((label, seed, on_done))

    def _serve(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.perf_counter() + self.wait_s
            while len(batch) < self.slots:
                try:
                    batch.append(self.queue.get(timeout=max(deadline - time.perf_counter(), 0)))
                except queue.Empty:
                    break
            self.busy = len(batch)
            self.pipeline.generate([label for label, _, _ in batch], seed=batch[0][1], batch_size=self.slots)
            self.busy = 0
            for _, _, on_done in batch:
                on_done()


def run_rate(mode: str, pipeline, slots: int, rate: float, requests: int, preview_every: int, seed: int) -> dict:
    """Open-loop Poisson arrivals at `rate` requests/s: latencies, time to first preview, occupancy."""
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1 / rate, requests))
    arrived, first_preview, done = {}, {}, {}
    finished = threading.Event()

    def mark_done(i: int) -> None:
        done[i] = time.perf_counter()
        if len(done) == requests:
            finished.set()

    if mode == "static":
        server = StaticBatcher(pipeline, slots)
        busy = lambda: server.busy  # noqa: E731

        def submit(i: int) -> None:
            server.submit(i % pipeline.config.num_classes, i, lambda: mark_done(i))
    else:
        scheduler = Scheduler(pipeline.backend, slots=slots, max_queue=10**6).start()
        busy = scheduler.busy_slots
        every = preview_every if mode == "in-flight + previews" else 0

        def on_event(ticket, number, event, i):
            if event.kind == "preview":
                first_preview.setdefault(i, time.perf_counter())
            elif event.kind == "image":
                mark_done(i)

        def submit(i: int) -> None:
            image = pipeline.image_request(i % pipeline.config.num_classes, i, 0, preview_every=every)
            scheduler.submit([image], lambda t, n, e: on_event(t, n, e, i))

    occupancy, sampling = [], threading.Event()

    def sample() -> None:
        while not sampling.wait(0.005):
            occupancy.append(busy() / slots)

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    for i, at in enumerate(arrivals):
        time.sleep(max(start + at - time.perf_counter(), 0))
        arrived[i] = time.perf_counter()
        submit(i)
    finished.wait()
    sampling.set()
    if mode != "static":
        scheduler.close()
    latencies = sorted((done[i] - arrived[i]) * 1e3 for i in range(requests))
    previews = sorted((first_preview[i] - arrived[i]) * 1e3 for i in first_preview)
    return {"mode": mode, "rate": rate, "throughput": requests / (max(done.values()) - start),
            "p50_ms": statistics.median(latencies), "p99_ms": latencies[round(0.99 * (len(latencies) - 1))],
            "first_preview_p50_ms": statistics.median(previews) if previews else None,
            "occupancy": statistics.fmean(occupancy) if occupancy else 0.0}


def static_capacity(pipeline, slots: int) -> float:
    """Images per second of back-to-back full batches (median of 3 after a warm-up)."""
    labels = list(range(slots))
    pipeline.generate(labels, batch_size=slots)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        pipeline.generate(labels, batch_size=slots)
        times.append(time.perf_counter() - start)
    return slots / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--rates", default="0.25,0.5,0.75", help="fractions of the static capacity")
    parser.add_argument("--preview-every", type=int, default=16, help="RAR positions between previews (VAR: 1)")
    parser.add_argument("--modes", default="static,in-flight,in-flight + previews")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pipeline = open_pipeline(args.artifacts, threads=args.threads)
    every = args.preview_every if pipeline.family.name == "rar" else 1
    capacity = static_capacity(pipeline, args.slots)
    print(f"{args.artifacts}: static capacity {capacity:.3f} images/s at {args.slots} slots", flush=True)
    rows = []
    for fraction in (float(f) for f in args.rates.split(",")):
        for mode in args.modes.split(","):
            row = run_rate(mode, pipeline, args.slots, fraction * capacity, args.requests, every, seed=11)
            rows.append({**row, "fraction": fraction})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| arrival rate (of static capacity) | mode | images/s | p50 ms | p99 ms | first preview p50 ms | "
          "slot occupancy |\n| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        preview = "-" if row["first_preview_p50_ms"] is None else f"{row['first_preview_p50_ms']:.0f}"
        print(f"| {row['rate']:.3g}/s ({row['fraction']:.2f}) | {row['mode']} | {row['throughput']:.3g} | "
              f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {preview} | {row['occupancy']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"capacity": capacity, "slots": args.slots, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
