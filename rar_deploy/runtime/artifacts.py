"""An artifact directory as a runtime sees it: the manifest, validated, its files checked, typed accessors,
and the checks of what a graph is fed (as Polygraphy's runners do) and of what a graph file declares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rar_deploy.contract.config import (
    RARConfig,
    RARTokenizerConfig,
    SamplingDefaults,
    VARConfig,
    VARSamplingDefaults,
)
from rar_deploy.contract.graphs import present_graphs
from rar_deploy.contract.integrity import check_file
from rar_deploy.contract.manifest import (
    manifest_family,
    manifest_generator_config,
    manifest_tokenizer_config,
    read_manifest,
)
from rar_deploy.contract.weights import WeightQuantization
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.families import FAMILIES, Family

# ONNX Runtime's type strings for the manifest's dtypes
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
             "tensor(uint8)": "uint8"}


@dataclass(frozen=True)
class Artifacts:
    directory: Path
    manifest: dict

    @classmethod
    def load(cls, directory: str | Path, verify: str = "fingerprint") -> "Artifacts":
        """verify: how files are checked against the manifest: "fingerprint" (every load: the graphs' size and
        sampled chunks), "sha256" (every byte of the graphs) or "all" (every byte of every file the manifest
        lists: graphs, engines, reference.npz, parity.json)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise RARDeployError(f"artifact directory not found: {directory}")
        artifacts = cls(directory, read_manifest(directory))
        if verify == "all":
            artifacts.verify_all()
        else:
            for name in artifacts.graph_names:
                artifacts.check_files(name, verify)
        return artifacts

    @property
    def family(self) -> Family:
        """RAR's (condition, decode_step, vq_decoder) or VAR's (var_step, var_decoder) definition."""
        return FAMILIES[manifest_family(self.manifest)]

    @property
    def graph_names(self) -> tuple[str, ...]:
        """The family's graphs, then the optional ones this folder has (decode_block)."""
        return present_graphs(self.family.name, self.manifest["graphs"])

    def check_files(self, graph: str, verify: str = "fingerprint", engine: bool = False) -> Path:
        """Check a graph's files (or its engine's) against the manifest; returns the graph or engine path."""
        entry = self.manifest["engines"][graph] if engine else self.manifest["graphs"][graph]
        names = [entry["file"]] + ([entry["external_data"]] if entry.get("external_data") else [])
        for name in names:
            check_file(self.directory, name, self.manifest["files"][name], verify)
        return self.directory / entry["file"]

    def verify_all(self) -> list[str]:
        """Full SHA-256 of every listed file; returns the names checked."""
        for name, record in self.manifest["files"].items():
            check_file(self.directory, name, record, "sha256")
        return sorted(self.manifest["files"])

    @property
    def config(self) -> RARConfig | VARConfig:
        return manifest_generator_config(self.manifest)

    @property
    def tokenizer_config(self) -> RARTokenizerConfig:
        return manifest_tokenizer_config(self.manifest)

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def weights(self) -> WeightQuantization | None:
        """The step graph's weight quantization (None: float weights in `precision`)."""
        return WeightQuantization.from_manifest(self.manifest.get("weights"))

    @property
    def cache_dtype(self) -> np.dtype:
        return np.dtype(self.manifest["kv_cache"]["dtype"])

    @property
    def condition_width(self) -> int:
        return self.manifest["condition"]["width"]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images the decoder graph draws."""
        shape = next(s["shape"] for s in self.graph_outputs(self.family.decoder_graph) if s["name"] == "images_uint8")
        return int(shape[1]), int(shape[2])

    @property
    def max_batch(self) -> int:
        return self.manifest["batch_profile"]["max"]

    @property
    def sampling_defaults(self) -> SamplingDefaults | VARSamplingDefaults:
        return self.family.defaults(**self.manifest["sampling"]["defaults"])

    def check_batch_size(self, batch_size: int | None) -> int:
        """A batch size within the artifacts' profile; None means its largest."""
        if batch_size is None:
            return self.max_batch
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool):
            raise RARDeployError(f"batch size must be an integer, got {batch_size!r}")
        if batch_size < 1:
            raise RARDeployError(f"batch size must be at least 1, got {batch_size}")
        if batch_size > self.max_batch:
            raise RARDeployError(f"batch size {batch_size} is outside the artifacts' profile [1, {self.max_batch}]: "
                                 f"use a smaller one or export again with a larger --max-batch")
        return int(batch_size)

    def checkpoint_paths(self) -> list[Path]:
        """Where the checkpoints were at export (they may have moved since)."""
        return [Path(record["path"]) for record in self.manifest["checkpoints"].values()]

    def graph_path(self, graph: str) -> Path:
        return self.directory / self.manifest["graphs"][graph]["file"]

    def graph_inputs(self, graph: str) -> list[dict]:
        return self.manifest["graphs"][graph]["inputs"]

    def graph_outputs(self, graph: str) -> list[dict]:
        return self.manifest["graphs"][graph]["outputs"]

    def check_feeds(self, graph: str, feeds: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, int]:
        """Names, dtypes and shapes of a call's feeds against the manifest; returns the symbolic dims' sizes."""
        specs = self.graph_inputs(graph)
        names = [spec["name"] for spec in specs]
        if sorted(feeds) != sorted(names):
            missing, extra = sorted(set(names) - set(feeds)), sorted(set(feeds) - set(names))
            raise RARDeployError(f"{graph} takes {', '.join(names)}; missing {missing or 'none'}, "
                                 f"unexpected {extra or 'none'}")
        dims: dict[str, int] = {}
        for spec in specs:
            shape, dtype = feeds[spec["name"]]
            if np.dtype(dtype) != np.dtype(spec["dtype"]) or len(shape) != len(spec["shape"]):
                raise RARDeployError(f"{graph} input {spec['name']} must be {spec['dtype']} {spec['shape']}, got "
                                     f"{np.dtype(dtype)} {list(shape)}")
            for size, dim in zip(shape, spec["shape"]):
                if isinstance(dim, str):
                    dim_size = dims.setdefault(dim, size)
                else:
                    dim_size = dim
                if size != dim_size:
                    raise RARDeployError(f"{graph} input {spec['name']} has shape {list(shape)}, the manifest says "
                                         f"{spec['shape']} ({dim} = {dim_size} from the other inputs)")
        if "side" in dims:  # VAR's outputs have one token per cell of the scale's grid
            dims["tokens"] = dims["side"] ** 2
        return dims

    def onnxruntime_session(self, graph: str, options, providers: list[str]):
        """An ONNX Runtime session of a graph whose declared I/O is the manifest's, else one line why not."""
        import onnxruntime as ort

        path = self.graph_path(graph)
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises several types for unreadable graphs
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RARDeployError(f"ONNX Runtime cannot load {path}: {reason}; export the artifacts again") from None
        declared = {"inputs": session.get_inputs(), "outputs": session.get_outputs()}
        for kind, args in declared.items():
            recorded = [(s["name"], s["dtype"], list(s["shape"])) for s in self.manifest["graphs"][graph][kind]]
            actual = [(a.name, ORT_TYPES.get(a.type, a.type), list(a.shape)) for a in args]
            if actual != recorded:
                wrong = next((a, r) for a, r in zip(actual + [None] * len(recorded), recorded + [None] * len(actual))
                             if a != r)
                raise RARDeployError(f"{path} declares {kind[:-1]} {wrong[0]}, the manifest says {wrong[1]}: the "
                                     "graph does not belong to this manifest; export the artifacts again")
        return session
