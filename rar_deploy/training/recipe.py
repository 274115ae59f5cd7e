"""The demo model's recipe: every size, step count, rate and seed of its training in one place, so that the
shipped weights, the re-training command and its record say the same thing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rar_deploy.contract.config import GENERATOR_PRESETS, TOKENIZER_PRESETS, RARConfig, RARTokenizerConfig


@dataclass(frozen=True)
class DemoRecipe:
    seed: int = 0
    threads: int = 2  # torch's CPU threads: the same count gives the same bytes
    image_size: int = 64
    supersample: int = 2  # images drawn at 128 x 128 and averaged down
    train_per_class: int = 5000  # third model's data: 2,000 overfit 2,700 generator steps (held-out NLL 3.20, 2.86)
    held_out_per_class: int = 100
    # tokenizer: MSE reconstruction + the VQ codebook and commitment terms; first on crops of the token grid
    # (the network is convolutional: a 32 x 32 crop costs a quarter of an image), then on whole images
    tokenizer_crop: int = 32
    tokenizer_crop_steps: int = 3200
    tokenizer_crop_batch: int = 32
    tokenizer_full_steps: int = 500
    tokenizer_full_batch: int = 16
    tokenizer_lr: float = 2e-3
    tokenizer_warmup: int = 300  # steps without quantization before k-means sets the codebook
    commitment: float = 0.25
    codebook_decay: float = 0.99
    dead_code_every: int = 100  # codes unused for this many steps restart at encoder outputs of the batch
    # generator: next-token cross-entropy over the raster order, class dropout for guidance
    # bfloat16 autocast (float32 master weights): 1.6x faster generator steps on this CPU (avx512_bf16), measured
    # paired under load; the adaLN modulations computed per class, not per row: 0.34 s a step instead of 0.45,
    # so 2700 steps in the time 2000 took; 3300 bring the two models to about 30 minutes (29-31 in two runs). The
    # rate: held-out NLL after 600 steps 3.65 / 3.43 / 3.33 / 3.29 nats at 1e-3 / 2e-3 / 4e-3 / 8e-3 (a longer run
    # wants a little less than the short one's best)
    generator_steps: int = 3300
    generator_bfloat16: bool = True
    generator_batch: int = 64
    generator_lr: float = 5e-3
    generator_warmup: int = 100
    weight_decay: float = 0.03
    class_dropout: float = 0.1
    # classifier (the yardstick's instrument): a small CNN on the real training images and tokenizer
    # reconstructions of some of them (generated images come through the tokenizer's decoder)
    classifier_steps: int = 1200
    classifier_reconstructed: int = 4000
    classifier_batch: int = 64
    classifier_lr: float = 2e-3

    @property
    def tokenizer(self) -> RARTokenizerConfig:
        return TOKENIZER_PRESETS["demo"]

    @property
    def generator(self) -> RARConfig:
        return GENERATOR_PRESETS["demo"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def shortened(self, factor: int) -> "DemoRecipe":
        """The same recipe with every step count and split divided by `factor` (a quick check of the machinery)."""
        counts = {f.name: max(getattr(self, f.name) // factor, 1) for f in dataclasses.fields(self)
                  if f.name.endswith(("_steps", "_per_class", "_warmup", "_reconstructed"))}
        return dataclasses.replace(self, **counts)
