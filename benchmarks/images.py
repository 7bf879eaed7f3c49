"""Image benchmark: mnist / ResNet-9, printing one JSON object to stdout; progress goes to stderr.

Setting: the built-in ``mnist`` (4000 training and 1000 test 28x28 digits), the zoo ``resnet``
(CIFAR-style ResNet-9, width 8) trained with its default recipe (8 epochs Adam), 200
test points. Measured:

- the model's training time and its test accuracy (all 1000 test points, and the 200);
- for each of grad-dot, tracin, trak and if-arnoldi (default options), four modes: per-example,
  last-layer only per-example (the method option ``last_layer_only=True``), and grad-kmeans
  groupings at K = N/100 and N/10 (40 and 400): ``fit`` + ``attribute`` seconds and peak MB,
  the grouping's own seconds and peak separately, and ``total_seconds`` = attribution + grouping;
- LDS (linear datamodeling score, gold.lds, against test loss) of each against 50 models
  retrained from scratch on random halves (alpha 0.5) of the groups, one ensemble per grouping
  (per-example and last-layer share theirs). Two ways to get the retrained models: ``batched``,
  the project's gold.lds_ensemble (vmapped copies of the module trained on masked example
  weights), and ``retrain``, train_model on each subset (the model's own recipe and seed).
  ``lds.setting`` / ``lds.gold`` say which was used: the first of full/batched, full/retrain,
  subset/batched, subset/retrain whose estimated cost fits ``--lds-budget`` seconds (default
  1200: 20 minutes). The subset: 1000 training points drawn at random, a model trained on them
  with the same recipe, the same methods and modes, groupings scaled (K = 10 and 100).
  Estimates: ``batched`` from 2 copies trained 1 epoch on 256 points, scaled by points, epochs,
  subsets and ensembles; ``retrain`` from the model's own training time x alpha, scaled likewise.

How it measures (the mechanisms of benchmarks/speed.py, shared through benchmarks/harness.py):
- Every measurement runs in a fresh worker process (this script with ``--single``); setup
  (imports, data, loading the saved model and grouping) happens before the clock and the memory
  baseline start. By default each worker first runs the method on 64 points and 2 test points
  (one-time costs: lazy imports, first vmap traces); ``--no-warmup`` times cold calls.
- Peak memory is the growth of the process's peak resident set over its RSS at the start of the
  phase (VmHWM reset via /proc/self/clear_refs, gda_core.evaluation.memory.PeakMemory); on CUDA
  ``peak_mb`` is the device peak and ``host_peak_mb`` the host's.
- Threads are pinned (``torch.set_num_threads`` and the OMP/MKL/OpenBLAS variables of the
  workers). The load average at the start and end and, per measurement, the CPU seconds other
  processes used meanwhile are recorded: ``warnings`` lists the measurements they inflated.
- With ``--repeats R`` each timing runs in R fresh workers; times and peaks are medians. The LDS
  figures come from one run (scores are deterministic given the model; the gold is seeded).
- ``--max-seconds`` caps each measurement: a per-example run whose estimate (its K = N/10 time
  plus Grad-Dot's per-example overhead, times the checkpoints for TracIn) exceeds it is skipped
  with the estimate, and a run that goes over it is stopped and reported as a timeout.
- Cost grows with K, so after a grouped run times out, larger K and per-example are skipped.

Usage: python benchmarks/images.py [--threads 2] [--device auto|cpu|cuda] [--repeats 1]
       [--quick] [--max-seconds 600] [--lds-budget 1200] [--lds-setting auto|full|subset]
       [--methods grad-dot,...] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # benchmarks/ is on the path when this runs as a script
from harness import is_ok, log, rounded

METHODS = ("grad-dot", "tracin", "trak", "if-arnoldi")
MODES = ("per-example", "last-layer", "grad-kmeans")
FULL = {"n_train": 4000, "n_test": 200, "lds_n_train": 1000, "n_subsets": 50, "train_epochs": None}
QUICK = {"n_train": 200, "n_test": 8, "lds_n_train": 100, "n_subsets": 4, "train_epochs": 1}
ALPHA = 0.5
GOLD_PROBE_COPIES = 2
# Seconds a worker may take on top of --max-seconds for imports, data, model loading and the
# warm-up (speed.py allows 120; mnist and the ResNet load in a few seconds).
SETUP_SECONDS = 60.0
PROBE_POINTS = 256
TRAIN_SECONDS = 900.0
GOLDS = ("batched", "retrain")
TIMING_KEYS = ["fit_seconds", "attribute_seconds", "cpu_seconds", "peak_mb", "host_peak_mb",
               "warmup_seconds", "other_cpu_seconds", "clocked_seconds"]


# ====================================================================== worker side
def _setup(spec: dict):
    """Imports, thread pinning, device, the setting's training set and the test subset."""
    import torch

    torch.set_num_threads(spec["threads"])
    from gda_core.inputs.datasets import load_builtin
    from gda_core.requests import resolve_device

    device = resolve_device(spec["device"])
    split = load_builtin("mnist")
    train = split.train.subset(sample_rows(len(split.train), spec["setting_n_train"]))
    return torch, device, train, split.test


def sample_rows(n_rows: int, n: int):
    """``n`` of ``n_rows`` rows, seeded (seed 0) and in order; all of them when n >= n_rows.
    Not the first n: the mnist split keeps the source's order, which is sorted by class."""
    import numpy as np

    if n >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(0).permutation(n_rows)[:n])


def _train_config(epochs):
    import dataclasses

    from gda_core.inputs.zoo import default_train_config

    config = default_train_config("resnet")
    return config if epochs is None else dataclasses.replace(config, epochs=epochs)


def _groups(work: Path, spec: dict):
    import numpy as np

    from gda_core.attribution.grouping import Groups

    labels = np.load(work / spec["labels_file"])
    return Groups(labels, int(labels.max()) + 1, spec["grouping"])


def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process; returns what the parent records."""
    torch, device, train, test_pool = _setup(spec)
    test = test_pool.subset(sample_rows(len(test_pool), spec["n_test"]))
    work = Path(spec["work_dir"])
    model_dir = work / f"model-{spec['setting']}"
    job = spec["job"]
    import numpy as np

    from gda_core.evaluation.memory import PeakMemory

    clock, memory = harness.Clock(device), PeakMemory(device)

    if job == "train":
        from gda_core.inputs.zoo import (
            model_config_for,
            model_score,
            save_model,
            train_model,
        )

        config = model_config_for("resnet", train)
        if spec.get("reuse_model"):  # a model trained on the same rows with the same recipe
            from gda_core.inputs.zoo import load_model

            trained, seconds = load_model(Path(spec["reuse_model"]), device=device), None
        else:
            clock.start()
            trained = train_model(config, train, _train_config(spec["train_epochs"]), device=device)
            seconds, _ = clock.stop()
        save_model(trained, model_dir)
        return {"train_seconds": seconds, "test_accuracy": model_score(trained.module, test_pool.to(device)),
                "test_accuracy_attributed_points": model_score(trained.module, test.to(device)),
                "n_train": len(train), "n_test": len(test), "n_test_pool": len(test_pool),
                "n_parameters": sum(p.numel() for p in trained.module.parameters()),
                "n_last_layer_parameters": sum(p.numel() for p in trained.module.head.parameters())
                if hasattr(trained.module, "head") else None,
                "epochs": trained.train_config.epochs, "resnet_width": config.resnet_width,
                "n_checkpoints": len(trained.checkpoints), "final_train_loss": trained.history[-1],
                "other_cpu_seconds": clock.other_cpu, "clocked_seconds": clock.clocked}

    from gda_core.inputs.zoo import load_model

    model = load_model(model_dir, device=device)
    train, test = train.to(device), test.to(device)

    if job == "grouping":
        return harness.measure_grouping(spec, train, model.module, clock, memory, work / spec["labels_file"])

    if job == "measure":
        from gda_core.attribution.methods import make_method

        options = spec.get("options", {})
        record, scores = harness.measure_method(lambda: make_method(spec["method"], model, **options),
                                                train, _groups(work, spec), test, clock, memory, spec["warmup"])
        if spec.get("scores_file"):
            np.save(work / spec["scores_file"], np.asarray(scores, dtype=np.float64))
        return record

    if job in ("gold", "gold-probe"):
        from gda_core.evaluation.gold import lds_ensemble

        probe = job == "gold-probe"
        groups = _groups(work, spec)
        if probe:  # the trainer's cost per copy and epoch, on the first PROBE_POINTS points
            train = train.subset(slice(0, PROBE_POINTS))
            groups = type(groups)(np.arange(len(train)), len(train))
        memory.start()
        clock.start()
        ensemble = lds_ensemble(model, train, test, groups, n_subsets=GOLD_PROBE_COPIES if probe else spec["n_subsets"],
                                alpha=ALPHA, epochs=1.0 if probe else None, seed=0)
        seconds, cpu = clock.stop()
        peak = memory.stop()
        if not probe:
            np.savez(work / spec["gold_file"], masks=ensemble.masks, outputs=ensemble.outputs)
        return {"seconds": seconds, "cpu_seconds": cpu, **peak, "epochs": ensemble.params["epochs"],
                "n_subsets": int(ensemble.masks.shape[0]), "n_groups": int(ensemble.masks.shape[1]),
                "other_cpu_seconds": clock.other_cpu, "clocked_seconds": clock.clocked}

    if job == "gold-retrain":
        from gda_core.inputs.zoo import train_model

        groups = _groups(work, spec)
        masks = subset_masks(spec["n_subsets"], groups.n_groups, seed=0)
        objective = test.task.objective("loss")
        outputs = np.zeros((len(masks), len(test)))
        memory.start()
        clock.start()
        for index, mask in enumerate(masks):
            rows = np.flatnonzero(mask[groups.labels])
            retrained = train_model(model.config, train.subset(rows), model.train_config, device=device)
            with torch.no_grad():
                outputs[index] = objective(retrained.module(test.features), test.labels).double().cpu().numpy()
        seconds, cpu = clock.stop()
        peak = memory.stop()
        np.savez(work / spec["gold_file"], masks=masks, outputs=outputs)
        return {"seconds": seconds, "cpu_seconds": cpu, **peak, "epochs": model.train_config.epochs,
                "n_subsets": int(masks.shape[0]), "n_groups": int(masks.shape[1]),
                "other_cpu_seconds": clock.other_cpu, "clocked_seconds": clock.clocked}

    raise ValueError(f"unknown job {job!r}")


def subset_masks(n_subsets: int, n_groups: int, seed: int):
    """Which groups each subset keeps: a random ALPHA fraction each (as gold.lds_ensemble draws them)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    masks = np.zeros((n_subsets, n_groups), dtype=bool)
    for row in masks:
        row[rng.choice(n_groups, size=max(1, round(ALPHA * n_groups)), replace=False)] = True
    return masks


# ====================================================================== parent side
class Setting:
    """One training set (``timing``: all N points; ``lds``: maybe a subset): its model, its
    groupings (computed once each, saved) and its measurements."""

    def __init__(self, name: str, runner: harness.Runner, n_train: int, train_epochs, timeout: float):
        self.name, self.runner, self.n_train, self.timeout = name, runner, n_train, timeout
        self.train_epochs = train_epochs
        self.reuse_model = None
        self.model: dict = {}
        self.groupings: dict[tuple[str, int], dict] = {}

    def job(self, **job) -> dict:
        return {"setting": self.name, "setting_n_train": self.n_train, "train_epochs": self.train_epochs,
                "reuse_model": self.reuse_model, **job}

    def train(self) -> bool:
        log(f"[{self.name}] training the resnet on {self.n_train} points ...")
        # --max-seconds caps measurements, not the model's training (which can take minutes on
        # a loaded machine): it gets at least TRAIN_SECONDS.
        self.model = self.runner.run(self.job(job="train"), max(self.timeout, TRAIN_SECONDS))
        if self.model["status"] != "ok":
            log(f"  training failed: {self.model['note']}")
            return False
        log(f"  {self.model['train_seconds'] or 0:.1f} s (0: reused), test accuracy {self.model['test_accuracy']:.4f}, "
            f"{self.model['n_parameters']} parameters")
        return True

    def grouping(self, grouping: str, k: int, repeats: int) -> dict:
        key = (grouping, k)
        if key not in self.groupings:
            labels_file = f"groups-{self.name}-{grouping}-{k}.npy"
            log(f"[{self.name}] grouping {grouping} K={k} ...")
            result = harness.measure_repeated(self.runner, self.job(job="grouping", grouping=grouping, k=k,
                                                            labels_file=labels_file), repeats, self.timeout,
                                      ["seconds", "cpu_seconds", "peak_mb", "host_peak_mb", "other_cpu_seconds",
                                       "clocked_seconds"])
            result["labels_file"] = labels_file
            if result["status"] == "ok":
                log(f"  {result['seconds']:.2f} s, peak +{result['peak_mb']:.0f} MB, sizes "
                    f"{result['group_size_min']}..{result['group_size_max']}")
            else:
                log(f"  {result['status']}: {result['note']}")
            self.groupings[key] = result
        return self.groupings[key]

    def measure(self, method: str, mode: str, k: int, repeats: int, scores_file: str | None = None) -> dict:
        grouping = "grad-kmeans" if mode == "grad-kmeans" else "per-example"
        grouping_result = self.grouping(grouping, k, 1)
        entry = {"method": method, "mode": mode, "k": k}
        if grouping_result["status"] != "ok":
            entry.update(status="skipped", note=f"grouping {grouping_result['status']}: {grouping_result['note']}")
            return entry
        options = {"last_layer_only": True} if mode == "last-layer" else {}
        result = harness.measure_repeated(self.runner, self.job(job="measure", method=method, grouping=grouping, k=k,
                                                        options=options, scores_file=scores_file,
                                                        labels_file=grouping_result["labels_file"]),
                                  repeats, self.timeout, TIMING_KEYS)
        harness.record_attribution(entry, result, grouping_result)
        return entry

    def labelled(self) -> list[tuple[str, dict]]:
        out = [(f"[{self.name}] training", self.model)]
        return out + [(f"[{self.name}] grouping {g} K={k}", r) for (g, k), r in self.groupings.items()]


def _order(methods: list[str], ks: list[int], n_train: int) -> list[tuple[str, str, int]]:
    """Grouped and last-layer runs first (they give the per-example estimates), Grad-Dot first."""
    methods = sorted(methods, key=lambda m: m != "grad-dot")
    order = [(m, "grad-kmeans", k) for m in methods for k in ks]
    order += [(m, "last-layer", n_train) for m in methods]
    return order + [(m, "per-example", n_train) for m in methods]


def run_timings(setting: Setting, methods, ks, args, n_checkpoints, scores: bool, repeats: int) -> dict:
    """Every (method, mode, K) of the setting; with ``scores`` each saves its score matrix."""
    entries = {}
    order = _order(methods, ks, setting.n_train)
    for index, (method, mode, k) in enumerate(order, 1):
        label = f"[{setting.name} {index}/{len(order)}] {method} {mode} K={k}"
        estimate = (harness.estimate_per_example(entries, method, ks, setting.n_train, n_checkpoints)
                    if mode == "per-example" else None)
        stopped = [e for (m, md, kk), e in entries.items() if m == method and md == "grad-kmeans"
                   and e.get("status") == "timeout" and mode != "last-layer" and (kk < k or mode == "per-example")]
        if stopped:
            entries[(method, mode, k)] = {
                "method": method, "mode": mode, "k": k, "status": "skipped",
                "estimated_seconds": f"> {args.max_seconds:.0f}",
                "note": f"its grouped run at K={stopped[0]['k']} went over --max-seconds; a larger K or "
                        "per-example costs at least as much"}
            log(f"{label}: skipped, {entries[(method, mode, k)]['note']}")
            continue
        if estimate is not None and estimate > args.max_seconds:
            entries[(method, mode, k)] = {
                "method": method, "mode": mode, "k": k, "status": "skipped",
                "estimated_seconds": rounded(estimate, 1),
                "note": f"estimated {estimate:.0f} s > --max-seconds {args.max_seconds:.0f} (its grouped time at "
                        f"K={max(ks)} plus Grad-Dot's per-example overhead{', per checkpoint' * (method == 'tracin')})"}
            log(f"{label}: skipped, {entries[(method, mode, k)]['note']}")
            continue
        log(f"{label} ...")
        scores_file = f"scores-{setting.name}-{method}-{mode}-{k}.npy" if scores else None
        entry = setting.measure(method, mode, k, repeats, scores_file)
        entry["scores_file"] = scores_file
        if entry.get("status") == "ok" and entry["attribution_seconds"] > args.max_seconds:
            entry["note"] = f"over --max-seconds ({args.max_seconds:.0f} s) but finished"
        entries[(method, mode, k)] = entry
    return entries


def estimate_gold(setting: Setting, sizes: dict, n_ensembles: int) -> dict:
    """Seconds each way of computing the LDS gold would take, in the full setting and on the
    subset: ``batched`` (the project's gold.lds_ensemble, vmapped copies trained on masked
    weights) from 2 copies trained 1 epoch on PROBE_POINTS points, scaled by the points, epochs,
    subsets and ensembles; ``retrain`` (train_model on each subset) from the model's own
    training time x ALPHA, scaled the same way."""
    model, n = setting.model, setting.n_train
    per_model = model["train_seconds"] * ALPHA
    out = {"retrain": {"seconds_per_model": rounded(per_model, 2)}, "n_ensembles": n_ensembles,
           "n_subsets": sizes["n_subsets"], "epochs": model["epochs"]}
    total = sizes["n_subsets"] * n_ensembles
    out["retrain"]["full"] = rounded(per_model * total, 1)
    out["retrain"]["subset"] = rounded(per_model * total * sizes["lds_n_train"] / n, 1)
    grouping = setting.grouping("per-example", n, 1)
    log(f"[{setting.name}] timing the batched LDS trainer ({GOLD_PROBE_COPIES} copies, 1 epoch, "
        f"{min(n, PROBE_POINTS)} points) ...")
    probe = (setting.runner.run(setting.job(job="gold-probe", grouping="per-example", k=n,
                                            labels_file=grouping["labels_file"]), setting.timeout)
             if grouping["status"] == "ok" else grouping)
    if probe["status"] == "ok":
        per_copy_epoch = probe["seconds"] / GOLD_PROBE_COPIES * n / min(n, PROBE_POINTS)
        out["batched"] = {"probe_seconds": rounded(probe["seconds"], 2), "probe_peak_mb": probe["peak_mb"],
                          "seconds_per_copy_epoch": rounded(per_copy_epoch, 2),
                          "full": rounded(per_copy_epoch * model["epochs"] * total, 1),
                          "subset": rounded(per_copy_epoch * model["epochs"] * total * sizes["lds_n_train"] / n, 1),
                          "other_cpu_seconds": probe["other_cpu_seconds"],
                          "clocked_seconds": probe["clocked_seconds"]}
    else:
        out["batched"] = {"status": probe["status"], "note": probe.get("note")}
    log(f"  estimated gold seconds: {json.dumps({g: {w: out[g].get(w) for w in ('full', 'subset')} for g in GOLDS})}")
    return out


def choose_gold(estimate: dict | None, args) -> tuple[str, str, str]:
    """(setting, gold, why): the first of full/batched, full/retrain, subset/batched,
    subset/retrain (as far as --lds-setting and --gold allow) whose estimate fits --lds-budget,
    else the cheapest of them."""
    settings = ("full", "subset") if args.lds_setting == "auto" else (args.lds_setting,)
    golds = GOLDS if args.gold == "auto" else (args.gold,)
    candidates = [(where, gold) for where in settings for gold in golds]
    if estimate is None:
        return *candidates[0], "requested (--lds-setting, --gold)"
    timed = [(estimate[gold].get(where), where, gold) for where, gold in candidates
             if estimate[gold].get(where) is not None]
    if not timed:
        return *candidates[0], "no estimate (the probe failed)"
    for seconds, where, gold in timed:
        if seconds <= args.lds_budget:
            return where, gold, (f"the first choice whose estimated gold cost ({seconds:.0f} s) fits --lds-budget "
                                 f"{args.lds_budget:g} s (order: full/batched, full/retrain, subset/batched, "
                                 "subset/retrain)")
    seconds, where, gold = min(timed)
    return where, gold, f"none fits --lds-budget {args.lds_budget:g} s; the cheapest ({seconds:.0f} s estimated)"


def run_lds(setting: Setting, methods, ks, args, sizes, gold_kind: str, timings: dict | None) -> dict:
    """Gold ensembles per grouping (per-example, then each K), and the LDS of every method's
    scores against them. ``timings`` reuses the timing setting's saved scores (full setting)."""
    import numpy as np

    from gda_core.evaluation.gold import LDSEnsemble, lds

    n = setting.n_train
    if timings is None:
        timings = run_timings(setting, methods, ks, args, setting.model["n_checkpoints"], scores=True, repeats=1)
    entries = timings
    gold = {}
    for grouping, k in [("per-example", n)] + [("grad-kmeans", k) for k in ks]:
        grouping_result = setting.grouping(grouping, k, 1)
        label = f"{grouping}/K={k}"
        if grouping_result["status"] != "ok":
            gold[label] = {"status": "skipped", "note": "grouping failed"}
            continue
        log(f"[{setting.name}] LDS gold for {label}: {sizes['n_subsets']} models retrained on half the groups ...")
        gold_file = f"gold-{setting.name}-{grouping}-{k}.npz"
        job = "gold" if gold_kind == "batched" else "gold-retrain"
        result = setting.runner.run(setting.job(job=job, grouping=grouping, k=k, n_subsets=sizes["n_subsets"],
                                                labels_file=grouping_result["labels_file"], gold_file=gold_file),
                                    args.lds_budget + SETUP_SECONDS)
        result["gold_file"] = gold_file
        gold[label] = result
        log(f"  {result['seconds']:.1f} s" if result["status"] == "ok" else f"  {result['status']}: {result['note']}")
    results = []
    for (method, mode, k), entry in entries.items():
        label = f"{'per-example' if mode != 'grad-kmeans' else 'grad-kmeans'}/K={k}"
        row = {"method": method, "mode": mode, "k": k}
        if not is_ok(entry) or not entry.get("scores_file"):
            row.update(status="skipped", note=f"attribution {entry.get('status')}: {entry.get('note', '')}")
        elif not is_ok(gold.get(label)):
            row.update(status="skipped", note=f"gold {label} {gold.get(label, {}).get('status')}")
        else:
            arrays = np.load(setting.runner.work_dir / gold[label]["gold_file"])
            ensemble = LDSEnsemble(arrays["masks"].astype(bool), arrays["outputs"], ALPHA, {})
            scores = np.load(setting.runner.work_dir / entry["scores_file"])
            value = lds(scores, ensemble)
            row.update(status="ok", lds=rounded(value["lds"]), lds_se=rounded(value["lds_se"]),
                       attribution_seconds=rounded(entry["attribution_seconds"]),
                       total_seconds=rounded(entry["total_seconds"]), peak_mb=entry["peak_mb"])
        results.append(row)
    return {"gold": {label: _format(r, ["status", "seconds", "cpu_seconds", "peak_mb", "host_peak_mb", "n_subsets",
                                        "n_groups", "epochs", "other_cpu_seconds", "note"])
                     for label, r in gold.items()},
            "results": results, "entries": entries}


def _no_nan(value):
    """NaN (an LDS without spread) as null, so the output stays strict JSON."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _format(entry: dict, keep: list[str]) -> dict:
    return {k: (rounded(entry[k]) if isinstance(entry[k], float) else entry[k]) for k in keep if k in entry}


ENTRY_KEYS = ["method", "mode", "k", "status", "grouping_seconds", "fit_seconds", "attribute_seconds",
              "attribution_seconds", "total_seconds", "cpu_seconds", "other_cpu_seconds", "warmup_seconds",
              "peak_mb", "host_peak_mb", "grouping_peak_mb", "estimated_seconds", "note", "attempts",
              "load_average_1min", "scores_shape", "scores_finite", "method_info", "runs"]
GROUPING_KEYS = ["status", "seconds", "cpu_seconds", "other_cpu_seconds", "warmup_seconds", "peak_mb",
                 "host_peak_mb", "attempts", "n_groups", "group_size_min", "group_size_median",
                 "group_size_max", "note", "runs"]
MODEL_KEYS = ["status", "train_seconds", "test_accuracy", "test_accuracy_attributed_points", "n_train",
              "n_test", "n_test_pool", "n_parameters", "n_last_layer_parameters", "epochs", "resnet_width",
              "n_checkpoints", "final_train_loss", "other_cpu_seconds", "note"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_measurement_args(parser, max_seconds=600.0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 200 training points, 8 test points, 1 epoch, 4 subsets")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list (default {','.join(METHODS)})")
    parser.add_argument("--lds-budget", type=float, default=1200.0,
                        help="seconds the full setting's LDS gold may take before the subset is used (default 1200)")
    parser.add_argument("--lds-setting", choices=("auto", "full", "subset", "none"), default="auto",
                        help="where LDS is computed (default auto: full if its estimate fits --lds-budget)")
    parser.add_argument("--reuse-model", default=None,
                        help="a saved resnet (save_model folder) trained on the timing set's rows with the "
                             "default recipe, e.g. benchmarks/ggda.py's model-resnet-timing: not trained again "
                             "(train_seconds is then null)")
    parser.add_argument("--gold", choices=("auto", *GOLDS), default="auto",
                        help="LDS gold: batched (gold.lds_ensemble), retrain (train_model per subset), "
                             "or auto (batched if its estimate fits --lds-budget)")
    args = parser.parse_args(argv)
    harness.check_measurement_args(parser, args)
    if args.lds_budget <= 0:
        parser.error("--lds-budget must be > 0")
    if args.reuse_model and args.lds_setting != "none":
        parser.error("--reuse-model needs --lds-setting none (the gold estimate uses the training time)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if harness.run_if_worker(args, worker):
        return 0

    wall_started = time.perf_counter()
    import torch

    from gda_core.evaluation.memory import PeakMemory
    from gda_core.registry import METHODS as REGISTERED
    from gda_core.requests import resolve_device

    device = resolve_device(args.device)
    args.device = device.type
    sizes = dict(QUICK if args.quick else FULL)
    methods = harness.method_names(args.methods, REGISTERED)
    if methods is None:
        return 2

    work_dir, temporary = harness.work_directory(args, "gda-images-")
    runner = harness.Runner(args, {"n_test": sizes["n_test"]}, work_dir, __file__)
    timeout = args.max_seconds + SETUP_SECONDS
    load_start, git_start = harness.load_average(), harness.git_state()
    harness.warn_if_busy()

    timing = Setting("timing", runner, sizes["n_train"], sizes["train_epochs"], timeout)
    timing.reuse_model = str(Path(args.reuse_model).resolve()) if args.reuse_model else None
    if not timing.train():
        return 1
    n_train = timing.model["n_train"]
    ks = [max(1, n_train // 100), max(1, n_train // 10)]
    for grouping, k in [("per-example", n_train)] + [("grad-kmeans", k) for k in ks]:
        timing.grouping(grouping, k, args.repeats)

    # -- where LDS goes and how its gold is computed: the first that fits the budget
    n_ensembles = 1 + len(ks)
    gold_estimate = None
    if args.lds_setting == "none":
        lds_setting, gold_kind, why = "none", None, "--lds-setting none"
    else:
        if args.lds_setting == "auto" or args.gold == "auto":
            gold_estimate = estimate_gold(timing, sizes, n_ensembles)
        lds_setting, gold_kind, why = choose_gold(gold_estimate, args)
    log(f"LDS: {lds_setting} setting, {gold_kind} gold ({why})")

    timings = run_timings(timing, methods, ks, args, timing.model["n_checkpoints"], scores=lds_setting == "full",
                          repeats=args.repeats)
    lds_report, subset = None, None
    if lds_setting == "full":
        lds_report = run_lds(timing, methods, ks, args, sizes, gold_kind, timings)
    elif lds_setting == "subset":
        subset = Setting("lds", runner, sizes["lds_n_train"], sizes["train_epochs"], timeout)
        if subset.train():
            lds_ks = [max(1, subset.n_train // 100), max(1, subset.n_train // 10)]
            lds_report = run_lds(subset, methods, lds_ks, args, sizes, gold_kind, None)

    load_end = harness.load_average()
    key_order = {m: i for i, m in enumerate(methods)}
    results = [_format(timings[key], ENTRY_KEYS) for key in sorted(
        timings, key=lambda key: (key_order[key[0]], MODES.index(key[1]), key[2]))]
    labelled = timing.labelled() + [(f"{e['method']} {e['mode']} K={e['k']}", e) for e in timings.values()]
    lds_out = {"setting": lds_setting, "gold": gold_kind, "why": why, "gold_estimate_seconds": gold_estimate}
    if lds_setting != "none":
        lds_out.update({
            "n_train": timing.n_train if lds_setting == "full" else sizes["lds_n_train"],
            "n_subsets": sizes["n_subsets"], "alpha": ALPHA, "measurement": "test loss",
            "gold_how": {"batched": "gda_core.evaluation.gold.lds_ensemble: vmapped copies of the eval-mode "
                                    "module trained from scratch on masked example weights, the model's recipe",
                         "retrain": "train_model on each subset (the model's own recipe and seed, BatchNorm "
                                    "in training mode), test loss of each retrained model"}[gold_kind],
        })
    if subset is not None:
        lds_out["model"] = _format({"status": "ok", **subset.model}, MODEL_KEYS)
        lds_out["groupings"] = {f"{g}/K={k}": _format(r, GROUPING_KEYS) for (g, k), r in subset.groupings.items()}
        labelled += subset.labelled()
    if lds_report is not None:
        lds_out["gold_runs"] = lds_report["gold"]
        lds_out["results"] = lds_report["results"]
        if subset is not None:
            lds_out["timings"] = [_format(e, ENTRY_KEYS) for e in lds_report["entries"].values()]
            labelled += [(f"[lds] {e['method']} {e['mode']} K={e['k']}", e) for e in lds_report["entries"].values()]
        labelled += [(f"gold {label}", r) for label, r in lds_report["gold"].items()]

    report = {
        "benchmark": "images",
        "config": {
            "threads": args.threads, "device": device.type,
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or platform.machine()),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "quick": args.quick, "reuse_model": args.reuse_model, "data": "built-in mnist (load_builtin('mnist'), seed 0)",
            "n_train": n_train, "n_test": timing.model["n_test"], "model": "zoo resnet (ResNet-9)",
            "methods": methods, "method_options": "defaults (last-layer mode: last_layer_only=True)",
            "group_counts": ks, "repeats": args.repeats, "max_seconds": args.max_seconds,
            "lds_budget": args.lds_budget,
            "memory_measure": PeakMemory(device).how + (
                "; device peak via torch.cuda.max_memory_allocated" if device.type == "cuda" else ""),
            "process_per_measurement": True, "warmup": not args.no_warmup, "retries": args.retries,
            "quiet_wait": args.quiet_wait, "git_start": git_start, "git_end": harness.git_state(),
            "load_average_start": load_start, "load_average_end": load_end,
        },
        "model": _format({"status": "ok", **timing.model}, MODEL_KEYS),
        "groupings": {f"{g}/K={k}": _format(r, GROUPING_KEYS) for (g, k), r in timing.groupings.items()},
        "results": results,
        "lds": lds_out,
        "warnings": harness.contention_warnings(labelled, os.cpu_count() or 1),
        "wall_seconds": rounded(time.perf_counter() - wall_started, 1),
    }
    print(json.dumps(_no_nan(report), indent=2))
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
