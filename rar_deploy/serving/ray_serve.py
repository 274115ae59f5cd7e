"""A Ray Serve deployment of an artifact folder: dynamic batching over one `RARPipeline` per replica.

Every image of every request is one `Sample` submitted to a `@serve.batch` method, so images from several
requests (each with its own seed and sampling values) share a batch, and each is the image that generating
it alone gives. The loop runs in a worker thread; the replica's event loop keeps taking requests.

Routes: POST /generate (see protocol.py), GET /healthz (liveness), GET /ready (the model it serves).
"""

import asyncio

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from rar_deploy.errors import RARDeployError
from rar_deploy.runtime import RARPipeline, Sample
from rar_deploy.serving.protocol import decode_body, generate_response, model_description, parse_generate_request

api = FastAPI(title="rar-deploy", docs_url=None, redoc_url=None)


def error_response(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@api.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404 / 405 in the same shape as every other error: {"error": one line}."""
    return error_response(f"{exc.detail}: {request.method} {request.url.path} (routes: POST /generate, "
                          "GET /healthz, GET /ready)", exc.status_code)


@serve.deployment(name="rar")
@serve.ingress(api)
class RARDeployment:
    def __init__(self, artifacts: str, backend: str, device: str | None, threads: int | None,
                 max_batch_size: int | None, batch_wait_s: float) -> None:
        self.pipeline = RARPipeline.from_artifacts(artifacts, backend, device=device, threads=threads)
        self.batch_size = self.pipeline.artifacts.check_batch_size(max_batch_size)
        self.description = model_description(self.pipeline, self.batch_size)
        self.generate_batch.set_max_batch_size(self.batch_size)
        self.generate_batch.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch
    async def generate_batch(self, samples: list[Sample]) -> list[tuple[np.ndarray, np.ndarray]]:
        tokens, images = await asyncio.to_thread(self._generate, samples)
        return list(zip(tokens, images))

    def _generate(self, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.pipeline.generate_samples(samples, batch_size=self.batch_size)
        return tokens, self.pipeline.decode(tokens, batch_size=self.batch_size)

    @api.post("/generate")
    async def generate(self, request: Request) -> JSONResponse:
        try:
            parsed = parse_generate_request(decode_body(await request.body()), self.pipeline)
        except RARDeployError as exc:
            return error_response(str(exc))
        results = await asyncio.gather(*(self.generate_batch(sample) for sample in parsed.samples))
        tokens = np.stack([row for row, _ in results])
        images = np.stack([image for _, image in results])
        return JSONResponse(generate_response(parsed, tokens, images, self.description["model"]))

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self) -> dict:
        return {"status": "ready", **self.description}


def build_app(artifacts: str, backend: str = "onnxruntime", device: str | None = None, threads: int | None = None,
              replicas: int = 1, max_replicas: int | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0,
              max_batch_size: int | None = None, batch_wait_s: float = 0.005, drain_s: float = 30.0):
    """The bound application: `replicas` replicas (autoscaling up to `max_replicas` when it is larger),
    each holding `num_cpus` CPUs and `num_gpus` GPUs of the cluster; a replica being stopped answers the
    requests it holds for up to `drain_s` seconds."""
    from rar_deploy.runtime.artifacts import Artifacts

    Artifacts.load(artifacts).require_family("rar", "rar-serve")  # before any replica starts
    scaling = ({"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                       "target_ongoing_requests": 2}}
               if max_replicas and max_replicas > replicas else {"num_replicas": replicas})
    deployment = RARDeployment.options(**scaling, max_ongoing_requests=64, graceful_shutdown_timeout_s=drain_s,
                                       graceful_shutdown_wait_loop_s=0.5,
                                       ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus})
    return deployment.bind(artifacts, backend, device, threads, max_batch_size, batch_wait_s)


BUILDER_ARGS = {"artifacts": str, "backend": str, "device": str, "threads": int, "replicas": int, "max_replicas": int,
                "num_cpus": float, "num_gpus": float, "max_batch_size": int, "batch_wait_s": float,
                "drain_s": float}


def app_builder(args: dict):
    """For `serve run rar_deploy.serving.ray_serve:app_builder artifacts=DIR backend=tensorrt num_gpus=1` and the
    import_path of a Serve config file or a KubeRay RayService (its `args`)."""
    unknown = sorted(set(args) - set(BUILDER_ARGS))
    if unknown or "artifacts" not in args:
        raise RARDeployError(f"arguments: artifacts (required), {', '.join(list(BUILDER_ARGS)[1:])}"
                             + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return build_app(**{name: BUILDER_ARGS[name](value) for name, value in args.items()})
