"""Atomic file writes (a reader sees the old file or the whole new one, never a part), the
cache folder, content keys, file locks and output paths checked before a long run."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import GDAError, first_line
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


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as the bytes of a ``.npy`` file (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as the bytes of an ``.npz`` file (``np.savez``; read back without pickles)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


#: the environment variable naming the cache folder; ``gda --cache DIR`` sets it for its run, so
#: every cache user (the store, cached data and models, spawned workers) resolves the same folder
CACHE_ENV = "GDA_CACHE_DIR"


def default_cache_dir() -> Path:
    """The store's folder: ``$GDA_CACHE_DIR``, or ``cache`` in the working directory."""
    return Path(os.environ.get(CACHE_ENV) or "cache")


def sha256_hex(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def record_checksum(path: str | Path) -> None:
    """Write the SHA-256 of the file at ``path`` beside it (``path.sha256``), for :func:`read_checked`."""
    path = Path(path)
    atomic_write_bytes(_checksum_path(path), sha256_hex(path.read_bytes()).encode())


def write_checksum(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` with its SHA-256 beside it (the checksum first: a crash
    between the two leaves a file that fails the check, never one that passes unchecked)."""
    path = Path(path)
    atomic_write_bytes(_checksum_path(path), sha256_hex(payload).encode())
    atomic_write_bytes(path, payload)


def read_checked(path: str | Path) -> bytes:
    """The bytes of a file written by :func:`write_checksum`, verified; :class:`GDAError` when it,
    or its checksum, is missing or they disagree (a damaged cache entry, to be recomputed)."""
    path = Path(path)
    try:
        payload = path.read_bytes()
        digest = _checksum_path(path).read_text().strip()
    except OSError as error:
        raise GDAError(f"{path.name} or its checksum is unreadable ({error.strerror or first_line(error)})") from None
    if sha256_hex(payload) != digest:
        raise GDAError(f"{path.name} does not match its checksum")
    return payload


@contextmanager
def file_lock(path: str | Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed; POSIX only) while the block
    runs, so a second process waits for the first. Yields False, unlocked, where the lock file
    cannot be made (a read-only cache): the caller then works alone, as it would without one."""
    import fcntl

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(descriptor)  # closing releases the lock


def write_failure(path: str | Path, error: OSError, what: str) -> GDAError:
    """The one line for a file that could not be written."""
    return GDAError(f"cannot write {what} {path}: {error.strerror or first_line(error)}; choose another path")


def check_output_path(path: str | Path, what: str, *, overwrite: bool = True) -> None:
    """Refuse, before a long run, an output path that cannot be written: a folder, one below a
    regular file or in a place that takes no new files (``/proc``), or an existing file
    without ``overwrite``. The folders it needs are made (the write would make them anyway)."""
    path = Path(path)
    if path.is_dir():
        raise GDAError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise GDAError(f"{path} exists; pass --overwrite to replace it or choose another {what}")
    above = next((parent for parent in path.parents if parent.exists()), None)
    if above is not None and not above.is_dir():
        raise GDAError(f"cannot write {what} {path}: {above} is a file, not a folder; choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise write_failure(path, error, what) from None


def write_output(path: str | Path, payload: bytes, what: str) -> Path:
    """:func:`atomic_write_bytes` for a file the user named: a failure is one :class:`GDAError` line."""
    try:
        return atomic_write_bytes(path, payload)
    except OSError as error:
        raise write_failure(path, error, what) from None


#: what a spreadsheet reads as the start of a formula
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A CSV cell a spreadsheet shows as text, never runs: text starting like a formula gets a
    leading ``'`` (plain numbers such as ``-1`` are left as they are; they run nothing)."""
    if not text.startswith(_FORMULA_STARTS):
        return text
    try:
        float(text)
        return text
    except ValueError:
        return "'" + text


def content_key(kind: str, params: dict) -> str:
    """A stable hash of a run's kind, parameters and the package version: the store's key."""
    payload = json.dumps({"kind": kind, "params": params, "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def read_npz(path: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of an ``.npz`` written by :func:`write_npz`, checked against its checksum;
    None when it is missing or damaged (the caller recomputes it)."""
    import zipfile

    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(io.BytesIO(read_checked(path)), allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (GDAError, OSError, ValueError, zipfile.BadZipFile):
        return None


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> bool:
    """Save arrays (no pickles) with their checksum; False where the cache cannot be written
    (read-only, full): that only costs a recomputation later."""
    try:
        write_checksum(path, npz_bytes(arrays))
    except OSError:
        return False
    return True


def packaged_file(package: str, resource: str) -> Path | None:
    """A data file inside an installed package (found without importing the package, which
    may import heavy dependencies), or None when the package or the file is missing."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / resource
    return path if path.is_file() else None
