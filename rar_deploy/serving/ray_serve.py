"""A Ray Serve deployment of an artifact folder (RAR or VAR): in-flight batching over one `Scheduler` per replica.

Every image of every request joins the replica's running batch at the next step (runtime/scheduler.py) and leaves
it the step it is done, so a request never waits for another's whole generation; each image is the image that
generating it alone gives. The scheduler steps in its own thread; the replica's event loop keeps taking requests.

Routes: POST /generate and POST /generate/stream (server-sent events with previews; see protocol.py), GET /healthz
(liveness), GET /ready (the model it serves), GET /stats (slots in use, images waiting, requests cancelled).
A full queue answers 503 with Retry-After; a client that goes away (or outlives the proxy's request timeout)
frees its images' slots at the next step.
"""

import asyncio
from typing import AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from rar_deploy.errors import RARDeployError
from rar_deploy.runtime import open_pipeline
from rar_deploy.runtime.scheduler import Busy, Scheduler
from rar_deploy.serving.protocol import (
    GenerateRequest,
    decode_body,
    generate_response,
    image_payload,
    model_description,
    parse_generate_request,
    preview_payload,
    server_sent_event,
)

api = FastAPI(title="rar-deploy", docs_url=None, redoc_url=None)
ROUTES = "POST /generate, POST /generate/stream, GET /healthz, GET /ready, GET /stats"


def error_response(message: str, status: int = 400) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404 / 405 in the same shape as every other error: {"error": one line}."""
    return error_response(f"{exc.detail}: {request.method} {request.url.path} (routes: {ROUTES})", exc.status_code)


@serve.deployment(name="rar")
@serve.ingress(api)
class RARDeployment:
    def __init__(self, artifacts: str, backend: str, device: str | None, threads: int | None,
                 max_batch_size: int | None, max_queue: int) -> None:
        self.pipeline = open_pipeline(artifacts, backend, device=device, threads=threads)
        self.scheduler = Scheduler(self.pipeline.backend, slots=max_batch_size, max_queue=max_queue).start()
        self.max_images = min(max_queue, 64)
        self.description = model_description(self.pipeline, self.scheduler.slots)
        self.cancelled = 0

    def __del__(self) -> None:  # Ray Serve's shutdown hook: the requests were drained, the thread may stop
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.close(timeout=5)

    async def _parse(self, request: Request, stream: bool) -> GenerateRequest:
        return parse_generate_request(decode_body(await request.body()), self.pipeline, self.max_images, stream)

    def _submit(self, parsed: GenerateRequest):
        """Queue the request's images; their events arrive on an asyncio queue of this event loop."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        ticket = self.scheduler.submit(
            parsed.images, lambda ticket, number, event: loop.call_soon_threadsafe(events.put_nowait, (number, event)))
        return ticket, events

    def _cancel(self, ticket) -> None:
        """The client went away (or the proxy's request timeout passed): free the images' slots."""
        self.cancelled += 1
        self.scheduler.cancel(ticket)

    @api.post("/generate")
    async def generate(self, request: Request) -> JSONResponse:
        try:
            parsed = await self._parse(request, stream=False)
            ticket, events = self._submit(parsed)
        except Busy as exc:
            return error_response(str(exc), 503)
        except RARDeployError as exc:
            return error_response(str(exc))
        results = {}
        try:
            while len(results) < len(parsed.images):
                number, event = await events.get()
                if event.kind == "error":
                    self.scheduler.cancel(ticket)
                    return error_response(event.message, 500)
                results[number] = event
        finally:
            if len(results) < len(parsed.images) and not ticket.cancelled:
                self._cancel(ticket)
        ordered = [results[n] for n in range(len(parsed.images))]
        return JSONResponse(generate_response(parsed, np.stack([e.tokens for e in ordered]),
                                              np.stack([e.image for e in ordered]), self.description["model"]))

    @api.post("/generate/stream")
    async def generate_stream(self, request: Request):
        try:
            parsed = await self._parse(request, stream=True)
            ticket, events = self._submit(parsed)
        except Busy as exc:
            return error_response(str(exc), 503)
        except RARDeployError as exc:
            return error_response(str(exc))
        return StreamingResponse(self._stream(parsed, ticket, events), media_type="text/event-stream")

    async def _stream(self, parsed: GenerateRequest, ticket, events: asyncio.Queue) -> AsyncIterator[bytes]:
        done = 0
        try:
            while done < len(parsed.images):
                number, event = await events.get()
                if event.kind == "preview":
                    yield server_sent_event("preview", {"image": number, "step": event.step,
                                                        "png": preview_payload(event.image)})
                elif event.kind == "image":
                    done += 1
                    yield server_sent_event("image", {"image": number, **image_payload(parsed, event.tokens,
                                                                                       event.image)})
                else:
                    self.scheduler.cancel(ticket)
                    yield server_sent_event("error", {"error": event.message})
                    return
            yield server_sent_event("done", {"model": self.description["model"], "seed": parsed.seed,
                                             "class_labels": parsed.class_labels})
        finally:
            if done < len(parsed.images) and not ticket.cancelled:
                self._cancel(ticket)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self) -> dict:
        return {"status": "ready", **self.description}

    @api.get("/stats")
    async def stats(self) -> dict:
        return {"slots": self.scheduler.slots, "busy_slots": self.scheduler.busy_slots(),
                "waiting": self.scheduler.waiting(), "cancelled_requests": self.cancelled,
                "steps": self.scheduler.ticks}


def build_app(artifacts: str, backend: str = "onnxruntime", device: str | None = None, threads: int | None = None,
              replicas: int = 1, max_replicas: int | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0,
              max_batch_size: int | None = None, max_queue: int = 256, drain_s: float = 30.0):
    """The bound application: `replicas` replicas (autoscaling up to `max_replicas` when it is larger),
    each holding `num_cpus` CPUs and `num_gpus` GPUs of the cluster, `max_batch_size` slots and a queue of
    `max_queue` images; a replica being stopped answers the requests it holds for up to `drain_s` seconds."""
    from rar_deploy.runtime.artifacts import Artifacts

    slots = Artifacts.load(artifacts).check_batch_size(max_batch_size)  # before any replica starts
    scaling = ({"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                       "target_ongoing_requests": 2}}
               if max_replicas and max_replicas > replicas else {"num_replicas": replicas})
    deployment = RARDeployment.options(**scaling, max_ongoing_requests=max_queue + slots,
                                       graceful_shutdown_timeout_s=drain_s, graceful_shutdown_wait_loop_s=0.5,
                                       ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus})
    return deployment.bind(artifacts, backend, device, threads, max_batch_size, max_queue)


BUILDER_ARGS = {"artifacts": str, "backend": str, "device": str, "threads": int, "replicas": int, "max_replicas": int,
                "num_cpus": float, "num_gpus": float, "max_batch_size": int, "max_queue": int,
                "drain_s": float}


def app_builder(args: dict):
    """For `serve run rar_deploy.serving.ray_serve:app_builder artifacts=DIR backend=tensorrt num_gpus=1` and the
    import_path of a Serve config file or a KubeRay RayService (its `args`)."""
    unknown = sorted(set(args) - set(BUILDER_ARGS))
    if unknown or "artifacts" not in args:
        raise RARDeployError(f"arguments: artifacts (required), {', '.join(list(BUILDER_ARGS)[1:])}"
                             + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return build_app(**{name: BUILDER_ARGS[name](value) for name, value in args.items()})
