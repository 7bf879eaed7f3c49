"""One attribution request, end to end: data -> model -> grouping -> method -> scores.

:func:`run_attribution` carries out an :class:`~gda_core.requests.AttributionRequest` (which
names everything a run depends on) and returns an :class:`AttributionResult`. The CLI and
the app both go through here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import GDAError
from ..inputs.choices import load_inputs
from ..inputs.datasets import Dataset, DataSplit
from ..inputs.zoo import TrainedModel, model_score
from ..io import default_cache_dir
from ..progress import Progress
from ..registry import METHODS
from ..requests import AttributionRequest, MembersRequest, resolve_device
from .executors import BuiltinSource, make_executor
from .factored import warm_up
from .grouping import Groups, make_grouping, refine_groups
from .methods import AttributionMethod, make_method
from .methods.base import attributed_parameters


@dataclass
class AttributionResult:
    request: AttributionRequest
    scores: np.ndarray
    groups: Groups
    n_train: int
    n_test: int
    key: str
    timings: dict[str, float]
    #: the model's test score: accuracy for classification, R^2 for regression (``score_name``)
    model_score: float
    method_info: dict
    score_name: str = "accuracy"

    def summary(self) -> dict:
        return {
            "method": self.request.method,
            "grouping": self.request.grouping,
            "n_groups": self.groups.n_groups,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "seconds": round(self.timings["grouping"] + self.timings["fit"] + self.timings["attribute"], 4),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "data": self.request.data,
            "model": self.request.model,
            "model_test_score": round(self.model_score, 4),
            "model_score_name": self.score_name,
            "key": self.key,
            "method_info": self.method_info,
            "group_sizes": self.groups.size_summary(),
            "group_size_warning": self.groups.size_warning(),
        }


Parts = tuple[Callable[[str], "np.ndarray | None"], Callable[[str, np.ndarray], None]]


def prepare_attribution(request: AttributionRequest, cache_dir: str | Path | None,
                        progress: Progress) -> tuple[DataSplit, TrainedModel, Dataset, Dataset, AttributionMethod, dict]:
    """The inputs of a request on its device and its (unfitted) method, with every refusal
    that needs only sizes made first. Returns the split, the model, the training set, the
    test points scored, the method and the timings so far."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    device = resolve_device(request.device)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    # Size refusals before anything is trained or loaded: a zoo model's sizes follow from the data.
    method_class = METHODS.get_checked(request.method)
    options = method_class.make_options(**request.method_options)

    def check_size(module) -> None:
        method_class.check_size(options, attributed_parameters(module, options))

    split, model = load_inputs(request, cache_dir, device, progress, check_zoo_model=check_size)
    test = split.test if request.test_size is None else split.test.subset(slice(0, request.test_size))
    train = split.train.to(device)
    test = test.to(device)
    timings["load"] = time.perf_counter() - started
    # One-off per-process costs (first torch.func traces), paid once per worker and timed apart.
    timings["warmup"] = warm_up()
    method = make_method(request.method, model, **request.method_options)
    method.check_model()  # refusals that need only the model's size come before grouping and fit
    return split, model, train, test, method, timings


def run_attribution(request: AttributionRequest, *, cache_dir: str | Path | None = None,
                    progress: Progress | None = None, parts: Parts | None = None,
                    test_chunk: int = 64) -> AttributionResult:
    """Carry out one request. ``progress(phase, fraction)`` is called along the way.

    With ``parts = (load, save)`` the test points are scored in chunks, each saved as it
    finishes and loaded instead of recomputed on a rerun: an interrupted job resumes. Chunks
    are only used while the training side fits in memory and the executor keeps it
    (otherwise each chunk would redo the training-side gradient pass): a Ray run resumes
    from the start."""
    progress = progress or (lambda phase, fraction: None)
    split, model, train, test, method, timings = prepare_attribution(request, cache_dir, progress)
    progress("grouping", 0.0)
    started = time.perf_counter()
    # The grouping's features go through the method's frozen prefix (computed once for both).
    groups = make_grouping(request.grouping, request.n_groups, seed=request.seed,
                           **request.grouping_options).fit(train, model.module, engine=method.engine())
    timings["grouping"] = time.perf_counter() - started
    progress("grouping", 1.0)

    method.fit(train, groups, progress=progress)
    # Workers may load a built-in set by name rather than receive it.
    with make_executor(request.executor, address=request.ray_address,
                       builtin=BuiltinSource(request.data, seed=request.seed)) as executor:
        train_side_bytes = groups.n_groups * method.views_[0].engine.space.dim * 4 * len(method.views_)
        if parts is None or train_side_bytes > method.options.cache_bytes or not executor.reuses_train_side:
            test_chunk = len(test)
        chunks = []
        started = time.perf_counter()
        n_chunks = -(-len(test) // test_chunk)
        for index, start in enumerate(range(0, len(test), test_chunk)):
            name = f"scores-{index}-of-{n_chunks}"
            chunk = parts[0](name) if parts is not None else None
            if chunk is None:
                chunk = method.attribute(test.subset(slice(start, start + test_chunk)),
                                         progress=lambda phase, f, i=index: progress(phase, (i + f) / n_chunks),
                                         executor=executor)
                if parts is not None:
                    parts[1](name, chunk)
            chunks.append(chunk)
        scores = np.concatenate(chunks)
        timings["attribute"] = time.perf_counter() - started
    timings["fit"] = method.fit_seconds_
    info = {"options": method.options.to_json(), "measurement": method.measurement_,
            "attributed_parameters": method.views_[0].engine.space.dim}
    for attribute in ("damping_", "solver_info_", "gradient_path_"):
        if hasattr(method, attribute):
            info[attribute.rstrip("_")] = getattr(method, attribute)
    return AttributionResult(
        request=request, scores=scores, groups=groups, n_train=len(train), n_test=len(test),
        key=request.key(split, model), timings=timings,
        model_score=model_score(model.module, split.test.to(train.features.device)),
        method_info=info, score_name=test.task.score_name,
    )


def top_groups(scores: np.ndarray, group_labels: np.ndarray, train_labels: np.ndarray,
               class_names: list[str], test_index: int, count: int = 5) -> dict[str, list[dict]]:
    """The most helpful (highest score) and most harmful (lowest) groups for one test point,
    from a result's ``scores`` (n_test x K) and its training points' ``group_labels``. Each
    row's ``description`` says what its members are: mostly one class, or their mean target
    (regression: no ``class_names``)."""
    if not 0 <= test_index < len(scores):
        raise GDAError(f"test point must lie in 0..{len(scores) - 1}, got {test_index}")
    row = scores[test_index]
    order = np.argsort(-row, kind="stable")

    def describe(group: int) -> dict:
        members = np.flatnonzero(group_labels == group)
        described = {"group": int(group), "score": float(row[group]), "size": int(len(members)),
                     "members": members[:16].tolist()}
        if not class_names:
            return {**described, "description": f"mean target {float(np.mean(train_labels[members])):.3g}"}
        majority = int(np.bincount(train_labels[members], minlength=len(class_names)).argmax())
        return {**described, "majority_class": class_names[majority],
                "description": f"mostly '{class_names[majority]}'"}

    count = min(count, len(row))
    return {"helpful": [describe(g) for g in order[:count]],
            "harmful": [describe(g) for g in order[::-1][:count]]}


@dataclass
class MemberScores:
    """One group's members scored one by one: ``scores[t, j]`` is member ``members[j]``'s own
    score for test point t. For gradient-linear methods the members' scores sum to the
    group's score (``method_info['gradient_linear']``)."""

    group: int
    members: np.ndarray
    scores: np.ndarray
    seconds: float
    method_info: dict

    def summary(self) -> dict:
        return {"group": self.group, "n_members": int(len(self.members)), "n_test": int(self.scores.shape[0]),
                "seconds": round(self.seconds, 4), "method_info": self.method_info}


def score_group_members(request: MembersRequest, *, group_labels: np.ndarray | None = None,
                        cache_dir: str | Path | None = None, progress: Progress | None = None) -> MemberScores:
    """Drill into ``request.group`` of an attribution run: its members scored per example for
    the run's test points. ``group_labels`` are the run's groups (stored with its scores);
    without them the grouping is computed again from the request (it is seeded). Only the
    group's members are scored one by one: the rest of the training set is one more group."""
    progress = progress or (lambda phase, fraction: None)
    started = time.perf_counter()
    split, model, train, test, method, _ = prepare_attribution(request, cache_dir, progress)
    if group_labels is None:
        progress("grouping", 0.0)
        group_labels = make_grouping(request.grouping, request.n_groups, seed=request.seed,
                                     **request.grouping_options).fit(train, model.module,
                                                                     engine=method.engine()).labels
    group_labels = np.asarray(group_labels, dtype=np.int64)
    if group_labels.shape != (len(train),):
        raise GDAError(f"the run's groups cover {len(group_labels)} points but the training set has {len(train)}")
    n_groups = int(group_labels.max()) + 1
    if request.group >= n_groups:
        raise GDAError(f"group must lie in 0..{n_groups - 1}, got {request.group}")
    fine_groups, members = refine_groups(group_labels, np.array([request.group]))
    method.fit(train, fine_groups, progress=progress)
    scores = method.attribute(test, progress=progress)[:, :len(members)]
    info = {"method": request.method, "measurement": method.measurement_,
            "gradient_linear": bool(method.gradient_linear)}
    return MemberScores(request.group, members, scores, time.perf_counter() - started, info)


def compare_test_points(scores: np.ndarray, group_labels: np.ndarray, train_labels: np.ndarray,
                        class_names: list[str], first: int, second: int, count: int = 5) -> dict:
    """Two test points side by side: each one's most helpful and most harmful groups (as
    :func:`top_groups`), the groups both share in each list, and the Spearman correlation of
    their score rows over all groups (do the same groups matter for both?)."""
    from scipy.stats import spearmanr

    left = top_groups(scores, group_labels, train_labels, class_names, first, count)
    right = top_groups(scores, group_labels, train_labels, class_names, second, count)
    shared = {kind: sorted({r["group"] for r in left[kind]} & {r["group"] for r in right[kind]})
              for kind in ("helpful", "harmful")}
    rows = scores[[first, second]]
    correlation = (float(spearmanr(rows[0], rows[1]).statistic)
                   if rows.shape[1] > 1 and rows[0].std() > 0 and rows[1].std() > 0 else float("nan"))
    return {"first": left, "second": right, "shared": shared, "spearman": correlation}


def search_test_points(labels: np.ndarray, predicted: np.ndarray, *, label: int | float | None = None,
                       prediction: int | float | None = None, misclassified: bool = False) -> np.ndarray:
    """Indices of the test points with the given label and prediction (None: any), and only
    the misclassified ones when asked (classes only: a regression has no misclassification)."""
    keep = np.ones(len(labels), dtype=bool)
    if label is not None:
        keep &= np.asarray(labels) == label
    if prediction is not None:
        keep &= np.asarray(predicted) == prediction
    if misclassified:
        keep &= np.asarray(predicted) != np.asarray(labels)
    return np.flatnonzero(keep)
