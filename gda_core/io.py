"""Atomic file writes (a reader sees the old file or the whole new one, never a part), the
cache folder, and content keys."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .version import __version__


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())


def default_cache_dir() -> Path:
    """The store's folder: ``$GDA_CACHE_DIR``, or ``cache`` in the working directory."""
    return Path(os.environ.get("GDA_CACHE_DIR", "cache"))


def content_key(kind: str, params: dict) -> str:
    """A stable hash of a run's kind, parameters and the package version: the store's key."""
    payload = json.dumps({"kind": kind, "params": params, "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]
