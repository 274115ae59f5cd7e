"""Triton Python-backend model (copied to REPO/<name>/1/model.py by `rar-deploy triton-repo`): the generation in
this instance on the in-flight scheduler, for RAR or VAR folders. Default: the rows of the requests Triton batched
together run to their end in `execute`, one response each. Decoupled (config's transaction policy): `execute` only
queues the requests; the scheduler's thread sends each image (and its previews) as it comes, then a final empty
response. Needs rar-deploy (the runtime install) in the Python environment Triton runs its models with."""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from rar_deploy.errors import RARDeployError
from rar_deploy.runtime import open_pipeline
from rar_deploy.runtime.scheduler import Busy, ImageRequest, Scheduler, Ticket

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def invalid_argument(message: str):
    """An error the client sees as 400 (HTTP) / INVALID_ARGUMENT (gRPC)."""
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)


def unavailable(message: str):
    """A full queue: UNAVAILABLE (503 over HTTP), try again later."""
    return pb_utils.TritonError(message, getattr(pb_utils.TritonError, "UNAVAILABLE", pb_utils.TritonError.INTERNAL))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        threads = int(parameters["threads"]) if parameters.get("threads") else None
        self.pipeline = open_pipeline(parameters["artifacts"], parameters["backend"],
                                      device=parameters.get("device") or None, threads=threads)
        self.inputs = [spec["name"] for spec in config["input"]]
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.scheduler = Scheduler(self.pipeline.backend, slots=int(parameters["slots"]),
                                   max_queue=int(parameters.get("max_queue") or 256))
        if self.decoupled:
            self.scheduler.start()

    def execute(self, requests: list) -> list | None:
        return self._queue(requests) if self.decoupled else self._run(requests)

    def finalize(self) -> None:
        self.scheduler.close(timeout=30)

    def _run(self, requests: list) -> list:
        """Every request's images through the scheduler in this thread; one response per request, in order."""
        results: dict[int, dict[int, np.ndarray]] = {}
        responses: list = [None] * len(requests)
        for number, request in enumerate(requests):
            try:
                images = self._images(request)
                results[number] = {}
                self.scheduler.submit(images, lambda ticket, row, event, n=number: results[n].__setitem__(row, event))
            except RARDeployError as exc:
                responses[number] = pb_utils.InferenceResponse(error=invalid_argument(str(exc)))
        self.scheduler.run()
        for number, events in results.items():
            ordered = [events[row] for row in range(len(events))]
            failed = [event.message for event in ordered if event.kind == "error"]
            if failed:
                responses[number] = pb_utils.InferenceResponse(error=pb_utils.TritonError(failed[0]))
            else:
                responses[number] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("image", np.stack([e.image for e in ordered])),
                    pb_utils.Tensor("tokens", np.stack([e.tokens for e in ordered]))])
        return responses

    def _queue(self, requests: list) -> None:
        """Decoupled: queue each request; its responses are sent from the scheduler's thread."""
        for request in requests:
            sender = request.get_response_sender()
            try:
                images = self._images(request)
                self.scheduler.submit(images, lambda ticket, row, event, s=sender: self._send(s, ticket, row, event),
                                      wanted=lambda s=sender: not s.is_cancelled())
            except Busy as exc:
                sender.send(pb_utils.InferenceResponse(error=unavailable(str(exc))), flags=FINAL)
            except RARDeployError as exc:
                sender.send(pb_utils.InferenceResponse(error=invalid_argument(str(exc))), flags=FINAL)
        return None

    @staticmethod
    def _send(sender, ticket: Ticket, row: int, event) -> None:
        if event.kind == "cancelled":  # the client cancelled: Triton still needs the request closed
            sender.send(flags=FINAL)
            return
        if event.kind == "error":
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(event.message)), flags=FINAL)
            ticket.cancelled = True  # its other images are of no use to anyone now
            return
        sender.send(pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("image", event.image[None]), pb_utils.Tensor("tokens", event.tokens[None]),
            pb_utils.Tensor("row", np.array([[row]], np.int64)),
            pb_utils.Tensor("step", np.array([[event.step]], np.int64))]))
        if event.kind == "image" and ticket.remaining == 0:
            sender.send(flags=FINAL)

    def _images(self, request) -> list[ImageRequest]:
        """One checked image per row of the request; absent optional inputs take their defaults."""
        family = self.pipeline.family
        labels = pb_utils.get_input_tensor_by_name(request, "class_label").as_numpy().reshape(-1)
        values = {}
        for name in self.inputs[1:]:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            values[name] = None if tensor is None else tensor.as_numpy().reshape(-1).tolist()
        images = []
        for row, label in enumerate(labels.tolist()):
            given = {name: column[row] for name, column in values.items() if column is not None}
            images.append(self.pipeline.image_request(label, given.get("seed", 0), given.get("image_index", row),
                                                      family.sampling_from(given), given.get("preview_every", 0)))
        return images
