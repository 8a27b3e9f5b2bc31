"""The model cache's mechanics, shared by every way a model folder is made (built, converted).

A folder is written into a temporary sibling and renamed into place, so a reader never sees half a
model; a file lock beside it keeps concurrent callers to one build; the manifest (`finllm_model.json`)
records the weights' sha256, which `verify_model` checks, and how the folder was made.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

MANIFEST_NAME = "finllm_model.json"
WEIGHTS_NAME = "model.safetensors"


class ModelBuildError(RuntimeError):
    """A model folder is unusable: a missing or mismatching manifest or weights file."""


def write_into(out_path: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(staging)` on a fresh temporary sibling of `out_path`, then rename it into place."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.build-") as tmp:
        staging = Path(tmp) / "model"
        write(staging)
        _publish(staging, out_path)
    return out_path


def ensure_written(out_path: Path, write: Callable[[Path], None]) -> Path:
    """`out_path`, written first by `write_into` if it holds no manifest; one writer at a time; verified."""
    if not has_manifest(out_path):
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(out_path.parent / f".{out_path.name}.lock"):
            if not has_manifest(out_path):
                write_into(out_path, write)
    verify_model(out_path)
    return out_path


def _publish(staging: Path, out_path: Path) -> None:
    """Rename the finished build into place; if a model already sits there, keep it."""
    try:
        os.rename(staging, out_path)  # replaces an empty folder, fails on a non-empty one
    except OSError:
        if has_manifest(out_path):
            return
        raise ModelBuildError(f"{out_path} exists and holds no {MANIFEST_NAME}") from None


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------- manifest


def write_manifest(model_dir: Path, fields: dict) -> dict:
    """Write `fields` plus the weights file's name and sha256 as the folder's manifest."""
    manifest = {**fields, "weights_file": WEIGHTS_NAME, "weights_sha256": sha256_file(model_dir / WEIGHTS_NAME)}
    (model_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def has_manifest(model_dir: Path) -> bool:
    return (model_dir / MANIFEST_NAME).is_file()


def read_manifest(model_dir: str | os.PathLike) -> dict:
    manifest_path = Path(model_dir) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelBuildError(f"{model_dir} has no {MANIFEST_NAME}")
    return json.loads(manifest_path.read_text())


def verify_model(model_dir: str | os.PathLike) -> None:
    """Raise ModelBuildError unless the weights file matches the manifest's sha256."""
    manifest = read_manifest(model_dir)
    actual = sha256_file(Path(model_dir) / manifest["weights_file"])
    if actual != manifest["weights_sha256"]:
        raise ModelBuildError(f"{model_dir}: weights sha256 {actual} != manifest")


# ---------------------------------------------------------------- fingerprint


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Short stable hash of every weights file and the config (minus the library version)."""
    model_path = Path(model_dir)
    weight_files = sorted(model_path.glob("*.safetensors")) or sorted(model_path.glob("*.bin"))
    if not weight_files:
        raise ModelBuildError(f"{model_dir} holds no weights")
    digest = hashlib.sha256(_canonical_config(model_path).encode())
    for weights_path in weight_files:
        digest.update(weights_path.name.encode())
        digest.update(sha256_file(weights_path).encode())
    return digest.hexdigest()[:16]


def _canonical_config(model_path: Path) -> str:
    config = json.loads((model_path / "config.json").read_text())
    config.pop("transformers_version", None)
    return json.dumps(config, sort_keys=True)


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
