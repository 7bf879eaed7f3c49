"""Fidelity-vs-speed sweeps: every method x grouping x K, timed, against one gold standard.

A sweep runs every method x grouping x K, times it (wall clock and peak memory), and
compares its scores with a gold standard. With LDS the yardstick is *point-level*: one
ensemble of models trained on random subsets of training points, shared by every grouping
and K, against which each group's score is spread over its members in equal shares
(:func:`~gda_core.evaluation.gold.point_lds`); the group-level LDS (an ensemble on random
subsets of the cell's own groups) is reported beside the group size distribution, because a
partition of one giant group plus singletons is easy to predict at group level. Further
training (at every recorded horizon) and leave-group-out retraining are paired per group:
cosine / Spearman / top-k overlap against the cell's own groups. Gold standards are the
expensive part, so they are kept in the run store by content and reused across methods.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from ..attribution.executors import BuiltinSource, make_executor
from ..attribution.grouping import Groups, make_grouping
from ..attribution.methods import make_method
from ..attribution.methods.influence import InverseCurvatureMethod
from ..inputs.choices import load_inputs
from ..inputs.zoo import TrainedModel
from ..progress import Progress, no_progress
from ..registry import GROUPINGS, METHODS
from ..requests import GoldConfig, SweepConfig, resolve_device
from ..version import __version__
from .gold import (
    LDSEnsemble,
    ResultCache,
    compute_gold,
    compute_point_lds,
    damping_for_horizon,
    kept_variance,
    lds,
    point_lds,
    retraining_epochs,
)
from .memory import PeakMemory
from .statistics import fidelity


def _method_runs(config: SweepConfig, gold: GoldConfig, steps_per_epoch: int) -> list[tuple[str, str, dict]]:
    """(label, method, options) for every method, plus horizon-matched influence variants."""
    runs = [(name, name, dict(config.method_options.get(name, {}))) for name in config.methods]
    if config.horizon_matched and gold.kind == "further-training":
        for name in config.methods:
            if issubclass(METHODS[name], InverseCurvatureMethod) and name not in ("trak", "datainf"):
                for horizon in gold.epochs:
                    damping = damping_for_horizon(gold.lr, max(1, round(horizon * steps_per_epoch)))
                    runs.append((f"{name}@T={horizon:g}", name, {**config.method_options.get(name, {}), "damping": damping}))
    return runs


#: parameter x example updates per second per torch thread in the gold standard's training of
#: model copies, measured on the app's small sweep (digits / mlp, 5 cells x 20 LDS subsets of
#: 30 epochs on 1437 points x 8970 parameters: 6.4 min on 2 threads of a shared CPU)
UPDATES_PER_THREAD_SECOND = 5e7


def estimate_sweep_seconds(config: SweepConfig, model: TrainedModel, n_train: int, threads: int) -> float:
    """A rough wall time of ``run_sweep`` from its sizes alone. Training the gold standard's
    model copies dominates: per cell (grouping x K), LDS trains ``n_subsets x seeds`` copies
    (plus the point-level ensemble's, which the per-example cell shares) and the paired gold
    standards one copy per group and seed, each for the gold's epochs on the whole training
    set. Methods, groupings and loading are left out (a small share)."""
    n_parameters = sum(p.numel() for p in model.module.parameters())
    gold = config.gold
    epochs = retraining_epochs(model) if gold.kind != "further-training" else max(gold.epochs)
    counts = []  # the group count of every cell, as run_sweep makes them
    for grouping in config.groupings:
        if GROUPINGS[grouping].fixed_group_count:
            counts.append(n_train)  # an upper bound: per-class has fewer groups
        else:
            counts += [k for k in config.group_counts if k <= n_train]
    per_example_cell = config.per_example or "per-example" in config.groupings
    if per_example_cell and "per-example" not in config.groupings:
        counts.append(n_train)
    if gold.kind == "lds" and not per_example_cell:
        counts.append(n_train)  # the point-level ensemble (otherwise the per-example cell's own)
    copies = sum(gold.n_subsets if gold.kind == "lds" else k for k in counts) * gold.seeds
    return copies * epochs * n_train * n_parameters / (UPDATES_PER_THREAD_SECOND * max(1, threads))


def format_duration(seconds: float) -> str:
    """A rough duration for people: "40 s", "7 min", "2.5 h"."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _add_kept_variance(points: list[dict], cell_scores: dict, n_train: int) -> None:
    """Each grouped cell whose method also ran per example gets ``kept_variance``: the mean
    share of the per-example scores that its equal shares keep (:func:`gold.kept_variance`:
    agreement with the per-example run, not fidelity)."""
    for point in points:
        per_example = cell_scores.get((point["method"], "per-example", n_train))
        if point["grouping"] == "per-example" or per_example is None:
            continue
        _, groups = cell_scores[(point["method"], point["grouping"], point["n_groups"])]
        point["kept_variance"] = float(np.nanmean(kept_variance(per_example[0], groups)))


def run_sweep(config: SweepConfig, store: ResultCache, progress: Progress = no_progress) -> dict:
    """Run the sweep; returns a JSON-ready dict with one point per (method, grouping, K).
    ``store`` keeps the gold standards (and its folder the demo models)."""
    device = resolve_device(config.device)
    split, model = load_inputs(config, store.root, device)
    train = split.train.to(device)
    test = split.test.subset(slice(0, config.test_size)).to(device)
    n_train = len(train)

    cells: list[tuple[str, int | None]] = []
    skipped = []
    for grouping in config.groupings:
        if GROUPINGS[grouping].fixed_group_count:
            cells.append((grouping, None))
            continue
        for k in config.group_counts:
            if k > n_train:
                skipped.append({"grouping": grouping, "n_groups": k, "reason": f"K > N = {n_train}"})
            else:
                cells.append((grouping, k))
    if config.per_example and ("per-example", None) not in cells:
        cells.append(("per-example", None))

    steps_per_epoch = int(np.ceil(n_train / config.gold.batch_size))
    runs = _method_runs(config, config.gold, steps_per_epoch)
    points = []
    cell_scores: dict[tuple[str, str, int], tuple[np.ndarray, Groups]] = {}
    gold_seconds = {}
    executor = make_executor(config.executor, address=config.ray_address,
                             builtin=BuiltinSource(config.data, seed=config.seed))
    with executor:
        point_gold = None
        if config.gold.kind == "lds":  # the point-level yardstick: once for every cell
            started = time.perf_counter()
            point_gold = compute_point_lds(config.gold, model, train, test, store,
                                           lambda phase, fraction: progress(f"{phase} (points)", 0.0), executor)
            gold_seconds["points"] = time.perf_counter() - started
        for cell_index, (grouping, k) in enumerate(cells):
            started = time.perf_counter()
            groups = make_grouping(grouping, k, seed=config.seed).fit(train, model.module)
            grouping_seconds = time.perf_counter() - started
            sizes = groups.size_summary()

            def cell_progress(phase: str, fraction: float, index=cell_index) -> None:
                progress(f"{phase} ({grouping}, K={groups.n_groups})", (index + fraction) / len(cells))

            started = time.perf_counter()
            gold = compute_gold(config.gold, model, train, test, groups, store, cell_progress, executor)
            gold_seconds[f"{grouping}/{groups.n_groups}"] = time.perf_counter() - started
            for label, method_name, options in runs:
                with PeakMemory(device) as memory:
                    started = time.perf_counter()
                    method = make_method(method_name, model, **options).fit(train, groups)
                    scores = method.attribute(test, executor=executor)
                    seconds = time.perf_counter() - started
                point = {"method": label, "base_method": method_name, "grouping": grouping,
                         "n_groups": groups.n_groups, "seconds": seconds, "grouping_seconds": grouping_seconds,
                         "total_seconds": seconds + grouping_seconds, "peak_mb": memory.peak_mb,
                         "group_sizes": sizes}
                if isinstance(gold, LDSEnsemble):
                    on_points, on_groups = point_lds(scores, groups, point_gold), lds(scores, gold)
                    point.update(point_lds=on_points["lds"], point_lds_se=on_points["lds_se"],
                                 group_lds=on_groups["lds"], group_lds_se=on_groups["lds_se"])
                else:
                    point["fidelity"] = {f"{h:g}": fidelity(scores, gold.scores[i], top_k=config.top_k)
                                         for i, h in enumerate(gold.horizons)}
                    lead = point["fidelity"][f"{gold.horizons[0]:g}"]
                    point.update(cosine=lead["cosine"], cosine_se=lead["cosine_se"], spearman=lead["spearman"])
                    error = np.abs(gold.standard_error[0])  # all NaN with one seed: no spread to report
                    point["gold_relative_se"] = (float(np.nanmean(error)) / max(np.abs(gold.scores[0]).mean(), 1e-300)
                                                 if np.isfinite(error).any() else float("nan"))
                points.append(point)
                cell_scores[(label, grouping, groups.n_groups)] = (scores, groups)
                progress("methods", (cell_index + 1) / len(cells))
    _add_kept_variance(points, cell_scores, n_train)
    return {
        "config": {**dataclasses.asdict(config), "device": str(device)},
        "n_train": n_train, "n_test": len(test), "gold": config.gold.kind,
        # "point_lds": every cell against the one point-level ensemble; "group_lds" beside it
        "metric": "point_lds" if config.gold.kind == "lds" else "cosine",
        "gold_seconds": gold_seconds, "points": points, "skipped": skipped,
        "torch_threads": torch.get_num_threads(), "version": __version__,
    }
