"""Parsers of uploaded data: CSV, NPZ and zips of image folders, each to validated raw arrays
(:class:`UploadedData`), which split and standardise like the built-in sets."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import GDAError
from ..io import npz_bytes
from ..task import TASKS
from .datasets import DataSplit, image_shape_of, split_and_standardise
from .safety import MB, UploadLimits, check_size, checked_zip, one_line, read_entry, read_upload, refuse_pickle

DATA_SUFFIXES = (".csv", ".npz", ".zip")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: more classes than this is a sign of a regression target or an id column, not labels
MAX_CLASSES = 10_000
DEFAULT_IMAGE_SIZE = 28
#: text data: sentences are cut at this many tokens unless --max-length says otherwise
DEFAULT_MAX_LENGTH = 128
#: PIL modes without colour: a zip of only these is read as one grey channel
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


# --------------------------------------------------------------------------- parsed data
@dataclass
class UploadedData:
    """Validated raw (unstandardised) arrays of an upload, with an optional test part.

    As in :class:`Dataset`, empty ``class_names`` mean the labels are regression targets."""

    features: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    name: str = "upload"
    image_shape: tuple[int, ...] | None = None
    test_features: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    #: text data: one sentence per row (features then have no columns), and the tokenizer's cap
    texts: np.ndarray | None = None
    test_texts: np.ndarray | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.image_shape is not None:
            self.image_shape = image_shape_of(self.image_shape)
        if self.texts is not None:
            self._check_texts()
            return
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
        if not self.class_names:
            regression_targets(*(labels for _, _, labels in parts))
            return
        present = np.unique(self.labels)
        if len(present) < 2:
            raise GDAError(f"the data needs at least 2 classes, found {len(present)}")
        if self.image_shape is not None and math.prod(self.image_shape) != self.features.shape[1]:
            raise GDAError(f"image shape {self.image_shape} does not match {self.features.shape[1]} features")

    def _check_texts(self) -> None:
        """Text data: a sentence and a label per row, a max length, at least 2 classes."""
        if not 2 <= int(self.max_length or 0) <= 100_000:
            raise GDAError(f"the max length of text data must lie in 2..100000 tokens, got {self.max_length}")
        if (self.test_texts is None) != (self.test_labels is None):
            raise GDAError("a test part of text data needs both test texts and test labels")
        for prefix, texts, labels in [("", self.texts, self.labels), ("test ", self.test_texts, self.test_labels)]:
            if texts is None:
                continue
            if len(texts) == 0:
                raise GDAError(f"the {prefix or 'training '}data has no rows")
            if len(labels) != len(texts):
                raise GDAError(f"{prefix}texts have {len(texts)} rows but there are {len(labels)} labels")
        self.features = np.zeros((len(self.texts), 0))
        self.test_features = None if self.test_texts is None else np.zeros((len(self.test_texts), 0))
        if self.class_names and len(np.unique(self.labels)) < 2:
            raise GDAError(f"the data needs at least 2 classes, found {len(np.unique(self.labels))}")

    def fingerprint(self) -> str:
        """A content hash (the normalised file's name), independent of zip timestamps."""
        digest = hashlib.sha256()
        for array in (self.features, self.labels, self.test_features, self.test_labels):
            if array is not None:
                digest.update(str(array.shape).encode())
                digest.update(np.ascontiguousarray(array).tobytes())
        for texts in (self.texts, self.test_texts):
            if texts is not None:
                digest.update(f"{self.max_length}\x00".encode() + "\x00".join(texts).encode())
        digest.update("\x00".join(self.class_names).encode())
        digest.update(str(self.image_shape).encode())
        return digest.hexdigest()

    @property
    def task_name(self) -> str:
        return "classification" if self.class_names else "regression"

    def to_grey(self) -> UploadedData:
        """The same images in grey (ITU-R 601 luma, as PIL's ``convert("L")``); grey images as
        they are. Refused on tabular data, which has no colour to drop."""
        if self.image_shape is None:
            raise GDAError("--grey applies to image data (a zip of images, or an .npz with image axes); "
                           "this data is tabular")
        channels, height, width = self.image_shape
        if channels == 1:
            return self
        if channels != 3:
            raise GDAError(f"--grey turns RGB (3-channel) images grey; these images have {channels} channels")

        def luma(features: np.ndarray | None) -> np.ndarray | None:
            if features is None:
                return None
            red, green, blue = features.reshape(len(features), 3, height * width).transpose(1, 0, 2)
            return 0.299 * red + 0.587 * green + 0.114 * blue

        return dataclasses.replace(self, features=luma(self.features), test_features=luma(self.test_features),
                                   image_shape=(1, height, width))

    def to_npz_bytes(self) -> bytes:
        arrays = {"X": self.features, "y": self.labels, "class_names": np.array(self.class_names, dtype=str),
                  "image_shape": np.array(self.image_shape or (), dtype=np.int64), "task": np.array(self.task_name)}
        if self.test_features is not None:
            arrays.update(X_test=self.test_features, y_test=self.test_labels)
        if self.texts is not None:  # unicode arrays: no pickles, allow_pickle=False reads them
            arrays.update(texts=np.array(self.texts, dtype=str), max_length=np.array(self.max_length))
            if self.test_texts is not None:
                arrays.update(texts_test=np.array(self.test_texts, dtype=str))
        return npz_bytes(arrays)

    def split(self, *, seed: int = 0, test_fraction: float = 0.2) -> DataSplit:
        """Standardised train/test parts: the upload's own test part, or the project's seeded
        stratified split (the same one the built-ins use)."""
        features, labels, rows, texts = self.features, self.labels, None, self.texts
        if self.test_features is not None:
            features = np.concatenate([self.features, self.test_features])
            labels = np.concatenate([self.labels, self.test_labels])
            rows = (np.arange(len(self.features)), np.arange(len(self.features), len(features)))
            if texts is not None:
                texts = np.concatenate([np.asarray(self.texts, dtype=object), np.asarray(self.test_texts, dtype=object)])
        return split_and_standardise(features, labels, self.class_names, name=self.name,
                                     test_fraction=test_fraction, seed=seed, image_shape=self.image_shape,
                                     rows=rows, texts=texts, max_length=self.max_length)


#: sizes a channel axis of image arrays can have: grey, RGB
CHANNEL_COUNTS = (1, 3)
LAYOUTS = ("NCHW", "NHWC")


def _image_layout(shape: tuple[int, ...], declared: str | None, name: str) -> str:
    """Whether a 4-d image array is channels first (``NCHW``) or last (``NHWC``): the
    ``layout`` the file declares, else the one axis of size 1 or 3 next to the rows or at the
    end; an array where both (or neither) could be channels is refused."""
    if declared is not None:
        if declared not in LAYOUTS:
            raise GDAError(f"{name}: layout must be one of {', '.join(LAYOUTS)}, got {one_line(declared, 20)}")
        channels = shape[1] if declared == "NCHW" else shape[3]
        if channels not in CHANNEL_COUNTS:
            raise GDAError(f"{name}: a {declared} array of shape {shape} has {channels} channels; images have "
                           f"1 (grey) or 3 (RGB)")
        return declared
    first, last = shape[1] in CHANNEL_COUNTS, shape[3] in CHANNEL_COUNTS
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    if first and last:
        raise GDAError(f"{name}: X of shape {shape} could be channels first or last; add an array "
                       f"layout='NCHW' or 'NHWC' to say which")
    raise GDAError(f"{name}: a 4-d X is images (rows, channels, height, width) or (rows, height, width, "
                   f"channels) with 1 or 3 channels, got shape {shape}")


def encode_targets(task: str, *parts: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """The labels of ``task``: class indices and class names, or regression targets and no names."""
    if task == "regression":
        return regression_targets(*parts), []
    return encode_labels(*parts)


def regression_targets(*parts: np.ndarray) -> list[np.ndarray]:
    """Real-valued targets (one per row, numeric and finite) as float64 arrays."""
    cleaned = [np.asarray(part) for part in parts]
    for part in cleaned:
        if part.ndim != 1:
            raise GDAError(f"targets must be one per row (1-d), got shape {part.shape}")
        if part.dtype.kind not in "biuf":
            example = next((str(v) for v in part.ravel() if not _is_number(v)), str(part.ravel()[:1]))
            raise GDAError(f"a regression target must be numeric, found {one_line(example, 30)}; "
                           f"use --task classification for class labels")
        if not np.isfinite(part.astype(np.float64)).all():
            raise GDAError("regression targets contain NaN or infinite values")
    return [part.astype(np.float64) for part in cleaned]


def _is_number(value: object) -> bool:
    try:
        _number(value)
    except (TypeError, ValueError):
        return False
    return True


def _number(text: object) -> float:
    """A CSV cell as a number. Python's ``float`` reads ``14_0`` as 140; a data file means no
    such thing, so an underscore makes the cell text."""
    if isinstance(text, str) and "_" in text:
        raise ValueError(f"not a number: {text!r}")
    return float(text)  # type: ignore[arg-type]


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
            raise GDAError("numeric labels must be whole numbers >= 0 (class indices); use class names "
                           "otherwise, or --task regression for a numeric target")
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
        duplicated = next(column for column, count in Counter(header).items() if count > 1)
        raise GDAError(f"{name}: column {one_line(duplicated)} appears twice in the header")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise GDAError(f"{name}: row {number} has {len(row)} fields but the header has {len(header)}")
    if len(rows) < 2:
        raise GDAError(f"{name} has a header but no data rows")
    return header, rows[1:]


def _csv_parts(payload: bytes, name: str, label_column: str, split_column: str | None,
               text_column: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
    """(feature column names, features, raw labels, is-test mask or None) of one CSV file; with
    a ``text_column`` the features are that column's sentences (the other columns are not read)."""
    header, rows = _csv_table(payload, name)
    shown = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
    if label_column not in header:
        raise GDAError(f"{name} has no label column {one_line(label_column)} (columns: {one_line(shown, 80)}); "
                       f"name it with --label-column")
    if split_column is not None and split_column not in header:
        raise GDAError(f"{name} has no split column {one_line(split_column)}")
    if text_column is not None and text_column not in header:
        raise GDAError(f"{name} has no text column {one_line(text_column)} (columns: {one_line(shown, 80)}); "
                       f"name it with --text-column")
    if text_column is not None and text_column in (label_column, split_column):
        raise GDAError(f"{name}: the text column {one_line(text_column)} cannot also be the label or split column")
    where = {column: position for position, column in enumerate(header)}
    if text_column is not None:
        feature_columns = [text_column]
        texts = [row[where[text_column]].strip() for row in rows]
        empty = next((r for r, text in enumerate(texts) if not text), None)
        if empty is not None:
            raise GDAError(f"{name}: text column {one_line(text_column)} is empty in row {empty + 2}")
        features = np.array(texts, dtype=object)[:, None]
        return (feature_columns, features, *_csv_labels_split(rows, where, name, label_column, split_column))
    feature_columns = [c for c in header if c not in (label_column, split_column)]
    if not feature_columns:
        raise GDAError(f"{name} has no feature columns besides the label")
    # One pass over the header: header.index per column was quadratic in the column count.
    positions = [where[c] for c in feature_columns]
    features = np.empty((len(rows), len(positions)), dtype=np.float64)
    for r, row in enumerate(rows):
        for c, position in enumerate(positions):
            try:
                features[r, c] = _number(row[position])
            except ValueError:
                raise GDAError(f"{name}: column {one_line(feature_columns[c])} is not numeric "
                               f"(row {r + 2}: {one_line(row[position].strip(), 30)})") from None
    bad = ~np.isfinite(features)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise GDAError(f"{name}: column {one_line(feature_columns[c])} has NaN or infinite values (row {r + 2})")
    return (feature_columns, features, *_csv_labels_split(rows, where, name, label_column, split_column))


def _csv_labels_split(rows: list[list[str]], where: dict[str, int], name: str, label_column: str,
                      split_column: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(raw labels, is-test mask or None) of a CSV's rows."""
    raw_labels = [row[where[label_column]].strip() for row in rows]
    if any(label == "" for label in raw_labels):
        raise GDAError(f"{name}: label column {one_line(label_column)} has empty cells")
    try:
        labels = np.array([_number(label) for label in raw_labels])
    except ValueError:
        labels = np.array(raw_labels, dtype=str)
    is_test = None
    if split_column is not None:
        values = [row[where[split_column]].strip().lower() for row in rows]
        unknown = sorted(set(values) - {"train", "test"})
        if unknown:
            raise GDAError(f"{name}: split column {one_line(split_column)} must hold 'train' or 'test', "
                           f"found {one_line(unknown[0], 30)}")
        is_test = np.array([value == "test" for value in values])
        if is_test.all() or not is_test.any():
            raise GDAError(f"{name}: split column {one_line(split_column)} needs both train and test rows")
    return labels, is_test


def parse_csv(payload: bytes, *, label_column: str = "label", split_column: str | None = None,
              test_payload: bytes | None = None, name: str = "data.csv", test_name: str = "test.csv",
              limits: UploadLimits | None = None, task: str = "classification", text_column: str | None = None,
              max_length: int = DEFAULT_MAX_LENGTH) -> UploadedData:
    """A CSV of numeric feature columns and a label column (class labels, or a numeric target
    for ``task="regression"``); optionally a ``split_column`` of train/test or a second CSV
    (``test_payload``) with the same columns as the test part. With a ``text_column`` the
    data is that column's sentences (for a text model, tokenised at most ``max_length``
    tokens long), and the other columns besides label and split are not read."""
    limits = limits or UploadLimits.from_env()
    check_size(len(payload), name, limits)
    columns, features, labels, is_test = _csv_parts(payload, name, label_column, split_column, text_column)
    test_features = test_labels = None
    if test_payload is not None:
        if is_test is not None:
            raise GDAError("give either a split column or a separate test file, not both")
        check_size(len(test_payload), test_name, limits)
        test_columns, test_features, test_labels, _ = _csv_parts(test_payload, test_name, label_column, None,
                                                                 text_column)
        if test_columns != columns and text_column is None:
            raise GDAError(f"{test_name} has columns {one_line(', '.join(test_columns), 60)}, "
                           f"not the training file's {one_line(', '.join(columns), 60)}")
    elif is_test is not None:
        features, test_features = features[~is_test], features[is_test]
        labels, test_labels = labels[~is_test], labels[is_test]
    if test_labels is None:
        (labels,), class_names = encode_targets(task, labels)
    else:
        (labels, test_labels), class_names = encode_targets(task, labels, test_labels)
    if text_column is not None:
        return UploadedData(features[:, :0].astype(np.float64), labels, class_names, name=Path(name).stem,
                            test_labels=test_labels, texts=features[:, 0],
                            test_texts=None if test_features is None else test_features[:, 0], max_length=max_length)
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
        raise GDAError(f"{name}: array {key} cannot be read ({one_line(str(error), 60)})") from None
    except Exception:
        raise GDAError(f"{name}: array {key} cannot be read (truncated or corrupt)") from None
    return array


def parse_npz(payload: bytes, *, name: str = "data.npz", limits: UploadLimits | None = None,
              task: str = "classification") -> UploadedData:
    """An ``.npz`` with ``X`` and ``y`` (class labels, or numeric targets for
    ``task="regression"``), optionally ``X_test``/``y_test``. ``X`` is rows x features
    (tabular; an ``image_shape`` array of (channels, height, width) makes them images),
    rows x height x width (grey images), or rows x channels x height x width / rows x height x
    width x channels (1 or 3 channels, detected; an array ``layout`` of ``NCHW`` or ``NHWC``
    settles an ambiguous shape). ``class_names``, ``image_shape`` and ``task`` are kept when
    present (the normalised form written by :func:`store_upload` names its task, which then
    holds)."""
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
            raise GDAError(f"{name} needs arrays X and y; found: {one_line(', '.join(sorted(keys)) or 'none', 60)}")
        if ("X_test" in keys) != ("y_test" in keys):
            raise GDAError(f"{name} has only one of X_test and y_test; give both or neither")
        arrays = {key: _numeric_array(archive, key, name) for key in sorted(keys)
                  if key in ("X", "y", "X_test", "y_test", "class_names", "image_shape", "task", "layout",
                             "texts", "texts_test", "max_length")}
    ndim = arrays["X"].ndim
    layout = None
    if ndim == 4:
        declared = str(arrays["layout"]) if "layout" in arrays else None
        layout = _image_layout(tuple(int(s) for s in arrays["X"].shape), declared, name)

    def features(key: str) -> np.ndarray:
        array = arrays[key]
        if array.dtype.kind not in "biuf":
            raise GDAError(f"{name}: {key} must be numeric, got dtype {array.dtype}")
        if array.ndim not in (2, 3, 4):  # checked before len(): a 0-d scalar has none
            raise GDAError(f"{name}: {key} must be (rows, features), (rows, height, width) or (rows, channels, "
                           f"height, width), got shape {array.shape}")
        if array.ndim != ndim:
            raise GDAError(f"{name}: {key} must have as many axes as X ({ndim}), got shape {array.shape}")
        if len(array) == 0:
            raise GDAError(f"{name}: {key} has no rows")
        if layout == "NHWC":
            array = array.transpose(0, 3, 1, 2)
        return array

    train_images = features("X")
    test_images = features("X_test") if "X_test" in arrays else None
    if ndim > 2 and test_images is not None and test_images.shape[1:] != train_images.shape[1:]:
        raise GDAError(f"{name}: X_test's images have shape {test_images.shape[1:]}, X's {train_images.shape[1:]}")
    image_shape = None
    if ndim > 2:
        image_shape = image_shape_of(train_images.shape[1:])
    elif "image_shape" in arrays and arrays["image_shape"].size:
        if arrays["image_shape"].dtype.kind not in "iu":
            raise GDAError(f"{name}: image_shape must hold whole numbers, got dtype {arrays['image_shape'].dtype}")
        try:
            image_shape = image_shape_of(arrays["image_shape"])
        except (GDAError, ValueError, TypeError, OverflowError):
            image_shape = None
        if image_shape is None or math.prod(image_shape) != train_images.shape[1]:
            raise GDAError(f"{name}: image_shape must be (channels, height, width) or (height, width) of positive "
                           f"sizes whose product is the {train_images.shape[1]} features, got "
                           f"{one_line(np.asarray(arrays['image_shape']).ravel().tolist(), 40)}")
        if image_shape[0] not in CHANNEL_COUNTS:
            raise GDAError(f"{name}: image_shape {image_shape} has {image_shape[0]} channels; images have 1 "
                           f"(grey) or 3 (RGB)")
    train_features = train_images.reshape(len(train_images), -1).astype(np.float64)
    test_features = None if test_images is None else test_images.reshape(len(test_images), -1).astype(np.float64)
    if "task" in arrays:
        stored = str(arrays["task"])
        TASKS.check(stored)
        if task != "classification" and task != stored:  # the default gives way to the file's own
            raise GDAError(f"{name} holds {stored} data, not {task}")
        task = stored
    parts = [arrays["y"]] + ([arrays["y_test"]] if test_features is not None else [])
    encoded, class_names = encode_targets(task, *parts)
    if "class_names" in arrays and task == "classification":
        stored = [str(c) for c in np.asarray(arrays["class_names"]).ravel()]
        if len(stored) < len(class_names):
            raise GDAError(f"{name}: {len(stored)} class names for labels up to {len(class_names) - 1}")
        class_names = stored
    if "texts" in arrays:  # the normalised form of a text CSV
        if arrays["texts"].dtype.kind != "U" or "max_length" not in arrays:
            raise GDAError(f"{name}: texts must be an array of strings, with a max_length beside it")
        test_texts = arrays.get("texts_test")
        return UploadedData(train_features, encoded[0], class_names, name=Path(name).stem,
                            test_labels=encoded[1] if test_features is not None else None,
                            texts=arrays["texts"].astype(object),
                            test_texts=None if test_texts is None else test_texts.astype(object),
                            max_length=int(arrays["max_length"]))
    return UploadedData(train_features, encoded[0], class_names, name=Path(name).stem, image_shape=image_shape,
                        test_features=test_features, test_labels=encoded[1] if test_features is not None else None)


# ------------------------------------------------------------------------------ image zip
def parse_image_zip(payload: bytes, *, image_size: int = DEFAULT_IMAGE_SIZE, name: str = "images.zip",
                    limits: UploadLimits | None = None, task: str = "classification") -> UploadedData:
    """A zip with one folder per class of PNG/JPEG images, resized to ``image_size`` x
    ``image_size`` with pixel values in [0, 1]: in colour (RGB) when any image has colour,
    grey (one channel) when all are grey. One enclosing folder (what zipping a folder gives) is
    looked through; hidden files and ``__MACOSX`` are skipped."""
    from PIL import Image

    if task != "classification":
        raise GDAError("image folders name classes, so an image zip is classification data; "
                       "give regression targets in a CSV or .npz")
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
        raise GDAError(f"{name}: image {one_line('/'.join(loose[0]))} is not inside a class folder")
    entries.sort(key=lambda item: item[0])
    class_names = sorted({parts[0] for parts, _ in entries})
    if len(class_names) < 2:
        raise GDAError(f"{name}: the data needs at least 2 classes, found 1 class folder")
    # Tiny images resized up could fill memory: the pixel array counts against the unpacked limit.
    pixel_bytes = len(entries) * image_size * image_size * 8 * 3
    if pixel_bytes > limits.max_unpacked_bytes:
        raise GDAError(f"{name}: {len(entries)} images at {image_size}x{image_size} take {pixel_bytes / MB:.3g} MB, "
                       f"over the limit of {limits.max_unpacked_bytes / MB:.3g} MB; choose a smaller image size")
    pixels = np.empty((len(entries), 3, image_size, image_size), dtype=np.float64)
    labels = np.empty(len(entries), dtype=np.int64)
    coloured = False
    for row, (parts, entry) in enumerate(entries):
        shown = one_line("/".join(parts))
        data = read_entry(archive, entry, name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
                    if image.width * image.height > limits.max_image_pixels:
                        raise GDAError(f"{name}: image {shown} has {image.width}x{image.height} pixels, "
                                       f"over the limit of {limits.max_image_pixels}")
                    coloured = coloured or image.mode not in GREY_MODES
                    pixels[row] = _rgb_pixels(image, image_size)
        except GDAError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            # Pillow refuses huge images at open, before our own size check can run
            raise GDAError(f"{name}: image {shown} is too large, over the limit of {limits.max_image_pixels} "
                           f"pixels") from None
        except Exception:
            raise GDAError(f"{name}: image {shown} cannot be decoded (not a valid PNG or JPEG)") from None
        labels[row] = class_names.index(parts[0])
    data = UploadedData(pixels.reshape(len(entries), -1), labels, class_names, name=Path(name).stem,
                        image_shape=(3, image_size, image_size))
    # A grey image read as RGB has three equal channels: one is kept, as the file had.
    return data if coloured else data.to_grey()


def _rgb_pixels(image, size: int) -> np.ndarray:
    """An image resized to (3, size, size) RGB values in [0, 1], scaled by its true bit depth:
    a 16-bit greyscale PNG would be clipped at 255 by ``convert``, so it is resized as floats
    and its one channel repeated (a zip of grey images keeps one channel in the end)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit greyscale PNG (Pillow reads some as "I")
        grey = Image.fromarray((np.asarray(image, dtype=np.float64) / 65535.0).astype(np.float32))  # mode F
        values = np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)
        return np.repeat(values[None], 3, axis=0)
    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float64).transpose(2, 0, 1) / 255.0


# ------------------------------------------------------------------------ one entry point
@dataclass(frozen=True)
class DataOptions:
    """How to read a data file: the CSV's label (and optional split) column, a separate test
    CSV, the size images are resized to, and the task the labels are for (``classification``:
    class labels; ``regression``: a numeric target, CSV and .npz only). Each field is a
    command-line flag (its metadata's ``help``, and ``flag`` where it is not ``--field-name``)."""

    label_column: str = field(default="label", metadata={"help": "CSV data: the label column"})
    split_column: str | None = field(default=None, metadata={"help": "CSV data: a column of train/test per row"})
    test_path: str | None = field(default=None, metadata={"flag": "--test-file", "metavar": "CSV",
                                                          "help": "CSV data: a separate test file"})
    image_size: int = field(default=DEFAULT_IMAGE_SIZE, metadata={"metavar": "N",
                                                                  "help": "image zip: resize images to N x N"})
    task: str = field(default="classification", metadata={
        "help": "classification (class labels) or regression (a numeric target; CSV and .npz data)"})
    grey: bool = field(default=False, metadata={"help": "image data: turn colour images grey (one channel)"})
    text_column: str | None = field(default=None, metadata={
        "help": "CSV data: a column of sentences, for a Hugging Face text model (the data is then text)"})
    max_length: int = field(default=DEFAULT_MAX_LENGTH, metadata={
        "metavar": "TOKENS", "help": "text data: cut sentences at this many tokens"})

    def __post_init__(self) -> None:
        TASKS.check(self.task)
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or not 2 <= self.max_length <= 100_000:
            raise GDAError(f"--max-length must be a whole number of tokens in 2..100000, got {self.max_length!r}")


def parse_data(payload: bytes, name: str, options: DataOptions = DataOptions(),
               limits: UploadLimits | None = None, test_payload: bytes | None = None) -> UploadedData:
    """Parse an uploaded data file by its suffix (``.csv``, ``.npz``, ``.zip``); every reason
    names the file."""
    try:
        data = _parse_data(payload, name, options, limits or UploadLimits.from_env(), test_payload)
        return data.to_grey() if options.grey else data
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
                         test_name=Path(options.test_path or "test.csv").name, limits=limits,
                         task=options.task, text_column=options.text_column, max_length=options.max_length)
    if options.text_column is not None:
        raise GDAError("--text-column names a column of a CSV file; this data is not a CSV")
    if test_payload is not None:
        raise GDAError("a separate test file is only read for CSV data; put X_test/y_test in the .npz")
    if suffix == ".npz":
        return parse_npz(payload, name=Path(name).name, limits=limits, task=options.task)
    if suffix == ".zip":
        return parse_image_zip(payload, image_size=options.image_size, name=Path(name).name, limits=limits,
                               task=options.task)
    raise GDAError(f"unsupported data file type {one_line(suffix or Path(name).name, 20)}; "
                   f"use one of: {', '.join(DATA_SUFFIXES)}")


def parse_data_file(path: str | Path, options: DataOptions = DataOptions(),
                    limits: UploadLimits | None = None) -> UploadedData:
    limits = limits or UploadLimits.from_env()
    refuse_pickle(str(path))
    test_payload = read_upload(options.test_path, limits) if options.test_path else None
    return parse_data(read_upload(path, limits), str(path), options, limits, test_payload)


