"""The model families, defined once and chosen once from the manifest (ONNX Runtime GenAI's
`Model::CreateState`): each family's graphs, loop, sampling type and loop inputs, the sampling options that
apply to it and what its parity record holds. Code that differs by family asks its `Family`; nothing else
branches on the family's name."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np

from rar_deploy.contract.checks import check_sampling, check_var_sampling
from rar_deploy.contract.config import SamplingDefaults, VARSamplingDefaults
from rar_deploy.contract.graphs import FAMILY_GRAPHS
from rar_deploy.contract.sampling import guidance_rows, guidance_schedule, is_guided, sampling_noise
from rar_deploy.errors import RARDeployError
from rar_deploy.runtime.loops import RARInputs, RARLoop, VARInputs, VARLoop
from rar_deploy.runtime.slots import RARSlots, VARSlots


@dataclass(frozen=True, kw_only=True)
class RARSampling:
    """RAR's sampling values; None is the model size's published default (the manifest's `sampling.defaults`).
    guidance_scale 0 is no guidance, temperature 0 greedy; the scale grows over the tokens with guidance_pow."""

    guidance_scale: float | None = None
    guidance_pow: float | None = None
    temperature: float | None = None

    def resolved(self, defaults: Any) -> "RARSampling":
        """Checked (one line each), None replaced by `defaults`."""
        return _resolved(self, defaults, check_sampling)


@dataclass(frozen=True, kw_only=True)
class VARSampling:
    """VAR's sampling values; None is the published default (cfg 1.5, top-k 900, top-p 0.96, temperature 1).
    top_k 0 and top_p 0 turn each filter off, temperature 0 is greedy."""

    guidance_scale: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None

    def resolved(self, defaults: Any) -> "VARSampling":
        """Checked (one line each), None replaced by `defaults`."""
        return _resolved(self, defaults, check_var_sampling)


def _resolved(sampling: Any, defaults: Any, check: Callable[..., tuple]) -> Any:
    """`sampling` with None replaced by the field of `defaults`, checked by `check` (which takes and returns the
    values in the order of the fields)."""
    names = [field.name for field in fields(sampling)]
    given = (getattr(sampling, name) for name in names)
    values = check(*(getattr(defaults, name) if value is None else value for name, value in zip(names, given)))
    return type(sampling)(**dict(zip(names, values)))


def rar_inputs(config: Any, labels: np.ndarray, samplings: list[RARSampling], seeds: list[tuple[int, int]]
               ) -> RARInputs:
    """The RAR loop's inputs for images (labels[i], resolved samplings[i], noise of (seed, index) seeds[i]); the
    batch is guided or not as a whole (an unguided batch runs half the rows)."""
    schedules = {(s.guidance_scale, s.guidance_pow) for s in samplings}
    schedules = {key: guidance_schedule(config.image_seq_len, *key) for key in schedules}
    guided = is_guided(samplings[0].guidance_scale)
    return RARInputs(
        rows=guidance_rows(np.asarray(labels, np.int64), guided, config.null_class),
        guidance=np.stack([schedules[s.guidance_scale, s.guidance_pow] for s in samplings], axis=1),
        temperature=np.array([s.temperature for s in samplings], np.float32),
        noise=np.concatenate([sampling_noise(seed, 1, config.image_seq_len, config.codebook_size, index)
                              for seed, index in seeds]))


def var_inputs(config: Any, labels: np.ndarray, sampling: VARSampling, seed: int, first_image: int = 0) -> VARInputs:
    """The VAR loop's inputs for images first_image, first_image + 1, ... of a request with `seed`."""
    b = len(labels)
    return VARInputs(labels=np.asarray(labels, np.int64),
                     guidance_scale=np.full(b, sampling.guidance_scale, np.float64),
                     top_k=sampling.top_k, top_p=sampling.top_p,
                     temperature=np.full(b, sampling.temperature, np.float32),
                     noise=sampling_noise(seed, b, config.seq_len, config.codebook_size, first_image))


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    graphs: tuple[str, ...]
    step_graph: str  # the graph a loop runs over and over
    decoder_graph: str
    sampling: type
    defaults: type  # the manifest's sampling.defaults
    loop: type
    slots: type  # its slot table for in-flight batching (slots.py)
    inputs: Callable[..., Any]  # (config, labels, resolved sampling, seed, first image) -> the loop's inputs
    record_keys: tuple[str, ...]  # what its parity checks read of a record (beyond the graphs' own feeds)
    tokens_per_image: Callable[[Any], int]
    loop_options: tuple[str, ...] = ()  # options of its loop (as CLI options, underscored)

    @property
    def sampling_fields(self) -> tuple[str, ...]:
        return tuple(field.name for field in fields(self.sampling))

    @property
    def options(self) -> tuple[str, ...]:
        """The options that apply: its sampling type's fields and its loop's."""
        return self.sampling_fields + self.loop_options

    def check_sampling(self, sampling: Any, defaults: Any) -> Any:
        """`sampling` (None: all defaults) checked and resolved; the other family's type is one clear line."""
        if sampling is None:
            sampling = self.sampling()
        if not isinstance(sampling, self.sampling):
            raise RARDeployError(f"a {self.title} model takes sampling={self.sampling.__name__}(...), got "
                                 f"{type(sampling).__name__}")
        return sampling.resolved(defaults)

    def refuse_options(self, given: dict[str, Any], directory: Any) -> None:
        """Refuse sampling options given (not None) that this family's models do not have."""
        wrong = [name for name, value in given.items() if value is not None and name not in self.options]
        if wrong:
            raise RARDeployError(f"--{wrong[0].replace('_', '-')} does not apply to a {self.title} model "
                                 f"({directory}): drop it")

    def published_inputs(self, config: Any, defaults: Any, batch: int, seed: int = 0) -> Any:
        """The loop's inputs for labels 0 .. B-1 at the published sampling values (what rar-bench times)."""
        return self.inputs(config, np.arange(batch) % config.num_classes, self.check_sampling(None, defaults), seed)

    def sampling_from(self, values: dict[str, Any]) -> Any:
        """This family's sampling type from a dict of options (those of the other family dropped)."""
        return self.sampling(**{field.name: values.get(field.name) for field in fields(self.sampling)})


def _rar_batch_inputs(config: Any, labels: np.ndarray, sampling: RARSampling, seed: int, first_image: int = 0
                      ) -> RARInputs:
    return rar_inputs(config, labels, [sampling] * len(labels),
                      [(seed, first_image + i) for i in range(len(labels))])


RAR = Family(name="rar", title="RAR", graphs=FAMILY_GRAPHS["rar"], step_graph="decode_step",
             decoder_graph="vq_decoder", sampling=RARSampling, defaults=SamplingDefaults, loop=RARLoop,
             slots=RARSlots, inputs=_rar_batch_inputs, tokens_per_image=lambda config: config.image_seq_len,
             record_keys=("seed", "labels", "guidance_scale", "guidance_pow", "temperature", "tokens",
                          "guided_logits", "unguided_tokens", "unguided_logits", "images_uint8"),
             loop_options=("condition_budget",))
VAR = Family(name="var", title="VAR", graphs=FAMILY_GRAPHS["var"], step_graph="var_step",
             decoder_graph="var_decoder", sampling=VARSampling, defaults=VARSamplingDefaults, loop=VARLoop,
             slots=VARSlots, inputs=var_inputs, tokens_per_image=lambda config: config.seq_len,
             record_keys=("seed", "labels", "guidance_scale", "top_k", "top_p", "temperature", "tokens",
                          "guided_logits", "f_hats", "greedy_tokens", "greedy_logits", "images_uint8"))
FAMILIES = {family.name: family for family in (RAR, VAR)}
