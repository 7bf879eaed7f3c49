"""Noisy labels: inject label noise, retrain, flag, and measure how many flips each ranking finds.

Loss ranking and Confident Learning (``cleanlab``, on cross-validated probabilities of the
same zoo model) are the baselines; random inspection finds flips in proportion to the
fraction inspected.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import GDAError
from ..inputs.choices import load_data_choice
from ..inputs.datasets import Dataset, DataSplit, stratified_split
from ..inputs.noise import flip_labels
from ..inputs.zoo import TrainedModel, default_train_config, model_config_for, model_outputs, predict, train_model
from ..progress import Progress, no_progress
from ..requests import NoisyConfig, PruneConfig, resolve_device
from .flagging import flag_label, flag_training_points, neighbour_suspicion

#: fractions of the training set inspected at which recall is reported
REPORTED_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)
#: why noisy labels and pruning refuse regression targets
NEEDS_CLASSES = {"noisy-label evaluation": "it flips labels to other classes and reports accuracy",
                 "pruning": "it reports test accuracy and can flip labels to other classes"}
#: points on the detection curve (fraction inspected 0, 0.01, ..., 1)
CURVE_POINTS = 101


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


def with_labels(data: Dataset, labels: np.ndarray) -> Dataset:
    return dataclasses.replace(data, labels=torch.as_tensor(labels, dtype=torch.long),
                               class_names=list(data.class_names))


def noisy_inputs_of(config: NoisyConfig | PruneConfig, purpose: str, device: torch.device,
                    progress: Progress = no_progress) -> NoisyInputs:
    """:func:`noisy_inputs` for a request's data and model (``purpose`` names it in the refusal
    of regression targets)."""
    split = load_data_choice(config.data, seed=config.seed)
    split.train.require_classes(purpose, NEEDS_CLASSES[purpose])
    return noisy_inputs(split, config.model, flip=config.flip, noise=config.noise,
                        validation_fraction=config.validation_fraction, seed=config.seed, device=device, progress=progress)


def noisy_inputs(split: DataSplit, arch: str, *, flip: float, validation_fraction: float, seed: int,
                 device: torch.device, noise: str = "uniform", progress: Progress = no_progress) -> NoisyInputs:
    """Hold out a stratified, seeded validation part of the training split (labels clean),
    flip ``flip`` of the remaining labels (``noise``: see :mod:`gda_core.inputs.noise`), and
    retrain the zoo model on them."""
    clean = split.train.labels.numpy()
    fit_rows, validation_rows = stratified_split(clean, validation_fraction, seed)
    train = split.train.subset(fit_rows)
    clean_labels = train.labels.numpy()
    flipped = np.zeros(len(train), dtype=bool)
    if flip > 0:
        noisy_labels, flipped = flip_labels(clean_labels, flip, train.n_classes, seed, kind=noise,
                                             class_names=train.class_names)
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
        logits = model.module(train.model_inputs(next(model.module.parameters())))
        losses = train.task.loss(logits, train.labels.to(logits.device))
    return np.argsort(-losses.cpu().numpy(), kind="stable")


def cross_validated_probabilities(arch: str, train: Dataset, folds: int, seed: int, device: torch.device,
                                  progress: Progress = no_progress) -> np.ndarray:
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


def _ranking(label: str, order: np.ndarray, flipped: np.ndarray, started: float, **extra) -> dict:
    return {"label": label, **detection_curve(order, flipped), "seconds": round(time.perf_counter() - started, 4),
            **extra}


def final_model_probabilities(model: TrainedModel, data: Dataset) -> np.ndarray:
    """The final model's class probabilities of every point."""
    return torch.softmax(model_outputs(model.module, data).double().cpu(), dim=1).numpy()


def noisy_rankings(config: NoisyConfig, inputs: NoisyInputs, device: torch.device,
                   progress: Progress = no_progress) -> dict[str, dict]:
    """Each ranking's detection curve and time on ``inputs``: the request's own (its signal,
    method and grouping; key ``influence``) and its baselines."""
    flags = flag_training_points(inputs.model, inputs.train, inputs.validation, config, progress)
    n_groups = flags.n_groups
    rankings = {"influence": {"label": flag_label(config, n_groups),
                              **detection_curve(flags.order, inputs.flipped), "seconds": round(sum(flags.timings.values()), 4),
                              "timings": flags.summary()["timings"], "cpu_seconds": flags.summary()["cpu_seconds"],
                              "n_refined": int(flags.refined.sum()), "n_groups": n_groups}}
    labels = inputs.train.labels.cpu().numpy()
    if "loss" in config.baselines:
        started = time.perf_counter()
        rankings["loss"] = _ranking("loss ranking", loss_ranking(inputs.model, inputs.train), inputs.flipped, started)
    if "neighbours" in config.baselines and config.signal != "neighbours":
        started = time.perf_counter()
        order = np.argsort(-neighbour_suspicion(inputs.model, inputs.train), kind="stable")
        rankings["neighbours"] = _ranking("neighbours (final model)", order, inputs.flipped, started)
    if "confident-learning-final" in config.baselines:
        started = time.perf_counter()
        order, n_issues = confident_learning_ranking(final_model_probabilities(inputs.model, inputs.train), labels)
        rankings["confident-learning-final"] = _ranking("Confident Learning (cleanlab) on the final model", order,
                                                        inputs.flipped, started, n_issues=n_issues)
    if "confident-learning" in config.baselines:
        started = time.perf_counter()
        probabilities = cross_validated_probabilities(config.model, inputs.train, config.cl_folds, config.seed,
                                                      device, progress)
        order, n_issues = confident_learning_ranking(probabilities, labels)
        rankings["confident-learning"] = _ranking(f"Confident Learning (cleanlab, {config.cl_folds}-fold, retrained)",
                                                  order, inputs.flipped, started, n_issues=n_issues)
    rankings["random"] = {"label": "random inspection (expected)", **random_curve(), "seconds": 0.0}
    return rankings


def run_noisy(config: NoisyConfig, progress: Progress | None = None) -> dict:
    """Inject label noise, retrain, flag, and compare with the baselines (JSON-ready). Every
    ranking's ``seconds`` is its own time (Confident Learning's cross-validated one includes
    its retraining); none counts the final model's training, which every one needs."""
    progress = progress or no_progress
    device = resolve_device(config.device)
    inputs = noisy_inputs_of(config, "noisy-label evaluation", device, progress)
    rankings = noisy_rankings(config, inputs, device, progress)
    predicted, _ = predict(inputs.model.module, inputs.test)
    return {
        "config": config.to_json(), "n_train": len(inputs.train), "n_validation": len(inputs.validation),
        "n_flipped": int(inputs.flipped.sum()), "n_groups": rankings["influence"]["n_groups"], "noise": config.noise,
        "model_test_accuracy": round(float((predicted == inputs.test.labels.cpu().numpy()).mean()), 4),
        "rankings": rankings, "torch_threads": torch.get_num_threads(),
    }

