"""Executors: where the training side of attribution is computed.

Every method's expensive pass is the same: the group gradients of the training side (one
batched backward per group, :meth:`GradientEngine.group_gradients`), transformed and dotted
with the transformed test side. An executor maps "score this range of whole groups" over the
K groups of one view and returns the (n_test, K) block ``weight * test_side @ train_side.T``:

- ``local`` (the default): today's loop in this process, over the method's own stream of
  chunks (kept in memory between calls when it fits).
- ``ray``: contiguous ranges of whole groups as Ray tasks. The driver broadcasts once, with
  ``ray.put``, the model as its config plus numpy weights (never a live module), the
  training data (or, for a built-in set, only its name: workers load it themselves) with the
  group labels, and the transformed test side. A task rebuilds the module, computes its
  groups' gradients and returns its (n_test, shard groups) score block, never P-dimensional
  gradients. Results are collected in shard order with a bounded number of tasks in flight;
  a task whose worker dies is retried.

:meth:`Executor.map` runs any other independent pieces of work the same way (the gold
standards' blocks of trained model copies, :mod:`gda_core.evaluation.gold`).

Executors register by name (``EXECUTORS``) like methods and groupings. Ray is an optional
extra, imported only when the ``ray`` executor is used.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import numpy as np
import torch

from ..errors import GDAError, first_line
from ..inputs.datasets import Dataset, load_builtin
from ..inputs.zoo import ModelConfig, ZooModel, module_from_arrays, state_arrays
from ..progress import FractionDone, no_fraction
from ..registry import EXECUTORS
from ..requests import check_executor
from .grads import GradientChunk, GradientEngine
from .grouping import Groups

Transform = Callable[[torch.Tensor], torch.Tensor]
#: ``function(shared, item, progress)``: one independent piece of work of :meth:`Executor.map`
ItemFunction = Callable[[object, object, FractionDone], object]


RAY_INSTALL_HINT = ("the ray executor needs Ray: pip install 'gda-explorer[ray]' "
                    "(in a checkout: pip install -e '.[ray]')")


# ------------------------------------------------------------------ what a shard needs
@dataclass(frozen=True)
class BuiltinSource:
    """Training data that workers load themselves, by built-in name, instead of receiving it."""

    name: str
    seed: int = 0
    test_fraction: float = 0.2


@dataclass
class TrainingData:
    """The training set and its grouping as a worker gets them: arrays, or a built-in name
    plus the rows used (checked against the driver's fingerprint on load)."""

    fingerprint: str
    group_labels: np.ndarray
    n_groups: int
    arrays: tuple[np.ndarray, np.ndarray, list[str]] | None = None
    builtin: BuiltinSource | None = None
    rows: np.ndarray | None = None

    @classmethod
    def of(cls, train: Dataset, groups: Groups, builtin: BuiltinSource | None = None) -> "TrainingData":
        common = dict(fingerprint=train.fingerprint(), group_labels=groups.labels, n_groups=groups.n_groups)
        if builtin is not None and train.name == builtin.name:
            return cls(**common, builtin=builtin, rows=np.asarray(train.indices))
        arrays = (train.features.detach().cpu().numpy(), train.labels.detach().cpu().numpy(), list(train.class_names))
        return cls(**common, arrays=arrays)

    def broadcast_bytes(self) -> int:
        """Bytes this puts in the object store (the arrays, or only the rows and labels)."""
        arrays = [self.group_labels] + ([] if self.arrays is None else list(self.arrays[:2]))
        return int(sum(a.nbytes for a in arrays) + (0 if self.rows is None else self.rows.nbytes))

    def load(self) -> Dataset:
        """The training set, loaded once per worker process."""
        cached = _WORKER_DATA.get(self.fingerprint)
        if cached is not None:
            return cached
        if self.builtin is not None:
            split = load_builtin(self.builtin.name, seed=self.builtin.seed, test_fraction=self.builtin.test_fraction)
            positions = np.searchsorted(split.train.indices, self.rows).clip(0, len(split.train) - 1)
            if not np.array_equal(split.train.indices[positions], self.rows):
                raise GDAError(f"this worker's built-in {self.builtin.name!r} lacks rows the driver used")
            train = split.train.subset(positions)
            if train.fingerprint() != self.fingerprint:
                # A node with another package or scikit-learn version would score other data.
                raise GDAError(f"this worker's copy of {self.builtin.name!r} differs from the driver's; "
                               "install the same gda-explorer and scikit-learn versions on every node")
        else:
            features, labels, class_names = self.arrays  # type: ignore[misc]
            train = Dataset(_tensor(features), _tensor(labels), class_names)
        _WORKER_DATA.clear()  # keep one data set per worker process
        _WORKER_DATA[self.fingerprint] = train
        return train


_WORKER_DATA: dict[str, Dataset] = {}


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory; Ray's object store hands out read-only arrays,
    which torch warns about although nothing here writes to them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


@dataclass
class ViewRecipe:
    """One view's training side as a worker rebuilds it: the model as config plus numpy
    weights, the objective and example weights, and the (picklable) chunk transform."""

    model_config: dict
    weights: dict[str, np.ndarray]
    last_layer_only: bool
    chunk_examples: int
    objective: str
    example_weights: np.ndarray | None
    transform: Transform | None
    weight: float
    parameters: str = "all"

    @classmethod
    def of(cls, engine: GradientEngine, config: ModelConfig, objective: str, example_weights: torch.Tensor | None,
           transform: Transform | None, weight: float) -> "ViewRecipe":
        if not isinstance(engine.module, ZooModel):
            raise GDAError("the ray executor needs a zoo model (logreg, mlp, cnn): workers rebuild it from its config")
        return cls(
            model_config=config.to_json(),
            weights=state_arrays(engine.module),
            last_layer_only=engine.last_layer_only, chunk_examples=engine.chunk_limit, objective=objective,
            example_weights=None if example_weights is None else example_weights.detach().cpu().numpy(),
            transform=transform, weight=weight, parameters=engine.parameters,
        )

    def broadcast_bytes(self) -> int:
        extra = 0 if self.example_weights is None else self.example_weights.nbytes
        return int(sum(w.nbytes for w in self.weights.values()) + extra)

    def engine(self) -> GradientEngine:
        module = module_from_arrays(ModelConfig.from_json(self.model_config), self.weights)
        return GradientEngine(module, last_layer_only=self.last_layer_only, chunk_examples=self.chunk_examples,
                              parameters=self.parameters)


def fill_scores(block: torch.Tensor, chunks: Iterator[GradientChunk], test_side: torch.Tensor, weight: float,
                done: Callable[[int], None] = lambda groups: None) -> torch.Tensor:
    """``block[:, g] = weight * test_side @ gradient_g`` for each group g of the chunks; the
    one loop both executors run."""
    for chunk in chunks:
        ids = torch.as_tensor(chunk.group_ids, device=block.device)
        block[:, ids] = weight * (test_side @ chunk.gradients.T)
        done(len(chunk.group_ids))
    return block


def score_group_range(data: TrainingData, view: ViewRecipe, test_side: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The (n_test, stop - start) score block of groups ``start..stop - 1``: a Ray task's work."""
    train = data.load()
    rows = np.flatnonzero((data.group_labels >= start) & (data.group_labels < stop))
    engine = view.engine()
    example_weights = None if view.example_weights is None else _tensor(view.example_weights)[rows]
    chunks = engine.group_gradients(train.subset(rows), data.group_labels[rows] - start, stop - start,
                                    objective=view.objective, weights=example_weights)
    if view.transform is not None:
        chunks = (GradientChunk(c.group_ids, view.transform(c.gradients)) for c in chunks)
    test = _tensor(test_side)
    block = torch.zeros(len(test), stop - start, dtype=test.dtype)
    return fill_scores(block, chunks, test, view.weight).numpy()


def shard_ranges(group_sizes: np.ndarray, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous ranges of whole groups with about equal numbers of training points each."""
    n_shards = max(1, min(int(n_shards), len(group_sizes)))
    cumulative = np.cumsum(group_sizes)
    targets = cumulative[-1] * np.arange(1, n_shards) / n_shards
    cuts = np.searchsorted(cumulative, targets, side="left") + 1
    bounds = np.unique(np.concatenate([[0], cuts, [len(group_sizes)]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class TrainSide:
    """One view's training side as an executor sees it: a stream of transformed group
    gradients in this process, or the recipe a worker rebuilds it from."""

    train: Dataset
    groups: Groups
    weight: float
    chunks: Callable[[], Iterator[GradientChunk]]
    recipe: Callable[[], ViewRecipe]


# ------------------------------------------------------------------------ executors
class Executor(ABC):
    """Computes ``weight * test_side @ train_side.T`` for all K groups of one view."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: whether the training side is kept between calls, so that scoring test points in
    #: chunks (which lets an interrupted job resume) costs no extra training-side passes
    reuses_train_side: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            EXECUTORS[cls.name] = cls

    @classmethod
    def check_available(cls) -> None:
        """Raise a one-line :class:`GDAError` when this executor cannot run here."""

    @classmethod
    @abstractmethod
    def configured(cls, *, address: str | None, builtin: BuiltinSource | None) -> "Executor":
        """An executor from the request's settings (a cluster address, where data comes from)."""

    @abstractmethod
    def score(self, side: TrainSide, test_side: torch.Tensor, progress: FractionDone) -> torch.Tensor:
        """(n_test, K) scores of one view; ``progress(fraction)`` along the way."""

    @abstractmethod
    def map(self, function: ItemFunction, shared: object, items: list, sizes: list[float],
            progress: FractionDone) -> list:
        """``function(shared, item, progress)`` for every item, results in item order.

        ``shared`` is sent once (it must pickle for remote executors, which first call its
        ``check_portable()`` when it has one); ``sizes`` weigh the items' work for
        ``progress(fraction of all)``."""

    def close(self) -> None:
        """Release what the executor started."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    """This process, chunk by chunk (today's loop)."""

    name = "local"
    description = "this process (default)"
    reuses_train_side = True

    @classmethod
    def configured(cls, *, address: str | None, builtin: BuiltinSource | None) -> "LocalExecutor":
        return cls()  # it has the data and needs no address

    def score(self, side: TrainSide, test_side: torch.Tensor, progress: FractionDone) -> torch.Tensor:
        n_groups = side.groups.n_groups
        block = torch.zeros(len(test_side), n_groups, dtype=test_side.dtype, device=test_side.device)
        state = {"done": 0}

        def done(count: int) -> None:
            state["done"] += count
            progress(state["done"] / n_groups)

        return fill_scores(block, side.chunks(), test_side, side.weight, done)

    def map(self, function: ItemFunction, shared: object, items: list, sizes: list[float],
            progress: FractionDone) -> list:
        total, before, results = float(sum(sizes)) or 1.0, 0.0, []
        for item, size in zip(items, sizes):
            results.append(function(shared, item, lambda f, before=before, size=size: progress((before + f * size) / total)))
            before += size
        return results


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a ``host:port`` nothing listens at: ``ray.init`` keeps retrying
    such an address for minutes. ``auto`` and ``ray://`` addresses are left to Ray."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise GDAError(f"no Ray cluster answers at {address!r}: {error}") from None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise GDAError(RAY_INSTALL_HINT) from None
    return ray


@dataclass
class RayExecutor(Executor):
    """Shards of whole groups as Ray tasks on a cluster (``address``), or on a local Ray
    started for the run (``address=None``) and stopped at :meth:`close`."""

    name: ClassVar[str] = "ray"
    description: ClassVar[str] = "shards of groups as Ray tasks (pip install 'gda-explorer[ray]')"

    address: str | None = None
    #: training data workers load by name instead of receiving it (when it is that built-in)
    builtin: BuiltinSource | None = None
    #: shards per CPU of the cluster: a few, so a slow or retried shard does not hold up the end
    shards_per_cpu: int = 4
    #: tasks in flight at once (None = 2 x the cluster's CPUs)
    max_in_flight: int | None = None
    #: retries of a shard whose worker died or hit a transient error
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.shards_per_cpu < 1 or (self.max_in_flight is not None and self.max_in_flight < 1):
            raise GDAError("shards_per_cpu and max_in_flight must be >= 1")
        if self.max_retries < 0:
            raise GDAError(f"max_retries must be >= 0, got {self.max_retries}")
        self._started = False
        self._data: tuple[Dataset, Groups, object] | None = None
        self.broadcast_bytes: dict[str, int] = {}

    @classmethod
    def check_available(cls) -> None:
        if importlib.util.find_spec("ray") is None:
            raise GDAError(RAY_INSTALL_HINT)

    @classmethod
    def configured(cls, *, address: str | None, builtin: BuiltinSource | None) -> "RayExecutor":
        cls.check_available()
        return cls(address=address, builtin=builtin)

    def _ray(self):
        ray = _import_ray()
        if not ray.is_initialized():
            if self.address is None:
                # A Ray of our own for this run, reachable from this machine only.
                options = {"address": "local", "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
            else:
                check_reachable(self.address)
                options = {"address": self.address}
            try:
                ray.init(logging_level=logging.WARNING, **options)
            except Exception as error:  # noqa: BLE001 - any start failure is one line for the user
                first = first_line(error, width=10_000)
                where = "a local Ray" if self.address is None else f"the Ray cluster at {self.address!r}"
                raise GDAError(f"could not start or reach {where}: {first}") from None
            self._started = True
        return ray

    def _task(self, ray, function: Callable):
        # Application errors worth a retry; a dead worker process is retried by max_retries alone.
        return ray.remote(function).options(
            num_cpus=1, max_retries=self.max_retries, retry_exceptions=[OSError, MemoryError])

    def _training_data(self, ray, side: TrainSide):
        """The training data's object ref, put once for all views of one fitted method."""
        if self._data is None or self._data[0] is not side.train or self._data[1] is not side.groups:
            data = TrainingData.of(side.train, side.groups, self.builtin)
            self.broadcast_bytes["training_data"] = data.broadcast_bytes()
            self._data = (side.train, side.groups, ray.put(data))
        return self._data[2]

    def score(self, side: TrainSide, test_side: torch.Tensor, progress: FractionDone) -> torch.Tensor:
        ray = self._ray()
        data_ref = self._training_data(ray, side)
        recipe = side.recipe()
        self.broadcast_bytes["view"] = recipe.broadcast_bytes()
        test_array = test_side.detach().cpu().numpy()
        self.broadcast_bytes["test_side"] = int(test_array.nbytes)
        view_ref, test_ref = ray.put(recipe), ray.put(test_array)

        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        shards = shard_ranges(side.groups.sizes, self.shards_per_cpu * cpus)
        task = self._task(ray, score_group_range)
        blocks = self._gather(ray, lambda index: task.remote(data_ref, view_ref, test_ref, *shards[index]),
                              [b - a for a, b in shards], progress)
        return torch.from_numpy(np.concatenate(blocks, axis=1)).to(test_side.device)

    def map(self, function: ItemFunction, shared: object, items: list, sizes: list[float],
            progress: FractionDone) -> list:
        check_portable = getattr(shared, "check_portable", None)
        if check_portable is not None:  # a one-line reason now, not a serialisation traceback later
            check_portable()
        ray = self._ray()
        shared_ref = ray.put(shared)
        task = self._task(ray, function)
        return self._gather(ray, lambda index: task.remote(shared_ref, items[index], no_fraction), sizes, progress)

    def _gather(self, ray, submit: Callable[[int], object], sizes: list[float], progress: FractionDone) -> list:
        """Submit ``len(sizes)`` tasks with a bounded number in flight; results in task order."""
        in_flight = self.max_in_flight or 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        results: list = [None] * len(sizes)
        pending: dict = {}
        submitted, done, total = 0, 0.0, float(sum(sizes)) or 1.0
        try:
            while submitted < len(sizes) or pending:
                while submitted < len(sizes) and len(pending) < in_flight:
                    pending[submit(submitted)] = submitted
                    submitted += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    index = pending.pop(ref)
                    results[index] = self._result(ray, ref)
                    done += sizes[index]
                    progress(done / total)
        except BaseException:
            for ref in pending:  # a cancelled job (or a failed task) stops the rest
                ray.cancel(ref)
            raise
        return results

    @staticmethod
    def _result(ray, ref) -> np.ndarray:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, GDAError):
                raise GDAError(str(error.cause)) from None
            raise

    def close(self) -> None:
        if self._started:
            _import_ray().shutdown()
            self._started = False
        self._data = None


def make_executor(name: str = "local", *, address: str | None = None,
                  builtin: BuiltinSource | None = None) -> Executor:
    """The executor registered as ``name``; ``address`` is a Ray cluster's (``auto`` for the
    one ``ray start`` made on this machine), ``builtin`` where workers may load the data."""
    check_executor(name)
    return EXECUTORS[name].configured(address=address, builtin=builtin)
