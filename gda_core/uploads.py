"""Bring your own data and model: parsing, validation, and the one resolver of data and model choices.

A data choice is a built-in name (``digits``) or a path to a ``.csv``, ``.npz`` or ``.zip`` of
image folders; a model choice is a zoo name (``mlp``) or a path to a ``.pt2`` program or a
``.safetensors`` state dict with its ``.json`` config. :func:`load_data_choice` and
:func:`load_model_choice` resolve them for every caller (engine, jobs, sweeps, app), so an
upload works wherever a built-in does.

Uploaded files are untrusted: every problem is a :class:`GDAError` with one line saying what
is wrong, nothing is ever unpickled (``np.load(allow_pickle=False)``, safetensors, and
``torch.export.load`` guarded in :mod:`gda_core.models`), and zip archives are checked for
path tricks and bombs before anything is unpacked. A validated upload is normalised to one
``.npz`` under ``<cache>/uploads/`` named by its content hash, whose path is then the data
choice (that is how the app and the CLI pass an uploaded CSV or image zip to jobs).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .data import BUILTIN_DATASETS, Dataset, DataSplit, load_builtin, split_and_standardise
from .errors import GDAError
from .io import atomic_write_bytes

if TYPE_CHECKING:  # models imports this module; it is only needed for annotations here
    from .models import TrainedModel

DATA_SUFFIXES = (".csv", ".npz", ".zip")
MODEL_SUFFIXES = (".pt2", ".safetensors")
#: files that can only be read by unpickling, which can run arbitrary code
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: more classes than this is a sign of a regression target or an id column, not labels
MAX_CLASSES = 10_000
DEFAULT_IMAGE_SIZE = 28
MB = 2 ** 20


def _one_line(text: object, width: int = 60) -> str:
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
            raise GDAError(f"{name}: entry {_one_line(entry.filename)} has an absolute path or '..'; "
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
        raise GDAError(f"{name}: entry {_one_line(entry.filename)} cannot be read "
                       f"(truncated or corrupt archive)") from None


# --------------------------------------------------------------------------- parsed data
@dataclass
class UploadedData:
    """Validated raw (unstandardised) arrays of an upload, with an optional test part."""

    features: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    name: str = "upload"
    image_shape: tuple[int, ...] | None = None
    test_features: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        parts = [("", self.features, self.labels)]
        if (self.test_features is None) != (self.test_labels is None):
            raise GDAError("a test part needs both test features and test labels")
        if self.test_features is not None:
            parts.append(("test ", self.test_features, self.test_labels))
        for prefix, features, labels in parts:
            if features.ndim != 2:
                raise GDAError(f"{prefix}features must be (rows, features), got shape {features.shape}")
            if len(features) == 0 or features.shape[1] == 0:
                raise GDAError(f"the {prefix or 'training '}data has no rows or no feature columns")
            if len(labels) != len(features):
                raise GDAError(f"{prefix}features have {len(features)} rows but there are {len(labels)} labels")
            if not np.isfinite(features).all():
                raise GDAError(f"{prefix}features contain NaN or infinite values")
        if self.test_features is not None and self.test_features.shape[1] != self.features.shape[1]:
            raise GDAError(f"test features have {self.test_features.shape[1]} columns, training features "
                           f"{self.features.shape[1]}")
        present = np.unique(self.labels)
        if len(present) < 2:
            raise GDAError(f"the data needs at least 2 classes, found {len(present)}")
        if self.image_shape is not None and math.prod(self.image_shape) != self.features.shape[1]:
            raise GDAError(f"image shape {self.image_shape} does not match {self.features.shape[1]} features")

    def fingerprint(self) -> str:
        """A content hash (the normalised file's name), independent of zip timestamps."""
        digest = hashlib.sha256()
        for array in (self.features, self.labels, self.test_features, self.test_labels):
            if array is not None:
                digest.update(str(array.shape).encode())
                digest.update(np.ascontiguousarray(array).tobytes())
        digest.update("\x00".join(self.class_names).encode())
        digest.update(str(self.image_shape).encode())
        return digest.hexdigest()

    def to_npz_bytes(self) -> bytes:
        arrays = {"X": self.features, "y": self.labels, "class_names": np.array(self.class_names, dtype=str),
                  "image_shape": np.array(self.image_shape or (), dtype=np.int64)}
        if self.test_features is not None:
            arrays.update(X_test=self.test_features, y_test=self.test_labels)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def split(self, *, seed: int = 0, test_fraction: float = 0.2) -> DataSplit:
        """Standardised train/test parts: the upload's own test part, or the project's seeded
        stratified split (the same one the built-ins use)."""
        features, labels, rows = self.features, self.labels, None
        if self.test_features is not None:
            features = np.concatenate([self.features, self.test_features])
            labels = np.concatenate([self.labels, self.test_labels])
            rows = (np.arange(len(self.features)), np.arange(len(self.features), len(features)))
        return split_and_standardise(features, labels, self.class_names, name=self.name,
                                     test_fraction=test_fraction, seed=seed, image_shape=self.image_shape,
                                     rows=rows)


def encode_labels(*parts: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """Integer class indices for one or more label arrays, and the class names.

    Whole numbers >= 0 are kept as class indices (so they line up with a model's outputs);
    anything else is treated as class names, numbered in sorted order."""
    cleaned = [np.asarray(part) for part in parts]
    for part in cleaned:
        if part.ndim != 1:
            raise GDAError(f"labels must be one per row (1-d), got shape {part.shape}")
    if all(part.dtype.kind in "biuf" for part in cleaned):
        values = np.concatenate([part.astype(np.float64) for part in cleaned])
        if not np.isfinite(values).all():
            raise GDAError("labels contain NaN or infinite values")
        if (values != np.round(values)).any() or (values < 0).any():
            raise GDAError("numeric labels must be whole numbers >= 0 (class indices); use class names otherwise")
        largest = int(values.max()) if len(values) else 0
        if largest >= MAX_CLASSES:
            raise GDAError(f"labels go up to {largest}; class indices must stay below {MAX_CLASSES}")
        return [part.astype(np.int64) for part in cleaned], [str(c) for c in range(largest + 1)]
    if any(part.dtype.kind not in "biufUS" for part in cleaned):
        raise GDAError(f"labels must be numbers or text, got dtype {cleaned[0].dtype}")
    texts = [part.astype(str) for part in cleaned]
    names = sorted(set(np.concatenate(texts).tolist()))
    if len(names) > MAX_CLASSES:
        raise GDAError(f"{len(names)} distinct labels; at most {MAX_CLASSES} classes are supported")
    index = {name: i for i, name in enumerate(names)}
    return [np.array([index[t] for t in text], dtype=np.int64) for text in texts], names


# ------------------------------------------------------------------------------------ CSV
def _csv_table(payload: bytes, name: str) -> tuple[list[str], list[list[str]]]:
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise GDAError(f"{name} is not UTF-8 text (is it really a CSV file?)") from None
    if "\x00" in text:
        raise GDAError(f"{name} contains NUL bytes (is it really a CSV file?)")
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if any(cell.strip() for cell in row)]
    except csv.Error as error:
        raise GDAError(f"{name} is not valid CSV: {error}") from None
    if not rows:
        raise GDAError(f"{name} has no header row")
    header = [cell.strip() for cell in rows[0]]
    if len(set(header)) != len(header):
        duplicated = next(column for column in header if header.count(column) > 1)
        raise GDAError(f"{name}: column {_one_line(duplicated)} appears twice in the header")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise GDAError(f"{name}: row {number} has {len(row)} fields but the header has {len(header)}")
    if len(rows) < 2:
        raise GDAError(f"{name} has a header but no data rows")
    return header, rows[1:]


def _csv_parts(payload: bytes, name: str, label_column: str,
               split_column: str | None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
    """(feature column names, features, raw labels, is-test mask or None) of one CSV file."""
    header, rows = _csv_table(payload, name)
    if label_column not in header:
        shown = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
        raise GDAError(f"{name} has no label column {_one_line(label_column)} (columns: {_one_line(shown, 80)}); "
                       f"name it with --label-column")
    if split_column is not None and split_column not in header:
        raise GDAError(f"{name} has no split column {_one_line(split_column)}")
    feature_columns = [c for c in header if c not in (label_column, split_column)]
    if not feature_columns:
        raise GDAError(f"{name} has no feature columns besides the label")
    positions = [header.index(c) for c in feature_columns]
    features = np.empty((len(rows), len(positions)), dtype=np.float64)
    for r, row in enumerate(rows):
        for c, position in enumerate(positions):
            try:
                features[r, c] = float(row[position])
            except ValueError:
                raise GDAError(f"{name}: column {_one_line(feature_columns[c])} is not numeric "
                               f"(row {r + 2}: {_one_line(row[position].strip(), 30)})") from None
    bad = ~np.isfinite(features)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise GDAError(f"{name}: column {_one_line(feature_columns[c])} has NaN or infinite values (row {r + 2})")
    raw_labels = [row[header.index(label_column)].strip() for row in rows]
    if any(label == "" for label in raw_labels):
        raise GDAError(f"{name}: label column {_one_line(label_column)} has empty cells")
    try:
        labels = np.array([float(label) for label in raw_labels])
    except ValueError:
        labels = np.array(raw_labels, dtype=str)
    is_test = None
    if split_column is not None:
        values = [row[header.index(split_column)].strip().lower() for row in rows]
        unknown = sorted(set(values) - {"train", "test"})
        if unknown:
            raise GDAError(f"{name}: split column {_one_line(split_column)} must hold 'train' or 'test', "
                           f"found {_one_line(unknown[0], 30)}")
        is_test = np.array([value == "test" for value in values])
        if is_test.all() or not is_test.any():
            raise GDAError(f"{name}: split column {_one_line(split_column)} needs both train and test rows")
    return feature_columns, features, labels, is_test


def parse_csv(payload: bytes, *, label_column: str = "label", split_column: str | None = None,
              test_payload: bytes | None = None, name: str = "data.csv", test_name: str = "test.csv",
              limits: UploadLimits | None = None) -> UploadedData:
    """A CSV of numeric feature columns and a label column; optionally a ``split_column`` of
    train/test or a second CSV (``test_payload``) with the same columns as the test part."""
    limits = limits or UploadLimits.from_env()
    check_size(len(payload), name, limits)
    columns, features, labels, is_test = _csv_parts(payload, name, label_column, split_column)
    test_features = test_labels = None
    if test_payload is not None:
        if is_test is not None:
            raise GDAError("give either a split column or a separate test file, not both")
        check_size(len(test_payload), test_name, limits)
        test_columns, test_features, test_labels, _ = _csv_parts(test_payload, test_name, label_column, None)
        if test_columns != columns:
            raise GDAError(f"{test_name} has columns {_one_line(', '.join(test_columns), 60)}, "
                           f"not the training file's {_one_line(', '.join(columns), 60)}")
    elif is_test is not None:
        features, test_features = features[~is_test], features[is_test]
        labels, test_labels = labels[~is_test], labels[is_test]
    if test_labels is None:
        (labels,), class_names = encode_labels(labels)
    else:
        (labels, test_labels), class_names = encode_labels(labels, test_labels)
    return UploadedData(features, labels, class_names, name=Path(name).stem,
                        test_features=test_features, test_labels=test_labels)


# ------------------------------------------------------------------------------------ NPZ
def _numeric_array(archive, key: str, name: str) -> np.ndarray:
    try:
        array = archive[key]
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise GDAError(f"{name}: array {key} holds pickled objects, which are never loaded; "
                           f"save plain numeric arrays") from None
        raise GDAError(f"{name}: array {key} cannot be read ({_one_line(str(error), 60)})") from None
    except Exception:
        raise GDAError(f"{name}: array {key} cannot be read (truncated or corrupt)") from None
    return array


def parse_npz(payload: bytes, *, name: str = "data.npz", limits: UploadLimits | None = None) -> UploadedData:
    """An ``.npz`` with ``X`` (rows x features, or rows x height x width images) and ``y``,
    optionally ``X_test``/``y_test``; ``class_names`` and ``image_shape`` are kept when present
    (the normalised form written by :func:`store_upload`)."""
    limits = limits or UploadLimits.from_env()
    check_size(len(payload), name, limits)
    checked_zip(payload, name, limits)  # an .npz is a zip: refuse bombs before numpy unpacks it
    try:
        archive = np.load(io.BytesIO(payload), allow_pickle=False)
    except Exception:
        raise GDAError(f"{name} is not a valid .npz archive") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise GDAError(f"{name} is a single array, not an .npz archive with X and y")
    with archive:
        keys = set(archive.files)
        if not {"X", "y"} <= keys:
            raise GDAError(f"{name} needs arrays X and y; found: {_one_line(', '.join(sorted(keys)) or 'none', 60)}")
        if ("X_test" in keys) != ("y_test" in keys):
            raise GDAError(f"{name} has only one of X_test and y_test; give both or neither")
        arrays = {key: _numeric_array(archive, key, name) for key in sorted(keys)
                  if key in ("X", "y", "X_test", "y_test", "class_names", "image_shape")}
    image_shape = None
    if arrays["X"].ndim == 3:
        image_shape = tuple(int(s) for s in arrays["X"].shape[1:])
    elif "image_shape" in arrays and arrays["image_shape"].size:
        image_shape = tuple(int(s) for s in np.asarray(arrays["image_shape"]).ravel())

    def features(key: str) -> np.ndarray:
        array = arrays[key]
        if array.dtype.kind not in "biuf":
            raise GDAError(f"{name}: {key} must be numeric, got dtype {array.dtype}")
        if len(array) == 0:
            raise GDAError(f"{name}: {key} has no rows")
        if array.ndim == 3:
            array = array.reshape(len(array), -1)
        if array.ndim != 2:
            raise GDAError(f"{name}: {key} must be (rows, features) or (rows, height, width), got shape {array.shape}")
        return array.astype(np.float64)

    train_features = features("X")
    test_features = features("X_test") if "X_test" in arrays else None
    if image_shape is not None and (len(image_shape) != 2 or min(image_shape) < 1
                                    or image_shape[0] * image_shape[1] != train_features.shape[1]):
        raise GDAError(f"{name}: image_shape must be (height, width), two positive sizes whose product is the "
                       f"{train_features.shape[1]} features, got {_one_line(image_shape, 40)}")
    parts = [arrays["y"]] + ([arrays["y_test"]] if test_features is not None else [])
    encoded, class_names = encode_labels(*parts)
    if "class_names" in arrays:
        stored = [str(c) for c in np.asarray(arrays["class_names"]).ravel()]
        if len(stored) < len(class_names):
            raise GDAError(f"{name}: {len(stored)} class names for labels up to {len(class_names) - 1}")
        class_names = stored
    return UploadedData(train_features, encoded[0], class_names, name=Path(name).stem, image_shape=image_shape,
                        test_features=test_features, test_labels=encoded[1] if test_features is not None else None)


# ------------------------------------------------------------------------------ image zip
def parse_image_zip(payload: bytes, *, image_size: int = DEFAULT_IMAGE_SIZE, name: str = "images.zip",
                    limits: UploadLimits | None = None) -> UploadedData:
    """A zip with one folder per class of PNG/JPEG images, turned grey and resized to
    ``image_size`` x ``image_size`` with pixel values in [0, 1]. One enclosing folder (what
    zipping a folder gives) is looked through; hidden files and ``__MACOSX`` are skipped."""
    from PIL import Image

    limits = limits or UploadLimits.from_env()
    if not 2 <= image_size <= 512:
        raise GDAError(f"image size must lie in 2..512 pixels, got {image_size}")
    check_size(len(payload), name, limits)
    archive = checked_zip(payload, name, limits)
    entries = []
    for entry in archive.infolist():
        parts = PurePosixPath(entry.filename.replace("\\", "/")).parts
        if entry.is_dir() or not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue
        if PurePosixPath(parts[-1]).suffix.lower() in IMAGE_SUFFIXES:
            entries.append((parts, entry))
    if not entries:
        raise GDAError(f"{name} holds no PNG or JPEG images (expected one folder per class)")
    tops = {parts[0] for parts, _ in entries}
    if len(tops) == 1 and all(len(parts) >= 3 for parts, _ in entries):
        entries = [(parts[1:], entry) for parts, entry in entries]  # look through one enclosing folder
    loose = [parts for parts, _ in entries if len(parts) < 2]
    if loose:
        raise GDAError(f"{name}: image {_one_line('/'.join(loose[0]))} is not inside a class folder")
    entries.sort(key=lambda item: item[0])
    class_names = sorted({parts[0] for parts, _ in entries})
    if len(class_names) < 2:
        raise GDAError(f"{name}: the data needs at least 2 classes, found 1 class folder")
    # Tiny images resized up could fill memory: the pixel array counts against the unpacked limit.
    pixel_bytes = len(entries) * image_size * image_size * 8
    if pixel_bytes > limits.max_unpacked_bytes:
        raise GDAError(f"{name}: {len(entries)} images at {image_size}x{image_size} take {pixel_bytes / MB:.3g} MB, "
                       f"over the limit of {limits.max_unpacked_bytes / MB:.3g} MB; choose a smaller image size")
    pixels = np.empty((len(entries), image_size * image_size), dtype=np.float64)
    labels = np.empty(len(entries), dtype=np.int64)
    for row, (parts, entry) in enumerate(entries):
        shown = _one_line("/".join(parts))
        data = read_entry(archive, entry, name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
                    if image.width * image.height > limits.max_image_pixels:
                        raise GDAError(f"{name}: image {shown} has {image.width}x{image.height} pixels, "
                                       f"over the limit of {limits.max_image_pixels}")
                    grey = image.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
        except GDAError:
            raise
        except Exception:
            raise GDAError(f"{name}: image {shown} cannot be decoded (not a valid PNG or JPEG)") from None
        pixels[row] = np.asarray(grey, dtype=np.float64).ravel() / 255.0
        labels[row] = class_names.index(parts[0])
    return UploadedData(pixels, labels, class_names, name=Path(name).stem, image_shape=(image_size, image_size))


# ------------------------------------------------------------------------ one entry point
@dataclass(frozen=True)
class DataOptions:
    """How to read a data file: the CSV's label (and optional split) column, a separate test
    CSV, and the size images are resized to."""

    label_column: str = "label"
    split_column: str | None = None
    test_path: str | None = None
    image_size: int = DEFAULT_IMAGE_SIZE


def parse_data(payload: bytes, name: str, options: DataOptions = DataOptions(),
               limits: UploadLimits | None = None, test_payload: bytes | None = None) -> UploadedData:
    """Parse an uploaded data file by its suffix (``.csv``, ``.npz``, ``.zip``); every reason
    names the file."""
    try:
        return _parse_data(payload, name, options, limits or UploadLimits.from_env(), test_payload)
    except GDAError as error:
        shown = Path(name).name
        raise (error if str(error).startswith(shown) else GDAError(f"{shown}: {error}")) from None


def _parse_data(payload: bytes, name: str, options: DataOptions, limits: UploadLimits,
                test_payload: bytes | None) -> UploadedData:
    refuse_pickle(name)
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        return parse_csv(payload, label_column=options.label_column, split_column=options.split_column,
                         test_payload=test_payload, name=Path(name).name,
                         test_name=Path(options.test_path or "test.csv").name, limits=limits)
    if test_payload is not None:
        raise GDAError("a separate test file is only read for CSV data; put X_test/y_test in the .npz")
    if suffix == ".npz":
        return parse_npz(payload, name=Path(name).name, limits=limits)
    if suffix == ".zip":
        return parse_image_zip(payload, image_size=options.image_size, name=Path(name).name, limits=limits)
    raise GDAError(f"unsupported data file type {_one_line(suffix or Path(name).name, 20)}; "
                   f"use one of: {', '.join(DATA_SUFFIXES)}")


def parse_data_file(path: str | Path, options: DataOptions = DataOptions(),
                    limits: UploadLimits | None = None) -> UploadedData:
    limits = limits or UploadLimits.from_env()
    refuse_pickle(str(path))
    test_payload = read_upload(options.test_path, limits) if options.test_path else None
    return parse_data(read_upload(path, limits), str(path), options, limits, test_payload)


def uploads_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "uploads"


def store_upload(data: UploadedData, cache_dir: str | Path) -> Path:
    """Write the normalised ``.npz`` to ``<cache>/uploads/<sha256>.npz`` (atomically; an
    identical upload reuses the file) and return its path: the data choice for jobs."""
    path = uploads_dir(cache_dir) / f"{data.fingerprint()}.npz"
    if not path.is_file():
        atomic_write_bytes(path, data.to_npz_bytes())
    return path.resolve()


def store_model_upload(files: dict[str, bytes], cache_dir: str | Path) -> Path:
    """Keep an uploaded model under ``<cache>/uploads/<sha256>.pt2`` (or ``.safetensors`` with
    ``.json`` beside it) and return the path of the model file: the model choice for jobs.
    ``files`` maps file names to their bytes: one ``.pt2``, or one ``.safetensors`` and one ``.json``."""
    for file_name in files:
        refuse_pickle(file_name)
    by_suffix = {Path(n).suffix.lower(): payload for n, payload in files.items()}
    unknown = set(by_suffix) - {".pt2", ".safetensors", ".json"}
    if unknown or len(by_suffix) != len(files):
        raise GDAError("upload one .pt2 file, or one .safetensors file with its .json config")
    if ".pt2" in by_suffix:
        if len(files) != 1:
            raise GDAError("a .pt2 program is uploaded on its own (no .safetensors or .json with it)")
        digest = hashlib.sha256(by_suffix[".pt2"]).hexdigest()
        path = uploads_dir(cache_dir) / f"{digest}.pt2"
        atomic_write_bytes(path, by_suffix[".pt2"])
        return path.resolve()
    if set(by_suffix) != {".safetensors", ".json"}:
        raise GDAError("a .safetensors state dict needs its .json config uploaded with it")
    digest = hashlib.sha256(by_suffix[".safetensors"] + b"\x00" + by_suffix[".json"]).hexdigest()
    folder = uploads_dir(cache_dir)
    atomic_write_bytes(folder / f"{digest}.safetensors", by_suffix[".safetensors"])
    atomic_write_bytes(folder / f"{digest}.json", by_suffix[".json"])  # config last, as save_model does
    return (folder / f"{digest}.safetensors").resolve()


def prepare_data_choice(choice: str, options: DataOptions, cache_dir: str | Path) -> str:
    """The data choice jobs should get: a built-in name as it is; a data file parsed with
    ``options`` (a CSV's label column, image size), validated, and stored normalised."""
    if choice in BUILTIN_DATASETS:
        return choice
    check_data_choice(choice)
    return str(store_upload(parse_data_file(choice, options), cache_dir))


def accept_data_upload(name: str, payload: bytes, cache_dir: str | Path, options: DataOptions = DataOptions(),
                       test_payload: bytes | None = None) -> str:
    """An uploaded file's bytes (the app's path), validated and stored normalised: the data choice."""
    return str(store_upload(parse_data(payload, name, options, test_payload=test_payload), cache_dir))


def accept_model_upload(files: dict[str, bytes], train: Dataset, cache_dir: str | Path) -> str:
    """Uploaded model files, stored and loaded once against the training data (so a model
    that does not fit is refused at upload): the model choice."""
    path = store_model_upload(files, cache_dir)
    try:
        load_model_choice(str(path), train, cache_dir)
    except GDAError as error:  # name the files as the user knows them, not by their hash
        stored = {path.name: next(n for n in files if n.lower().endswith(path.suffix)),
                  path.with_suffix(".json").name: next((n for n in files if n.lower().endswith(".json")), "")}
        message = str(error)
        for hashed, original in stored.items():
            message = message.replace(hashed, original) if original else message
        raise GDAError(message) from None
    return str(path)


def prepare_model_choice(choice: str) -> str:
    """A zoo name as it is; a model file as an absolute path (jobs may run elsewhere)."""
    check_model_choice(choice)
    return choice if is_zoo_model(choice) else str(Path(choice).resolve())


# ------------------------------------------------------------------------ choice resolver
def _is_path_choice(choice: str) -> bool:
    return "/" in choice or "\\" in choice or Path(choice).suffix != ""


def _check_choice(choice: str, kind: str, names, suffixes, use: str) -> None:
    """A registered name, or an existing file with a supported suffix; one line otherwise."""
    if not isinstance(choice, str):
        raise GDAError(f"the {kind} choice must be a name or a path, got {_one_line(choice)}")
    if choice in names:
        return
    if not _is_path_choice(choice):
        raise GDAError(f"unknown {'data set' if kind == 'data' else kind} {choice!r}; choose from: "
                       f"{', '.join(names)}, or give a path to a {', '.join(suffixes[:-1])} or {suffixes[-1]} file")
    refuse_pickle(choice)
    if Path(choice).suffix.lower() not in suffixes:
        raise GDAError(f"unsupported {kind} file type {_one_line(Path(choice).suffix, 20)}; use {use}")
    if not Path(choice).is_file():
        raise GDAError(f"{kind} file {choice} does not exist")


def check_data_choice(choice: str) -> None:
    """A built-in name, or an existing data file with a supported suffix; one line otherwise."""
    _check_choice(choice, "data", BUILTIN_DATASETS, DATA_SUFFIXES, f"one of: {', '.join(DATA_SUFFIXES)}")


def check_model_choice(choice: str) -> None:
    """A zoo name, or an existing model file with a supported suffix; one line otherwise."""
    from .models import ARCHITECTURES

    _check_choice(choice, "model", ARCHITECTURES, MODEL_SUFFIXES,
                  "a .pt2 program or a .safetensors state dict with its .json config")


def is_builtin_data(choice: str) -> bool:
    return choice in BUILTIN_DATASETS


def is_zoo_model(choice: str) -> bool:
    from .models import ARCHITECTURES

    return choice in ARCHITECTURES


def load_data_choice(choice: str, *, seed: int = 0, options: DataOptions = DataOptions()) -> DataSplit:
    """The split of a built-in data set or of a data file (CSV read with ``options``)."""
    check_data_choice(choice)
    if choice in BUILTIN_DATASETS:
        return load_builtin(choice, seed=seed)
    return parse_data_file(choice, options).split(seed=seed)


def load_model_choice(choice: str, train: Dataset, cache_dir: str | Path, *, seed: int = 0,
                      device: torch.device | str = "cpu",
                      progress: Callable[[float], None] | None = None) -> TrainedModel:
    """A zoo name trains (or loads the cached) demo model on ``train``; a path loads the
    uploaded model and checks that it fits the data (features in, classes out)."""
    from .models import check_model_fits, demo_model, load_model_file

    check_model_choice(choice)
    if is_zoo_model(choice):
        return demo_model(choice, train, cache_dir, seed=seed, device=device, progress=progress)
    model = load_model_file(choice, device=device, limits=UploadLimits.from_env())
    try:
        check_model_fits(model, train)
    except GDAError as error:
        raise GDAError(f"{Path(choice).name}: {error}") from None
    return model


# ----------------------------------------------------------------------- example files
EXAMPLE_FILES = ("wine.csv", "wine.npz", "digits-images.zip", "wine-logreg.safetensors", "wine-logreg.json",
                 "wine-logreg.pt2")
FORMATS_HELP = (
    "**Data**: a CSV of numeric feature columns plus a label column (name it; optionally a `split` column "
    "of train/test), an `.npz` with `X` (rows x features, or rows x height x width) and `y` (optionally "
    "`X_test`, `y_test`), or a zip with one folder of PNG/JPEG images per class (turned grey and resized). "
    "Without a test part the data is split 80/20, stratified and seeded. "
    "**Model**: a `torch.export` program (`.pt2`, exported with a dynamic batch dimension, "
    "`torch.export.Dim`), or a `.safetensors` state dict of a zoo model with its `.json` config "
    "(`arch`, `n_features`, `n_classes`, `hidden`, ...). Pickles (`.pkl`, `.pt`, `.pth`) are refused. "
    "Files up to 500 MB (`GDA_MAX_UPLOAD_MB`).")


def example_files() -> dict[str, bytes]:
    """Small valid files of every upload format, for the app's downloads and the README:
    a CSV and an NPZ of wine, a zip of digit images, and a logistic regression trained on
    wine as ``.safetensors`` + ``.json`` and as a ``.pt2`` program."""
    from PIL import Image

    from .models import default_train_config, export_program, model_config_for, train_model, weights_files

    features, labels, class_names, _ = BUILTIN_DATASETS["wine"]()
    header = [f"f{i}" for i in range(features.shape[1])] + ["label"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for row, label in zip(features, labels):
        writer.writerow([f"{value:g}" for value in row] + [int(label)])
    buffer = io.BytesIO()
    np.savez(buffer, X=features, y=labels)
    files = {"wine.csv": text.getvalue().encode(), "wine.npz": buffer.getvalue()}

    digits, digit_labels, digit_names, shape = BUILTIN_DATASETS["digits"]()
    archive_buffer = io.BytesIO()
    with zipfile.ZipFile(archive_buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(200):
            image = Image.fromarray((digits[index].reshape(shape) * 15).astype(np.uint8), mode="L")
            png = io.BytesIO()
            image.save(png, format="PNG")
            archive.writestr(f"digits/{digit_names[digit_labels[index]]}/{index:04d}.png", png.getvalue())
    files["digits-images.zip"] = archive_buffer.getvalue()

    split = UploadedData(features.astype(np.float64), labels.astype(np.int64), class_names, name="wine").split()
    trained = train_model(model_config_for("logreg", split.train), split.train, default_train_config("logreg"))
    weights, config = weights_files(trained)
    files["wine-logreg.safetensors"], files["wine-logreg.json"] = weights, config
    files["wine-logreg.pt2"] = export_program(trained.module, split.train.n_features)
    assert tuple(files) == EXAMPLE_FILES
    return files
