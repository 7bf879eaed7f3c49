"""Noisy labels and pruning: flag suspicious training points, evaluate the flags against
injected label noise, and prune the lowest-value groups.

Flagging ranks training points by one of two signals, both from the shared method protocol:

- ``self-influence``: a group's score on its own summed loss (``method.self_influence()``),
  large for points the model bends to fit, such as mislabeled ones;
- ``validation``: a group's score on the summed loss of a held-out validation set
  (``method.attribute_total(validation)``); a negative score means removing the group would
  lower the validation loss, so the most negative groups are flagged first.

Grouped flagging is a coarse-to-fine search: every point inherits the score of its group's
mean gradient, the best-scoring groups covering ``refine_fraction`` of the training set are
re-scored per example (the fitted method is re-pointed at the finer grouping, so curvature
and damping are not recomputed), and those points lead the ranking.

Loss ranking and Confident Learning (``cleanlab``, on cross-validated probabilities of the
same zoo model) are the baselines; random inspection finds flips in proportion to the
fraction inspected.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data import Dataset, DataSplit, stratified_split
from .uploads import is_zoo_model, load_data_choice
from .engine import AttributionRequest, default_cache_dir, resolve_device
from .errors import GDAError
from .grouping import Groups, make_grouping
from .methods import AttributionMethod, make_method
from .models import TrainedModel, default_train_config, model_config_for, predict, train_model

Progress = Callable[[str, float], None]
SIGNALS = ("self-influence", "validation")
BASELINES = ("loss", "confident-learning")
#: fractions of the training set inspected at which recall is reported
REPORTED_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)
#: points on the detection curve (fraction inspected 0, 0.01, ..., 1)
CURVE_POINTS = 101


def _no_progress(phase: str, fraction: float) -> None:
    return None


# ------------------------------------------------------------------------------ requests
@dataclass
class ScoringSpec:
    """Which model, method and grouping score the training points (fields shared by the
    flag, noisy and prune requests; validated like an attribution request)."""

    data: str = "digits"
    model: str = "mlp"
    method: str = "if-cg"
    grouping: str = "per-example"
    n_groups: int | None = None
    seed: int = 0
    device: str = "auto"
    method_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        AttributionRequest(data=self.data, model=self.model, method=self.method, grouping=self.grouping,
                           n_groups=self.n_groups, seed=self.seed, device=self.device,
                           method_options=self.method_options)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def params(self) -> dict:
        """What a result depends on (the device aside)."""
        return {k: v for k, v in self.to_json().items() if k != "device"}


@dataclass
class FlagRequest(ScoringSpec):
    """Flag the training points of a data set and model, most suspicious first."""

    signal: str = "self-influence"
    #: grouped runs re-score per example the top groups covering this fraction of the points
    refine_fraction: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.signal not in SIGNALS:
            raise GDAError(f"unknown signal {self.signal!r}; choose from: {', '.join(SIGNALS)}")
        if not 0.0 <= self.refine_fraction <= 1.0:
            raise GDAError(f"refine fraction must lie in 0..1, got {self.refine_fraction}")


@dataclass
class NoisyConfig(FlagRequest):
    """Flip a fraction of the training labels (seeded), retrain, flag, and measure how many
    flips each ranking finds against the fraction of the training set inspected."""

    flip: float = 0.1
    validation_fraction: float = 0.1
    baselines: tuple[str, ...] = BASELINES
    #: folds of the cross-validated probabilities Confident Learning needs
    cl_folds: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.baselines = tuple(self.baselines)
        if not 0.0 < self.flip < 1.0:
            raise GDAError(f"flip fraction must lie strictly between 0 and 1, got {self.flip}")
        _check_validation_fraction(self.validation_fraction)
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

    fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    seeds: int = 3
    validation_fraction: float = 0.1
    #: optionally flip this fraction of labels first (0 = the clean data)
    flip: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fractions = tuple(float(f) for f in self.fractions)
        if not self.fractions or any(not 0.0 < f < 1.0 for f in self.fractions):
            raise GDAError(f"fractions must lie strictly between 0 and 1, got {list(self.fractions)}")
        if self.seeds < 1:
            raise GDAError(f"seeds must be >= 1, got {self.seeds}")
        if not 0.0 <= self.flip < 1.0:
            raise GDAError(f"flip fraction must lie in [0, 1), got {self.flip}")
        _check_validation_fraction(self.validation_fraction)
        _check_retrainable(self.model, "prune")


def _check_retrainable(model: str, command: str) -> None:
    """Noisy-label evaluation and pruning retrain the model from scratch, so they need an
    architecture, not a file of trained weights."""
    if not is_zoo_model(model):
        raise GDAError(f"{command} retrains the model from scratch, so it needs a zoo architecture "
                       f"(logreg, mlp, cnn), not an uploaded model file")


def _check_validation_fraction(value: float) -> None:
    if not 0.0 < value < 0.5:
        raise GDAError(f"validation fraction must lie strictly between 0 and 0.5, got {value}")


# ------------------------------------------------------------------------------ flagging
@dataclass
class Flags:
    """Training points ranked most suspicious first.

    ``scores[i]`` is the score point i was ranked by: its own for points scored per example
    (``refined``), its group's for the rest (only comparable within those two sets)."""

    order: np.ndarray
    scores: np.ndarray
    refined: np.ndarray
    group_labels: np.ndarray
    timings: dict[str, float]
    #: CPU seconds of this process (all threads): steadier than wall time on a shared machine
    cpu_seconds: float = float("nan")

    @property
    def n_groups(self) -> int:
        return int(self.group_labels.max()) + 1

    def summary(self) -> dict:
        return {"n_train": len(self.order), "n_refined": int(self.refined.sum()),
                "timings": {k: round(v, 4) for k, v in self.timings.items()},
                "seconds": round(sum(self.timings.values()), 4), "cpu_seconds": round(self.cpu_seconds, 4)}


def suspicion(method: AttributionMethod, signal: str, validation: Dataset | None,
              progress: Progress = _no_progress) -> np.ndarray:
    """Per-group suspicion of the method's current grouping, for its mean member gradient:
    higher = inspect first. Self-influence is quadratic in the gradient (divide by size^2),
    validation influence linear (divide by size); a point's own score when groups are single."""
    sizes = method.groups_.sizes.astype(np.float64)
    if signal == "self-influence":
        return method.self_influence(progress) / sizes ** 2
    if validation is None:
        raise GDAError("the validation signal needs a validation set")
    return -method.attribute_total(validation, progress) / sizes


def refine_groups(group_labels: np.ndarray, chosen: np.ndarray) -> tuple[Groups, np.ndarray]:
    """A finer grouping: each member of the ``chosen`` groups alone, everything else in one
    last group. Returns it and the refined points (in the order of their singleton groups)."""
    refined_points = np.flatnonzero(np.isin(group_labels, chosen))
    labels = np.full(len(group_labels), len(refined_points), dtype=np.int64)
    labels[refined_points] = np.arange(len(refined_points))
    n_groups = len(refined_points) + int(len(refined_points) < len(group_labels))
    return Groups(labels, n_groups, "refined"), refined_points


def flag_training_points(model: TrainedModel, train: Dataset, validation: Dataset | None, request: FlagRequest,
                         progress: Progress = _no_progress) -> Flags:
    """Rank ``train`` most suspicious first with ``request``'s method, grouping and signal."""
    timings: dict[str, float] = {}
    cpu_started = time.process_time()
    started = time.perf_counter()
    progress("grouping", 0.0)
    groups = make_grouping(request.grouping, request.n_groups, seed=request.seed).fit(train, model.module)
    timings["grouping"] = time.perf_counter() - started

    started = time.perf_counter()
    method = make_method(request.method, model, **request.method_options).fit(train, groups, progress=progress)
    timings["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    coarse = suspicion(method, request.signal, validation,
                       lambda phase, f: progress(f"{phase} ({groups.n_groups} groups)", f))
    timings["coarse"] = time.perf_counter() - started
    scores = coarse[groups.labels]
    refined = np.zeros(len(train), dtype=bool)
    order = np.argsort(-scores, kind="stable")
    if groups.n_groups < len(train) and request.refine_fraction > 0:
        # Coarse to fine: the best groups until they cover refine_fraction of the points.
        started = time.perf_counter()
        group_order = np.argsort(-coarse, kind="stable")
        covered = np.cumsum(groups.sizes[group_order])
        n_chosen = int(np.searchsorted(covered, request.refine_fraction * len(train))) + 1
        fine_groups, refined_points = refine_groups(groups.labels, group_order[:n_chosen])
        fine = suspicion(method.with_groups(fine_groups), request.signal, validation,
                         lambda phase, f: progress(f"{phase} (refining {len(refined_points)} points)", f))
        scores[refined_points] = fine[:len(refined_points)]
        refined[refined_points] = True
        rest = np.flatnonzero(~refined)
        order = np.concatenate([refined_points[np.argsort(-scores[refined_points], kind="stable")],
                                rest[np.argsort(-scores[rest], kind="stable")]])
        timings["refine"] = time.perf_counter() - started
    return Flags(order, scores, refined, groups.labels, timings, time.process_time() - cpu_started)


# ---------------------------------------------------------------------------- the inputs
@dataclass
class NoisyInputs:
    """A training set with (optionally) flipped labels, its validation part and the model
    retrained on it."""

    train: Dataset
    validation: Dataset
    test: Dataset
    flipped: np.ndarray
    clean_labels: np.ndarray
    model: TrainedModel


def flip_labels(labels: np.ndarray, fraction: float, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded ``fraction`` of the labels moved to a uniformly chosen *other* class.
    Returns the new labels and the mask of flipped points."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)] = True
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, n_classes, flipped.sum())) % n_classes
    return noisy, flipped


def with_labels(data: Dataset, labels: np.ndarray) -> Dataset:
    return Dataset(data.features, torch.as_tensor(labels, dtype=torch.long), list(data.class_names), data.name,
                   data.images, data.image_shape, data.indices)


def noisy_inputs(split: DataSplit, arch: str, *, flip: float, validation_fraction: float, seed: int,
                 device: torch.device, progress: Progress = _no_progress) -> NoisyInputs:
    """Hold out a stratified, seeded validation part of the training split (labels clean),
    flip ``flip`` of the remaining labels, and retrain the zoo model on them."""
    clean = split.train.labels.numpy()
    fit_rows, validation_rows = stratified_split(clean, validation_fraction, seed)
    train = split.train.subset(fit_rows)
    clean_labels = train.labels.numpy()
    flipped = np.zeros(len(train), dtype=bool)
    if flip > 0:
        noisy_labels, flipped = flip_labels(clean_labels, flip, train.n_classes, seed)
        train = with_labels(train, noisy_labels)
    progress("train model", 0.0)
    model = train_model(model_config_for(arch, train), train, default_train_config(arch, seed=seed), device=device,
                        progress=lambda f: progress("train model", f))
    return NoisyInputs(train.to(device), split.train.subset(validation_rows).to(device), split.test.to(device),
                       flipped, clean_labels, model)


# ---------------------------------------------------------------------------- evaluation
def detection_curve(order: np.ndarray, flipped: np.ndarray, points: int = CURVE_POINTS) -> dict:
    """Fraction of flipped labels found against the fraction of the training set inspected
    in ``order``: the curve, its area (0.5 for random inspection), and recall at a few budgets."""
    flipped = np.asarray(flipped, dtype=bool)
    if not flipped.any():
        raise GDAError("no flipped labels to find")
    found = np.concatenate([[0], np.cumsum(flipped[order])]) / flipped.sum()
    inspected = np.linspace(0.0, 1.0, points)
    recall = found[np.round(inspected * len(order)).astype(int)]
    return {"inspected": inspected.round(4).tolist(), "recall": recall.round(4).tolist(),
            "auc": round(float(np.trapezoid(recall, inspected)), 4),
            "recall_at": {f"{f:g}": round(float(found[int(round(f * len(order)))]), 4) for f in REPORTED_FRACTIONS}}


def random_curve(points: int = CURVE_POINTS) -> dict:
    """Random inspection finds, in expectation, the fraction of flips it inspects."""
    inspected = np.linspace(0.0, 1.0, points)
    return {"inspected": inspected.round(4).tolist(), "recall": inspected.round(4).tolist(), "auc": 0.5,
            "recall_at": {f"{f:g}": f for f in REPORTED_FRACTIONS}}


def loss_ranking(model: TrainedModel, train: Dataset) -> np.ndarray:
    """Training points by their loss under the model, highest first."""
    with torch.no_grad():
        logits = model.module(train.features.to(next(model.module.parameters())))
        losses = torch.nn.functional.cross_entropy(logits, train.labels.to(logits.device), reduction="none")
    return np.argsort(-losses.cpu().numpy(), kind="stable")


def cross_validated_probabilities(arch: str, train: Dataset, folds: int, seed: int, device: torch.device,
                                  progress: Progress = _no_progress) -> np.ndarray:
    """Out-of-fold class probabilities of the zoo model (what Confident Learning needs)."""
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(len(train)) % folds
    probabilities = np.zeros((len(train), train.n_classes))
    for fold in range(folds):
        held_out = np.flatnonzero(fold_of == fold)
        fitted = train_model(model_config_for(arch, train), train.subset(np.flatnonzero(fold_of != fold)),
                             default_train_config(arch, seed=seed), device=device)
        with torch.no_grad():
            logits = fitted.module(train.features[torch.as_tensor(held_out)].to(device))
        probabilities[held_out] = torch.softmax(logits, dim=1).double().cpu().numpy()
        progress("confident learning", (fold + 1) / folds)
    return probabilities


def confident_learning_ranking(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """cleanlab's label issues first (by label quality), then every other point by quality.
    Returns the order and how many points cleanlab flags as issues."""
    from cleanlab.filter import find_label_issues  # imported here: the app extra, and slow to import
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probabilities)
    issues = find_label_issues(labels, probabilities)
    order = np.lexsort((quality, ~issues))  # issues first, then lowest quality first
    return order, int(issues.sum())


def _flag_label(spec: ScoringSpec, n_groups: int) -> str:
    return f"{spec.method} / {spec.grouping} (K={n_groups})"


def run_noisy(config: NoisyConfig, *, cache_dir: str | Path | None = None,
              progress: Progress | None = None) -> dict:
    """Inject label noise, retrain, flag, and compare with the baselines (JSON-ready)."""
    progress = progress or _no_progress
    device = resolve_device(config.device)
    split = load_data_choice(config.data, seed=config.seed)
    inputs = noisy_inputs(split, config.model, flip=config.flip, validation_fraction=config.validation_fraction,
                          seed=config.seed, device=device, progress=progress)
    flags = flag_training_points(inputs.model, inputs.train, inputs.validation, config, progress)
    n_groups = flags.n_groups
    rankings = {"influence": {"label": f"{_flag_label(config, n_groups)}, {config.signal}",
                              **detection_curve(flags.order, inputs.flipped), "seconds": round(sum(flags.timings.values()), 4),
                              "timings": flags.summary()["timings"], "cpu_seconds": flags.summary()["cpu_seconds"],
                              "n_refined": int(flags.refined.sum())}}
    if "loss" in config.baselines:
        started = time.perf_counter()
        order = loss_ranking(inputs.model, inputs.train)
        rankings["loss"] = {"label": "loss ranking", **detection_curve(order, inputs.flipped),
                            "seconds": round(time.perf_counter() - started, 4)}
    if "confident-learning" in config.baselines:
        started = time.perf_counter()
        probabilities = cross_validated_probabilities(config.model, inputs.train, config.cl_folds, config.seed,
                                                      device, progress)
        order, n_issues = confident_learning_ranking(probabilities, inputs.train.labels.cpu().numpy())
        rankings["confident-learning"] = {"label": f"Confident Learning (cleanlab, {config.cl_folds}-fold)",
                                          **detection_curve(order, inputs.flipped),
                                          "seconds": round(time.perf_counter() - started, 4), "n_issues": n_issues}
    rankings["random"] = {"label": "random inspection (expected)", **random_curve(), "seconds": 0.0}
    predicted, _ = predict(inputs.model.module, inputs.test)
    return {
        "config": config.to_json(), "n_train": len(inputs.train), "n_validation": len(inputs.validation),
        "n_flipped": int(inputs.flipped.sum()), "n_groups": n_groups,
        "model_test_accuracy": round(float((predicted == inputs.test.labels.cpu().numpy()).mean()), 4),
        "rankings": rankings, "torch_threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------- pruning
def points_to_remove(group_order: np.ndarray, group_labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Whole groups in ``group_order`` while they fit in ``fraction`` of the points, then a
    seeded random part of the next group to reach it exactly: gradient K-means often makes one
    big group of the well-fit points, and removing it whole would overshoot every budget."""
    sizes = np.bincount(group_labels, minlength=len(group_order))
    budget = int(round(fraction * len(group_labels)))
    covered = np.cumsum(sizes[group_order])
    n_whole = int(np.searchsorted(covered, budget, side="right"))
    removed = np.flatnonzero(np.isin(group_labels, group_order[:n_whole]))
    if n_whole < len(group_order) and len(removed) < budget:
        boundary = np.flatnonzero(group_labels == group_order[n_whole])
        extra = np.random.default_rng(seed).choice(boundary, budget - len(removed), replace=False)
        removed = np.sort(np.concatenate([removed, extra]))
    return removed


def retrained_accuracies(model: TrainedModel, train: Dataset, test: Dataset, removals: list[np.ndarray], seed: int,
                         progress: Progress = _no_progress) -> np.ndarray:
    """Test accuracy of the model retrained from a seeded initialisation once per removal
    (training indices left out), all at once as a batch of models (as LDS retrains). A test
    point is right when its negative margin is below zero."""
    from .gold import BatchedTrainer, Recipe, retraining_epochs

    weights = torch.ones(len(removals), len(train))
    for row, removed in enumerate(removals):
        weights[row, torch.as_tensor(removed, dtype=torch.long)] = 0.0
    recipe = Recipe.of_model(model)
    steps = max(1, round(retraining_epochs(model) * np.ceil(len(train) / recipe.batch_size)))
    margins = BatchedTrainer(model, recipe).run(weights, train, test, seed=seed, init_seed=seed, record_steps=[steps],
                                                measurement="margin", progress=progress)[0]
    return (margins < 0).double().mean(1).cpu().numpy()


def _mean_and_error(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    error = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return {"mean": round(float(values.mean()), 4), "se": round(error, 4), "values": values.round(4).tolist()}


def run_pruning(config: PruneConfig, *, cache_dir: str | Path | None = None,
                progress: Progress | None = None) -> dict:
    """Test accuracy after removing the lowest-value groups at each fraction, and after
    removing random groups, retrained over ``seeds`` seeds (JSON-ready)."""
    progress = progress or _no_progress
    device = resolve_device(config.device)
    split = load_data_choice(config.data, seed=config.seed)
    inputs = noisy_inputs(split, config.model, flip=config.flip, validation_fraction=config.validation_fraction,
                          seed=config.seed, device=device, progress=progress)
    train = inputs.train
    started = time.perf_counter()
    groups = make_grouping(config.grouping, config.n_groups, seed=config.seed).fit(train, inputs.model.module)
    method = make_method(config.method, inputs.model, **config.method_options).fit(train, groups, progress=progress)
    # A group's value: its total influence on the validation loss (positive = it helps).
    values = method.attribute_total(inputs.validation, progress)
    scoring_seconds = time.perf_counter() - started
    lowest_first = np.argsort(values, kind="stable")

    # Per seed, one batch of models: the full set, then each fraction removed by value and at
    # random (a fresh random group order per seed).
    accuracies = []
    for run, seed in enumerate(range(config.seed, config.seed + config.seeds)):
        random_order = np.random.default_rng(1000 + seed).permutation(groups.n_groups)
        removals = [np.array([], dtype=np.int64)]
        removals += [points_to_remove(lowest_first, groups.labels, f, seed) for f in config.fractions]
        removals += [points_to_remove(random_order, groups.labels, f, seed) for f in config.fractions]
        accuracies.append(retrained_accuracies(inputs.model, train, inputs.test, removals, seed,
                                               lambda phase, f, run=run: progress("retrain", (run + f) / config.seeds)))
    accuracies = np.array(accuracies)  # (seeds, 1 + 2 x fractions)
    n_fractions = len(config.fractions)
    full = accuracies[:, 0]
    by_value = [accuracies[:, 1 + i] for i in range(n_fractions)]
    by_random = [accuracies[:, 1 + n_fractions + i] for i in range(n_fractions)]
    return {
        "config": config.to_json(), "n_train": len(train), "n_validation": len(inputs.validation),
        "n_test": len(inputs.test), "n_groups": groups.n_groups, "scoring_seconds": round(scoring_seconds, 4),
        "full_accuracy": _mean_and_error(full), "fractions": [float(f) for f in config.fractions],
        "accuracy": [_mean_and_error(values) for values in by_value],
        "random_accuracy": [_mean_and_error(values) for values in by_random],
        "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------- flagging a model
def run_flagging(request: FlagRequest, *, cache_dir: str | Path | None = None,
                 progress: Progress | None = None) -> tuple[Flags, Dataset, dict]:
    """Flag the training points of a data set's demo model (what the review page shows);
    returns the flags, the training set and a JSON-ready summary. The demo model trained on
    the whole training split, so the test split serves as the ``validation`` signal's set."""
    from .engine import load_inputs

    progress = progress or _no_progress
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    device = resolve_device(request.device)
    split, model = load_inputs(request, cache_dir, device, progress)
    flags = flag_training_points(model, split.train.to(device), split.test.to(device), request, progress)
    summary = {**flags.summary(), "config": request.to_json(), "data": request.data, "model": request.model,
               "n_groups": flags.n_groups, "class_names": list(split.train.class_names)}
    return flags, split.train, summary


__all__ = ["SIGNALS", "BASELINES", "ScoringSpec", "FlagRequest", "NoisyConfig", "PruneConfig", "Flags",
           "flag_training_points", "flip_labels", "detection_curve", "run_noisy", "run_pruning", "run_flagging"]
