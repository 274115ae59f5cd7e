"""An artifact directory as a runtime sees it: the manifest, checked, and typed accessors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..arguments import check_sampling
from ..config import GeneratorConfig, SamplingDefaults, TokenizerConfig
from ..engines import resolve_shape
from ..errors import RARDeployError
from ..manifest import GRAPH_NAMES, read_manifest


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
        for name in GRAPH_NAMES:
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

    def sampling_values(self, guidance_scale: float | None, guidance_pow: float | None,
                        temperature: float | None) -> tuple[float, float, float]:
        """The given sampling values, checked, with None replaced by the model size's published default."""
        defaults = self.sampling_defaults
        return check_sampling(defaults.guidance_scale if guidance_scale is None else guidance_scale,
                              defaults.guidance_pow if guidance_pow is None else guidance_pow,
                              defaults.temperature if temperature is None else temperature)

    def check_batch_size(self, batch_size: int | None) -> int:
        """A batch size within the artifacts' profile; None means its largest."""
        if batch_size is None:
            return self.max_batch
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool):
            raise RARDeployError(f"batch size must be an integer, got {batch_size!r}")
        if not 1 <= batch_size <= self.max_batch:
            raise RARDeployError(f"batch size {batch_size} is outside the artifacts' profile [1, {self.max_batch}]: "
                                 f"use a smaller one or export again with a larger --max-batch")
        return int(batch_size)

    def checkpoint_paths(self) -> list[Path]:
        """Where the checkpoints were at export (they may have moved since)."""
        return [Path(record["path"]) for record in self.manifest["checkpoints"].values()]

    def graph_path(self, name: str) -> Path:
        return self.directory / self.manifest["graphs"][name]["file"]

    def output_shapes(self, name: str, batch: int) -> dict[str, tuple[list[int], np.dtype]]:
        """Concrete shape and dtype of every output of graph `name` at `batch`."""
        return {o["name"]: (resolve_shape(o["shape"], batch), np.dtype(o["dtype"]))
                for o in self.manifest["graphs"][name]["outputs"]}
