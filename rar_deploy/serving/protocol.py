"""The HTTP request and response of `POST /generate`, shared by every server (no Ray, no Triton here).

Request (JSON object; only class_labels is required; absent or null: seed 0, the model size's published
sampling values):
    {"class_labels": [207, 360], "seed": 0, "guidance_scale": 4.0, "guidance_pow": 1.0, "temperature": 1.0,
     "output": "png" | "tokens"}
Response: {"model": ..., "seed": ..., "class_labels": [...], "images": [base64 PNG, ...]} (or "tokens": [[...]]).
Image i of a request is the sample (class_labels[i], seed, index i): the image `rar-generate` writes for
the same labels and seed, byte for byte, whatever else shares its batch on the server.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from rar_deploy.contract.checks import check_class_labels
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime import RARPipeline, RARSampling, Sample
from rar_deploy.tools.sample_files import png_bytes

FIELDS = ("class_labels", "seed", "guidance_scale", "guidance_pow", "temperature", "output")
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


@dataclass(frozen=True)
class GenerateRequest:
    samples: list[Sample]
    seed: int
    output: str


def parse_generate_request(body: Any, pipeline: RARPipeline,
                           max_images: int = MAX_IMAGES_PER_REQUEST) -> GenerateRequest:
    """A decoded JSON body -> checked samples; RARDeployError (one line, a 400 to the client) otherwise."""
    if not isinstance(body, dict):
        raise RARDeployError('the request body must be a JSON object such as {"class_labels": [207]}')
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RARDeployError(f"unknown field {unknown[0]!r}: the fields are {', '.join(FIELDS)}")
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
    sampling = {name: body.get(name) for name in ("guidance_scale", "guidance_pow", "temperature")}
    samples = [pipeline.check_sample(Sample(int(label), seed, index, RARSampling(**sampling)))
               for index, label in enumerate(labels)]
    return GenerateRequest(samples, samples[0].seed, output)


def generate_response(request: GenerateRequest, tokens: np.ndarray, images: np.ndarray | None, model: str) -> dict:
    """tokens [B, N] (and uint8 images [B, H, W, 3] for png output) of the request's samples -> the JSON reply."""
    reply = {"model": model, "seed": request.seed, "class_labels": [s.class_label for s in request.samples]}
    if request.output == "tokens":
        reply["tokens"] = tokens.tolist()
    else:
        reply["images"] = [base64.b64encode(png_bytes(image)).decode("ascii") for image in images]
    return reply


def model_description(pipeline: RARPipeline, max_batch_size: int) -> dict:
    """What /ready reports: which model this server runs, and how."""
    return {"model": pipeline.config.preset_name or "custom", "precision": pipeline.artifacts.manifest["precision"],
            "backend": pipeline.backend.name, "device": pipeline.backend.device,
            "max_batch_size": max_batch_size, "image_seq_len": pipeline.config.image_seq_len}
