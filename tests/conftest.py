"""Shared fixtures: the official golden data and small models in the official checkpoint format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rar_deploy

DATA = Path(__file__).parent / "data" / "official_tiny"


@pytest.fixture(scope="session")
def official_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "tiny_golden.npz") as npz:
        return dict(npz)


@pytest.fixture(scope="session")
def official_generator():
    return rar_deploy.load_rar_generator(DATA / "tiny_rar.bin")


@pytest.fixture(scope="session")
def official_tokenizer():
    return rar_deploy.load_rar_tokenizer(DATA / "tiny_vq.bin")


@pytest.fixture(scope="session")
def demo_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """A random tiny generator and tokenizer written by make-checkpoint's code path."""
    from rar_deploy.model.demo import make_demo_checkpoints

    return make_demo_checkpoints("tiny", tmp_path_factory.mktemp("demo"), seed=7)


@pytest.fixture(scope="session")
def export_tiny():
    """export_tiny(out, precision, ckpt=None, **request options): the official-tiny fixture (or another
    generator `ckpt` with its tokenizer) exported quietly, batch profile 1..4 unless given."""
    from rar_deploy.export.exporter import ExportRequest, export_artifacts
    from rar_deploy.tools.engine_build import BatchProfile

    def export(out: Path, precision: str, ckpt: Path | None = None, **options) -> Path:
        options = {"engine": False, "profile": BatchProfile(1, 2, 4), **options}
        request = ExportRequest(ckpt=str(ckpt or DATA / "tiny_rar.bin"), tokenizer=str(DATA / "tiny_vq.bin"),
                                out=out, precision=precision, **options)
        export_artifacts(request, progress=lambda message: None)
        return out

    return export


VAR_DATA = Path(__file__).parent / "data" / "official_var_tiny"


@pytest.fixture(scope="session")
def export_var_tiny():
    """export_var_tiny(out, precision, **request options): the official VAR tiny fixture exported quietly."""
    from rar_deploy.export.exporter import ExportRequest, export_artifacts
    from rar_deploy.tools.engine_build import BatchProfile

    def export(out: Path, precision: str, **options) -> Path:
        options = {"engine": False, "profile": BatchProfile(1, 2, 4), **options}
        request = ExportRequest(ckpt=str(VAR_DATA / "var_tiny_var.pth"), tokenizer=str(VAR_DATA / "var_tiny_vae.pth"),
                                out=out, precision=precision, **options)
        export_artifacts(request, progress=lambda message: None)
        return out

    return export


@pytest.fixture(scope="session")
def shared_export(export_tiny, export_var_tiny, tmp_path_factory):
    """shared_export(family, precision): the tiny RAR or VAR fixture exported once per test session (profile 1..4,
    no engine), for tests that only read the folder (a test that edits one copies it first)."""
    made: dict[tuple[str, str], Path] = {}

    def get(family: str, precision: str) -> Path:
        if (family, precision) not in made:
            out = tmp_path_factory.mktemp(f"shared-{family}-{precision}") / "artifacts"
            made[family, precision] = (export_tiny if family == "rar" else export_var_tiny)(out, precision)
        return made[family, precision]

    return get


@pytest.fixture(scope="session")
def parallel_export(export_tiny, tmp_path_factory) -> Path:
    """The official-tiny fixture exported fp32 with decode_block (rar-export --parallel-decoding), once per session."""
    return export_tiny(tmp_path_factory.mktemp("parallel") / "tiny-fp32", "fp32", parallel_decoding=True)
