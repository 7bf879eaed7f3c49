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
from .grads import GradientEngine, has_last_layer

#: a group holding more than this share of the points is "giant": its score says little about
#: any one member (a warning on the result; no rings for it on the map)
GIANT_GROUP_SHARE = 0.25


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

    def size_summary(self) -> dict:
        """The group size distribution: largest, median and smallest group, and singletons."""
        sizes = self.sizes
        return {"largest": int(sizes.max()), "median": float(np.median(sizes)), "smallest": int(sizes.min()),
                "singletons": int((sizes == 1).sum())}

    def size_warning(self) -> str | None:
        """A line when one group holds more than a quarter of the points: scores of such a
        group say little about any of its members."""
        largest = int(self.sizes.max())
        if self.n_groups > 1 and largest > len(self.labels) * GIANT_GROUP_SHARE:
            return (f"the largest group holds {largest} of {len(self.labels)} points "
                    f"({largest / len(self.labels):.0%}); its score says little about any one member")
        return None

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


#: a K-means group holds at most this many times the mean group size N / K
SIZE_CAP_FACTOR = 2.0


def size_cap(n_points: int, n_groups: int, factor: float = SIZE_CAP_FACTOR) -> int:
    """The largest group a capped K-means grouping returns: ``ceil(factor * N / K)``."""
    return max(1, int(np.ceil(factor * n_points / n_groups)))


def kmeans_labels(features: np.ndarray | torch.Tensor, n_groups: int, seed: int, *,
                  cap: int | None = None) -> np.ndarray:
    """K-means with exactly ``n_groups`` non-empty clusters of at most ``cap`` points (default
    :func:`size_cap`; see :func:`cap_groups`).

    Lloyd's iterations in torch, on the features' device (distances by one matrix product per
    chunk), seeded by k-means++ while N x K is small and by a seeded sample of points beyond
    that (k-means++ seeding alone would cost seconds at K = 1800 on 18000 points). Torch
    rather than scikit-learn: importing scikit-learn's clustering costs about 2 s per
    process, more than the clustering."""
    points = torch.as_tensor(features).float()
    n_points = len(points)
    if n_groups == n_points:
        return np.arange(n_points)
    if n_groups == 1:
        return np.zeros(n_points, dtype=np.int64)
    labels = _lloyd(points, n_groups, seed)
    labels = _fill_empty_groups(labels, n_groups, points.cpu().numpy())
    return cap_groups(labels, points.cpu().numpy(), n_groups, cap or size_cap(n_points, n_groups))


def _nearest(points: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Each point's nearest centroid, by chunked matrix products: the argmin over centroids c of
    ``|c|^2 - 2 x . c`` (the point's own ``|x|^2`` does not change which centroid is nearest)."""
    squared = (centroids ** 2).sum(1)
    return torch.cat([torch.addmm(squared, points[start:start + chunk], centroids.T, alpha=-2).argmin(1)
                      for start in range(0, len(points), chunk)])


def _lloyd(points: torch.Tensor, n_groups: int, seed: int, iterations: int = 20,
           tolerance: float = 0.002) -> np.ndarray:
    """Lloyd's K-means; stops when under ``tolerance`` of the points change cluster (the
    size cap reassigns points afterwards anyway)."""
    generator = torch.Generator().manual_seed(seed)
    n_points = len(points)
    if n_points * n_groups <= 5e6:  # k-means++ seeding
        chosen = [int(torch.randint(n_points, (1,), generator=generator))]
        distances = ((points - points[chosen[0]]) ** 2).sum(1)
        for _ in range(1, n_groups):
            weights = distances.cpu().double()
            pick = (int(torch.multinomial(weights / weights.sum(), 1, generator=generator)) if weights.sum() > 0
                    else int(torch.randint(n_points, (1,), generator=generator)))
            chosen.append(pick)
            distances = torch.minimum(distances, ((points - points[pick]) ** 2).sum(1))
        centroids = points[chosen].clone()
    else:
        centroids = points[torch.randperm(n_points, generator=generator)[:n_groups].to(points.device)].clone()
    labels = None
    for _ in range(iterations):
        new_labels = _nearest(points, centroids)
        if labels is not None and (new_labels != labels).float().mean() < tolerance:
            labels = new_labels
            break
        labels = new_labels
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=n_groups).to(points.dtype)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]  # an empty cluster keeps its centroid
    return labels.cpu().numpy().astype(np.int64)


def _centroids(labels: np.ndarray, features: torch.Tensor, n_groups: int) -> torch.Tensor:
    sums = torch.zeros(n_groups, features.shape[1], dtype=features.dtype).index_add_(
        0, torch.as_tensor(labels), features)
    counts = torch.as_tensor(np.bincount(labels, minlength=n_groups), dtype=features.dtype).clamp_min(1)
    return sums / counts[:, None]


def cap_groups(labels: np.ndarray, features: np.ndarray, n_groups: int, cap: int) -> np.ndarray:
    """Cap every group at ``cap`` points, keeping exactly ``n_groups`` non-empty groups.

    K-means on gradients lumps the many well-fit points (near-zero gradients) into one giant
    group; its score then says nothing about any member, and on a map it rings everything.
    An overfull group keeps its ``cap`` points nearest its centroid and sends the rest to the
    nearest centroid with room. Singletons are kept: they are the points whose gradients are
    most their own, and the point-level LDS drops when they are merged (digits / MLP,
    if-arnoldi, K = 150: 0.40 kept, 0.38 merged)."""
    labels = labels.copy()
    points = torch.as_tensor(np.ascontiguousarray(features), dtype=torch.float32)
    n_points = len(labels)
    if n_groups * cap < n_points:
        raise GDAError(f"a cap of {cap} points cannot hold {n_points} points in {n_groups} groups")
    for _ in range(n_groups + 1):
        sizes = np.bincount(labels, minlength=n_groups)
        overfull = np.flatnonzero(sizes > cap)
        if not len(overfull):
            break
        centroids = _centroids(labels, points, n_groups)
        for group in overfull:
            rows = np.flatnonzero(labels == group)
            distances = ((points[rows] - centroids[group]) ** 2).sum(1)
            evicted = rows[torch.argsort(distances).numpy()[cap:]]
            sizes[group] = cap
            for chunk in np.array_split(evicted, max(1, len(evicted) // 2048)):
                distances = torch.cdist(points[chunk], centroids) ** 2
                for row, point in zip(distances, chunk):
                    row[torch.as_tensor(sizes >= cap)] = float("inf")
                    target = int(torch.argmin(row))
                    labels[point] = target
                    sizes[target] += 1
    return labels


def _split_per_class(class_labels: np.ndarray, n_groups: int, n_classes: int, cap: int | None = None) -> np.ndarray:
    """How many groups each class gets: proportional to its size, at least one each, and
    enough that no group needs more than ``cap`` points."""
    counts = np.bincount(class_labels, minlength=n_classes)
    present = counts > 0
    if n_groups < present.sum():
        raise GDAError(f"a per-class grouping needs at least one group per class: K >= {int(present.sum())}, got {n_groups}")
    share = np.where(present, 1, 0)
    if cap is not None and np.where(present, np.maximum(1, -(-counts // cap)), 0).sum() <= n_groups:
        share = np.where(present, np.maximum(1, -(-counts // cap)), 0)
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

    def fit(self, train: Dataset, model: torch.nn.Module | None = None, *, engine: GradientEngine | None = None
            ) -> Groups:
        """The partition of ``train``. ``engine`` (a gradient engine on ``model``, e.g. the
        attribution method's, :meth:`AttributionMethod.engine`) is what model-based features
        go through: its frozen prefix's output, cached with the model, is shared with the
        method's gradient passes, so the frozen layers run once for both. Without it the
        features run the whole model."""
        if self.needs_model and model is None:
            raise GDAError(f"grouping {self.name!r} needs the trained model")
        if engine is not None and engine.module is not model:
            raise GDAError("the grouping's gradient engine must be on the grouping's model")
        self.engine = engine
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

    def _engine(self, model: torch.nn.Module) -> GradientEngine:
        """The engine given to :meth:`fit`, else one over the whole model (no frozen prefix)."""
        engine = getattr(self, "engine", None)
        return engine if engine is not None else GradientEngine(model)

    def grouping_features(self, train: Dataset, model: torch.nn.Module | None) -> np.ndarray:
        raise NotImplementedError

    def _labels(self, train, model, n_groups):
        features = self.grouping_features(train, model)
        if not self.per_class:
            return kmeans_labels(features, n_groups, self.seed)
        classes = train.labels.numpy()
        cap = size_cap(len(train), n_groups)  # one cap over the whole set, as for the other groupings
        shares = _split_per_class(classes, n_groups, train.n_classes, cap)
        labels = np.empty(len(train), dtype=np.int64)
        offset = 0
        for cls in np.flatnonzero(shares):
            rows = np.flatnonzero(classes == cls)
            # (with very many classes and few groups the overall cap cannot hold: the class's own applies)
            class_cap = cap if shares[cls] * cap >= len(rows) else None
            labels[rows] = kmeans_labels(features[rows], int(shares[cls]), self.seed, cap=class_cap) + offset
            offset += int(shares[cls])
        return labels


class InputsKMeans(_KMeansGrouping):
    name = "inputs-kmeans"
    description = "K-means on the (standardised) input features"

    def grouping_features(self, train, model):
        if train.is_text:
            raise GDAError("inputs-kmeans clusters feature values, and text has none (token ids are not "
                           "coordinates); use repr-kmeans (the pooled sentence embedding) or grad-kmeans")
        return train.features.numpy()


class ReprKMeans(_KMeansGrouping):
    name = "repr-kmeans"
    description = "K-means on the model's penultimate-layer representation"
    needs_model = True

    def grouping_features(self, train, model):
        if not hasattr(model, "features"):
            raise GDAError("representation K-means needs a model with a penultimate layer (a zoo model); "
                           "use grad-kmeans or inputs-kmeans for this one")
        return self._engine(model).representation(train).float().cpu().numpy()


#: how grad-kmeans scales gradients before clustering: their directions (default) or as they are
SCALINGS = ("direction", "raw")


class GradKMeans(_KMeansGrouping):
    """K-means on the directions of per-example gradients, capped in size.

    For a model with a linear head (zoo models, exported zoo models) the last-layer gradient
    of a point is the outer product of the loss's output gradient ``r`` (softmax minus the
    one-hot label, for cross-entropy) and the penultimate representation ``h`` with a 1 for
    the bias. Its random projection is formed from two small projections, ``(R r) (x) (H h)``
    (LoGra's trick), so the grouping costs one forward pass and K-means, with no per-example
    backward. Other models get projected full per-example gradients (``gradient_features:
    projected``). By default the features are scaled to unit length (``gradient_scaling:
    direction``): K-means on raw gradients lumps the many well-fit points (near-zero
    gradients) into one group, while their directions (which class the point pulls towards,
    from which representation) still tell them apart. ``gradient_scaling: raw`` keeps the
    magnitudes, so points with large gradients get small groups: on digits / MLP it scores
    higher point-level LDS at K = 150 (if-arnoldi 0.46 against 0.40) and lower at K = 15
    (0.13 against 0.20)."""

    name = "grad-kmeans"
    description = ("K-means on per-example gradient directions (last layer from one forward pass, or "
                   "projected full gradients), groups capped at 2N/K")
    needs_model = True
    #: gradients are randomly projected to this many dimensions for K-means (distances are
    #: kept to about 1/sqrt(64); the K-means cost falls with the dimension)
    max_dim = 64

    def grouping_features(self, train, model):
        # A model without features and a linear head (e.g. an uploaded program) gets projected
        # full gradients.
        space = self.options.get("gradient_features", "last-layer" if has_last_layer(model) else "projected")
        if space not in ("last-layer", "projected"):
            raise GDAError(f"gradient_features must be 'last-layer' or 'projected', got {space!r}")
        scaling = self.options.get("gradient_scaling", "direction")
        if scaling not in SCALINGS:
            raise GDAError(f"gradient_scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
        features = (last_layer_gradient_features(model, train, self.max_dim, self.seed, engine=self._engine(model))
                    if space == "last-layer" else projected_gradients(model, train, self.max_dim, self.seed))
        if scaling == "raw":
            return features.float().cpu().numpy()
        norms = features.norm(dim=1, keepdim=True)
        # A zero gradient (a perfectly fit point) has no direction: it stays at the origin.
        return (features / torch.where(norms > 0, norms, torch.ones_like(norms))).float().cpu().numpy()


def projected_gradients(model: torch.nn.Module, train: Dataset, dim: int, seed: int) -> torch.Tensor:
    """Per-example loss gradients of all parameters, randomly projected to ``dim`` (at most)."""
    from .grads import RandomProjector

    engine = GradientEngine(model)
    projector = (RandomProjector(engine.space.dim, min(dim, engine.space.dim), seed=seed)
                 if engine.space.dim > dim else None)
    return engine.stacked(engine.per_example_gradients(train, projector=projector), len(train))


def kronecker_dims(n_outputs: int, n_inputs: int, dim: int) -> tuple[int, int]:
    """How ``dim`` projected dimensions split between a layer's outputs and inputs: the
    outputs (classes) keep up to 8, the inputs take the rest; neither is projected up."""
    out_dim = min(n_outputs, 8, dim)
    return out_dim, min(n_inputs, max(1, dim // out_dim))


def last_layer_gradient_features(model: torch.nn.Module, train: Dataset, dim: int, seed: int,
                                 chunk: int = 4096, *, engine: GradientEngine | None = None) -> torch.Tensor:
    """``(R r) (x) (H [h, 1])`` per training point: the last-layer loss gradient (weight and
    bias) projected by the Kronecker product of two seeded Gaussian matrices, from one forward
    pass. ``r`` is the loss's gradient with respect to the outputs (a backward through the
    loss only), ``h`` the penultimate representation (:meth:`GradientEngine.representation`
    of ``engine``, through its frozen prefix; default: the whole model)."""
    reference = next(model.parameters())
    representation = (engine or GradientEngine(model)).representation(train)
    head = model.head
    weight = head.weight
    n_outputs, n_inputs = weight.shape
    out_dim, in_dim = kronecker_dims(n_outputs, n_inputs + 1, dim)
    generator = torch.Generator().manual_seed(seed)
    out_projection = torch.randn(n_outputs, out_dim, generator=generator) / np.sqrt(out_dim)
    in_projection = torch.randn(n_inputs + 1, in_dim, generator=generator) / np.sqrt(in_dim)
    out_projection, in_projection = out_projection.to(reference), in_projection.to(reference)
    objective = train.task.objective("loss")
    parts = []
    with torch.no_grad():
        for start in range(0, len(train), chunk):
            labels = train.labels[start:start + chunk].to(reference.device)
            hidden = representation[start:start + chunk]
            outputs = head(hidden).detach().requires_grad_(True)
            with torch.enable_grad():
                # d(sum of per-point losses)/d(outputs) is each point's own output gradient
                residual = torch.autograd.grad(objective(outputs, labels).sum(), outputs)[0]
            if head.bias is not None:
                hidden = torch.cat([hidden, torch.ones_like(hidden[:, :1])], dim=1)
            else:
                hidden = torch.cat([hidden, torch.zeros_like(hidden[:, :1])], dim=1)
            projected = (residual @ out_projection)[:, :, None] * (hidden @ in_projection)[:, None, :]
            parts.append(projected.reshape(len(hidden), -1))
    return torch.cat(parts)


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


def refine_groups(group_labels: np.ndarray, chosen: np.ndarray) -> tuple[Groups, np.ndarray]:
    """A finer grouping: each member of the ``chosen`` groups alone, everything else in one
    last group. Returns it and the refined points (in the order of their singleton groups)."""
    refined_points = np.flatnonzero(np.isin(group_labels, chosen))
    labels = np.full(len(group_labels), len(refined_points), dtype=np.int64)
    labels[refined_points] = np.arange(len(refined_points))
    n_groups = len(refined_points) + int(len(refined_points) < len(group_labels))
    return Groups(labels, n_groups, "refined"), refined_points
