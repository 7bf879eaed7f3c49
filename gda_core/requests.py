"""Every request the engine takes, with one shared validation of the choices they name.

A request names everything a run depends on. Each is a dataclass validated in
``__post_init__`` (a bad choice is one :class:`GDAError` line) and saved as JSON beside its
results. The hierarchy shares the checks rather than copying them:

- :class:`Choices`: data, model, seed and device (every request);
- :class:`ScoringSpec`: plus a method (with its options) and a grouping (attribution, flagging,
  noisy-label evaluation, pruning);
- :class:`AttributionRequest`, :class:`FlagRequest`, :class:`NoisyConfig`, :class:`PruneConfig`,
  :class:`SweepConfig` (with its :class:`GoldConfig`) and :class:`EmbeddingRequest`.

Method, grouping and executor names are checked against the registries in
:mod:`gda_core.registry`, which the implementations fill when ``gda_core`` is imported. The
command line builds its flags, their defaults and their help from these fields: a field's
``metadata`` holds its ``help`` (and, where the flag is not ``--field-name``, its ``flag``;
``choices`` are listed in the help, and checked here, not by the command line).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .errors import GDAError, check_choice
from .inputs.choices import check_data_choice, check_model_choice, input_fingerprints, is_zoo_model
from .inputs.datasets import BUILTIN_DATASETS, DataSplit
from .inputs.noise import NOISE_KINDS
from .inputs.zoo import ARCHITECTURES, TrainedModel
from .io import content_key
from .registry import EXECUTORS, GROUPINGS, METHODS

DEVICES = ("auto", "cpu", "cuda")
#: request fields that say where a run is computed, not what: they never change the results
PLACEMENT_FIELDS = ("device", "executor", "ray_address")
GOLDS = ("lds", "further-training", "leave-group-out")
SIGNALS = ("neighbours", "self-influence", "validation")
#: rankings a noisy-label evaluation compares with the request's own: the loss, the neighbours
#: signal, and Confident Learning on the final model's probabilities and cross-validated
BASELINES = ("loss", "neighbours", "confident-learning-final", "confident-learning")
EMBEDDERS = ("umap", "pca")
EMBEDDING_SPACES = ("features", "inputs")
GOLD_OPTIMIZERS = ("sgd", "adam")


def documented(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
               **command_line: Any) -> Any:
    """A request field with its help (and command-line ``flag``, ``choices`` or ``metavar``)."""
    return field(default=default, default_factory=default_factory, metadata={"help": help, **command_line})


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GDAError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def check_device(name: str) -> None:
    check_choice("device", name, DEVICES)


def check_executor(name: str, ray_address: str | None = None) -> None:
    """A one-line error for an unknown executor, one that cannot run here, or a cluster
    address without the executor that uses it."""
    EXECUTORS.get_checked(name).check_available()
    if ray_address is not None and name != "ray":
        raise GDAError(f"--ray-address needs --executor ray, not {name!r}")


def check_method(name: str, options: dict | None = None) -> None:
    """A registered method whose options build (a bad option fails here, with its own message)."""
    METHODS.get_checked(name).make_options(**(options or {}))


def check_grouping(name: str, n_groups: int | None) -> None:
    grouping = GROUPINGS.get_checked(name)
    if n_groups is None and not grouping.fixed_group_count:
        raise GDAError(f"grouping {name!r} needs a number of groups (--groups K)")
    if n_groups is not None and n_groups < 1:
        raise GDAError(f"number of groups must be >= 1, got {n_groups}")


#: the largest seed: NumPy's and scikit-learn's seeds are below 2**32, and runs derive further
#: seeds from it by adding small offsets (one per retraining), which must stay in range too
MAX_SEED = 2**31 - 1


def check_seed(seed: object) -> None:
    """A whole number in 0..MAX_SEED, or one line (a negative or huge seed would fail deep inside)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise GDAError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")


def check_interval(name: str, value: float, low: float, high: float, *, low_closed: bool = False,
                   high_closed: bool = False) -> None:
    """``value`` inside the interval from ``low`` to ``high`` (ends included as asked), or one line."""
    inside = (low <= value if low_closed else low < value) and (value <= high if high_closed else value < high)
    if not inside:
        interval = f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"
        raise GDAError(f"{name} must lie in {interval}, got {value}")


#: the placement fields' help, shared by every request that has them
_EXECUTOR = dict(choices=EXECUTORS, help="where the training side runs: local (this process) or ray (shards on a "
                                          "Ray cluster)")
_RAY_ADDRESS = dict(metavar="ADDRESS", help="Ray cluster to use with --executor ray ('auto': the one `ray start` "
                                             "made on this machine); none: a local Ray started for the run")


class Request:
    """What every request shares: JSON form and the identity its results are stored under."""

    #: the store's kind of the results (``scores``, ``flags``, ...); set by subclasses
    result_kind: ClassVar[str] = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def params(self) -> dict:
        """What the results depend on: the request without where it runs."""
        return {k: v for k, v in self.to_json().items() if k not in PLACEMENT_FIELDS}


@dataclass
class Choices(Request):
    """The data and model a run uses (built-in names or file paths), its seed and device."""

    data: str = documented("digits", metavar="NAME|PATH",
                           help=f"built-in data set ({', '.join(BUILTIN_DATASETS)}) or a .csv, .npz or .zip "
                                f"of image folders")
    model: str = documented("mlp", metavar="NAME|PATH",
                            help=f"zoo model ({', '.join(ARCHITECTURES)}) or a .pt2 program or a .safetensors "
                                 f"state dict with its .json config beside it")
    seed: int = documented(0, help="seed of the data split, the demo model and every random choice")
    device: str = documented("auto", choices=DEVICES, help="where torch computes (auto: CUDA when present)")

    def __post_init__(self) -> None:
        check_data_choice(self.data)
        check_model_choice(self.model)
        check_device(self.device)
        check_seed(self.seed)

    def identity(self, split: DataSplit, model: TrainedModel) -> dict:
        """What the result depends on: the request (where it runs aside), and the fingerprints
        of the data and of the model's weights, so a retrained model is a different run."""
        return {**self.params(), **input_fingerprints(split, model)}

    def key(self, split: DataSplit, model: TrainedModel) -> str:
        """The store's content key of this request."""
        return content_key(self.result_kind, self.identity(split, model))


@dataclass
class ScoringSpec(Choices):
    """Which method and grouping score the training points."""

    method: str = documented("if-cg", choices=METHODS, help="attribution method")
    grouping: str = documented("per-example", choices=GROUPINGS, help="how training points are grouped")
    n_groups: int | None = documented(None, flag="--groups", metavar="K",
                                      help="number of groups K (fixed-count groupings take theirs)")
    method_options: dict = documented(default_factory=dict, flag="--option",
                                      help="any other method option, e.g. --option max_iterations=200")
    grouping_options: dict = documented(default_factory=dict, flag="--grouping-option",
                                        help="a grouping option, e.g. --grouping-option iterations=50")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_method(self.method, self.method_options)
        check_grouping(self.grouping, self.n_groups)


@dataclass
class AttributionRequest(ScoringSpec):
    """Everything one attribution run depends on."""

    result_kind: ClassVar[str] = "scores"

    method: str = "grad-dot"
    grouping: str = "grad-kmeans"
    test_size: int | None = documented(200, metavar="N", help="the first N test points (none: all of them)")
    executor: str = documented("local", **_EXECUTOR)
    ray_address: str | None = documented(None, **_RAY_ADDRESS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.test_size is not None and self.test_size < 1:
            raise GDAError(f"test size must be >= 1, got {self.test_size}")
        check_executor(self.executor, self.ray_address)


@dataclass
class MembersRequest(AttributionRequest):
    """Drill into one group of an attribution run: its members' own scores for the run's
    test points (the fitted method re-pointed at the members one by one)."""

    result_kind: ClassVar[str] = "members"

    group: int = documented(0, metavar="G", help="the group of the attribution run to score member by member")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.group, bool) or not isinstance(self.group, int) or self.group < 0:
            raise GDAError(f"group must be a group number >= 0, got {self.group!r}")

    def attribution(self) -> AttributionRequest:
        """The attribution run this drills into."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(AttributionRequest)}
        return AttributionRequest(**fields)


@dataclass
class PointStatsRequest(Choices):
    """Per training point: the model's loss, prediction and confidence, and the method's
    self-influence per example (what the map colours and the selection table show)."""

    result_kind: ClassVar[str] = "point-stats"

    method: str = documented("grad-dot", choices=METHODS, help="the method whose self-influence is reported")
    method_options: dict = documented(default_factory=dict, flag="--option",
                                      help="any other method option, e.g. --option last_layer_only=true")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_method(self.method, self.method_options)


@dataclass
class FlagRequest(ScoringSpec):
    """Flag the training points of a data set and model, most suspicious first."""

    result_kind: ClassVar[str] = "flags"

    signal: str = documented("neighbours", choices=SIGNALS,
                             help="neighbours (label disagreement among a point's nearest training points in the "
                                  "model's layer inputs; no attribution method), self-influence, or influence on "
                                  "a held-out validation loss")
    refine_fraction: float = documented(0.3, flag="--refine", metavar="FRACTION",
                                        help="grouped runs: re-score per example the top groups covering this "
                                             "fraction of the points")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("signal", self.signal, SIGNALS)
        check_interval("refine fraction", self.refine_fraction, 0.0, 1.0, low_closed=True, high_closed=True)


def _check_retrainable(model: str, command: str) -> None:
    """Noisy-label evaluation and pruning retrain the model from scratch, so they need an
    architecture, not a file of trained weights."""
    if not is_zoo_model(model):
        raise GDAError(f"{command} retrains the model from scratch, so it needs a zoo architecture "
                       f"({', '.join(ARCHITECTURES)}), not an uploaded model file")


@dataclass
class NoisyConfig(FlagRequest):
    """Flip a fraction of the training labels (seeded), retrain, flag, and measure how many
    flips each ranking finds against the fraction of the training set inspected."""

    result_kind: ClassVar[str] = "noisy"

    flip: float = documented(0.1, help="fraction of the training labels flipped")
    noise: str = documented("uniform", choices=NOISE_KINDS,
                            help="uniform (to any other class) or pairs (to a confusable partner class)")
    validation_fraction: float = documented(0.1, flag="--validation", metavar="FRACTION",
                                            help="held-out stratified part of the training split")
    baselines: tuple[str, ...] = documented(BASELINES, choices=BASELINES, help="rankings compared with the method's")
    cl_folds: int = documented(3, flag="--folds", help="Confident Learning's cross-validation folds")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.baselines = tuple(self.baselines)
        check_interval("flip fraction", self.flip, 0.0, 1.0)
        check_choice("noise", self.noise, NOISE_KINDS)
        check_interval("validation fraction", self.validation_fraction, 0.0, 0.5)
        _check_retrainable(self.model, "noisy")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise GDAError(f"unknown baseline {', '.join(unknown)}; choose from: {', '.join(BASELINES)}")
        if self.cl_folds < 2:
            raise GDAError(f"Confident Learning needs at least 2 folds, got {self.cl_folds}")


@dataclass
class PruneConfig(ScoringSpec):
    """Remove the lowest-value groups (by total influence on the validation loss) at several
    fractions, retrain, and compare test accuracy with removing random groups."""

    result_kind: ClassVar[str] = "prune"

    method: str = "if-cg"
    grouping: str = "grad-kmeans"
    fractions: tuple[float, ...] = documented((0.1, 0.2, 0.3, 0.5), help="fractions of the training points removed")
    seeds: int = documented(3, help="retraining seeds averaged")
    validation_fraction: float = documented(0.1, flag="--validation", metavar="FRACTION",
                                            help="held-out stratified part of the training split")
    flip: float = documented(0.0, help="flip this fraction of labels first (0: the clean data)")
    noise: str = documented("uniform", choices=NOISE_KINDS, help="how labels are flipped (uniform or pairs)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fractions = tuple(float(f) for f in self.fractions)
        if not self.fractions:
            raise GDAError("name at least one fraction to remove")
        for fraction in self.fractions:
            check_interval("fractions removed", fraction, 0.0, 1.0)
        if self.seeds < 1:
            raise GDAError(f"seeds must be >= 1, got {self.seeds}")
        check_interval("flip fraction", self.flip, 0.0, 1.0, low_closed=True)
        check_choice("noise", self.noise, NOISE_KINDS)
        check_interval("validation fraction", self.validation_fraction, 0.0, 0.5)
        _check_retrainable(self.model, "prune")


@dataclass
class Recipe:
    """How trained copies of a model are trained (gold standards, retraining).
    ``normalize='batch'`` divides a batch's weighted loss by the batch size, so a weight is an
    absolute up-weighting (further training); ``'weights'`` divides by the batch's total
    weight, i.e. trains on the weighted subset (retraining on subsets, as ``train_model`` does)."""

    optimizer: str = "sgd"
    lr: float = 0.01
    batch_size: int = 64
    weight_decay: float = 0.0
    momentum: float = 0.0
    normalize: str = "batch"

    def __post_init__(self) -> None:
        if self.optimizer not in GOLD_OPTIMIZERS:
            raise GDAError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.lr <= 0 or self.batch_size < 1 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise GDAError("need lr > 0, batch_size >= 1, weight_decay >= 0 and 0 <= momentum < 1")
        if self.normalize not in ("batch", "weights"):
            raise GDAError(f"normalize must be 'batch' or 'weights', got {self.normalize!r}")

    @classmethod
    def of_model(cls, model: TrainedModel) -> "Recipe":
        """The model's own training recipe. Full-batch L-BFGS (logistic regression) has no
        batched form; Adam on full batches reaches the same convex optimum."""
        config = model.train_config
        if config.optimizer == "lbfgs":
            return cls(optimizer="adam", lr=0.05, batch_size=config.batch_size,
                       weight_decay=config.weight_decay, normalize="weights")
        return cls(optimizer=config.optimizer, lr=config.lr, batch_size=config.batch_size,
                   weight_decay=config.weight_decay, momentum=0.9 if config.optimizer == "sgd" else 0.0,
                   normalize="weights")


@dataclass
class GoldConfig:
    """Which gold standard a sweep compares against, and its parameters."""

    kind: str = documented("lds", flag="--gold", choices=GOLDS, help="the gold standard")
    n_subsets: int = documented(50, flag="--subsets", help="LDS: number of subset models (point-level, and "
                                                            "group-level per grouping and K)")
    alpha: float = documented(0.5, help="LDS: fraction of the training points (point-level) and of the groups "
                                         "(group-level) kept per subset")
    epochs: tuple[float, ...] = documented((1.0,), help="further training: horizons in epochs")
    seeds: int = documented(1, help="seeds averaged in the gold standard")
    epsilon: float | None = documented(1.0, help="further training: up-weighting (1 + epsilon); none leaves the "
                                                  "group out")
    lr: float = documented(0.01, help="the gold standard's training learning rate")
    optimizer: str = documented("sgd", choices=GOLD_OPTIMIZERS, help="the gold standard's training optimizer")
    batch_size: int = documented(64, help="the gold standard's training batch size")
    measurement: str = documented("loss", flag="--gold-measurement", choices=("loss", "margin"),
                                  help="test-side quantity the gold standard measures")

    def __post_init__(self) -> None:
        self.epochs = tuple(float(e) for e in self.epochs)
        check_choice("gold standard", self.kind, GOLDS)
        if self.seeds < 1 or self.n_subsets < 2:
            raise GDAError("seeds must be >= 1 and n_subsets >= 2")
        self.recipe()  # validates

    def recipe(self) -> Recipe:
        return Recipe(optimizer=self.optimizer, lr=self.lr, batch_size=self.batch_size)


@dataclass
class SweepConfig(Choices):
    """Every combination of methods x groupings x group counts, against one gold standard."""

    result_kind: ClassVar[str] = "sweep"

    methods: tuple[str, ...] = documented(("grad-dot", "if-arnoldi"), choices=METHODS, help="methods compared")
    groupings: tuple[str, ...] = documented(("random", "grad-kmeans"), choices=GROUPINGS, help="groupings compared")
    group_counts: tuple[int, ...] = documented((15, 150), flag="--groups", help="group counts K")
    per_example: bool = documented(True, help="also the K = N per-example point")
    test_size: int = documented(100, metavar="N", help="the first N test points")
    gold: GoldConfig = field(default_factory=GoldConfig)
    horizon_matched: bool = documented(False, help="also run influence methods with damping 1/(lr x T) for each "
                                                   "further-training horizon T")
    #: options per method name (not a flag: a dict of dicts)
    method_options: dict = documented(default_factory=dict, flag=None, help="options per method name")
    top_k: int = documented(10, help="top-k overlap: the k of the fidelity metric")
    # Where the methods' training side runs; like the device, not part of the sweep's cache key
    # (its result's config records them with the wall times).
    executor: str = documented("local", **_EXECUTOR)
    ray_address: str | None = documented(None, **_RAY_ADDRESS)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_executor(self.executor, self.ray_address)
        self.methods, self.groupings = tuple(self.methods), tuple(self.groupings)
        self.group_counts = tuple(int(k) for k in self.group_counts)
        for name in self.methods:
            check_method(name, self.method_options.get(name, {}))
        for name in self.groupings:
            GROUPINGS.check(name)
        if any(k < 1 for k in self.group_counts):
            raise GDAError("group counts must be >= 1")
        if self.test_size < 1:
            raise GDAError("test size must be >= 1")
        if isinstance(self.gold, dict):
            self.gold = GoldConfig(**self.gold)


@dataclass
class EmbeddingRequest(Choices):
    """A 2-D map of the training (and test) points of one data set and model.

    ``space="features"`` embeds the model's hidden representation (what its last layer sees),
    ``"inputs"`` the raw inputs. ``embedder="pca"`` is a fast stand-in for UMAP, whose numba
    compile costs ~35 s in every new process: that is why embeddings run as store-cached jobs."""

    result_kind: ClassVar[str] = "umap"

    space: str = documented("features", choices=EMBEDDING_SPACES,
                            help="features: the model's hidden representation; inputs: the raw inputs")
    embedder: str = documented("umap", choices=EMBEDDERS, help="umap, or pca (a fast stand-in)")
    n_neighbors: int = documented(15, help="UMAP's number of neighbours")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("embedder", self.embedder, EMBEDDERS)
        check_choice("embedding space", self.space, EMBEDDING_SPACES)
        if self.n_neighbors < 2:
            raise GDAError(f"n_neighbors must be >= 2, got {self.n_neighbors}")
