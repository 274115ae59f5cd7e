"""Export-time verification: the exported folder, run by the runtime's ONNX Runtime backend on the CPU,
against the float32 reference, with every check of rar-parity. The reference record it compares with is
kept in the folder (reference.npz), so that rar-parity can run the same checks on the target."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from rar_deploy.contract.manifest import FLOAT_DTYPES
from rar_deploy.model.generator import RARGenerator
from rar_deploy.model.reference import reference_record, var_reference_record
from rar_deploy.model.tokenizer import VQDecoder
from rar_deploy.model.var import VARVQVAE, VARGenerator
from rar_deploy.runtime import open_pipeline
from rar_deploy.tools.parity import run_parity, save_record

VERIFY_BATCH = 2  # the graphs were traced at batch 2 and must hold at any batch: the per-graph checks run at 1
VERIFY_SEED = 0


def reference_for_export(directory: Path | None, generator: RARGenerator | VARGenerator,
                         tokenizer: VQDecoder | VARVQVAE, precision: str, progress: Callable[[str], None],
                         what: str = "reference record") -> dict:
    """The reference record of the export, written into `directory` (None: kept in memory only); the torch models
    are then no longer needed."""
    progress(f"{what} (float32, batch {VERIFY_BATCH}, seed {VERIFY_SEED})")
    make_record = var_reference_record if isinstance(generator, VARGenerator) else reference_record
    with torch.no_grad():
        record = make_record(generator, tokenizer, FLOAT_DTYPES[precision], VERIFY_BATCH, VERIFY_SEED)
    if directory is not None:
        save_record(record, directory)
    return record


def verify_export(directory: Path, record: dict, progress: Callable[[str], None]) -> dict:
    """The exported folder through the runtime's ONNX Runtime backend on the CPU, against the record."""
    pipeline = open_pipeline(directory, backend="onnxruntime", device="cpu")
    # the per-step condition is checked per graph here; rar-parity also forces every step with it
    return run_parity(pipeline, record, progress=progress, per_step_teacher_forcing=False)
