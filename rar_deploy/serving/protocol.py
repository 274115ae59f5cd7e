"""The HTTP request and response of `POST /generate` and `POST /generate/stream`, shared by every server (no Ray,
no Triton here), for both families.

Request (JSON object; only class_labels is required; absent or null: seed 0, the model's published sampling
values):
    RAR: {"class_labels": [207, 360], "seed": 0, "guidance_scale": 4.0, "guidance_pow": 1.0, "temperature": 1.0,
          "output": "png" | "tokens"}
    VAR: {"class_labels": [207], "seed": 0, "guidance_scale": 1.5, "top_k": 900, "top_p": 0.96, "temperature": 1.0,
          "output": "png" | "tokens"}
    /generate/stream also takes "preview_every": k (a preview of each image every k steps; RAR: positions,
    VAR: scales; 0 or absent: none).
Response of /generate: {"model": ..., "seed": ..., "class_labels": [...], "images": [base64 PNG, ...]} (or
"tokens": [[...]]). /generate/stream answers server-sent events: `preview` {"image": i, "step": s, "png": ...}
while image i is generated, `image` {"image": i, "png": ...} (or "tokens") the moment it is done (in the order
images finish), then `done` {"model", "seed", "class_labels"}; an `error` {"error": one line} ends the stream.
Image i of a request is the sample (class_labels[i], seed, index i): the image `rar-generate` writes for the
same labels and seed, byte for byte, whatever else runs beside it on the server.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from rar_deploy.contract.checks import check_class_labels
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime import Pipeline
from rar_deploy.runtime.scheduler import ImageRequest
from rar_deploy.tools.sample_files import png_bytes

COMMON_FIELDS = ("class_labels", "seed", "output")
STREAM_FIELDS = ("preview_every",)
OUTPUTS = ("png", "tokens")
MAX_IMAGES_PER_REQUEST = 64
_MAX_DIGITS = 40  # longer integers are refused as what they are, not parsed (Python caps int parsing at 4300)


class _LongInteger(str):
    """An integer literal of more than _MAX_DIGITS digits in a request."""


def decode_body(body: bytes) -> Any:
    """The request body as JSON; RARDeployError with one line otherwise."""
    def integer(text: str) -> int | _LongInteger:
        return int(text) if len(text.lstrip("-")) <= _MAX_DIGITS else _LongInteger(text)

    try:
        return json.loads(body, parse_int=integer)
    except (ValueError, RecursionError):  # RecursionError: nested too deep for the decoder
        raise RARDeployError('the request body is not JSON: send an object such as {"class_labels": [207]}') from None


def _refuse_long_integers(body: dict) -> None:
    for name, value in body.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, _LongInteger):
                raise RARDeployError(f"{name} holds a {len(item.lstrip('-'))}-digit integer, far outside what "
                                     f"{name} accepts")


def request_fields(pipeline: Pipeline, stream: bool = False) -> tuple[str, ...]:
    """The fields a request to this model may hold: the common ones and its family's sampling values."""
    return COMMON_FIELDS + pipeline.family.sampling_fields + (STREAM_FIELDS if stream else ())


@dataclass(frozen=True)
class GenerateRequest:
    images: list[ImageRequest]
    seed: int
    output: str

    @property
    def class_labels(self) -> list[int]:
        return [image.label for image in self.images]


def parse_generate_request(body: Any, pipeline: Pipeline, max_images: int = MAX_IMAGES_PER_REQUEST,
                           stream: bool = False) -> GenerateRequest:
    """A decoded JSON body -> checked images; RARDeployError (one line, a 400 to the client) otherwise."""
    if not isinstance(body, dict):
        raise RARDeployError('the request body must be a JSON object such as {"class_labels": [207]}')
    fields = request_fields(pipeline, stream)
    unknown = sorted(set(body) - set(fields))
    if unknown:
        hint = " (previews: POST /generate/stream)" if unknown[0] in STREAM_FIELDS else ""
        raise RARDeployError(f"unknown field {unknown[0]!r}{hint}: the fields are {', '.join(fields)}")
    _refuse_long_integers(body)
    if "class_labels" not in body:
        raise RARDeployError('class_labels is required, e.g. {"class_labels": [207, 360]}')
    labels = check_class_labels(body["class_labels"], pipeline.config.num_classes)
    if len(labels) > max_images:
        raise RARDeployError(f"{len(labels)} class labels in one request: at most {max_images}; split the request")
    output = body.get("output", "png")
    if output not in OUTPUTS:
        raise RARDeployError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    seed = 0 if body.get("seed") is None else body["seed"]
    every = 0 if body.get("preview_every") is None else body["preview_every"]
    sampling = pipeline.family.sampling_from(body)
    images = [pipeline.image_request(label, seed, index, sampling, every) for index, label in enumerate(labels)]
    return GenerateRequest(images, images[0].seed, output)


def image_payload(request: GenerateRequest, tokens: np.ndarray, image: np.ndarray) -> dict:
    """One image of the reply: its tokens or its PNG (base64)."""
    if request.output == "tokens":
        return {"tokens": tokens.tolist()}
    return {"png": base64.b64encode(png_bytes(image)).decode("ascii")}


def preview_payload(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def generate_response(request: GenerateRequest, tokens: np.ndarray, images: np.ndarray | None, model: str) -> dict:
    """tokens [B, L] (and uint8 images [B, H, W, 3] for png output) of the request's images -> the JSON reply."""
    reply = {"model": model, "seed": request.seed, "class_labels": request.class_labels}
    if request.output == "tokens":
        reply["tokens"] = tokens.tolist()
    else:
        reply["images"] = [base64.b64encode(png_bytes(image)).decode("ascii") for image in images]
    return reply


def server_sent_event(event: str, data: dict) -> bytes:
    """One server-sent event (text/event-stream)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def model_description(pipeline: Pipeline, max_batch_size: int) -> dict:
    """What /ready reports: which model this server runs, and how."""
    return {"model": pipeline.config.preset_name or "custom", "family": pipeline.family.name,
            "precision": pipeline.artifacts.manifest["precision"], "backend": pipeline.backend.name,
            "device": pipeline.backend.device, "max_batch_size": max_batch_size,
            "tokens_per_image": pipeline.family.tokens_per_image(pipeline.config)}
