"""An artifact directory as a runtime sees it: the manifest, checked, and typed accessors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import GeneratorConfig, SamplingDefaults, TokenizerConfig
from ..errors import RARDeployError
from ..export.tensorrt import resolve_shape
from ..manifest import read_manifest

GRAPHS = ("prefill", "decode_step", "vq_decoder")


@dataclass(frozen=True)
class Artifacts:
    directory: Path
    manifest: dict

    @classmethod
    def load(cls, directory: str | Path) -> "Artifacts":
        directory = Path(directory)
        if not directory.is_dir():
            raise RARDeployError(f"artifact directory not found: {directory}")
        artifacts = cls(directory, read_manifest(directory))
        for name in GRAPHS:
            graph = artifacts.manifest["graphs"].get(name)
            if graph is None or not (directory / graph["file"]).is_file():
                raise RARDeployError(f"{directory} lacks {name}.onnx: export the artifacts again with rar-export")
        if artifacts.tokenizer.codebook_size != artifacts.config.codebook_size:
            raise RARDeployError(
                f"{directory}: the tokenizer's codebook ({artifacts.tokenizer.codebook_size}) does not match the "
                f"generator's vocabulary ({artifacts.config.codebook_size}): these artifacts mix two models")
        return artifacts

    @property
    def config(self) -> GeneratorConfig:
        model = {k: v for k, v in self.manifest["model"].items() if k != "preset"}
        return GeneratorConfig(**model)

    @property
    def tokenizer(self) -> TokenizerConfig:
        tokenizer = dict(self.manifest["tokenizer"])
        tokenizer["channel_mult"] = tuple(tokenizer["channel_mult"])
        return TokenizerConfig(**tokenizer)

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def cache_dtype(self) -> np.dtype:
        return np.dtype(self.manifest["kv_cache"]["dtype"])

    @property
    def max_batch(self) -> int:
        return self.manifest["batch_profile"]["max"]

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        return SamplingDefaults(**self.manifest["sampling"]["defaults"])

    def graph_path(self, name: str) -> Path:
        return self.directory / self.manifest["graphs"][name]["file"]

    def output_shapes(self, name: str, batch: int) -> dict[str, tuple[list[int], np.dtype]]:
        """Concrete shape and dtype of every output of graph `name` at `batch`."""
        return {o["name"]: (resolve_shape(o["shape"], batch), np.dtype(o["dtype"]))
                for o in self.manifest["graphs"][name]["outputs"]}
