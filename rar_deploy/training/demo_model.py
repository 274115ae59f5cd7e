"""The trained demo model: its files, where the shipped ones live, and the one command that trains them again.

A demo weights folder holds, in the official checkpoint layouts with fp16 values:
  rar_demo.fp16.bin               the RAR generator (`rar_b.bin` keys)
  maskgit-vqgan-demo.fp16.bin     the MaskGIT-VQGAN tokenizer, encoder included (the released file's keys)
  shape_classifier.bin            the yardsticks' classifier (float32)
  demo.json                       the recipe, every file's SHA-256, the training's times and losses, and the
                                  held-out measurements taken on these exact (fp16-rounded) weights
The package ships one (`SHIPPED`); `rar-deploy train-demo --out DIR` writes another, the same bytes on a machine
of the same kind and thread count.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rar_deploy.contract.integrity import sha256_of
from rar_deploy.errors import RARDeployError
from rar_deploy.model.checkpoint import load_rar_generator, load_rar_tokenizer
from rar_deploy.model.demo import save_state_dict
from rar_deploy.model.generator import RARGenerator
from rar_deploy.model.tokenizer import VQTokenizer, images_to_uint8
from rar_deploy.outputs import Output, atomic_outputs
from rar_deploy.training.classifier import ShapeClassifier, classify, frechet_distance, train_classifier
from rar_deploy.training.generator_training import held_out_nll, train_generator
from rar_deploy.training.recipe import DemoRecipe
from rar_deploy.training.shapes import make_split
from rar_deploy.training.steps import Progress
from rar_deploy.training.tokenizer_training import encode_images, train_tokenizer

SHIPPED = Path(__file__).resolve().parent / "demo_weights"
GENERATOR_FILE, TOKENIZER_FILE = "rar_demo.fp16.bin", "maskgit-vqgan-demo.fp16.bin"
CLASSIFIER_FILE, RECORD_FILE = "shape_classifier.bin", "demo.json"
TRAIN_COMMAND = "rar-deploy train-demo --out DIR"


def demo_split(recipe: DemoRecipe, split: str) -> tuple[np.ndarray, np.ndarray]:
    per_class = recipe.train_per_class if split == "train" else recipe.held_out_per_class
    return make_split(per_class, recipe.seed, split, recipe.image_size, recipe.supersample)


def rounded_to_fp16(module: nn.Module) -> nn.Module:
    """Every parameter rounded to its fp16 value (kept float32): the model that is shipped, measured from here on."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(param.half().float())
    return module


def unused_rows_zeroed(generator: RARGenerator) -> RARGenerator:
    """The learned-position rows the raster order never reads (the official tables are N + 1024 long) set to 0,
    so that they cost no bytes once compressed and say plainly that they carry nothing."""
    n = generator.config.image_seq_len
    with torch.no_grad():
        generator.pos_embed[:, n + 1:] = 0  # sequence indices 0 .. N
        generator.target_aware_pos_embed[:, n + 2:] = 0  # read at index + 1
        generator.timesteps_embeddings[:, n + 1:] = 0
    return generator


def train_demo(out_dir: Path, recipe: DemoRecipe = DemoRecipe(), force: bool = False,
               progress: Progress | None = None) -> dict:
    """Train the tokenizer, the generator and the classifier; write the folder (all files at once). Returns
    the record written as demo.json."""
    say = progress or (lambda message: None)
    with atomic_outputs([Output(Path(out_dir), force=force, written=demo_files, owner="rar-deploy train-demo")]
                        ) as (tmp,):
        record = _train(recipe, say)
        _write(tmp, *record)
    return record[-1]


def demo_files(path: Path) -> frozenset[str] | None:
    """The files train-demo wrote at `path` (its record lists them), or None when it is not such a folder."""
    try:
        return frozenset([RECORD_FILE, *json.loads((path / RECORD_FILE).read_text())["files"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _train(recipe: DemoRecipe, say: Progress) -> tuple[VQTokenizer, RARGenerator, ShapeClassifier, dict]:
    torch.set_num_threads(recipe.threads)
    times: dict[str, float] = {}
    start = time.perf_counter()

    def lap(name: str) -> None:
        times[name] = round(time.perf_counter() - start - sum(times.values()), 1)

    say(f"making {10 * recipe.train_per_class} training and {10 * recipe.held_out_per_class} held-out images")
    images, labels = demo_split(recipe, "train")
    held_images, held_labels = demo_split(recipe, "held_out")
    lap("data")
    tokenizer = rounded_to_fp16(train_tokenizer(recipe, images, say))
    lap("tokenizer")
    say("encoding the images into tokens")
    tokens, held_tokens = encode_images(tokenizer, images), encode_images(tokenizer, held_images)
    lap("encoding")
    generator = unused_rows_zeroed(rounded_to_fp16(train_generator(recipe, tokens, labels, say)))
    lap("generator")
    say(f"decoding {recipe.classifier_reconstructed} training images for the classifier")
    reconstructed = decode_to_uint8(tokenizer, tokens[::len(tokens) // recipe.classifier_reconstructed])
    classifier = train_classifier(recipe, np.concatenate([images, reconstructed]),
                                  np.concatenate([labels, labels[::len(tokens) // recipe.classifier_reconstructed]]),
                                  say)
    lap("classifier")
    say("measuring on the held-out split")
    measured = held_out_measurements(tokenizer, generator, classifier, held_images, held_labels, held_tokens)
    lap("measuring")
    record = {"recipe": recipe.to_dict(), "command": TRAIN_COMMAND, "seconds": times,
              "total_seconds": round(sum(times.values()), 1), "threads": recipe.threads,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "held_out": measured}
    return tokenizer, generator, classifier, record


@torch.no_grad()
def held_out_measurements(tokenizer: VQTokenizer, generator: RARGenerator, classifier: ShapeClassifier,
                          images: np.ndarray, labels: np.ndarray, tokens: np.ndarray) -> dict:
    """What the weights alone give (no export): the classifier on real and on reconstructed held-out images,
    the reconstructions' error and proxy FID (the tokenizer's ceiling) and the generator's token NLL."""
    reconstructed_uint8 = decode_to_uint8(tokenizer, tokens)
    real_classes, real_features = classify(classifier, images)
    rec_classes, rec_features = classify(classifier, reconstructed_uint8)
    mse = float(((reconstructed_uint8.astype(np.float64) - images) ** 2).mean() / 255 ** 2)
    return {"images": int(len(images)),
            "classifier_accuracy_real": float((real_classes == labels).mean()),
            "classifier_accuracy_reconstructed": float((rec_classes == labels).mean()),
            "reconstruction_mse": mse, "reconstruction_psnr_db": float(10 * np.log10(1 / mse)),
            "proxy_fid_reconstructed": frechet_distance(rec_features, real_features),
            "codes_used": int(len(np.unique(tokens))),
            "token_nll_nats": held_out_nll(generator, tokens, labels)}


def _write(folder: Path, tokenizer: VQTokenizer, generator: RARGenerator, classifier: ShapeClassifier,
           record: dict) -> None:
    for module, name in ((generator.half(), GENERATOR_FILE), (tokenizer.half(), TOKENIZER_FILE),
                         (classifier, CLASSIFIER_FILE)):
        save_state_dict(module, folder / name)
    record["files"] = {name: {"sha256": sha256_of(folder / name), "bytes": (folder / name).stat().st_size}
                       for name in (GENERATOR_FILE, TOKENIZER_FILE, CLASSIFIER_FILE)}
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n")


def read_record(folder: Path = SHIPPED) -> dict:
    """demo.json of a demo weights folder, its files checked against their SHA-256."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        raise RARDeployError(f"{folder} holds no {RECORD_FILE}: pass a folder written by `{TRAIN_COMMAND}`")
    record = json.loads(path.read_text())
    for name, entry in record["files"].items():
        if sha256_of(Path(folder) / name) != entry["sha256"]:
            raise RARDeployError(f"{Path(folder) / name} does not match its SHA-256 in {path}: use a good copy")
    return record


@torch.no_grad()
def decode_to_uint8(tokenizer: VQTokenizer, tokens: np.ndarray, batch: int = 250) -> np.ndarray:
    """Tokens [n, N] -> uint8 images [n, H, W, 3], with the official sampler's truncation."""
    return np.concatenate([images_to_uint8(tokenizer.decode(torch.from_numpy(tokens[i:i + batch]))).numpy()
                           for i in range(0, len(tokens), batch)])


def write_demo_checkpoints(out_dir: str | Path, folder: Path = SHIPPED) -> tuple[Path, Path]:
    """The demo weights as float32 files in the official layouts (`rar_demo.bin`, `maskgit-vqgan-demo.bin`, the
    tokenizer with its encoder), the same bytes every time; their values are the shipped fp16 values exactly."""
    read_record(folder)
    out_dir = Path(out_dir)
    generator = load_rar_generator(Path(folder) / GENERATOR_FILE)
    tokenizer = load_full_tokenizer(Path(folder) / TOKENIZER_FILE)
    return (save_state_dict(generator, out_dir / "rar_demo.bin"),
            save_state_dict(tokenizer, out_dir / "maskgit-vqgan-demo.bin"))


def load_full_tokenizer(path: Path) -> VQTokenizer:
    """A MaskGIT-VQGAN file with its encoder, float32 (the loaders of generation keep the decoder alone)."""
    tokenizer = VQTokenizer(load_rar_tokenizer(path).config)
    tokenizer.load_state_dict({k: v.float() for k, v in torch.load(path, weights_only=True).items()})
    return tokenizer.eval().requires_grad_(False)


def load_classifier(folder: Path = SHIPPED) -> ShapeClassifier:
    model = ShapeClassifier()
    model.load_state_dict(torch.load(Path(folder) / CLASSIFIER_FILE, weights_only=True))
    return model.eval().requires_grad_(False)
