"""A Triton Inference Server model repository for an artifact folder (RAR or VAR): one Python-backend model that
runs the generation inside its instance (the KV cache never crosses the server) on the in-flight scheduler
(runtime/scheduler.py), with Triton's dynamic batching in front.

    REPO/<name>/config.pbtxt   inputs, outputs and sizes from the manifest; the runtime's settings as parameters
    REPO/<name>/1/model.py     triton_model.py: the scheduler over ONNX Runtime or TensorRT
(REPO may hold other models: only REPO/<name> is written, and replaced with --force only if this tool wrote it;
<name> defaults to the family, rar or var.)

One request row is one image: class_label (required), seed, image_index, and the family's sampling values
(optional; RAR: guidance_scale, guidance_pow, temperature; VAR: guidance_scale, top_k, top_p, temperature;
image_index defaults to the row within its request, so a request of labels [a, b] with seed s gives the images
rar-generate writes for them). Outputs: image (uint8 H x W x 3), tokens.

Two ways to run it. Default: a request is answered once, over HTTP or gRPC; the rows of the requests Triton
batched together run in the scheduler (images join at Triton's batch boundaries). `decoupled`: Triton's
decoupled transaction policy (clients stream over gRPC, as TensorRT-LLM's streaming does): every request joins
the running batch at the next step, each image is sent the moment it is done (outputs `row`: its row in the
request, `step`), with previews every `preview_every` steps when the request asks (an optional input), and a
final empty response closes the request; a client that cancels frees its slots.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from rar_deploy.errors import RARDeployError
from rar_deploy.runtime import Artifacts
from rar_deploy.serving.protocol import MAX_IMAGES_PER_REQUEST

MARKER = "# written by rar-deploy triton-repo"
TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "uint8": "TYPE_UINT8"}
# (name, dtype, required): one value per image
COMMON_INPUTS = (("class_label", "int64", True), ("seed", "int64", False), ("image_index", "int64", False))
SAMPLING_TYPES = {"guidance_scale": "float32", "guidance_pow": "float32", "temperature": "float32",
                  "top_k": "int64", "top_p": "float32"}
DECOUPLED_INPUTS = (("preview_every", "int64", False),)


def check_model_name(name: str) -> str:
    """A model name Triton accepts as a repository folder: letters, digits, '_', '-' and '.'."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise RARDeployError(f"--name {name!r}: a model name is letters, digits, '_', '-' and '.' (a folder of the "
                             "repository)")
    return name


def model_inputs(artifacts: Artifacts, decoupled: bool) -> tuple[tuple[str, str, bool], ...]:
    """(name, dtype, required) of every input the family's model takes."""
    sampling = tuple((name, SAMPLING_TYPES[name], False) for name in artifacts.family.sampling_fields)
    return COMMON_INPUTS + sampling + (DECOUPLED_INPUTS if decoupled else ())


def output_dims(artifacts: Artifacts, decoupled: bool = False) -> dict[str, tuple[str, list[int]]]:
    """Per-image outputs: name -> (dtype, dims), from the decoder's and the generator's records."""
    family = artifacts.family
    decoder = {spec["name"]: spec for spec in artifacts.graph_outputs(family.decoder_graph)}
    image = [int(d) for d in decoder["images_uint8"]["shape"][1:]]
    outputs = {"image": ("uint8", image), "tokens": ("int64", [family.tokens_per_image(artifacts.config)])}
    if decoupled:
        outputs.update(row=("int64", [1]), step=("int64", [1]))
    return outputs


def model_config(artifacts: Artifacts, name: str, backend: str, device: str | None, threads: int | None,
                 max_batch_size: int, instances: int, queue_delay_us: int, decoupled: bool = False,
                 max_queue: int = 256) -> str:
    """config.pbtxt (Triton's ModelConfig in protobuf text format)."""
    def tensor(name: str, dtype: str, dims: list[int], optional: bool = False) -> str:
        extra = " optional: true" if optional else ""
        return f'  {{ name: "{name}" data_type: {TRITON_TYPES[dtype]} dims: [ {", ".join(map(str, dims))} ]{extra} }}'

    parameters = {"artifacts": str(artifacts.directory.resolve()), "backend": backend, "device": device or "",
                  "threads": str(threads or ""), "slots": str(max_batch_size), "max_queue": str(max_queue)}
    kind = "KIND_GPU" if backend == "tensorrt" or (device or "").startswith("cuda") else "KIND_CPU"
    # Triton's max_batch_size bounds the rows of a request and of a dynamic batch: the slots when execute runs the
    # batch to its end; when decoupled, a request's images join the slots in the scheduler's queue
    rows = min(MAX_IMAGES_PER_REQUEST, max_queue) if decoupled else max_batch_size
    lines = [MARKER, f"name: {pbtxt_string(name)}", 'backend: "python"', f"max_batch_size: {rows}", "input ["]
    lines.append(",\n".join(tensor(name, dtype, [1], not required)
                            for name, dtype, required in model_inputs(artifacts, decoupled)))
    lines += ["]", "output ["]
    outputs = output_dims(artifacts, decoupled)
    lines.append(",\n".join(tensor(name, dtype, dims) for name, (dtype, dims) in outputs.items()))
    lines += ["]", f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}",
              f"instance_group [ {{ count: {instances} kind: {kind} }} ]"]
    if decoupled:
        lines.append("model_transaction_policy { decoupled: true }")
    lines.append("parameters [")
    lines.append(",\n".join(f'  {{ key: "{key}" value: {{ string_value: {pbtxt_string(value)} }} }}'
                            for key, value in parameters.items()))
    lines.append("]")
    return "\n".join(lines) + "\n"


def write_model(folder: Path, artifacts: Artifacts, name: str, backend: str = "onnxruntime", device: str | None = None,
                threads: int | None = None, max_batch_size: int | None = None, instances: int = 1,
                queue_delay_us: int = 5000, decoupled: bool = False, max_queue: int = 256) -> None:
    """Write the model (config.pbtxt, 1/model.py) into `folder`: an empty, temporary folder the caller
    publishes as REPO/<name>, so the repository's other models are never touched."""
    batch = artifacts.check_batch_size(max_batch_size)
    (folder / "1").mkdir()
    (folder / "config.pbtxt").write_text(model_config(artifacts, name, backend, device, threads, batch, instances,
                                                       queue_delay_us, decoupled, max_queue))
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), folder / "1" / "model.py")


def model_files(path: Path) -> frozenset[str] | None:
    """The files this tool wrote in a model folder (and the bytecode Triton's Python made of model.py), or None if
    it did not write the folder: the only kind its --force replaces."""
    try:
        if not (path / "config.pbtxt").read_text().startswith(MARKER):
            return None
    except (OSError, UnicodeDecodeError):
        return None
    cached = {f"1/__pycache__/{p.name}" for p in (path / "1" / "__pycache__").glob("model.*.pyc")}
    return frozenset({"config.pbtxt", "1/model.py", *cached})


def pbtxt_string(value: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
