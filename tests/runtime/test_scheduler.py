"""In-flight batching (runtime/scheduler.py): images that join a running batch at any step, in any order, beside
any others, equal the images their requests draw alone through the pipeline (an independent path: the loop at
batch 1), byte for byte; cancellation frees slots; a full queue is Busy; previews leave the final image alone."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pytest

from rar_deploy.errors import RARDeployError
from rar_deploy.runtime import RARSampling, VARSampling, open_pipeline
from rar_deploy.runtime.scheduler import Busy, Event, ImageRequest, Scheduler, run_request

RAR_REQUESTS = [(3, 11, 0, RARSampling()), (5, 2, 1, RARSampling(guidance_scale=0)),
                (1, 4, 3, RARSampling(temperature=0.7, guidance_scale=3.0)), (7, 9, 0, RARSampling()),
                (2, 11, 1, RARSampling(guidance_pow=1.0))]
VAR_REQUESTS = [(3, 11, 0, VARSampling()), (5, 2, 1, VARSampling(top_k=5, top_p=0.0)),
                (1, 4, 3, VARSampling(guidance_scale=0.0, temperature=0.8)), (7, 9, 0, VARSampling()),
                (2, 11, 1, VARSampling(guidance_scale=3.0))]


@pytest.fixture(scope="module")
def folders(shared_export) -> dict[str, Path]:
    return {"rar": shared_export("rar", "fp32"), "rar-fp16": shared_export("rar", "fp16"),
            "var": shared_export("var", "fp32")}


def alone(pipeline, requests) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each request's image drawn by itself through the pipeline (batch 1), the expected result."""
    results = []
    for label, seed, index, sampling in requests:
        generated = pipeline.generate([label] * (index + 1), sampling=sampling, seed=seed, batch_size=1)
        results.append((generated.tokens[index], generated.images[index]))
    return results


def image_request(pipeline, request, preview_every: int = 0) -> ImageRequest:
    label, seed, index, sampling = request
    resolved = pipeline.family.check_sampling(sampling, pipeline.artifacts.sampling_defaults)
    return ImageRequest(label, seed, index, resolved, preview_every)


def staggered(pipeline, requests, joins: dict[int, list[int]], slots: int = 3) -> dict[int, Event]:
    """Run the scheduler in this thread, submitting request i at the tick `joins` names for it."""
    scheduler, results = Scheduler(pipeline.backend, slots=slots), {}
    tick = 0
    while True:
        for i in joins.get(tick, []):
            scheduler.submit([image_request(pipeline, requests[i])],
                             lambda ticket, n, event, i=i: results.__setitem__(i, event))
        more = scheduler.tick()
        tick += 1
        if not more and tick > max(joins):
            return results


CASES = {"rar": (RAR_REQUESTS, {0: [0, 1], 3: [2], 7: [3], 12: [4]}),
         "rar-fp16": (RAR_REQUESTS, {0: [3], 1: [0], 5: [1, 2], 20: [4]}),
         "var": (VAR_REQUESTS, {0: [0, 1], 1: [2], 2: [3], 4: [4]})}


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow) if case == "rar-fp16" else case
                                  for case in CASES])  # fp16: its own export, in CI's slow line
def test_staggered_arrivals_equal_each_image_alone(folders, case):
    """Joins at several steps (RAR positions 0, 3, 7, 12, 20; VAR at every scale boundary), guided and unguided
    RAR images (two tables), VAR groups of different top-k/top-p, more requests than slots."""
    requests, joins = CASES[case]
    pipeline = open_pipeline(folders[case], threads=1)
    expected = alone(pipeline, requests)
    results = staggered(pipeline, requests, joins)
    for i, (tokens, image) in enumerate(expected):
        assert results[i].kind == "image", results[i].message
        np.testing.assert_array_equal(results[i].tokens, tokens)
        np.testing.assert_array_equal(results[i].image, image)


@pytest.mark.parametrize("family", ["rar", "var"])
def test_every_arrival_order_gives_the_same_images(folders, family):
    requests = (RAR_REQUESTS if family == "rar" else VAR_REQUESTS)[:3]
    pipeline = open_pipeline(folders[family], threads=1)
    expected = alone(pipeline, requests)
    for order in itertools.permutations(range(3)):
        results = staggered(pipeline, requests, {2 * k: [i] for k, i in enumerate(order)}, slots=2)
        for i, (tokens, image) in enumerate(expected):
            np.testing.assert_array_equal(results[i].tokens, tokens, err_msg=f"order {order}")
            np.testing.assert_array_equal(results[i].image, image, err_msg=f"order {order}")


@pytest.mark.parametrize("family", ["rar", "var"])
def test_torch_backend_schedules_the_same_tokens(folders, family):
    requests = (RAR_REQUESTS if family == "rar" else VAR_REQUESTS)[:4]
    pipeline = open_pipeline(folders[family], "torch", threads=1)
    expected = alone(pipeline, requests)
    results = staggered(pipeline, requests, {0: [0], 2: [1, 2], 3: [3]})
    for i, (tokens, _) in enumerate(expected):
        np.testing.assert_array_equal(results[i].tokens, tokens)


@pytest.mark.parametrize("family", ["rar", "var"])
def test_previews_leave_the_final_image_unchanged(folders, family):
    requests = RAR_REQUESTS if family == "rar" else VAR_REQUESTS
    pipeline = open_pipeline(folders[family], threads=1)
    (tokens, image), = alone(pipeline, requests[:1])
    every = 4 if family == "rar" else 1
    scheduler, events = Scheduler(pipeline.backend, slots=2), []
    scheduler.submit([image_request(pipeline, requests[0], preview_every=every)],
                     lambda ticket, n, event: events.append(event))
    scheduler.submit([image_request(pipeline, requests[3])], lambda *_: None)  # a neighbour without previews
    scheduler.run()
    previews, final = [e for e in events if e.kind == "preview"], events[-1]
    steps = pipeline.loop.steps
    assert [e.step for e in previews] == list(range(every, steps, every))
    assert all(e.image.shape == image.shape and e.image.dtype == np.uint8 for e in previews)
    assert final.kind == "image"
    np.testing.assert_array_equal(final.tokens, tokens)
    np.testing.assert_array_equal(final.image, image)
    if family == "var":  # the last scale's estimate before the end differs from the image (more detail comes)
        assert not np.array_equal(previews[0].image, image)


def test_cancelled_request_frees_its_slot_and_hears_nothing_more(folders):
    pipeline = open_pipeline(folders["rar"], threads=1)
    first, second = RAR_REQUESTS[0], RAR_REQUESTS[3]  # both guided: one table of one slot
    expected = alone(pipeline, [second])
    scheduler, heard = Scheduler(pipeline.backend, slots=1), []
    doomed = scheduler.submit([image_request(pipeline, first)], lambda *args: heard.append(args))
    kept = {}
    scheduler.submit([image_request(pipeline, second)], lambda t, n, event: kept.setdefault("event", event))
    for _ in range(5):
        scheduler.tick()
    assert scheduler.busy_slots() == 1 and scheduler.waiting() == 1  # the second waits for the only slot
    scheduler.cancel(doomed)
    scheduler.tick()  # the slot is freed and the waiting image admitted in the same tick
    assert scheduler.busy_slots() == 1 and scheduler.waiting() == 0
    scheduler.run()
    assert heard == []
    np.testing.assert_array_equal(kept["event"].image, expected[0][1])


def test_full_queue_is_busy_all_or_nothing(folders):
    pipeline = open_pipeline(folders["rar"], threads=1)
    scheduler = Scheduler(pipeline.backend, slots=1, max_queue=3)
    scheduler.submit([image_request(pipeline, RAR_REQUESTS[0])] * 2, lambda *_: None)
    with pytest.raises(Busy, match="busy: 2 images wait for a slot \\(at most 3\\); try again later"):
        scheduler.submit([image_request(pipeline, RAR_REQUESTS[1])] * 2, lambda *_: None)
    assert scheduler.waiting() == 2  # the refused request left nothing behind
    for wrong in ([], [RAR_REQUESTS[0]]):
        with pytest.raises(RARDeployError, match="a request is a non-empty list of ImageRequest"):
            scheduler.submit(wrong, lambda *_: None)
    scheduler.submit([image_request(pipeline, RAR_REQUESTS[1])], lambda *_: None)
    assert scheduler.waiting() == 3


def test_threaded_scheduler_serves_concurrent_submitters(folders):
    """The scheduler's own thread, requests submitted from 4 threads at once: every image equals it alone."""
    pipeline = open_pipeline(folders["var"], threads=1)
    expected = alone(pipeline, VAR_REQUESTS)
    scheduler = Scheduler(pipeline.backend, slots=2).start()
    results, done = {}, threading.Event()

    def on_event(ticket, number, event, i):
        results[i] = event
        if len(results) == len(VAR_REQUESTS):
            done.set()

    threads = [threading.Thread(target=lambda i=i: scheduler.submit(
        [image_request(pipeline, VAR_REQUESTS[i])], lambda t, n, e: on_event(t, n, e, i)))
        for i in range(len(VAR_REQUESTS))]
    for thread in threads:
        thread.start()
    assert done.wait(60)
    scheduler.close(timeout=10)
    for i, (tokens, image) in enumerate(expected):
        np.testing.assert_array_equal(results[i].image, image)
    with pytest.raises(Busy, match="stopping"):
        scheduler.submit([image_request(pipeline, VAR_REQUESTS[0])], lambda *_: None)


def test_run_request_gives_a_requests_images_in_order(folders):
    pipeline = open_pipeline(folders["rar"], threads=1)
    generated = pipeline.generate([4, 8, 15], seed=5)
    requests = [ImageRequest(label, 5, i, pipeline.family.check_sampling(None, pipeline.artifacts.sampling_defaults))
                for i, label in enumerate([4, 8, 15])]
    events = run_request(Scheduler(pipeline.backend, slots=2), requests)
    np.testing.assert_array_equal(np.stack([e.tokens for e in events]), generated.tokens)


def test_a_request_whose_client_left_is_cancelled_once_and_frees_its_slots(folders):
    """`wanted` (a server's "is the client still there?") is asked every tick: when it says no, the request hears
    one "cancelled" event (a decoupled Triton model must still close it) and its images leave."""
    pipeline = open_pipeline(folders["var"], threads=1)
    scheduler, heard, present = Scheduler(pipeline.backend, slots=1), [], [True]
    scheduler.submit([image_request(pipeline, VAR_REQUESTS[0], preview_every=1)] * 3,
                     lambda ticket, n, event: heard.append(event.kind), wanted=lambda: present[0])
    scheduler.tick()
    scheduler.tick()
    assert heard == ["preview", "preview"] and scheduler.busy_slots() == 1 and scheduler.waiting() == 2
    present[0] = False
    scheduler.run()
    assert heard == ["preview", "preview", "cancelled"]
    assert scheduler.busy_slots() == 0 and scheduler.waiting() == 0
