"""Groupings: partitions of the training set into K non-empty groups.

Strategies register themselves by name (``__init_subclass__``) so the CLI and the app can
list them. Each follows scikit-learn's habit: parameters in ``__init__``, ``fit(train,
model)`` learns ``labels_`` (the group of each training point) and returns a
:class:`Groups`. Per-example attribution is the grouping with one point per group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..errors import GDAError
from ..inputs.datasets import Dataset
from ..registry import GROUPINGS


@dataclass
class Groups:
    """A partition of ``len(labels)`` training points into ``n_groups`` non-empty groups."""

    labels: np.ndarray
    n_groups: int
    strategy: str = "custom"

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.ndim != 1:
            raise GDAError("group labels must be a 1-d array")
        counts = np.bincount(self.labels, minlength=self.n_groups) if len(self.labels) else np.zeros(0)
        if len(counts) != self.n_groups or (self.labels.min(initial=0) < 0) or (counts == 0).any():
            raise GDAError(f"group labels must use every group 0..{self.n_groups - 1} at least once")

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.n_groups)

    def membership_matrix(self) -> np.ndarray:
        """(K, N) 0/1 matrix: row k marks the members of group k."""
        matrix = np.zeros((self.n_groups, len(self.labels)), dtype=np.float32)
        matrix[self.labels, np.arange(len(self.labels))] = 1.0
        return matrix


def _check_group_count(n_groups: int, n_points: int) -> None:
    if not isinstance(n_groups, (int, np.integer)) or n_groups < 1 or n_groups > n_points:
        raise GDAError(f"number of groups must be between 1 and the training set size {n_points}, got {n_groups}")


def _fill_empty_groups(labels: np.ndarray, n_groups: int, features: np.ndarray) -> np.ndarray:
    """Make every one of ``n_groups`` groups non-empty.

    K-means can return fewer distinct clusters than asked (duplicate points, e.g. in digits).
    Each empty group takes the point farthest from its own group's mean within the largest
    group, which is deterministic and keeps clusters compact."""
    labels = labels.copy()
    counts = np.bincount(labels, minlength=n_groups)
    for empty in np.flatnonzero(counts == 0):
        largest = int(np.argmax(counts))
        rows = np.flatnonzero(labels == largest)
        centre = features[rows].mean(axis=0)
        distances = ((features[rows] - centre) ** 2).sum(axis=1)
        moved = rows[int(np.argmax(distances))]
        labels[moved] = empty
        counts[largest] -= 1
        counts[empty] += 1
    return labels


def kmeans_labels(features: np.ndarray, n_groups: int, seed: int) -> np.ndarray:
    """K-means with exactly ``n_groups`` non-empty clusters.

    Lloyd's K-means with k-means++ seeding while N x K is small; beyond that, k-means++
    seeding alone costs more than the attribution it saves (seconds at K = 1800 on 18000
    points), so MiniBatchKMeans with random seeding takes over."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    features = np.ascontiguousarray(features, dtype=np.float32)
    n_points = len(features)
    if n_groups == n_points:
        return np.arange(n_points)
    if n_groups == 1:
        return np.zeros(n_points, dtype=np.int64)
    if n_points * n_groups <= 5e6:
        model = KMeans(n_clusters=n_groups, n_init=1, max_iter=30, random_state=seed)
    else:
        model = MiniBatchKMeans(n_clusters=n_groups, n_init=1, init="random", batch_size=4096, max_iter=10,
                                random_state=seed, reassignment_ratio=0.0)
    import warnings

    with warnings.catch_warnings():
        # Fewer distinct points than clusters is handled below, not worth a warning.
        warnings.simplefilter("ignore")
        labels = model.fit_predict(features).astype(np.int64)
    return _fill_empty_groups(labels, n_groups, features)


def _split_per_class(class_labels: np.ndarray, n_groups: int, n_classes: int) -> np.ndarray:
    """How many groups each class gets: proportional to its size, at least one each."""
    counts = np.bincount(class_labels, minlength=n_classes)
    present = counts > 0
    if n_groups < present.sum():
        raise GDAError(f"a per-class grouping needs at least one group per class: K >= {int(present.sum())}, got {n_groups}")
    share = np.where(present, 1, 0)
    remaining = n_groups - share.sum()
    # Largest-remainder apportionment of the rest, capped by class size.
    ideal = counts / counts.sum() * remaining
    extra = np.minimum(np.floor(ideal).astype(int), counts - share)
    share = share + extra
    for c in np.argsort(-(ideal - np.floor(ideal)), kind="stable"):
        if share.sum() >= n_groups:
            break
        if share[c] < counts[c]:
            share[c] += 1
    while share.sum() < n_groups:  # classes saturated: hand out to any class with room
        c = int(np.argmax(counts - share))
        share[c] += 1
    return share


class GroupingStrategy:
    """Base of all groupings. Subclasses set ``name`` and implement :meth:`_labels`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False
    #: what K is for groupings that fix it themselves (e.g. "N"); empty when K is a parameter
    fixed_count_name: ClassVar[str] = ""
    fixed_group_count: ClassVar[bool] = False
    #: why the grouping needs class labels (refused on regression targets); empty when it does not
    needs_classes: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.fixed_group_count = bool(cls.fixed_count_name)
        if cls.name:
            GROUPINGS[cls.name] = cls

    def __init__(self, n_groups: int | None = None, *, seed: int = 0, **options) -> None:
        self.n_groups = n_groups
        self.seed = seed
        self.options = options

    def fit(self, train: Dataset, model: torch.nn.Module | None = None) -> Groups:
        if self.needs_model and model is None:
            raise GDAError(f"grouping {self.name!r} needs the trained model")
        if self.needs_classes:
            train.require_classes(f"the {self.name} grouping", self.needs_classes)
        if self.fixed_group_count:
            # The grouping fixes K itself (N points, C classes): its labels say what K is.
            labels = self._labels(train, model, None)
            n_groups = int(labels.max()) + 1
            if self.n_groups not in (None, n_groups):
                raise GDAError(f"{self.name} grouping has K = {self.fixed_count_name} = {n_groups}, got {self.n_groups}")
        else:
            if self.n_groups is None:
                raise GDAError(f"grouping {self.name!r} needs a number of groups")
            n_groups = int(self.n_groups)
            _check_group_count(n_groups, len(train))
            labels = self._labels(train, model, n_groups)
        self.labels_ = labels
        return Groups(labels, n_groups, self.name)

    def _labels(self, train: Dataset, model: torch.nn.Module | None, n_groups: int | None) -> np.ndarray:
        """The group of every training point (``n_groups`` is None where the grouping fixes K)."""
        raise NotImplementedError


class PerExample(GroupingStrategy):
    name = "per-example"
    description = "one point per group (K = N): classic per-example attribution"
    fixed_count_name = "N"

    def _labels(self, train, model, n_groups):
        return np.arange(len(train))


class RandomGrouping(GroupingStrategy):
    name = "random"
    description = "a seeded random partition into K groups of (nearly) equal size"

    def _labels(self, train, model, n_groups):
        permutation = np.random.default_rng(self.seed).permutation(len(train))
        labels = np.empty(len(train), dtype=np.int64)
        labels[permutation] = np.arange(len(train)) % n_groups
        return labels


class PerClass(GroupingStrategy):
    """The classes present, in sorted order, are the groups."""

    name = "per-class"
    description = "one group per class (K = number of classes present)"
    fixed_count_name = "number of classes"
    needs_classes = "its groups are the classes"

    def _labels(self, train, model, n_groups):
        return np.unique(train.labels.numpy(), return_inverse=True)[1].astype(np.int64)


class _KMeansGrouping(GroupingStrategy):
    """K-means on some feature space, over the whole set or within each class."""

    per_class: ClassVar[bool] = False

    def grouping_features(self, train: Dataset, model: torch.nn.Module | None) -> np.ndarray:
        raise NotImplementedError

    def _labels(self, train, model, n_groups):
        features = self.grouping_features(train, model)
        if not self.per_class:
            return kmeans_labels(features, n_groups, self.seed)
        classes = train.labels.numpy()
        shares = _split_per_class(classes, n_groups, train.n_classes)
        labels = np.empty(len(train), dtype=np.int64)
        offset = 0
        for cls in np.flatnonzero(shares):
            rows = np.flatnonzero(classes == cls)
            labels[rows] = kmeans_labels(features[rows], int(shares[cls]), self.seed) + offset
            offset += int(shares[cls])
        return labels


class InputsKMeans(_KMeansGrouping):
    name = "inputs-kmeans"
    description = "K-means on the (standardised) input features"

    def grouping_features(self, train, model):
        return train.features.numpy()


class ReprKMeans(_KMeansGrouping):
    name = "repr-kmeans"
    description = "K-means on the model's penultimate-layer representation"
    needs_model = True

    def grouping_features(self, train, model):
        reference = next(model.parameters())
        if not hasattr(model, "features"):
            raise GDAError("representation K-means needs a model with a penultimate layer (a zoo model); "
                           "use grad-kmeans or inputs-kmeans for this one")
        with torch.no_grad():
            return model.features(train.features.to(reference)).float().cpu().numpy()


class GradKMeans(_KMeansGrouping):
    """K-means on per-example gradients: of the last layer (default, cheap and closest to
    what gradient-based methods see) or of all parameters, randomly projected."""

    name = "grad-kmeans"
    description = "K-means on per-example gradients (last layer, or projected full gradients)"
    needs_model = True
    #: gradients are randomly projected to this many dimensions for K-means (distances are
    #: kept to about 1/sqrt(64); the K-means cost falls with the dimension)
    max_dim = 64

    def grouping_features(self, train, model):
        from .grads import GradientEngine, RandomProjector, has_last_layer

        # A model without features and a linear head (e.g. an uploaded program) gets projected
        # full gradients.
        space = self.options.get("gradient_features", "last-layer" if has_last_layer(model) else "projected")
        if space not in ("last-layer", "projected"):
            raise GDAError(f"gradient_features must be 'last-layer' or 'projected', got {space!r}")
        engine = GradientEngine(model, last_layer_only=(space == "last-layer"))
        projector = None
        if space == "projected" or engine.space.dim > self.max_dim:
            # Project wide gradients: K-means cost grows with the dimension, and random
            # projections keep the distances K-means works on.
            projector = RandomProjector(engine.space.dim, min(self.max_dim, engine.space.dim), seed=self.seed)
        gradients = engine.stacked(engine.per_example_gradients(train, projector=projector), len(train))
        return gradients.float().cpu().numpy()


def _per_class_variant(base: type[_KMeansGrouping]) -> type[_KMeansGrouping]:
    return type(
        base.__name__ + "PerClass", (base,),
        {"name": base.name + "-per-class", "per_class": True, "needs_classes": "it clusters within each class",
         "description": base.description + ", within each class"},
    )


InputsKMeansPerClass = _per_class_variant(InputsKMeans)
ReprKMeansPerClass = _per_class_variant(ReprKMeans)
GradKMeansPerClass = _per_class_variant(GradKMeans)


def make_grouping(name: str, n_groups: int | None = None, *, seed: int = 0, **options) -> GroupingStrategy:
    """The grouping strategy registered as ``name``."""
    return GROUPINGS.get_checked(name)(n_groups, seed=seed, **options)
