"""A Triton Inference Server model repository for an artifact folder: one Python-backend model that runs
the whole generation loop inside its instance (the KV cache never crosses the server), with Triton's
dynamic batching in front.

    REPO/rar/config.pbtxt      inputs, outputs and sizes from the manifest; the runtime's settings as parameters
    REPO/rar/1/model.py        triton_model.py: RARPipeline over ONNX Runtime or TensorRT
(REPO may hold other models: only REPO/rar is written, and replaced with --force only if this tool wrote it.)

One request row is one image: class_label (required), seed, image_index, guidance_scale, guidance_pow,
temperature (optional; image_index defaults to the row within its request, so a request of labels
[a, b] with seed s gives the images rar-generate writes for them). Outputs: image (uint8 H x W x 3), tokens.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rar_deploy.runtime import Artifacts

MARKER = "# written by rar-deploy triton-repo"
MODEL_NAME = "rar"
TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "uint8": "TYPE_UINT8"}
# (name, dtype, required): one value per image
INPUTS = (("class_label", "int64", True), ("seed", "int64", False), ("image_index", "int64", False),
          ("guidance_scale", "float32", False), ("guidance_pow", "float32", False), ("temperature", "float32", False))


def output_dims(artifacts: Artifacts) -> dict[str, tuple[str, list[int]]]:
    """Per-image outputs: name -> (dtype, dims), from the decoder's and the generator's records."""
    decoder = {spec["name"]: spec for spec in artifacts.graph_outputs("vq_decoder")}
    image = [int(d) for d in decoder["images_uint8"]["shape"][1:]]
    return {"image": ("uint8", image), "tokens": ("int64", [artifacts.config.image_seq_len])}


def model_config(artifacts: Artifacts, backend: str, device: str | None, threads: int | None,
                 max_batch_size: int, instances: int, queue_delay_us: int) -> str:
    """config.pbtxt (Triton's ModelConfig in protobuf text format)."""
    def tensor(name: str, dtype: str, dims: list[int], optional: bool = False) -> str:
        extra = " optional: true" if optional else ""
        return f'  {{ name: "{name}" data_type: {TRITON_TYPES[dtype]} dims: [ {", ".join(map(str, dims))} ]{extra} }}'

    parameters = {"artifacts": str(artifacts.directory.resolve()), "backend": backend, "device": device or "",
                  "threads": str(threads or "")}
    kind = "KIND_GPU" if backend == "tensorrt" or (device or "").startswith("cuda") else "KIND_CPU"
    lines = [MARKER, f'name: "{MODEL_NAME}"', 'backend: "python"', f"max_batch_size: {max_batch_size}", "input ["]
    lines.append(",\n".join(tensor(name, dtype, [1], not required) for name, dtype, required in INPUTS))
    lines += ["]", "output ["]
    lines.append(",\n".join(tensor(name, dtype, dims) for name, (dtype, dims) in output_dims(artifacts).items()))
    lines += ["]", f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}",
              f"instance_group [ {{ count: {instances} kind: {kind} }} ]", "parameters ["]
    lines.append(",\n".join(f'  {{ key: "{key}" value: {{ string_value: {pbtxt_string(value)} }} }}'
                            for key, value in parameters.items()))
    lines.append("]")
    return "\n".join(lines) + "\n"


def write_model(folder: Path, artifacts: Artifacts, backend: str = "onnxruntime", device: str | None = None,
                threads: int | None = None, max_batch_size: int | None = None, instances: int = 1,
                queue_delay_us: int = 5000) -> None:
    """Write the model (config.pbtxt, 1/model.py) into `folder`: an empty, temporary folder the caller
    publishes as REPO/rar, so the repository's other models are never touched."""
    batch = artifacts.check_batch_size(max_batch_size)
    (folder / "1").mkdir()
    (folder / "config.pbtxt").write_text(model_config(artifacts, backend, device, threads, batch, instances,
                                                       queue_delay_us))
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
