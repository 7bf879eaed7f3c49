"""Fidelity of score matrices against gold standards, and fidelity-vs-speed sweeps.

A sweep runs every method x grouping x K, times it (wall clock and peak memory), and
compares its scores with a gold standard computed for the *same* groups: LDS against an
ensemble of subset-trained models, or cosine / Spearman / top-k overlap against further
training (at every recorded horizon) or leave-group-out retraining. Gold standards are the
expensive part, so they are cached on disk by content and reused across methods.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__
from .data import Dataset
from .engine import DEVICES, default_cache_dir, load_inputs, resolve_device
from .errors import GDAError
from .executors import BuiltinSource, Executor, check_executor, make_executor
from .gold import (GoldStandard, LDSEnsemble, Recipe, further_training, lds, lds_ensemble,
                   leave_group_out)
from .grouping import GROUPINGS, Groups, make_grouping
from .methods import METHODS, make_method
from .methods.influence import InverseCurvatureMethod
from .models import TrainedModel
from .uploads import check_data_choice, check_model_choice

Progress = Callable[[str, float], None]
GOLDS = ("lds", "further-training", "leave-group-out")


# ------------------------------------------------------------------------------- metrics
def _standard_error(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def _row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    ranks_a, ranks_b = rankdata(a, axis=1), rankdata(b, axis=1)
    ranks_a -= ranks_a.mean(axis=1, keepdims=True)
    ranks_b -= ranks_b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ranks_a ** 2).sum(1) * (ranks_b ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ranks_a * ranks_b).sum(1) / denominator, np.nan)


def fidelity(scores: np.ndarray, gold: np.ndarray, *, top_k: int = 10) -> dict[str, float]:
    """Per-test-point agreement between two (n_test, K) score matrices, averaged, with the
    standard error over test points: cosine, Spearman, and overlap of the top-k most
    helpful groups (the fraction of the gold top-k that the scores also put in their top-k)."""
    scores, gold = np.asarray(scores, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if scores.shape != gold.shape or scores.ndim != 2:
        raise GDAError(f"score matrices must have the same (n_test, K) shape, got {scores.shape} and {gold.shape}")
    norms = np.linalg.norm(scores, axis=1) * np.linalg.norm(gold, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, (scores * gold).sum(1) / norms, np.nan)
    spearman = _row_spearman(scores, gold)
    k = max(1, min(top_k, scores.shape[1]))
    top_scores = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_gold = np.argsort(-gold, axis=1, kind="stable")[:, :k]
    overlap = np.array([len(np.intersect1d(a, b)) / k for a, b in zip(top_scores, top_gold)])
    return {
        "cosine": float(np.nanmean(cosine)), "cosine_se": _standard_error(cosine),
        "spearman": float(np.nanmean(spearman)), "spearman_se": _standard_error(spearman),
        f"top{k}_overlap": float(overlap.mean()), f"top{k}_overlap_se": _standard_error(overlap),
    }


def damping_for_horizon(lr: float, steps: int) -> float:
    """In the unified view damping is the inverse amount of further training: 1 / (lr x T)."""
    if lr <= 0 or steps < 1:
        raise GDAError("need lr > 0 and steps >= 1")
    return 1.0 / (lr * steps)


# --------------------------------------------------------------------------- peak memory
class PeakMemory:
    """Peak memory growth inside a ``with`` block, in MB: CUDA's allocator peak on a GPU,
    else the process's resident set, sampled every few milliseconds from /proc."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.peak_mb = float("nan")

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as stream:
                return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = self._rss()
        self._peak = self._base
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, self._rss())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        self.peak_mb = (self._peak - self._base) / 2**20


# ------------------------------------------------------------------------- gold caching
@dataclass
class GoldConfig:
    """Which gold standard a sweep compares against, and its parameters."""

    kind: str = "lds"
    n_subsets: int = 50
    alpha: float = 0.5
    epochs: tuple[float, ...] = (1.0,)
    seeds: int = 1
    epsilon: float | None = 1.0
    lr: float = 0.01
    optimizer: str = "sgd"
    batch_size: int = 64
    measurement: str = "loss"

    def __post_init__(self) -> None:
        self.epochs = tuple(float(e) for e in self.epochs)
        if self.kind not in GOLDS:
            raise GDAError(f"unknown gold standard {self.kind!r}; choose from: {', '.join(GOLDS)}")
        if self.seeds < 1 or self.n_subsets < 2:
            raise GDAError("seeds must be >= 1 and n_subsets >= 2")
        Recipe(optimizer=self.optimizer, lr=self.lr, batch_size=self.batch_size)  # validates

    def recipe(self) -> Recipe:
        return Recipe(optimizer=self.optimizer, lr=self.lr, batch_size=self.batch_size)


def compute_gold(config: GoldConfig, model: TrainedModel, train: Dataset, test: Dataset, groups: Groups,
                 cache_dir: Path, progress: Progress, executor: Executor | None = None) -> GoldStandard | LDSEnsemble:
    """The gold standard for these groups, from the store when it was computed before;
    ``executor`` trains its blocks of model copies (default: this process)."""
    from .store import ScoreStore

    params = {"gold": dataclasses.asdict(config), "model": model.fingerprint(), "train": train.fingerprint(),
              "test": test.fingerprint(),
              "groups": hashlib.sha256(np.ascontiguousarray(groups.labels).tobytes()).hexdigest()}
    store = ScoreStore(cache_dir)
    if config.kind == "lds":
        def compute_lds(report: Progress) -> tuple[dict, dict]:
            ensemble = lds_ensemble(model, train, test, groups, n_subsets=config.n_subsets, alpha=config.alpha,
                                    seeds=config.seeds, measurement=config.measurement,
                                    progress=_both(progress, report), executor=executor)
            return {"masks": ensemble.masks, "outputs": ensemble.outputs}, ensemble.params

        arrays, summary, _ = store.get_or_compute("lds", params, compute_lds)
        return LDSEnsemble(arrays["masks"].astype(bool), arrays["outputs"], config.alpha, summary)

    def compute(report: Progress) -> tuple[dict, dict]:
        if config.kind == "further-training":
            gold = further_training(model, train, test, groups, epochs=list(config.epochs), epsilon=config.epsilon,
                                    seeds=config.seeds, recipe=config.recipe(), measurement=config.measurement,
                                    progress=_both(progress, report), executor=executor)
        else:
            gold = leave_group_out(model, train, test, groups, seeds=config.seeds,
                                   measurement=config.measurement, progress=_both(progress, report),
                                   executor=executor)
        arrays = {"scores": gold.scores, "standard_error": gold.standard_error, "differences": gold.differences}
        return arrays, {**gold.params, "horizons": gold.horizons, "weight_change": gold.weight_change}

    arrays, summary, _ = store.get_or_compute("gold", params, compute)
    return GoldStandard(config.kind, [float(h) for h in summary["horizons"]], arrays["scores"],
                        arrays["standard_error"], arrays["differences"], float(summary["weight_change"]),
                        config.measurement, summary)


def _both(first: Progress, second: Progress) -> Progress:
    def update(phase: str, fraction: float) -> None:
        first(phase, fraction)
        second(phase, fraction)

    return update


# ----------------------------------------------------------------------------------- sweep
@dataclass
class SweepConfig:
    """Every combination of methods x groupings x group counts, against one gold standard."""

    data: str = "digits"
    model: str = "mlp"
    methods: tuple[str, ...] = ("grad-dot",)
    groupings: tuple[str, ...] = ("random", "grad-kmeans")
    group_counts: tuple[int, ...] = (15, 150)
    per_example: bool = True
    test_size: int = 100
    seed: int = 0
    device: str = "auto"
    gold: GoldConfig = field(default_factory=GoldConfig)
    #: also run each influence method with damping 1 / (lr x T) for every further-training horizon T
    horizon_matched: bool = False
    method_options: dict = field(default_factory=dict)
    top_k: int = 10
    #: where the methods' training side runs (see gda_core.executors); like the device, not
    #: part of the sweep's cache key (its result's config records them with the wall times)
    executor: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        check_executor(self.executor)
        if self.ray_address is not None and self.executor != "ray":
            raise GDAError(f"--ray-address needs --executor ray, not {self.executor!r}")
        self.methods, self.groupings = tuple(self.methods), tuple(self.groupings)
        self.group_counts = tuple(int(k) for k in self.group_counts)
        check_data_choice(self.data)
        check_model_choice(self.model)
        for name in self.methods:
            if name not in METHODS:
                raise GDAError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
        for name in self.groupings:
            if name not in GROUPINGS:
                raise GDAError(f"unknown grouping {name!r}; choose from: {', '.join(GROUPINGS)}")
        if any(k < 1 for k in self.group_counts):
            raise GDAError("group counts must be >= 1")
        if self.device not in DEVICES:
            raise GDAError(f"unknown device {self.device!r}; choose from: {', '.join(DEVICES)}")
        if self.test_size < 1:
            raise GDAError("test size must be >= 1")
        if isinstance(self.gold, dict):
            self.gold = GoldConfig(**self.gold)


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


def run_sweep(config: SweepConfig, *, cache_dir: str | Path | None = None,
              progress: Progress | None = None) -> dict:
    """Run the sweep; returns a JSON-ready dict with one point per (method, grouping, K)."""
    progress = progress or (lambda phase, fraction: None)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    device = resolve_device(config.device)
    split, model = load_inputs(config, cache_dir, device)
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
    gold_seconds = {}
    executor = make_executor(config.executor, address=config.ray_address,
                             builtin=BuiltinSource(config.data, seed=config.seed))
    with executor:
        for cell_index, (grouping, k) in enumerate(cells):
            started = time.perf_counter()
            groups = make_grouping(grouping, k, seed=config.seed).fit(train, model.module)
            grouping_seconds = time.perf_counter() - started

            def cell_progress(phase: str, fraction: float, index=cell_index) -> None:
                progress(f"{phase} ({grouping}, K={groups.n_groups})", (index + fraction) / len(cells))

            started = time.perf_counter()
            gold = compute_gold(config.gold, model, train, test, groups, cache_dir, cell_progress, executor)
            gold_seconds[f"{grouping}/{groups.n_groups}"] = time.perf_counter() - started
            for label, method_name, options in runs:
                with PeakMemory(device) as memory:
                    started = time.perf_counter()
                    method = make_method(method_name, model, **options).fit(train, groups)
                    scores = method.attribute(test, executor=executor)
                    seconds = time.perf_counter() - started
                point = {"method": label, "base_method": method_name, "grouping": grouping,
                         "n_groups": groups.n_groups, "seconds": seconds, "grouping_seconds": grouping_seconds,
                         "total_seconds": seconds + grouping_seconds, "peak_mb": memory.peak_mb}
                if isinstance(gold, LDSEnsemble):
                    result = lds(scores, gold)
                    point.update(lds=result["lds"], lds_se=result["lds_se"])
                else:
                    point["fidelity"] = {f"{h:g}": fidelity(scores, gold.scores[i], top_k=config.top_k)
                                         for i, h in enumerate(gold.horizons)}
                    lead = point["fidelity"][f"{gold.horizons[0]:g}"]
                    point.update(cosine=lead["cosine"], cosine_se=lead["cosine_se"], spearman=lead["spearman"])
                    point["gold_relative_se"] = float(np.nanmean(np.abs(gold.standard_error[0])) /
                                                      max(np.abs(gold.scores[0]).mean(), 1e-300))
                points.append(point)
                progress("methods", (cell_index + 1) / len(cells))
    return {
        "config": {**dataclasses.asdict(config), "device": str(device)},
        "n_train": n_train, "n_test": len(test), "gold": config.gold.kind,
        "metric": "lds" if config.gold.kind == "lds" else "cosine",
        "gold_seconds": gold_seconds, "points": points, "skipped": skipped,
        "torch_threads": torch.get_num_threads(), "version": __version__,
    }
