"""The one protocol every attribution method follows, and the loop they all share.

A score is a sum over *views* (the final model; TracIn's checkpoints; TRAK's ensemble) of
``weight * test_side(test) @ train_side(groups).T``. The shared passes live here: group
gradients of the training side (streamed chunk by chunk, kept in memory when they fit),
test gradients, and the per-example pass over a curvature sample that damping defaults,
DataInf and TRAK's kernel need. A method differs only in the few lines that transform its two
sides (an inverse curvature, a normalisation, a projection).

Sign convention: a positive score means up-weighting the group lowers the
test point's loss: the group helps that prediction.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import numpy as np
import torch

from ...errors import GDAError
from ...inputs.datasets import Dataset
from ...inputs.safety import one_line
from ...inputs.zoo import TrainedModel
from ...progress import Progress, no_progress
from ...registry import METHODS
from ...task import MEASUREMENTS
from ..executors import Executor, LocalExecutor, TrainSide, Transform, ViewRecipe
from ..factored import FactoredEngine, Factors, factor_dot, factor_sq_norms
from ..grads import DEFAULT_CHUNK_EXAMPLES, GradientChunk, GradientEngine, count_parameters
from ..grouping import Groups


@dataclass
class MethodOptions:
    """Options every method takes. Subclasses add their own fields; all are validated here
    and in their ``__post_init__`` and saved as JSON beside results."""

    #: what a test point is attributed on (lower is better); None: the method's default for
    #: the data's task. The data's task refuses a measurement it does not offer, at fit.
    measurement: str | None = "loss"
    last_layer_only: bool = False
    #: the parameters differentiated, the rest held fixed (``grads.parameter_subset``): all,
    #: head, last-K (a text model's last K encoder layers and head) or lora
    parameters: str = "all"
    #: run the layers before the first differentiated parameter once per data set and
    #: differentiate only the rest (``grads.frozen_split``); off: the whole model runs for
    #: every gradient (the same scores, slower)
    frozen_prefix: bool = True
    #: rows of per-example gradients at once, at most (fewer where they pass the device's
    #: chunk budget, ``grads.chunk_rows``)
    chunk_examples: int = DEFAULT_CHUNK_EXAMPLES
    cache_bytes: int = 1 << 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.measurement is not None and self.measurement not in MEASUREMENTS:
            raise GDAError(f"measurement must be one of {', '.join(MEASUREMENTS)}, got {self.measurement!r}")
        if self.chunk_examples < 1:
            raise GDAError(f"chunk_examples must be >= 1, got {self.chunk_examples}")
        if self.last_layer_only and self.parameters != "all":
            raise GDAError(f"last-layer mode already restricts gradients to the head; drop --parameters "
                           f"{self.parameters} or --last-layer")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class View:
    """One model the score is summed over, with its weight (e.g. a TracIn checkpoint's lr)."""

    engine: GradientEngine
    weight: float


class AttributionMethod:
    """Base of all methods: ``fit(train, groups)`` then ``attribute(test)`` -> (n_test, K).

    Subclasses set ``name`` (registering them), ``Options``, and override some of
    ``_views``, ``_fit_view``, ``_transform_test``, ``_train_transform`` and
    ``_train_objective``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    #: whether a group's score equals the sum of its members' per-example scores
    gradient_linear: ClassVar[bool] = True
    #: "dot" or "cosine" when the score is a (normalised) plain gradient inner product per
    #: view, which per-example mode computes from per-layer factors without gradients;
    #: "dot+low-rank" when it is ``s g_t . g_i + (B g_t)^T diag(w) (B g_i)`` for a few rows B
    #: (:meth:`_low_rank_parts`): the factored products plus the training gradients times B
    factored_product: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            METHODS[cls.name] = cls

    def __init__(self, model: TrainedModel, **options) -> None:
        self.model = model
        self.options = self.make_options(**options)

    @classmethod
    def make_options(cls, **options) -> MethodOptions:
        """Validated options; an unknown name is a one-line error listing the known ones."""
        fields = {field.name: field for field in dataclasses.fields(cls.Options)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise GDAError(f"method {cls.name!r} has no option {', '.join(unknown)}; "
                           f"its options are: {', '.join(sorted(fields))}")
        for name, value in options.items():
            _check_option_type(cls.name, fields[name], value)
        try:
            return cls.Options(**options)
        except TypeError as error:
            raise GDAError(f"bad options for method {cls.name!r}: {error}") from None

    # ------------------------------------------------------------------ API
    def fit(self, train: Dataset, groups: Groups, progress: Progress = no_progress) -> "AttributionMethod":
        """Prepare everything that depends only on the training side."""
        self.check_model()
        if len(groups.labels) != len(train):
            raise GDAError(f"grouping covers {len(groups.labels)} points but the training set has {len(train)}")
        self.model.check_task(train)
        #: the measurement test points are attributed on, checked against the data's task
        self.measurement_ = train.task.check_measurement(self.options.measurement or self._default_measurement(train))
        started = time.perf_counter()
        self.train_ = train
        self.groups_ = groups
        self.views_ = self._views(train)
        self._train_cache: dict[int, list[GradientChunk]] = {}
        for index, view in enumerate(self.views_):
            progress("fit", index / len(self.views_))
            self._fit_view(index, view, train)
        progress("fit", 1.0)
        self._factor_cache: dict[int, list[tuple[np.ndarray, Factors]]] = {}
        self.gradient_path_ = self._gradient_path()
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def attribute(self, test: Dataset, progress: Progress = no_progress,
                  executor: Executor | None = None) -> np.ndarray:
        """Scores of shape (n_test, K): positive means the group helps the test prediction.

        ``executor`` computes the training side of each view (default: this process)."""
        self._require_fit()
        if self._factored_scoring(executor):
            return self._factored_scores(test, progress)
        return self._scores(lambda engine: engine.test_gradients(test, measurement=self.measurement_),
                            progress, executor)

    def attribute_total(self, test: Dataset, progress: Progress = no_progress) -> np.ndarray:
        """Scores of shape (K,) for the summed measurement over ``test`` (e.g. a validation
        loss): the test set as one aggregate, from one backward of its summed measurement."""
        def summed(engine: GradientEngine) -> torch.Tensor:
            zeros = np.zeros(len(test), dtype=np.int64)
            return engine.stacked(engine.group_gradients(test, zeros, 1, objective=self.measurement_), 1)

        return self._scores(summed, progress)[0]

    def self_influence(self, progress: Progress = no_progress) -> np.ndarray:
        """Each group's score on its own summed measurement, shape (K,): how much up-weighting
        a group lowers its own loss. Large for points the model finds hard to fit, e.g.
        mislabeled ones. The test side of every group goes through ``_transform_test`` (an
        inverse curvature for influence functions), paired chunk by chunk with the train side."""
        self._require_fit()
        values = np.zeros(self.groups_.n_groups)
        n_views = len(self.views_)
        for index, view in enumerate(self.views_):
            test_chunks = view.engine.group_gradients(self.train_, self.groups_.labels, self.groups_.n_groups,
                                                      objective=self.measurement_)
            done = 0
            for test_chunk, train_gradients in self._paired_train_side(index, view, test_chunks):
                test_side = self._transform_test(index, view, test_chunk.gradients)
                products = (test_side * train_gradients).sum(1)
                values[test_chunk.group_ids] += view.weight * products.double().cpu().numpy()
                done += len(test_chunk.group_ids)
                progress("self-influence", (index + done / self.groups_.n_groups) / n_views)
        return values

    def _paired_train_side(self, index: int, view: View, chunks: Iterator[GradientChunk]
                           ) -> Iterator[tuple[GradientChunk, torch.Tensor]]:
        """Each chunk of ``chunks`` (group gradients in the engine's order) with the training
        side of the same groups: looked up by group when it is kept in memory (a method may
        have formed it in another order, e.g. EK-FAC in its correction pass), else streamed
        beside it, the two passes being in step."""
        kept = self._train_cache.get(index)
        if kept is not None:
            gradients = kept[0].gradients if len(kept) == 1 else torch.cat([c.gradients for c in kept])
            position = np.empty(self.groups_.n_groups, dtype=np.int64)
            position[np.concatenate([c.group_ids for c in kept])] = np.arange(len(gradients))
            for chunk in chunks:
                yield chunk, gradients[torch.as_tensor(position[chunk.group_ids], device=gradients.device)]
            return
        for chunk, train_chunk in zip(chunks, self._train_side(index, view)):
            if not np.array_equal(chunk.group_ids, train_chunk.group_ids):
                raise RuntimeError("test-side and train-side group chunks are out of step")
            yield chunk, train_chunk.gradients

    def with_groups(self, groups: Groups) -> "AttributionMethod":
        """The fitted method re-pointed at another grouping of the same training set, keeping
        the training-side state (curvature, damping, kernels), which never depends on the
        groups: a coarse-to-fine search refines a few groups without refitting."""
        self._require_fit()
        if len(groups.labels) != len(self.train_):
            raise GDAError(f"grouping covers {len(groups.labels)} points but the training set has {len(self.train_)}")
        self.groups_ = groups
        self._train_cache = {}
        self.gradient_path_ = self._gradient_path()
        return self

    # ------------------------------------------------------- factored products
    def _per_example(self) -> bool:
        labels = self.groups_.labels
        return self.groups_.n_groups == len(labels) and np.array_equal(np.sort(labels), np.arange(len(labels)))

    def _factored_scoring(self, executor: Executor | None) -> bool:
        """Whether scores come from per-layer factors: a plain gradient product, per-example
        mode, this process, and every view's engine on the factored path."""
        if self.factored_product is None or not self._per_example():
            return False
        if executor is not None and not isinstance(executor, LocalExecutor):
            return False
        return all(isinstance(view.engine, FactoredEngine) and view.engine.check(self.train_, self.measurement_)
                   for view in self.views_)

    def _gradient_path(self) -> dict:
        """Which gradient path each side takes, for ``method_info``."""
        engine = self.views_[0].engine
        per_example = self._per_example()
        path = engine.path if isinstance(engine, FactoredEngine) else "vmap"
        if isinstance(engine, FactoredEngine) and per_example:
            engine.check(self.train_, self._train_objective(0, self.views_[0])[0])
            path = engine.path
        scores = "test side @ training-side gradients"
        if self._factored_scoring(None):
            scores = ("per-layer factored inner products (d_t . d_i)(a_t . a_i), no per-example gradients"
                      if self.factored_product != "dot+low-rank" else
                      "per-layer factored inner products plus a low-rank term (training gradients times its basis)")
        return {"test_side": path,
                "train_side": path if per_example else "group sums (vmap, or one backward per large group)",
                "scores": scores, "frozen_prefix": engine.prefix_description}

    def _train_factors(self, index: int, view: View) -> Iterator[tuple[np.ndarray, Factors]]:
        """The training side's per-example factors, kept in memory after the first pass when they fit."""
        if index in self._factor_cache:
            yield from self._factor_cache[index]
            return
        objective, weights = self._train_objective(index, view)
        engine: FactoredEngine = view.engine  # type: ignore[assignment]
        kept: list | None = []
        used = 0
        budget = self.options.cache_bytes // max(1, len(self.views_))
        for rows, factors in engine.factor_chunks(self.train_, objective=objective, weights=weights):
            used += sum(a.numel() * a.element_size() + d.numel() * d.element_size() for a, d in factors)
            if kept is not None:
                if used <= budget:
                    kept.append((rows, factors))
                else:
                    kept = None
            yield rows, factors
        if kept is not None:
            self._factor_cache[index] = kept

    def _factored_scores(self, test: Dataset, progress: Progress) -> np.ndarray:
        """sum over views of weight * g_t . g_i (or the cosine, or plus a low-rank term), from per-layer factors."""
        started = time.perf_counter()
        scores = None
        labels = self.groups_.labels
        for index, view in enumerate(self.views_):
            engine: FactoredEngine = view.engine  # type: ignore[assignment]
            pieces = [factors for _, factors in engine.factor_chunks(test, objective=self.measurement_)]
            test_factors = [(torch.cat([p[layer][0] for p in pieces]), torch.cat([p[layer][1] for p in pieces]))
                            for layer in range(len(pieces[0]))]
            cosine = self.factored_product == "cosine"
            test_norms = factor_sq_norms(test_factors).sqrt().clamp_min(1e-30) if cosine else None
            low_rank = self._low_rank_parts(index, view) if self.factored_product == "dot+low-rank" else None
            if low_rank is not None:
                scale, basis, gain = low_rank
                test_coordinates = (engine.gradients_of(test_factors) @ basis.T) * gain
            block = torch.zeros(len(test), len(labels), dtype=engine.dtype, device=engine.device)
            for rows, factors in self._train_factors(index, view):
                dots = factor_dot(test_factors, factors)
                if cosine:
                    dots = dots / test_norms[:, None] / factor_sq_norms(factors).sqrt().clamp_min(1e-30)[None]
                if low_rank is not None:
                    dots = scale * dots + test_coordinates @ (engine.gradients_of(factors) @ basis.T).T
                block[:, torch.as_tensor(labels[rows], device=block.device)] = view.weight * dots
                progress("attribute", (index + (rows[-1] + 1) / len(labels)) / len(self.views_))
            scores = block if scores is None else scores + block
        self.attribute_seconds_ = time.perf_counter() - started
        return scores.double().cpu().numpy()

    def _require_fit(self) -> None:
        if not hasattr(self, "groups_"):
            raise GDAError("call fit(train, groups) before attribute(test)")

    def _scores(self, test_gradients: Callable[[GradientEngine], torch.Tensor], progress: Progress,
                executor: Executor | None = None) -> np.ndarray:
        """(n_rows, K) = sum over views of weight * transformed test side @ train side.T, the
        train side computed by ``executor`` (default: this process)."""
        self._require_fit()
        executor = executor or LocalExecutor()
        started = time.perf_counter()
        scores = None
        n_views = len(self.views_)
        for index, view in enumerate(self.views_):
            test_side = self._transform_test(index, view, test_gradients(view.engine))
            side = TrainSide(self.train_, self.groups_, view.weight,
                             chunks=lambda index=index, view=view: self._train_side(index, view),
                             recipe=lambda index=index, view=view: self._view_recipe(index, view))
            block = executor.score(side, test_side, lambda f, index=index: progress("attribute", (index + f) / n_views))
            scores = block if scores is None else scores + block
        self.attribute_seconds_ = time.perf_counter() - started
        self.gradient_path_ = self._gradient_path()  # the test side's check has run by now
        return scores.double().cpu().numpy()

    @classmethod
    def check_size(cls, options: MethodOptions, n_parameters: int) -> None:
        """Refusals that depend only on the options and the number of parameters attributed
        to: the pipeline checks them before a zoo model is even trained. Nothing by default."""

    def check_model(self) -> None:
        """Refusals that depend only on the model and the options (its parameter count, what
        it carries), so that they come before any data pass: ``fit`` starts with them, and the
        pipeline calls this before grouping."""
        self.check_size(self.options, attributed_parameters(self.model.module, self.options))

    # ------------------------------------------------------------ overridables
    def _default_measurement(self, train: Dataset) -> str:
        """The measurement when the options name none."""
        return "loss"

    def _views(self, train: Dataset) -> list[View]:
        return [View(self._engine(self.model.module), 1.0)]

    def _fit_view(self, index: int, view: View, train: Dataset) -> None:
        """Training-side state for one view (curvature, kernels, damping)."""

    def _transform_test(self, index: int, view: View, gradients: torch.Tensor) -> torch.Tensor:
        return gradients

    def _train_transform(self, index: int, view: View) -> Transform | None:
        """What is applied to each chunk of group gradients (None: nothing). It must pickle
        (a module-level function, or a method of a small object): Ray workers apply it."""
        return None

    def _train_projector(self, index: int, view: View):
        """A projector the engine applies to the training side itself (it may project
        per-layer factors without forming gradients); when set, it replaces
        ``_train_transform`` in this process (workers still apply the transform)."""
        return None

    def _train_objective(self, index: int, view: View) -> tuple[str, torch.Tensor | None]:
        """The objective whose group gradients form the training side, and example weights."""
        return "loss", None

    def _low_rank_parts(self, index: int, view: View) -> tuple[float, torch.Tensor, torch.Tensor]:
        """For ``factored_product = "dot+low-rank"``: (s, B (r x P), w (r,)) such that the test
        side is ``s g_t + B^T diag(w) B g_t``."""
        raise NotImplementedError

    def engine(self) -> GradientEngine:
        """A gradient engine on the final model with this method's options (last-layer mode,
        parameter subset, frozen prefix), as :meth:`fit` makes it. Engines on one module
        share its frozen prefix's output, so a grouping whose features go through this one
        (``grouping.fit(train, module, engine=method.engine())``) and the method's own passes
        run the frozen layers once between them."""
        return self._engine(self.model.module)

    # ----------------------------------------------------------------- shared
    def _engine(self, module: torch.nn.Module) -> GradientEngine:
        # Per-example passes use per-layer factors where the model allows it, vmap otherwise.
        return FactoredEngine(module, last_layer_only=self.options.last_layer_only,
                              chunk_examples=self.options.chunk_examples, parameters=self.options.parameters,
                              frozen_prefix=self.options.frozen_prefix)

    def _train_side(self, index: int, view: View) -> Iterator[GradientChunk]:
        """Transformed group gradients, kept in memory after the first pass when they fit."""
        if index in self._train_cache:
            yield from self._train_cache[index]
            return
        objective, weights = self._train_objective(index, view)
        projector = self._train_projector(index, view)
        transform = None if projector is not None else self._train_transform(index, view)
        chunks: list[GradientChunk] | None = []
        budget = self.options.cache_bytes // max(1, len(self.views_))
        for chunk in view.engine.group_gradients(self.train_, self.groups_.labels, self.groups_.n_groups,
                                                 objective=objective, weights=weights, projector=projector):
            if transform is not None:
                chunk = GradientChunk(chunk.group_ids, transform(chunk.gradients))
            if chunks is not None and not chunks:
                # Decide from the first chunk whether all K groups fit the budget, rather than
                # holding up to the budget in memory before giving up.
                per_group = chunk.gradients.element_size() * chunk.gradients.shape[1]
                if per_group * self.groups_.n_groups > budget:
                    chunks = None
            if chunks is not None:
                chunks.append(chunk)
            yield chunk
        if chunks is not None:
            self._train_cache[index] = chunks

    def _view_recipe(self, index: int, view: View) -> ViewRecipe:
        """What a worker needs to rebuild this view's training side."""
        objective, weights = self._train_objective(index, view)
        return ViewRecipe.of(view.engine, self.model.zoo_config("the ray executor"), objective, weights,
                             self._train_transform(index, view), view.weight)

    def curvature_rows(self, n_train: int, n_samples: int | None) -> np.ndarray:
        """A seeded sample of training rows for curvature estimates (all rows when None)."""
        if n_samples is None or n_samples >= n_train:
            return np.arange(n_train)
        rng = np.random.default_rng(self.options.seed)
        return np.sort(rng.choice(n_train, size=n_samples, replace=False))


def attributed_parameters(module: torch.nn.Module, options: MethodOptions) -> int:
    """The number of parameters attributed to: the head's in last-layer mode, else those of
    the options' parameter subset."""
    return count_parameters(module, options.last_layer_only, options.parameters)


#: the option types a value is checked against (annotations are strings: ``int | None``)
_OPTION_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_option_type(method: str, field: dataclasses.Field, value: object) -> None:
    """A one-line error when an option's value is not of its field's type (``--option
    max_iterations=abc`` would otherwise fail deep inside validation with Python's words)."""
    kinds = [kind.strip() for kind in str(field.type).split("|")]
    if value is None and "None" in kinds:
        return
    if not all(kind in _OPTION_TYPES or kind == "None" for kind in kinds):
        return  # a type this check does not know: the options' own validation decides
    allowed = tuple(t for kind in kinds if kind != "None" for t in _OPTION_TYPES[kind])
    if not isinstance(value, allowed) or (isinstance(value, bool) and "bool" not in kinds):
        wanted = " or ".join("null" if kind == "None" else kind for kind in kinds)
        raise GDAError(f"option {field.name} of method {method!r} must be {wanted}, got {one_line(value)}")
    if "float" in kinds and not math.isfinite(value):  # NaN passes every "> 0" check after it
        raise GDAError(f"option {field.name} of method {method!r} must be a finite number, got {one_line(value)}")


def make_method(name: str, model: TrainedModel, **options) -> AttributionMethod:
    """The method registered as ``name``, built with its options."""
    return METHODS.get_checked(name)(model, **options)
