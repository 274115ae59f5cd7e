"""Is a graph or engine file the one the manifest recorded? Size, SHA-256, and a fingerprint cheap enough
for every load.

fingerprint(file) = SHA-256 over the file size as 8 little-endian bytes, then FINGERPRINT_CHUNKS chunks of
FINGERPRINT_CHUNK bytes starting at offsets floor(i * (size - FINGERPRINT_CHUNK) / (FINGERPRINT_CHUNKS - 1)),
i = 0 .. FINGERPRINT_CHUNKS - 1; a file no larger than FINGERPRINT_CHUNKS * FINGERPRINT_CHUNK is hashed
whole after its size. Weights spread over the whole file, so a file from another export of the same
shapes differs in the sampled chunks; only a full SHA-256 (`verify="sha256"`) proves every byte.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rar_deploy.errors import RARDeployError

FINGERPRINT_CHUNKS = 16
FINGERPRINT_CHUNK = 1 << 16
_NAMES = {"fingerprint": "fingerprint", "sha256": "SHA-256"}


def sha256_of(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprint(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        digest.update(size.to_bytes(8, "little"))
        if size <= FINGERPRINT_CHUNKS * FINGERPRINT_CHUNK:
            f.seek(0)
            digest.update(f.read())
        else:
            for i in range(FINGERPRINT_CHUNKS):
                f.seek(i * (size - FINGERPRINT_CHUNK) // (FINGERPRINT_CHUNKS - 1))
                digest.update(f.read(FINGERPRINT_CHUNK))
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    """What the manifest records about one file it lists."""
    return {"size": path.stat().st_size, "sha256": sha256_of(path), "fingerprint": fingerprint(path)}


def check_file(directory: Path, name: str, record: dict, verify: str = "fingerprint") -> Path:
    """Refuse a listed file that is missing, of another size, or (verify: "fingerprint" or "sha256")
    of other content. verify "size" checks existence and size only."""
    path = directory / name
    fix = "export the artifacts again" if not name.startswith("engines/") else "rebuild the engines (rar-build)"
    if not path.is_file():
        raise RARDeployError(f"{path} is missing: {fix}")
    size = path.stat().st_size
    if size != record["size"]:
        raise RARDeployError(f"{path} has {size} bytes, the manifest says {record['size']}: it was truncated or "
                             f"replaced; {fix}")
    for kind, digest in (("fingerprint", fingerprint), ("sha256", sha256_of)):
        if verify == kind and digest(path) != record[kind]:
            raise RARDeployError(f"{path} is not the file this manifest lists (its {_NAMES[kind]} differs): it was "
                                 f"replaced or modified, perhaps from another export; {fix}")
    return path
