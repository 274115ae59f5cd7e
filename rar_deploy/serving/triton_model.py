"""Triton Python-backend model (copied to REPO/rar/1/model.py by `rar-deploy triton-repo`): the whole RAR
loop in this instance, over the rows of every request Triton batched together. Needs rar-deploy (the runtime
install) in the Python environment Triton runs its models with."""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils

from rar_deploy.errors import RARDeployError
from rar_deploy.runtime import RARPipeline, RARSampling, Sample

OPTIONAL = ("seed", "image_index", "guidance_scale", "guidance_pow", "temperature")


def invalid_argument(message: str):
    """An error the client sees as 400 (HTTP) / INVALID_ARGUMENT (gRPC)."""
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        threads = int(parameters["threads"]) if parameters.get("threads") else None
        self.pipeline = RARPipeline.from_artifacts(parameters["artifacts"], parameters["backend"],
                                                   device=parameters.get("device") or None, threads=threads)
        self.batch_size = config["max_batch_size"]

    def execute(self, requests: list) -> list:
        samples, spans, errors = [], [], {}
        for number, request in enumerate(requests):
            try:
                rows = self._samples(request)
            except RARDeployError as exc:
                errors[number] = str(exc)
                continue
            spans.append((number, len(samples), len(samples) + len(rows)))
            samples += rows
        responses = [pb_utils.InferenceResponse(error=invalid_argument(errors[n])) if n in errors else None
                     for n in range(len(requests))]
        if samples:
            tokens = self.pipeline.generate_samples(samples, batch_size=self.batch_size)
            images = self.pipeline.decode(tokens, batch_size=self.batch_size)
            for number, start, end in spans:
                responses[number] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("image", images[start:end]), pb_utils.Tensor("tokens", tokens[start:end])])
        return responses

    def _samples(self, request) -> list[Sample]:
        """One checked Sample per row of the request; absent optional inputs take their defaults."""
        labels = pb_utils.get_input_tensor_by_name(request, "class_label").as_numpy().reshape(-1)
        values = {}
        for name in OPTIONAL:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            values[name] = None if tensor is None else tensor.as_numpy().reshape(-1).tolist()
        rows = []
        for row, label in enumerate(labels.tolist()):
            given = {name: column[row] for name, column in values.items() if column is not None}
            rows.append(self.pipeline.check_sample(Sample(
                label, given.get("seed", 0), given.get("image_index", row),
                RARSampling(guidance_scale=given.get("guidance_scale"), guidance_pow=given.get("guidance_pow"),
                            temperature=given.get("temperature")))))
        return rows
