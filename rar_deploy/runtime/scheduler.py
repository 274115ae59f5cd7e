"""In-flight batching (TensorRT-LLM's name for it): requests join a running batch at any step and leave it the
step they finish, instead of waiting for the whole batch's generation to end.

A `Scheduler` owns a family's slot tables (`slots.py`) on one backend: images wait in a bounded queue (a full
queue is `Busy`, never unbounded memory), are admitted into free slots at every tick, step together, and leave
as soon as they finish, the images that finished in one tick decoded in one decoder call. Each image is the
image its request draws alone (same label, seed, index and sampling values) whatever else runs beside it and
whenever it arrived. Optional previews: every `preview_every` steps, the image so far (RAR: the tokens sampled,
the rest of the grid filled from the row above; VAR: the estimate of the scales done), decoded while
generation goes on. A cancelled request's images leave the queue and their slots at the next tick.

The scheduler runs its ticks in a thread of its own (`start()`), or in the caller's (`tick()`, `run()`), which
is how tests choose the exact step at which a request joins. Results and previews reach the submitter through
its `on_event(ticket, image, event)` callback, called from the scheduler's thread.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from rar_deploy.errors import RARDeployError


class Busy(RARDeployError):
    """The queue has no room for the request: try again later (a server answers 503)."""


@dataclass(frozen=True)
class ImageRequest:
    """One image: its class, where its noise comes from (image `index` of a request with `seed`), its family's
    resolved sampling values, and a preview every `preview_every` steps (0: none)."""

    label: int
    seed: int
    index: int
    sampling: Any
    preview_every: int = 0


@dataclass(frozen=True)
class Event:
    """What a ticket's callback receives: kind "preview" (step, tokens so far: 0 where not sampled yet, image),
    "image" (tokens, image), "error" (message), or "cancelled" (once, when its `wanted` said no: nothing follows)."""

    kind: str
    step: int = 0
    tokens: np.ndarray | None = None
    image: np.ndarray | None = None
    message: str = ""


@dataclass(eq=False)
class Ticket:
    """A submitted request: its images and the callback that receives their events."""

    images: list[ImageRequest]
    on_event: Callable[["Ticket", int, Event], None]
    wanted: Callable[[], bool] | None = None  # asked every tick: False cancels the request (its client left)
    cancelled: bool = False
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        self.remaining = len(self.images)


@dataclass
class _Occupant:
    ticket: Ticket
    number: int  # the image within its ticket


class Scheduler:
    """In-flight batching over one backend (see the module's text). `slots`: images stepping at once per table
    (default: the artifacts' largest batch); `max_queue`: images that may wait for a slot."""

    def __init__(self, backend: Any, slots: int | None = None, max_queue: int = 256) -> None:
        self.backend, self.family = backend, backend.artifacts.family
        self.slots = backend.artifacts.check_batch_size(slots)
        self.max_queue = max_queue
        self.tables: dict[Any, Any] = {}  # pool -> slot table (RAR: guided or not; VAR: one)
        self.occupants: dict[tuple[Any, int], _Occupant] = {}
        self.queue: collections.deque[tuple[Ticket, int]] = collections.deque()
        self.ticks = 0
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    # --- the submitter's side (any thread)

    def submit(self, images: list[ImageRequest], on_event: Callable[[Ticket, int, Event], None],
               wanted: Callable[[], bool] | None = None) -> Ticket:
        """Queue a request's images (all or none: `Busy` when the queue cannot take them all). `wanted`, when given,
        is asked every tick whether the request still has a client (False: cancelled). Images come from
        `pipeline.image_request(...)`, which checks their values."""
        images = list(images)
        if not images or not all(isinstance(image, ImageRequest) for image in images):
            raise RARDeployError("a request is a non-empty list of ImageRequest (pipeline.image_request(...))")
        ticket = Ticket(images, on_event, wanted)
        with self._condition:
            if self._closing:
                raise Busy("the scheduler is stopping: no new requests")
            if len(self.queue) + len(images) > self.max_queue:
                raise Busy(f"busy: {len(self.queue)} images wait for a slot (at most {self.max_queue}); "
                           "try again later")
            self.queue.extend((ticket, number) for number in range(len(images)))
            self._condition.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop a request: its queued images now, its slots at the next tick; no more events reach it."""
        with self._condition:
            ticket.cancelled = True
            self.queue = collections.deque(item for item in self.queue if item[0] is not ticket)

    def busy_slots(self) -> int:
        return len(self.occupants)

    def waiting(self) -> int:
        return len(self.queue)

    # --- the scheduler's side (its thread, or the caller's)

    def tick(self) -> bool:
        """One round: cancelled images leave, waiting images take free slots, every table with images steps once,
        finished images are decoded and delivered (and previews that are due). Returns whether work remains."""
        self._leave_cancelled()
        self._admit()
        for pool, table in list(self.tables.items()):
            if not table.active():
                continue
            try:
                finished = table.step(self.ticks)
                self._deliver(pool, table, finished)
            except Exception as exc:  # a failing call fails the images it held, not the scheduler
                self._fail_table(pool, table, f"generation failed: {exc}")
        self.ticks += 1
        with self._condition:
            return bool(self.queue or self.occupants)

    def run(self) -> None:
        """Tick until nothing is queued or running."""
        while self.tick():
            pass

    def start(self) -> "Scheduler":
        """Tick in a thread of its own, sleeping while there is nothing to do."""
        self._thread = threading.Thread(target=self._serve, name="rar-deploy-scheduler", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, let the thread finish what it holds and stop."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _serve(self) -> None:
        while True:
            with self._condition:
                while not (self.queue or self.occupants or self._closing):
                    self._condition.wait()
                if self._closing and not (self.queue or self.occupants):
                    return
            try:
                self.tick()
            except Exception as exc:  # a fault outside a table's step: fail what is held rather than hang it
                self._fail_everything(f"the scheduler failed: {exc}")

    def _fail_everything(self, message: str) -> None:
        with self._condition:
            waiting, self.queue = list(self.queue), collections.deque()
        for ticket, number in waiting:
            self._emit(_Occupant(ticket, number), Event("error", message=message))
        for pool, slot in list(self.occupants):
            self._fail(pool, slot, message)

    def _table(self, pool: Any) -> Any:
        if pool not in self.tables:
            self.tables[pool] = self.family.slots(self.backend, self.slots, pool)
        return self.tables[pool]

    def _free_slots(self, pool: Any) -> list[int]:
        return [slot for slot in range(self.slots) if (pool, slot) not in self.occupants]

    def _admit(self) -> None:
        admitted = []
        with self._condition:
            free: dict[Any, list[int]] = {}
            kept = collections.deque()
            for ticket, number in self.queue:  # first come first served within each pool
                pool = self.family.slots.pool(ticket.images[number].sampling)
                slots = free.setdefault(pool, self._free_slots(pool))
                if slots:
                    slot = slots.pop(0)
                    self.occupants[pool, slot] = _Occupant(ticket, number)
                    admitted.append((pool, slot, ticket.images[number]))
                else:
                    kept.append((ticket, number))
            self.queue = kept
        for pool, slot, image in admitted:
            try:
                self._table(pool).admit(slot, image.label, image.sampling, image.seed, image.index)
            except Exception as exc:
                self._fail(pool, slot, f"admission failed: {exc}")

    def _leave_cancelled(self) -> None:
        tickets = {occupant.ticket for occupant in self.occupants.values()} | {ticket for ticket, _ in self.queue}
        for ticket in tickets:
            if not ticket.cancelled and ticket.wanted is not None and not _asks_true(ticket.wanted):
                self._emit(_Occupant(ticket, 0), Event("cancelled"))  # its last event: the request can be closed
                self.cancel(ticket)
        for (pool, slot), occupant in list(self.occupants.items()):
            if occupant.ticket.cancelled:
                self.tables[pool].release(slot)
                del self.occupants[pool, slot]

    def _deliver(self, pool: Any, table: Any, finished: list[int]) -> None:
        previews = []
        for slot in table.active():
            occupant = self.occupants[pool, slot]
            every = occupant.ticket.images[occupant.number].preview_every
            if every and slot not in finished and table.images[slot].step % every == 0:
                previews.append(slot)
        for kind, slots in (("preview", previews), ("image", finished)):
            if not slots:
                continue
            images = self._decode(table, slots, kind == "preview")
            for slot, picture in zip(slots, images):
                occupant = self.occupants[pool, slot]
                if kind == "preview":
                    self._emit(occupant, Event("preview", step=table.images[slot].step, tokens=table.tokens(slot),
                                               image=picture))
                else:
                    self._emit(occupant, Event("image", step=table.steps, tokens=table.tokens(slot), image=picture))
                    self._leave(pool, table, slot)

    def _decode(self, table: Any, slots: list[int], preview: bool) -> np.ndarray:
        """The slots' images, in decoder calls of at most `self.slots` images."""
        return np.concatenate([table.decode(slots[i:i + self.slots], preview)
                               for i in range(0, len(slots), self.slots)])

    def _emit(self, occupant: _Occupant, event: Event) -> None:
        ticket = occupant.ticket
        if ticket.cancelled:
            return
        if event.kind in ("image", "error"):
            ticket.remaining -= 1
        try:
            ticket.on_event(ticket, occupant.number, event)
        except Exception:  # a submitter's callback must not stop the scheduler
            pass

    def _leave(self, pool: Any, table: Any, slot: int) -> None:
        table.release(slot)
        del self.occupants[pool, slot]

    def _fail(self, pool: Any, slot: int, message: str) -> None:
        occupant = self.occupants[pool, slot]
        self._emit(occupant, Event("error", message=message))
        if pool in self.tables:
            self.tables[pool].release(slot)
        del self.occupants[pool, slot]

    def _fail_table(self, pool: Any, table: Any, message: str) -> None:
        for slot in table.active():
            self._fail(pool, slot, message)


def _asks_true(question: Callable[[], bool]) -> bool:
    try:
        return bool(question())
    except Exception:  # a client that cannot be asked is gone
        return False


def run_request(scheduler: Scheduler, images: list[ImageRequest]) -> list[Event]:
    """Submit `images` as one request and tick (in this thread) until they are done; their final events, in order.
    For tests and benchmarks of a scheduler without its thread."""
    results: dict[int, Event] = {}

    def on_event(ticket: Ticket, number: int, event: Event) -> None:
        if event.kind in ("image", "error"):
            results[number] = event

    scheduler.submit(images, on_event)
    scheduler.run()
    return [results[n] for n in range(len(images))]
