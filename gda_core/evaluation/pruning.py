"""Pruning: remove the lowest-value groups at several fractions, retrain, and report test
accuracy against removing random groups."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..attribution.grouping import make_grouping
from ..attribution.methods import make_method
from ..inputs.datasets import Dataset
from ..inputs.zoo import TrainedModel
from ..progress import Progress, no_progress
from ..requests import PruneConfig, Recipe, resolve_device
from .gold import BatchedTrainer, retraining_epochs
from .noisy import noisy_inputs_of
from .statistics import mean_and_error


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
                         progress: Progress = no_progress) -> np.ndarray:
    """Test accuracy of the model retrained from a seeded initialisation once per removal
    (training indices left out), all at once as a batch of models (as LDS retrains). A test
    point is right when its negative margin is below zero."""
    weights = torch.ones(len(removals), len(train))
    for row, removed in enumerate(removals):
        weights[row, torch.as_tensor(removed, dtype=torch.long)] = 0.0
    recipe = Recipe.of_model(model)
    steps = max(1, round(retraining_epochs(model) * np.ceil(len(train) / recipe.batch_size)))
    margins = BatchedTrainer(model, recipe).run(weights, train, test, seed=seed, init_seed=seed, record_steps=[steps],
                                                measurement="margin", progress=progress)[0]
    return (margins < 0).double().mean(1).cpu().numpy()


def run_pruning(config: PruneConfig, progress: Progress | None = None) -> dict:
    """Test accuracy after removing the lowest-value groups at each fraction, and after
    removing random groups, retrained over ``seeds`` seeds (JSON-ready)."""
    progress = progress or no_progress
    device = resolve_device(config.device)
    inputs = noisy_inputs_of(config, "pruning", device, progress)
    train = inputs.train
    started = time.perf_counter()
    method = make_method(config.method, inputs.model, **config.method_options)
    groups = make_grouping(config.grouping, config.n_groups, seed=config.seed,
                           **config.grouping_options).fit(train, inputs.model.module, engine=method.engine())
    method.fit(train, groups, progress=progress)
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
        "full_accuracy": mean_and_error(full), "fractions": [float(f) for f in config.fractions],
        "accuracy": [mean_and_error(values) for values in by_value],
        "random_accuracy": [mean_and_error(values) for values in by_random],
        "torch_threads": torch.get_num_threads(),
    }

