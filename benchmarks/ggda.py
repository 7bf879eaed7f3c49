"""Grouped attribution end to end (issue 15), printing one JSON object; progress goes to stderr.

Settings:
- ``resnet``: built-in mnist, 4000 random training points, 200 random test points, zoo
  ``resnet`` (ResNet-9) with its default recipe (as benchmarks/images.py);
- ``mlp``: ``make_synthetic(20000, 64, 10)``, 18000 training points, the first 200 test points,
  MLP 64-128-128-10, 5 epochs Adam (as benchmarks/speed.py).

For every method (default grad-dot, tracin, trak, if-ekfac, if-arnoldi) it measures, each in a
fresh worker (benchmarks/harness.py): per-example (the engine's vmap-batched per-example path)
and grad-kmeans at K = N/100 and N/1000, END TO END: the grouping's seconds + ``fit`` +
``attribute``, each reported, and the ratio per-example / grouped (``speedup``). A random
grouping at the same K is measured for the fidelity comparison.

Physical yardsticks (``epoch``), on the timing model at its own training batch size: one training
epoch, one backward over the data and one forward pass. Every cell gives its attribution time in
epochs (``attribution_epochs``; the target for a grouped training side at K = N/100 is at most 2),
and each method's ``speedup_bound``: per-example seconds / (one backward per pass over the data +
one forward), the most a grouped run can gain while it backpropagates every point once per pass
(TracIn makes one per checkpoint) and groups on a forward pass.

Fidelity: point-level LDS. One gold per setting: models retrained on random halves of the
*points* (alpha 0.5), test loss per test point. Every run is scored against it by giving each
point its group's equal share (point score = group score / group size; per-example runs keep
their scores): a subset's predicted effect is the sum of its points' shares; Spearman with the
retrained models' (negated) test loss per test point, averaged: the core's gold.point_lds
(gold.lds applied to the (n_test, N) matrix of shares with the (M, N) point masks).
- ``resnet``: a 1000-point training subset (``--lds-n-train``) with its own model, groupings
  (K = N/100 and max(2, N/1000): 10 and 2; one group would make every half-subset's prediction
  equal) and runs.
- ``mlp``: all 18000 points; the timing runs' own scores (random groupings are timed there too).

Beside every grouped run: ``kept_variance``, the mean share of the per-example run's scores
that the grouping's equal shares keep (gold.kept_variance: agreement with the per-example run,
not fidelity), and, per method and K, ``score_profile_grouping``: the
point-level LDS of equal shares on a grouping made from the per-example scores themselves
(K-means on each point's score profile, which maximises the kept variance summed over test
points). It asks whether agreeing with the per-example scores is what a grouping should aim
at: where those scores are noisy it need not be (on the ResNet it keeps far more of them than
grad-kmeans and scores lower).

Both golds are gold.point_lds_ensemble (the batched trainer; for the resnet one copy at a time,
so that its BatchNorm statistics see only the copy's own points) in blocks of 10 copies until
``--lds-subsets`` (default 50) or ``--lds-gold-seconds`` (``gold.n_subsets`` says how many).

Usage: python benchmarks/ggda.py [--threads 2] [--settings resnet,mlp] [--methods ...]
       [--max-seconds 600] [--lds-subsets 50] [--lds-n-train 1000] [--quick] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # benchmarks/ is on the path when this runs as a script
import images
import speed
from harness import is_ok, log, rounded

METHODS = ("grad-dot", "tracin", "trak", "if-ekfac", "if-arnoldi")
SETTINGS = ("resnet", "mlp")
ALPHA = 0.5
SETUP_SECONDS = 90.0
GOLD_BLOCK = 10
FULL = {"resnet": {"n_train": 4000, "n_test": 200, "train_epochs": None},
        "mlp": {"n_samples": 20000, "n_test_pool": 2000, "n_test": 200, "train_epochs": 5}}
QUICK = {"resnet": {"n_train": 300, "n_test": 8, "train_epochs": 1},
         "mlp": {"n_samples": 2200, "n_test_pool": 200, "n_test": 8, "train_epochs": 1}}
TIMING_KEYS = ["fit_seconds", "attribute_seconds", "cpu_seconds", "peak_mb", "host_peak_mb",
               "warmup_seconds", "other_cpu_seconds", "clocked_seconds"]


# ====================================================================== worker side
def _data(spec: dict):
    """(torch, device, train, test) of the spec's setting (before any clock)."""
    if spec["setting"] == "mlp":
        return speed._setup(spec)
    torch, device, train, test_pool = images._setup(spec)
    return torch, device, train, test_pool.subset(images.sample_rows(len(test_pool), spec["n_test"]))


def _epoch(torch, model, train, clock: "harness.Clock") -> dict:
    """The physical yardsticks of a grouped run, at the model's own training batch size: one
    training epoch (forward, backward and the optimizer's step over every point, in training
    mode), one backward over the data without the step (what a group pass must do at least),
    and one forward pass (what a grouping from the last layer must do), each after a one-batch
    warm-up, on a copy of the trained weights."""
    import copy

    module = copy.deepcopy(model.module)
    batch = min(model.train_config.batch_size, len(train))
    objective = train.task.objective("loss")
    optimizer = torch.optim.Adam(module.parameters(), lr=model.train_config.lr)
    starts = range(0, len(train), batch)

    def step(start: int, update: bool) -> None:
        module.zero_grad(set_to_none=True)
        objective(module(train.features[start:start + batch]), train.labels[start:start + batch]).mean().backward()
        if update:
            optimizer.step()

    def timed(run) -> float:
        run(0)  # warm-up
        clock.start()
        for start in starts:
            run(start)
        return clock.stop()[0]

    module.train()
    epoch = timed(lambda start: step(start, True))
    module.eval()  # attribution's mode: BatchNorm on its running statistics
    backward = timed(lambda start: step(start, False))
    with torch.no_grad():
        forward = timed(lambda start: module(train.features[start:start + batch]))
    return {"batch_size": batch, "epoch_seconds": epoch, "backward_seconds": backward, "forward_seconds": forward,
            "other_cpu_seconds": clock.other_cpu, "clocked_seconds": clock.clocked}


def _model_dir(spec: dict) -> Path:
    return Path(spec["work_dir"]) / f"model-{spec['setting']}-{spec['part']}"


def worker(spec: dict) -> dict:
    torch, device, train, test = _data(spec)
    work = Path(spec["work_dir"])
    job = spec["job"]
    import numpy as np

    from gda_core.evaluation.memory import PeakMemory
    from gda_core.inputs.zoo import load_model, model_score, save_model, train_model

    clock, memory = harness.Clock(device), PeakMemory(device)
    if job == "train":
        if spec["setting"] == "mlp":
            config, recipe = speed._model_config(), speed._train_config(spec["train_epochs"])
        else:
            from gda_core.inputs.zoo import model_config_for

            config, recipe = model_config_for("resnet", train), images._train_config(spec["train_epochs"])
        if spec.get("reuse_models") and (_model_dir(spec) / "config.json").exists():
            trained, seconds = load_model(_model_dir(spec), device=device), None  # --reuse-models
        else:
            clock.start()
            trained = train_model(config, train, recipe, device=device)
            seconds, _ = clock.stop()
            save_model(trained, _model_dir(spec))
        return {"train_seconds": seconds, "test_accuracy": model_score(trained.module, test.to(device)),
                "n_train": len(train), "n_test": len(test), "epochs": trained.train_config.epochs,
                "n_parameters": sum(p.numel() for p in trained.module.parameters()),
                "n_checkpoints": len(trained.checkpoints), "other_cpu_seconds": clock.other_cpu,
                "clocked_seconds": clock.clocked}

    model = load_model(_model_dir(spec), device=device)
    train, test = train.to(device), test.to(device)
    if job == "grouping":
        return harness.measure_grouping(spec, train, model.module, clock, memory, work / spec["labels_file"])

    if job == "measure":
        from gda_core.attribution.methods import make_method

        labels = np.load(work / spec["labels_file"])
        from gda_core.attribution.grouping import Groups

        groups = Groups(labels, int(labels.max()) + 1, spec["grouping"])
        record, scores = harness.measure_method(lambda: make_method(spec["method"], model), train, groups, test,
                                                clock, memory, spec["warmup"])
        np.save(work / spec["scores_file"], np.asarray(scores, dtype=np.float64))
        return record

    if job == "epoch":
        return _epoch(torch, model, train, clock)

    if job == "gold":  # one gold per setting: random halves of the points
        memory.start()
        clock.start()
        from gda_core.evaluation.gold import point_lds_ensemble

        # blocks of GOLD_BLOCK copies (seeds 0, 1, ...) until n_subsets or the time budget; the
        # resnet's copies train one at a time (BatchNorm: left-out points stay out of its statistics)
        deadline, blocks = time.perf_counter() + spec["max_seconds"], []
        while sum(len(b.masks) for b in blocks) < spec["n_subsets"] and time.perf_counter() < deadline:
            count = min(GOLD_BLOCK, spec["n_subsets"] - sum(len(b.masks) for b in blocks))
            blocks.append(point_lds_ensemble(model, train, test, n_subsets=max(2, count), alpha=ALPHA,
                                             seed=len(blocks)))
        masks = np.concatenate([b.masks for b in blocks])
        outputs = np.concatenate([b.outputs for b in blocks])
        how = f"gold.point_lds_ensemble (the batched trainer), blocks of {GOLD_BLOCK} copies"
        seconds, cpu = clock.stop()
        peak = memory.stop()
        np.savez(work / spec["gold_file"], masks=masks, outputs=outputs)
        return {"seconds": seconds, "cpu_seconds": cpu, **peak, "n_subsets": len(masks),
                "n_subsets_requested": spec["n_subsets"], "how": how, "other_cpu_seconds": clock.other_cpu,
                "clocked_seconds": clock.clocked}

    raise ValueError(f"unknown job {job!r}")


# ====================================================================== point-level LDS
def point_lds(scores, labels, masks, outputs) -> dict:
    """Point-level LDS of (n_test, K) group scores against (M, N) point masks: the core's
    :func:`gda_core.evaluation.gold.point_lds` (each point gets its group's equal share)."""

    from gda_core.evaluation.gold import LDSEnsemble
    from gda_core.evaluation.gold import point_lds as core_point_lds

    value = core_point_lds(scores, _groups(labels), LDSEnsemble(masks.astype(bool), outputs, ALPHA, {}))
    return {"lds": rounded(value["lds"]), "lds_se": rounded(value["lds_se"])}


def _groups(labels):
    """The partition of saved group labels (0..K-1)."""
    import numpy as np

    from gda_core.attribution.grouping import Groups

    return Groups(np.asarray(labels), int(np.max(labels)) + 1)


def mean_kept_variance(per_example_scores, labels) -> float:
    """The mean over test points of gold.kept_variance (agreement of the grouping's equal
    shares with the per-example scores)."""
    import numpy as np

    from gda_core.evaluation.gold import kept_variance

    return rounded(float(np.nanmean(kept_variance(per_example_scores, _groups(labels)))), 3)


def score_profile_grouping(per_example_scores, k: int, masks, outputs) -> dict:
    """What equal shares reach at K when the grouping is built from the answer itself: K-means
    (no size cap) on each point's per-example score profile over the test points (each test
    point's row scaled to unit norm, so that each counts alike), the group scores the sums of
    their members'. Not a method (it needs every per-example score): a reference beside the
    groupings at the same K, not a ceiling."""
    import numpy as np

    from gda_core.attribution.grouping import kmeans_labels

    profiles = per_example_scores / np.maximum(np.linalg.norm(per_example_scores, axis=1, keepdims=True), 1e-30)
    labels = kmeans_labels(profiles.T.astype(np.float32), k, seed=0, cap=len(profiles.T))
    sums = per_example_scores @ _groups(labels).membership_matrix().T
    return {**point_lds(sums, labels, masks, outputs), "kept_variance": mean_kept_variance(per_example_scores, labels)}


# ====================================================================== parent side
class Part:
    """One model (a setting's timing model, or the resnet's LDS subset model), its groupings
    and its runs."""

    def __init__(self, setting: str, part: str, runner: harness.Runner, sizes: dict, timeout: float):
        self.setting, self.part, self.runner, self.sizes, self.timeout = setting, part, runner, sizes, timeout
        self.model: dict = {}
        self.groupings: dict = {}
        self.entries: dict = {}
        self.gold: dict | None = None
        self.score_profiles: dict = {}
        self.epoch: dict | None = None

    @property
    def tag(self) -> str:
        return f"{self.setting}-{self.part}"

    def job(self, **job) -> dict:
        return {"setting": self.setting, "part": self.part, "reuse_models": self.runner.args.reuse_models,
                **self.sizes, **job}

    def train(self) -> bool:
        log(f"[{self.tag}] training ...")
        self.model = self.runner.run(self.job(job="train"), max(self.timeout, images.TRAIN_SECONDS))
        if self.model["status"] != "ok":
            log(f"  training failed: {self.model['note']}")
            return False
        log(f"  {self.model['train_seconds'] or 0:.1f} s (0: reused), n={self.model['n_train']}, accuracy "
            f"{self.model['test_accuracy']:.4f}")
        return True

    @property
    def n(self) -> int:
        return self.model["n_train"]

    def grouping(self, grouping: str, k: int) -> dict:
        import numpy as np

        if (grouping, k) not in self.groupings:
            labels_file = f"groups-{self.tag}-{grouping}-{k}.npy"
            log(f"[{self.tag}] grouping {grouping} K={k} ...")
            result = self.runner.run(self.job(job="grouping", grouping=grouping, k=k, labels_file=labels_file),
                                     self.timeout)
            result["labels_file"] = labels_file
            if result["status"] == "ok":
                labels = np.load(self.runner.work_dir / labels_file)
                result["sizes"] = _groups(labels).size_summary()
                log(f"  {result['seconds']:.2f} s, sizes {result['sizes']}")
            else:
                log(f"  {result['status']}: {result['note']}")
            self.groupings[(grouping, k)] = result
        return self.groupings[(grouping, k)]

    def measure(self, method: str, grouping: str, k: int, max_seconds: float, ks: list[int]) -> dict:
        label = f"[{self.tag}] {method} {grouping} K={k}"
        entry = {"method": method, "grouping": grouping, "k": k}
        if grouping == "per-example":
            estimate = harness.estimate_per_example(self.entries, method, ks, self.n, self.model["n_checkpoints"])
            if estimate is not None and estimate > max_seconds:
                entry.update(status="skipped", estimated_seconds=rounded(estimate, 1),
                             note=f"estimated {estimate:.0f} s > --max-seconds {max_seconds:.0f} (grouped time at "
                                  f"K={max(ks)} plus Grad-Dot's per-example overhead"
                                  f"{', per checkpoint' * (method == 'tracin')})")
                log(f"{label}: skipped, {entry['note']}")
                self.entries[(method, grouping, k)] = entry
                return entry
        stopped = [e for (m, g, kk), e in self.entries.items()
                   if m == method and g == grouping == "grad-kmeans" and e.get("status") == "timeout" and kk < k]
        if stopped:
            entry.update(status="skipped", note=f"K={stopped[0]['k']} went over --max-seconds")
            self.entries[(method, grouping, k)] = entry
            return entry
        grouping_result = self.grouping(grouping, k)
        if grouping_result["status"] != "ok":
            entry.update(status="skipped", note=f"grouping {grouping_result['status']}")
            self.entries[(method, grouping, k)] = entry
            return entry
        log(f"{label} ...")
        scores_file = f"scores-{self.tag}-{method}-{grouping}-{k}.npy"
        result = self.runner.run(self.job(job="measure", method=method, grouping=grouping, k=k,
                                          labels_file=grouping_result["labels_file"], scores_file=scores_file),
                                 self.timeout)
        harness.record_attribution(entry, result, grouping_result)
        entry["scores_file"] = scores_file
        self.entries[(method, grouping, k)] = entry
        return entry

    def run_gold(self, n_subsets: int, budget: float) -> None:
        log(f"[{self.tag}] LDS gold: {n_subsets} models on random halves of the points (budget {budget:.0f} s) ...")
        gold_file = f"gold-{self.tag}.npz"
        self.gold = self.runner.run(self.job(job="gold", n_subsets=n_subsets, max_seconds=budget,
                                             gold_file=gold_file), budget + self.timeout)
        self.gold["gold_file"] = gold_file
        if self.gold["status"] == "ok":
            log(f"  {self.gold['seconds']:.1f} s, {self.gold['n_subsets']} subsets")
        else:
            log(f"  {self.gold['status']}: {self.gold['note']}")

    def score(self) -> None:
        """Point-level LDS of every finished run against this part's gold."""
        import numpy as np

        if not is_ok(self.gold) or self.gold["n_subsets"] < 2:
            return
        arrays = np.load(self.runner.work_dir / self.gold["gold_file"])
        for (method, grouping, k), entry in self.entries.items():
            if not is_ok(entry):
                continue
            labels = np.load(self.runner.work_dir / self.groupings[(grouping, k)]["labels_file"])
            scores = np.load(self.runner.work_dir / entry["scores_file"])
            entry.update(point_lds(scores, labels, arrays["masks"], arrays["outputs"]))
        per_example_scores: dict = {}  # each method's, loaded once
        for (method, grouping, k), entry in self.entries.items():
            base = self.entries.get((method, "per-example", self.n))
            if grouping == "per-example" or not is_ok(base):
                continue
            if method not in per_example_scores:
                per_example_scores[method] = np.load(self.runner.work_dir / base["scores_file"])
            per_example = per_example_scores[method]
            if is_ok(entry):
                labels = np.load(self.runner.work_dir / self.groupings[(grouping, k)]["labels_file"])
                entry["kept_variance"] = mean_kept_variance(per_example, labels)
            if (method, k) not in self.score_profiles:
                self.score_profiles[(method, k)] = score_profile_grouping(per_example, k, arrays["masks"],
                                                                          arrays["outputs"])


def table(part: Part, methods: list[str], ks: list[int]) -> list[dict]:
    """One row per method: per-example and each K (grad-kmeans, random) end to end, speed-ups."""
    rows = []
    epoch = part.epoch if is_ok(part.epoch) else None
    for method in methods:
        base = part.entries.get((method, "per-example", part.n))
        row = {"method": method, "per_example": _cell(base)}
        if epoch and is_ok(base):
            # a grouped run backpropagates every point once (TracIn: once per checkpoint) and
            # groups on a forward pass, at least
            passes = part.model["n_checkpoints"] if method == "tracin" else 1
            row["speedup_bound"] = rounded(base["total_seconds"]
                                           / (passes * epoch["backward_seconds"] + epoch["forward_seconds"]), 2)
            row["per_example"]["attribution_epochs"] = rounded(base["attribution_seconds"] / epoch["epoch_seconds"], 2)
        for k in ks:
            for grouping in ("grad-kmeans", "random"):
                entry = part.entries.get((method, grouping, k))
                cell = _cell(entry)
                if is_ok(entry) and epoch:
                    cell["attribution_epochs"] = rounded(entry["attribution_seconds"] / epoch["epoch_seconds"], 2)
                if is_ok(entry) and is_ok(base):
                    cell["speedup"] = rounded(base["total_seconds"] / entry["total_seconds"], 2)
                    cell["attribution_speedup"] = rounded(base["attribution_seconds"] / entry["attribution_seconds"], 2)
                elif is_ok(entry) and base and base.get("estimated_seconds") is not None:
                    cell["speedup_vs_estimate"] = rounded(base["estimated_seconds"] / entry["total_seconds"], 2)
                if entry is not None:
                    row[f"{grouping}/K={k}"] = cell
            gk, rnd = part.entries.get((method, "grad-kmeans", k), {}), part.entries.get((method, "random", k), {})
            if gk.get("lds") is not None and rnd.get("lds") is not None:
                row[f"grad_kmeans_beats_random/K={k}"] = bool(gk["lds"] > rnd["lds"])
            if gk.get("lds") is not None and base and base.get("lds"):
                row[f"lds_ratio_to_per_example/K={k}"] = rounded(gk["lds"] / base["lds"], 3)
            reference = part.score_profiles.get((method, k))
            if reference is not None:
                row[f"score_profile_grouping/K={k}"] = {
                    **reference, **({"lds_ratio_to_per_example": rounded(reference["lds"] / base["lds"], 3)}
                                    if base.get("lds") else {})}
        rows.append(row)
    return rows


CELL_KEYS = ["status", "total_seconds", "grouping_seconds", "fit_seconds", "attribute_seconds",
             "attribution_seconds", "peak_mb", "grouping_peak_mb", "lds", "lds_se", "kept_variance",
             "estimated_seconds", "note",
             "other_cpu_seconds", "load_average_1min"]


def _cell(entry) -> dict:
    if entry is None:
        return {"status": "not run"}
    return {k: (rounded(entry[k]) if isinstance(entry[k], float) else entry[k]) for k in CELL_KEYS if k in entry}


def run_setting(setting: str, args, runner, methods: list[str], deadline: float, timing_deadline: float) -> dict:
    sizes = dict((QUICK if args.quick else FULL)[setting])
    if setting == "resnet":
        sizes["setting_n_train"] = sizes["n_train"]
    timeout = args.max_seconds + SETUP_SECONDS
    timing = Part(setting, "timing", runner, sizes, timeout)
    out: dict = {"sizes": sizes}
    if not timing.train():
        return {**out, "status": "error", "model": timing.model}
    n = timing.n
    log(f"[{timing.tag}] one epoch, one backward and one forward over the data ...")
    timing.epoch = runner.run(timing.job(job="epoch"), timeout)
    if is_ok(timing.epoch):
        log(f"  epoch {timing.epoch['epoch_seconds']:.2f} s, backward {timing.epoch['backward_seconds']:.2f} s, "
            f"forward {timing.epoch['forward_seconds']:.2f} s (batch {timing.epoch['batch_size']})")
    ks = sorted({max(1, n // 100), max(1, n // 1000)}, reverse=True)
    timing.grouping("per-example", n)
    for k in ks:
        timing.grouping("grad-kmeans", k)
    lds_part = timing
    if setting == "mlp":  # LDS on the timing model: random groupings measured there too
        for k in ks:
            timing.grouping("random", k)
    else:
        lds_sizes = {**sizes, "setting_n_train": args.lds_n_train}
        lds_part = Part(setting, "lds", runner, lds_sizes, timeout)
    lds_ks = ks if lds_part is timing else None
    for method in sorted(methods, key=lambda m: m != "grad-dot"):  # grad-dot first: the estimates need it
        for k in sorted(ks):
            if time.perf_counter() > timing_deadline:
                log(f"[{setting}] deadline reached: {method} K={k} not run")
                continue
            timing.measure(method, "grad-kmeans", k, args.max_seconds, ks)
            if lds_part is timing:
                timing.measure(method, "random", k, args.max_seconds, ks)
        if time.perf_counter() <= timing_deadline:
            timing.measure(method, "per-example", n, args.max_seconds, ks)
    if lds_part is not timing and time.perf_counter() < deadline and lds_part.train():
        m = lds_part.n
        lds_ks = sorted({max(2, m // 100), max(2, m // 1000)}, reverse=True)
        lds_part.run_gold(args.lds_subsets, min(args.lds_gold_seconds, max(30.0, deadline - time.perf_counter())))
        for method in sorted(methods, key=lambda x: x != "grad-dot"):
            for k in sorted(lds_ks):
                for grouping in ("grad-kmeans", "random"):
                    if time.perf_counter() < deadline:
                        lds_part.measure(method, grouping, k, args.max_seconds, lds_ks)
            if time.perf_counter() < deadline:
                lds_part.measure(method, "per-example", m, args.max_seconds, lds_ks)
    elif lds_part is timing:
        timing.run_gold(args.lds_subsets, min(args.lds_gold_seconds, max(30.0, deadline - time.perf_counter())))
    lds_part.score()
    out.update(status="ok", model=_cell_model(timing.model), ks=ks, epoch=timing.epoch,
               groupings={f"{g}/K={k}": _grouping(r) for (g, k), r in timing.groupings.items()},
               table=table(timing, methods, ks))
    lds_out = {"gold": {k: v for k, v in (lds_part.gold or {}).items() if k not in ("gold_file",)},
               "n_train": lds_part.n if lds_part.model else None, "ks": lds_ks,
               "alpha": ALPHA, "measurement": "test loss", "estimator": "point-level LDS (gold.point_lds)"}
    if lds_part is not timing:
        lds_out.update(model=_cell_model(lds_part.model),
                       groupings={f"{g}/K={k}": _grouping(r) for (g, k), r in lds_part.groupings.items()},
                       table=table(lds_part, methods, lds_ks) if lds_part.model.get("status") == "ok" else [])
    out["lds"] = lds_out
    out["labelled"] = ([(f"[{timing.tag}] {m} {g} K={k}", e) for (m, g, k), e in timing.entries.items()]
                       + [(f"[{lds_part.tag}] {m} {g} K={k}", e) for (m, g, k), e in lds_part.entries.items()
                          if lds_part is not timing])
    return out


def _cell_model(model: dict) -> dict:
    return {k: (rounded(v) if isinstance(v, float) else v) for k, v in model.items()
            if k not in ("attempts", "clocked_seconds", "worker_wall_seconds")}


def _grouping(result: dict) -> dict:
    keep = ["status", "seconds", "peak_mb", "n_groups", "sizes", "other_cpu_seconds", "note"]
    return {k: (rounded(result[k]) if isinstance(result[k], float) else result[k]) for k in keep if k in result}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_measurement_args(parser, max_seconds=600.0)
    parser.add_argument("--quick", action="store_true", help="smoke run: small sets, 1 epoch")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list (default {','.join(METHODS)})")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma list of resnet, mlp")
    parser.add_argument("--lds-subsets", type=int, default=50, help="retrained models in each LDS gold (default 50)")
    parser.add_argument("--lds-n-train", type=int, default=1000, help="the resnet's LDS training subset (default 1000)")
    parser.add_argument("--lds-gold-seconds", type=float, default=1200.0,
                        help="the resnet's gold keeps the subsets retrained within this many seconds (default 1200)")
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="per setting: start no new measurement after this many seconds")
    parser.add_argument("--timing-budget-seconds", type=float, default=None,
                        help="per setting: start no new timing measurement after this many seconds (the "
                             "resnet's LDS subset part then runs until --budget-seconds)")
    parser.add_argument("--reuse-models", action="store_true",
                        help="load the models already saved in --work-dir (same rows and recipe) instead of "
                             "training them again (train_seconds is then null)")
    parser.add_argument("--methods-mlp", default=None, help="the mlp setting's methods (default: --methods)")
    args = parser.parse_args(argv)
    harness.check_measurement_args(parser, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if harness.run_if_worker(args, worker):
        return 0
    started = time.perf_counter()
    import torch

    from gda_core.registry import METHODS as REGISTERED
    from gda_core.requests import resolve_device

    args.device = resolve_device(args.device).type
    methods = harness.method_names(args.methods, REGISTERED)
    methods_mlp = harness.method_names(args.methods_mlp, REGISTERED) if args.methods_mlp else methods
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if methods is None or methods_mlp is None or any(s not in SETTINGS for s in settings):
        return 2
    if args.quick:
        args.lds_subsets, args.lds_n_train = min(args.lds_subsets, 4), min(args.lds_n_train, 100)
    work_dir, temporary = harness.work_directory(args, "gda-ggda-")
    runner = harness.Runner(args, {}, work_dir, __file__)
    load_start, git_start = harness.load_average(), harness.git_state()
    harness.warn_if_busy()
    results, labelled = {}, []
    for setting in settings:
        now = time.perf_counter()
        budget = args.budget_seconds if args.budget_seconds is not None else float("inf")
        timing_budget = args.timing_budget_seconds if args.timing_budget_seconds is not None else budget
        results[setting] = run_setting(setting, args, runner, methods_mlp if setting == "mlp" else methods,
                                       now + budget, now + timing_budget)
        labelled += results[setting].pop("labelled", [])
        results[setting]["load_average_after"] = harness.load_average()
    report = {
        "benchmark": "ggda",
        "config": {"threads": args.threads, "device": args.device, "cpu_count": os.cpu_count(),
                   "torch": torch.__version__, "python": platform.python_version(), "quick": args.quick,
                   "methods": methods, "methods_mlp": methods_mlp, "settings": settings, "max_seconds": args.max_seconds,
                   "budget_seconds": args.budget_seconds,
                   "timing_budget_seconds": args.timing_budget_seconds, "lds_subsets": args.lds_subsets,
                   "lds_n_train": args.lds_n_train, "reuse_models": args.reuse_models, "warmup": not args.no_warmup,
                   "end_to_end": "grouping seconds + fit + attribute (per-example: its trivial grouping too)",
                   "speedup": "per-example total / grouped total, same run",
                   "git_start": git_start, "git_end": harness.git_state(),
                   "load_average_start": load_start, "load_average_end": harness.load_average()},
        "settings": results,
        "warnings": harness.contention_warnings(labelled, os.cpu_count() or 1),
        "wall_seconds": rounded(time.perf_counter() - started, 1),
    }
    print(json.dumps(images._no_nan(report), indent=2))
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
