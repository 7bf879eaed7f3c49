"""Noisy labels from the final model against Confident Learning, printing one JSON object.

For each data set / model, noise kind (uniform, pairs), flipped share and seed: flip the
training labels, retrain the model on them (the "final model"), and rank the training points
by every signal. Reported per ranking: share of flips found at 10/20/30% of the training set
inspected, AUC, and seconds (Confident Learning cross-validated includes its retraining; no
ranking counts the final model's training, which all of them need):

- ``neighbours``: the final-model default (label disagreement among the nearest training
  points in the model's layer inputs);
- ``loss``; ``confident-learning-final`` (cleanlab on the final model's probabilities);
- ``self-influence`` of ``--method`` per example, and ``grouped`` on grad-kmeans at K = N/100
  (``--groups``; coarse to fine);
- ``confident-learning`` (cleanlab on 3-fold cross-validated probabilities: it retrains).

Targets: at 20% inspected the best final-model ranking finds at least as many flips as
cross-validated Confident Learning at <= 1/5 of its time, in every cell; the grouped ranking
within 3 points of per-example self-influence at <= 1/5 of its time.

Usage: python benchmarks/noisy.py [--data digits --model mlp] [--noises uniform,pairs]
       [--rates 0.05,0.1,0.2,0.3] [--seeds 101,102,103] [--method grad-dot] [--threads 1]
(seeds 101-103 by default: the tests use seed 0)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gda_core.evaluation.flagging import flag_training_points  # noqa: E402
from gda_core.evaluation.noisy import detection_curve, noisy_inputs_of, noisy_rankings
from gda_core.requests import BASELINES, FlagRequest, NoisyConfig, resolve_device

FRACTIONS = ("0.1", "0.2", "0.3")
FINAL_MODEL = ("neighbours", "loss", "confident-learning-final", "self-influence", "grouped")


def _row(ranking: dict) -> dict:
    return {**{f"found@{float(f):.0%}": ranking["recall_at"][f] for f in FRACTIONS}, "auc": ranking["auc"],
            "seconds": ranking["seconds"]}


def one_cell(data: str, model: str, noise: str, rate: float, seed: int, method: str, groups: int | None) -> dict:
    config = NoisyConfig(data=data, model=model, noise=noise, flip=rate, seed=seed, baselines=BASELINES)
    device = resolve_device("auto")
    inputs = noisy_inputs_of(config, "noisy-label evaluation", device)
    rankings = noisy_rankings(config, inputs, device)
    rows = {("neighbours" if name == "influence" else name): _row(r) for name, r in rankings.items() if name != "random"}
    n_groups = groups or max(2, len(inputs.train) // 100)
    for name, request in (("self-influence", FlagRequest(data=data, model=model, method=method, grouping="per-example",
                                                         signal="self-influence", seed=seed)),
                          ("grouped", FlagRequest(data=data, model=model, method=method, grouping="grad-kmeans",
                                                  n_groups=n_groups, signal="self-influence", seed=seed))):
        flags = flag_training_points(inputs.model, inputs.train, inputs.validation, request)
        rows[name] = {**_row({**detection_curve(flags.order, inputs.flipped), "seconds": sum(flags.timings.values())}),
                      "timings": {k: round(v, 3) for k, v in flags.timings.items()}}
    for row in rows.values():
        row["seconds"] = round(row["seconds"], 3)
    return {"n_train": len(inputs.train), "n_flipped": int(inputs.flipped.sum()), "grouped_k": n_groups,
            "rankings": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--noises", default="uniform,pairs")
    parser.add_argument("--rates", default="0.05,0.1,0.2,0.3")
    parser.add_argument("--seeds", default="101,102,103")
    parser.add_argument("--method", default="grad-dot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--groups", type=int, default=None, help="the grouped ranking's K (default N/100)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    cells, targets = {}, {}
    for noise in args.noises.split(","):
        for rate in (float(r) for r in args.rates.split(",")):
            per_seed = [one_cell(args.data, args.model, noise, rate, seed, args.method, args.groups) for seed in seeds]
            names = list(per_seed[0]["rankings"])
            mean = {name: {metric: round(float(np.mean([c["rankings"][name][metric] for c in per_seed])), 4)
                           for metric in per_seed[0]["rankings"][name] if metric != "timings"} for name in names}
            key = f"{noise} {rate:.0%}"
            cells[key] = {"mean": mean, "n_train": per_seed[0]["n_train"], "n_flipped": per_seed[0]["n_flipped"],
                          "grouped_k": per_seed[0]["grouped_k"], "per_seed": per_seed}
            best = max(FINAL_MODEL, key=lambda name: mean[name]["found@20%"])
            cl = mean["confident-learning"]
            targets[key] = {
                "best_final_model": best, "best_found@20%": mean[best]["found@20%"], "cl_cv_found@20%": cl["found@20%"],
                "points_ahead_of_cl_cv": round(100 * (mean[best]["found@20%"] - cl["found@20%"]), 1),
                "time_fraction_of_cl_cv": round(mean[best]["seconds"] / cl["seconds"], 4),
                "met": mean[best]["found@20%"] >= cl["found@20%"] and mean[best]["seconds"] <= cl["seconds"] / 5,
                "grouped_points_behind_per_example": round(
                    100 * (mean["self-influence"]["found@20%"] - mean["grouped"]["found@20%"]), 1),
                "grouped_time_fraction": round(mean["grouped"]["seconds"] / mean["self-influence"]["seconds"], 3),
            }
            print(json.dumps({key: targets[key]}), file=sys.stderr, flush=True)
    print(json.dumps({"data": args.data, "model": args.model, "method": args.method, "seeds": seeds,
                      "torch_threads": torch.get_num_threads(), "targets": targets, "cells": cells,
                      "total_seconds": round(time.perf_counter() - started, 1)}, indent=2))


if __name__ == "__main__":
    main()
