"""K-FAC / EK-FAC side by side with kronfluence's and dattri's, printing one JSON object:
time (fit + scores), peak memory and LDS of every method on the same trained model against
the same retrained subsets. kronfluence and dattri are not dependencies: run this with a
Python that has them (``make benchmark-kfac-peers`` installs them with ``--no-deps``).

``--setting digits`` (default): digits with the MLP of ``benchmarks/kfac.py`` (64 -> 32 -> 16
-> 10, the demo recipe, 1437 train); ``--setting mnist-resnet``: the first ``--n-train`` (1000)
mnist training digits with the zoo's ResNet-9 (width 8, its default recipe; BatchNorm's
parameters are outside every K-FAC block, and dattri's EK-FAC covers its Linear head only).
Per example, ``--test-size`` test points, the point-level LDS gold standard
(``--subsets`` models retrained from scratch on random halves of the training points,
:func:`gda_core.evaluation.gold.point_lds_ensemble`), the same ensemble for every method.

- GDA: if-ekfac, if-kfac (factor cache off so the fit is whole) and if-arnoldi, each at its
  defaults; if-ekfac also with each option set in ``--ekfac-variants`` (default: the exact GGN
  on every row, ``ggn_samples=None,factor_samples=None``, and two smaller dampings).
- kronfluence 1.0.1, EK-FAC and K-FAC strategies at its FactorArguments defaults (labels
  sampled from the softmax, the "true Fisher"; all training points), scored at three
  dampings: its ScoreArguments default (1e-8), its heuristic (``damping_factor=None``: 0.1 x
  the mean eigenvalue, per layer) and if-ekfac's damping. Seconds: its factor fit plus one
  scoring call (factors and scores are written to a scratch folder, as it always does).
- dattri 0.3.0 ``IFAttributorEKFAC`` (all Linear layers; the empirical Fisher of the loss it
  is handed, here the mean cross-entropy with the true labels, as in its examples) at
  if-ekfac's damping; its own default, 0, divides by zero eigenvalues.

Peak memory: the process's resident-set growth over the block (``PeakMemory``). Timings are
medians of ``--repeats`` runs after a warm-up on 64 points, one torch thread (``--threads``):
on a loaded machine quote the ratios. kronfluence samples labels: repeat r seeds torch with r,
so its LDS is the mean over the repeats' seeds (``lds_range_over_seeds``: min, max; GDA's and
dattri's scores are deterministic). ``lds_minus_if-ekfac``: the paired per-test-point LDS
difference to if-ekfac's default [mean, standard error].
Targets: if-ekfac's LDS >= the best peer setting's, at <= 1/2 the faster peer's seconds
(each peer's best-LDS setting); if-ekfac's LDS >= if-arnoldi's.

Usage: python benchmarks/kfac_peers.py [--setting digits|mnist-resnet] [--n-train 1000] [--test-size 50]
       [--subsets 100] [--repeats 5] [--threads 1] [--gold-cache DIR]
       [--ekfac-variants 'ggn_samples=None,factor_samples=None;damping_scale=0.1']
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import load_average  # noqa: E402  (benchmarks/ is on the path when this runs as a script)
from kfac import HIDDEN  # noqa: E402

from gda_core.attribution.grouping import make_grouping  # noqa: E402
from gda_core.attribution.methods import make_method  # noqa: E402
from gda_core.evaluation.gold import LDSEnsemble, lds, point_lds_ensemble  # noqa: E402
from gda_core.evaluation.memory import PeakMemory  # noqa: E402
from gda_core.evaluation.statistics import spearman  # noqa: E402
from gda_core.inputs.datasets import load_builtin  # noqa: E402
from gda_core.inputs.zoo import default_train_config, model_config_for, train_model  # noqa: E402

KRONFLUENCE_DEFAULT_DAMPING = 1e-8  # ScoreArguments.damping_factor's default in kronfluence 1.0.1


class _Rows(torch.utils.data.Dataset):
    def __init__(self, data):
        self.features, self.labels = data.features.float(), data.labels.long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.features[index], self.labels[index]


def _measured(run: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float]:
    """(scores, seconds, peak MB) of ``run``."""
    memory = PeakMemory("cpu")
    memory.start()
    started = time.perf_counter()
    scores = run()
    seconds = time.perf_counter() - started
    return scores, seconds, memory.stop()["peak_mb"]


def _kronfluence(module: torch.nn.Module, train, test, seed: int, strategy: str,
                 dampings: dict[str, float | None]) -> dict:
    """{setting: (scores, seconds, peak MB)}: one factor fit, then one scoring call per damping
    (each setting's seconds are the fit's plus its own scoring's)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class CrossEntropy(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, labels = batch
            logits = model(inputs)
            if sample:  # kronfluence's true Fisher: labels drawn from the model's softmax
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            inputs, labels = batch
            return torch.nn.functional.cross_entropy(model(inputs), labels, reduction="sum")

    task = CrossEntropy()
    analyzer = Analyzer(analysis_name="digits", model=prepare_model(copy.deepcopy(module).eval(), task), task=task,
                        cpu=True, output_dir=tempfile.mkdtemp(prefix="kronfluence-"), disable_tqdm=True)

    def fit() -> None:
        torch.manual_seed(seed)  # the labels it samples for the true Fisher
        analyzer.fit_all_factors(factors_name=strategy, dataset=_Rows(train), per_device_batch_size=256,
                                 factor_args=FactorArguments(strategy=strategy), overwrite_output_dir=True)

    _, fit_seconds, fit_peak = _measured(fit)
    out = {}
    for setting, damping in dampings.items():
        def score() -> np.ndarray:
            name = f"{strategy}-{setting}"
            analyzer.compute_pairwise_scores(scores_name=name, factors_name=strategy, query_dataset=_Rows(test),
                                             train_dataset=_Rows(train), per_device_query_batch_size=len(test),
                                             per_device_train_batch_size=256,
                                             score_args=ScoreArguments(damping_factor=damping),
                                             overwrite_output_dir=True)
            return analyzer.load_pairwise_scores(name)["all_modules"].double().numpy()

        scores, seconds, peak = _measured(score)
        out[setting] = (scores, fit_seconds + seconds, max(fit_peak, peak), {})
    return out


def _dattri_ekfac(module: torch.nn.Module, train, test, seed: int, damping: float) -> dict:
    """{"if-ekfac's damping": (scores, seconds, peak MB, {})}."""
    from dattri.algorithm.influence_function import IFAttributorEKFAC
    from dattri.task import AttributionTask

    net = copy.deepcopy(module).eval()

    def loss(params, data):  # the mean loss over the batch, as IFAttributorEKFAC asks
        x, y = data
        return torch.nn.functional.cross_entropy(torch.func.functional_call(net, params, x), y.long())

    task = AttributionTask(loss_func=loss, model=net, checkpoints=net.state_dict())
    attributor = IFAttributorEKFAC(task=task, device="cpu", damping=damping)
    train_loader = torch.utils.data.DataLoader(_Rows(train), batch_size=256, shuffle=False)
    test_loader = torch.utils.data.DataLoader(_Rows(test), batch_size=256, shuffle=False)

    def run() -> np.ndarray:
        attributor.cache(train_loader)
        return attributor.attribute(train_loader, test_loader).T.detach().double().numpy()

    return {"if-ekfac's damping": (*_measured(run), {})}


def _variant(text: str) -> dict:
    """'key=value,key=value' -> options (numbers, booleans and None parsed)."""
    options = {}
    for pair in filter(None, text.split(",")):
        key, value = pair.split("=", 1)
        options[key] = json.loads(value) if value not in ("None", "none") else None
    return options


def _setting(args):
    """(train, test, trained model) of ``--setting``."""
    if args.setting == "digits":
        split = load_builtin("digits", seed=0)
        train, test = split.train, split.test.subset(slice(0, args.test_size))
        return train, test, train_model(model_config_for("mlp", train, hidden=HIDDEN), train,
                                        default_train_config("mlp"))
    split = load_builtin("mnist", seed=0)
    train, test = split.train.subset(slice(0, args.n_train)), split.test.subset(slice(0, args.test_size))
    return train, test, train_model(model_config_for("resnet", train), train, default_train_config("resnet"))


def _gold(args, model, train, test) -> LDSEnsemble:
    """The point-level LDS ensemble, kept in ``--gold-cache`` (keyed by the setting's sizes and
    the model's fingerprint) so that another run with other variants reuses it."""
    if args.gold_cache is None:
        return point_lds_ensemble(model, train, test, n_subsets=args.subsets)
    key = f"{args.setting}-{len(train)}-{len(test)}-{args.subsets}-{model.fingerprint()[:16]}"
    path = Path(args.gold_cache) / f"kfac-peers-gold-{key}.npz"
    if path.exists():
        stored = np.load(path)
        return LDSEnsemble(stored["masks"], stored["outputs"], 0.5, {})
    ensemble = point_lds_ensemble(model, train, test, n_subsets=args.subsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, masks=ensemble.masks, outputs=ensemble.outputs)
    return ensemble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=("digits", "mnist-resnet"), default="digits")
    parser.add_argument("--n-train", type=int, default=1000, help="mnist-resnet: training digits (default 1000)")
    parser.add_argument("--test-size", type=int, default=50)
    parser.add_argument("--subsets", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gold-cache", default=None, help="folder to keep the LDS ensemble in (reused when present)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median seconds, peak)")
    parser.add_argument("--ekfac-variants",
                        default="ggn_samples=None,factor_samples=None;damping_scale=0.1;damping_scale=0.01",
                        help="extra if-ekfac option sets, ';'-separated, each 'key=value,...'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    missing = []
    for package in ("kronfluence", "dattri"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        print(json.dumps({"skipped": f"not installed in this Python: {', '.join(missing)}"}))
        return
    started = time.perf_counter()
    train, test, model = _setting(args)
    gold_started = time.perf_counter()
    ensemble = _gold(args, model, train, test)
    gold_seconds = time.perf_counter() - gold_started

    def ours(name: str, options: dict) -> Callable:
        def run(train, test, seed):  # deterministic: the seed is for the peers' sampling
            method = make_method(name, model, **options)
            groups = make_grouping("per-example").fit(train)
            scores, seconds, peak = _measured(lambda: method.fit(train, groups).attribute(test))
            return {"": (scores, seconds, peak, {"damping": float(f"{method.damping_[0]:.6g}")})}
        return run

    variants = [("if-ekfac", {}), ("if-kfac", {}), ("if-arnoldi", {})]
    variants += [("if-ekfac", _variant(text)) for text in args.ekfac_variants.split(";") if text]
    runs: dict[str, Callable] = {}
    for name, options in variants:
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        runs[label] = ours(name, options if name == "if-arnoldi" else {"cache_factors": False, **options})
    # one-time costs (lazy imports, first traces) out of the way: every method once on a few points
    small_train, small_test = train.subset(slice(0, 64)), test.subset(slice(0, 2))
    for run in runs.values():
        run(small_train, small_test, 0)
    measured = {label: [run(train, test, seed) for seed in range(args.repeats)] for label, run in runs.items()}
    damping = measured["if-ekfac"][0][""][3]["damping"]
    settings = {"default damping 1e-8": KRONFLUENCE_DEFAULT_DAMPING, "heuristic damping": None,
                "if-ekfac's damping": damping}
    peers = {f"kronfluence-{strategy}": functools.partial(_kronfluence, model.module, strategy=strategy,
                                                          dampings=settings)
             for strategy in ("ekfac", "kfac")}
    peers["dattri-ekfac"] = functools.partial(_dattri_ekfac, model.module, damping=damping)
    for label, run in peers.items():
        run(small_train, small_test, 0)
        measured[label] = [run(train, test, seed) for seed in range(args.repeats)]
    rows: dict[str, dict] = {}
    scores: dict[str, np.ndarray] = {}
    per_test: dict[str, np.ndarray] = {}
    for label, repeats in measured.items():
        for setting in repeats[0]:
            name = f"{label} ({setting})" if setting else label
            values, _, _, extra = repeats[0][setting]
            scores[name] = values
            results = [lds(r[setting][0], ensemble) for r in repeats]  # one per seed of the peers' sampling
            per_test[name] = np.mean([result["per_test"] for result in results], axis=0)
            spread = [round(min(r["lds"] for r in results), 4), round(max(r["lds"] for r in results), 4)]
            rows[name] = {"lds": round(float(np.mean([r["lds"] for r in results])), 4),
                          "lds_se": round(results[0]["lds_se"], 4),
                          **({"lds_range_over_seeds": spread} if spread[0] != spread[1] else {}),
                          "seconds": round(float(np.median([r[setting][1] for r in repeats])), 3),
                          "peak_mb": float(np.median([r[setting][2] for r in repeats])), **extra}
    for name, values in scores.items():  # agreement with ours: a sign or scale slip shows here
        rows[name]["spearman_vs_if-ekfac"] = round(float(spearman(values.T, scores["if-ekfac"].T, axis=0).mean()), 4)
        # the paired per-test-point LDS difference to if-ekfac (same test points, same subsets)
        difference = per_test[name] - per_test["if-ekfac"]
        difference = difference[np.isfinite(difference)]
        rows[name]["lds_minus_if-ekfac"] = [round(float(difference.mean()), 4),
                                            round(float(difference.std(ddof=1) / np.sqrt(len(difference))), 4)]
    print(json.dumps(_summary(args, rows, len(train), len(test), gold_seconds, started, model), indent=2))


def _summary(args, rows: dict, n_train: int, n_test: int, gold_seconds: float, started: float, model) -> dict:
    """The table and the issue's targets, each peer at its best-LDS setting."""
    best = {peer: max((name for name in rows if name.startswith(peer)), key=lambda n: rows[n]["lds"])
            for peer in ("kronfluence", "dattri")}
    best_lds = max(rows[name]["lds"] for name in best.values())
    faster = min(rows[name]["seconds"] for name in best.values())
    ekfac = rows["if-ekfac"]
    return {
        "data": "digits" if args.setting == "digits" else "mnist",
        "model": f"mlp {HIDDEN}" if args.setting == "digits" else "resnet (width 8)",
        "n_parameters": sum(p.numel() for p in model.module.parameters()), "n_train": n_train, "n_test": n_test, "per_example": True,
        "gold": "point-level LDS (retrained from scratch on random halves of the training points)",
        "lds_subsets": args.subsets, "gold_seconds": round(gold_seconds, 1), "torch_threads": torch.get_num_threads(),
        "load_average": load_average(), "cpus": os.cpu_count(), "methods": rows,
        "peers_best_setting": best,
        "targets": {
            "if-ekfac lds >= best peer lds": ekfac["lds"] >= best_lds,
            "if-ekfac seconds <= 1/2 faster peer's": ekfac["seconds"] <= 0.5 * faster,
            "if-ekfac seconds / faster peer's": round(ekfac["seconds"] / faster, 3),
            "if-ekfac lds >= if-arnoldi lds": ekfac["lds"] >= rows["if-arnoldi"]["lds"],
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    main()
