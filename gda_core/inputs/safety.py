"""Untrusted files: size limits, pickle refusal and zip checks. A leaf: it imports nothing
of the project but its error type, so every parser and loader can use it.

Every problem is a :class:`GDAError` with one line saying what is wrong; nothing is ever
unpickled, and zip archives are checked for path tricks and bombs before anything is unpacked.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import GDAError

#: files that can only be read by unpickling, which can run arbitrary code
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy")
MB = 2 ** 20


def one_line(text: object, width: int = 60) -> str:
    """A value quoted for a one-line message: repr'd, newlines escaped, cut to ``width``."""
    shown = repr(text)
    return shown if len(shown) <= width else shown[:width - 3] + "..."


@dataclass(frozen=True)
class UploadLimits:
    """Size limits on uploads. ``max_file_bytes`` defaults to 500 MB (``GDA_MAX_UPLOAD_MB``);
    ``max_unpacked_bytes`` bounds what a zip (or ``.npz``) may unpack to, against zip bombs."""

    max_file_bytes: int = 500 * MB
    max_unpacked_bytes: int = 2000 * MB
    max_entries: int = 200_000
    max_image_pixels: int = 25_000_000

    def __post_init__(self) -> None:
        if min(self.max_file_bytes, self.max_unpacked_bytes, self.max_entries, self.max_image_pixels) < 1:
            raise GDAError("upload limits must be positive")

    @classmethod
    def from_env(cls) -> "UploadLimits":
        """The defaults, or ``GDA_MAX_UPLOAD_MB`` (file) and ``GDA_MAX_UNPACKED_MB`` (zip contents)."""
        def megabytes(name: str, default: int) -> int:
            text = os.environ.get(name)
            try:
                return int(float(text) * MB) if text else default
            except ValueError:
                raise GDAError(f"{name} must be a number of megabytes, got {text!r}") from None

        return cls(max_file_bytes=megabytes("GDA_MAX_UPLOAD_MB", cls.max_file_bytes),
                   max_unpacked_bytes=megabytes("GDA_MAX_UNPACKED_MB", cls.max_unpacked_bytes))


def check_size(size: int, name: str, limits: UploadLimits) -> None:
    if size == 0:
        raise GDAError(f"{name} is empty")
    if size > limits.max_file_bytes:
        raise GDAError(f"{name} is {size / MB:.3g} MB, over the upload limit of "
                       f"{limits.max_file_bytes / MB:.3g} MB (GDA_MAX_UPLOAD_MB)")


def read_upload(path: str | Path, limits: UploadLimits | None = None) -> bytes:
    """The bytes of an uploaded file, refusing empty and oversized files before reading them."""
    path = Path(path)
    limits = limits or UploadLimits.from_env()
    try:
        size = path.stat().st_size
    except OSError:
        raise GDAError(f"{path} does not exist or cannot be read") from None
    if not path.is_file():
        raise GDAError(f"{path} is not a file")
    check_size(size, path.name, limits)
    return path.read_bytes()


def refuse_pickle(name: str) -> None:
    """Pickled files (and ``.npy``, which may hold pickles) are refused by their suffix."""
    suffix = Path(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise GDAError(f"{Path(name).name}: {suffix} files are pickles (or may hold them), which can run code "
                       f"when loaded and are never opened; upload .csv/.npz/.zip data or a .pt2/.safetensors model")


# ---------------------------------------------------------------------------------- zips
def checked_zip(payload: bytes, name: str, limits: UploadLimits) -> zipfile.ZipFile:
    """Open a zip archive after checking every entry's path and the total unpacked size
    (declared sizes are enforced by ``zipfile`` while reading, so they cannot lie)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
        entries = archive.infolist()
    except Exception:  # BadZipFile, NotImplementedError (unknown zip version), OSError, ...: all unusable
        raise GDAError(f"{name} is not a valid zip archive (truncated or corrupt)") from None
    if len(entries) > limits.max_entries:
        raise GDAError(f"{name} has {len(entries)} entries, over the limit of {limits.max_entries}")
    for entry in entries:
        parts = PurePosixPath(entry.filename.replace("\\", "/")).parts
        if entry.filename.startswith(("/", "\\")) or ":" in (parts[0] if parts else "") or ".." in parts:
            raise GDAError(f"{name}: entry {one_line(entry.filename)} has an absolute path or '..'; "
                           f"such archives are refused")
    unpacked = sum(entry.file_size for entry in entries)
    if unpacked > limits.max_unpacked_bytes:
        raise GDAError(f"{name} unpacks to {unpacked / MB:.3g} MB, over the limit of "
                       f"{limits.max_unpacked_bytes / MB:.3g} MB (GDA_MAX_UNPACKED_MB; a zip bomb?)")
    return archive


def read_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, name: str) -> bytes:
    try:
        return archive.read(entry)
    except Exception:  # CRC errors, truncation, unsupported compression, encryption: all corrupt to us
        raise GDAError(f"{name}: entry {one_line(entry.filename)} cannot be read "
                       f"(truncated or corrupt archive)") from None


