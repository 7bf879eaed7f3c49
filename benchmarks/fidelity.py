"""Fidelity-vs-speed benchmark (issue targets), printing one JSON object.

Part 1, digits / MLP (1437 train, 300 test), gold = the point-level LDS yardstick (100
models, each trained on a random half of the training points, shared by every cell): LDS and
time of each method per-example, and with grad-kmeans / random / inputs-kmeans / repr-kmeans
groupings at K = 150 and K = 15, each group's score spread over its members in equal shares.
Beside it, each cell's group-level LDS (100 half-subsets of its own groups) and group sizes.
Part 2, breast_cancer / MLP, gold = further training (SGD) recorded at T = 1, 10, 50 epochs:
cosine of Grad-Dot and of horizon-matched influence (damping 1 / (lr x T)) at each T.

Usage: python benchmarks/fidelity.py [--threads 2] [--quick] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gda_core.evaluation.sweeps import run_sweep  # noqa: E402
from gda_core.requests import GoldConfig, SweepConfig
from gda_core.runs.store import ScoreStore


def summarise_lds(sweep: dict) -> dict:
    """Point-level LDS per method and cell (and its share of the per-example LDS), with the
    cell's group-level LDS and group sizes beside it; the targets on the point-level scale,
    and for comparison which groupings beat random at group level."""
    by_key = {(p["method"], p["grouping"], p["n_groups"]): p for p in sweep["points"]}
    n_train = sweep["n_train"]
    methods = list(dict.fromkeys(p["method"] for p in sweep["points"]))
    table = {}
    for method in methods:
        per_example = by_key[(method, "per-example", n_train)]
        row = {"per_example": {"point_lds": per_example["point_lds"], "seconds": per_example["seconds"]}}
        for (name, grouping, k), point in by_key.items():
            if name == method and grouping != "per-example":
                row[f"{grouping}/K={k}"] = {"point_lds": point["point_lds"], "group_lds": point["group_lds"],
                                            "group_sizes": point["group_sizes"], "seconds": point["seconds"],
                                            "grouping_seconds": point["grouping_seconds"],
                                            "kept_fraction": point["point_lds"] / per_example["point_lds"]}
        table[method] = row
    curvature = [m for m in methods if m.startswith("if-") or m in ("trak", "datainf")]
    best = max(curvature, key=lambda m: table[m]["per_example"]["point_lds"]) if curvature else None
    targets = {}
    if best:
        entry = table[best]
        targets["best_curvature_method"] = best
        targets["per_example_lds>=0.55_in_<5s"] = bool(entry["per_example"]["point_lds"] >= 0.55
                                                       and entry["per_example"]["seconds"] < 5)
        if "grad-kmeans/K=150" in entry:
            targets["K150_keeps>=80%"] = bool(entry["grad-kmeans/K=150"]["kept_fraction"] >= 0.8)
    for measure in ("point_lds", "group_lds"):
        beats = {}
        for method in methods:
            for k in sweep["config"]["group_counts"]:
                g, r = table[method].get(f"grad-kmeans/K={k}"), table[method].get(f"random/K={k}")
                if g and r:
                    beats[f"{method}/K={k}"] = bool(g[measure] > r[measure])
        targets[f"grad-kmeans_beats_random_{measure}"] = beats
    return {"table": table, "targets": targets}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer subsets and test points (smoke run)")
    parser.add_argument("--cache", default="cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    lds_config = SweepConfig(
        data="digits", model="mlp",
        methods=("grad-dot", "tracin", "datainf", "trak", "if-arnoldi", "if-cg"),
        groupings=("random", "inputs-kmeans", "repr-kmeans", "grad-kmeans"), group_counts=(15, 150),
        test_size=60 if args.quick else 300,
        gold=GoldConfig(kind="lds", n_subsets=20 if args.quick else 100, alpha=0.5),
    )
    progress = (lambda phase, fraction: print(f"{phase}: {fraction:.0%}", file=sys.stderr))
    lds_sweep = run_sweep(lds_config, ScoreStore(args.cache), progress=progress)

    horizons = (1.0, 10.0) if args.quick else (1.0, 10.0, 50.0)
    further_config = SweepConfig(
        data="breast_cancer", model="mlp", methods=("grad-dot", "if-cg"), groupings=("grad-kmeans",),
        group_counts=(45,), test_size=50 if args.quick else 114,
        gold=GoldConfig(kind="further-training", epochs=horizons, seeds=2 if args.quick else 5,
                        lr=0.01, optimizer="sgd", batch_size=64, epsilon=1.0),
        horizon_matched=True,
    )
    further_sweep = run_sweep(further_config, ScoreStore(args.cache), progress=progress)
    cosine = {}
    for point in further_sweep["points"]:
        key = f"{point['method']} ({point['grouping']}, K={point['n_groups']})"
        cosine[key] = {f"T={t}": round(v["cosine"], 4) for t, v in point["fidelity"].items()}

    print(json.dumps({
        "threads": args.threads, "wall_seconds": time.perf_counter() - started,
        "digits_mlp_lds": summarise_lds(lds_sweep), "lds_gold_seconds": lds_sweep["gold_seconds"],
        "breast_cancer_mlp_cosine_to_further_training": cosine,
        "further_training_gold_relative_se": {f"{p['grouping']}/K={p['n_groups']}": p["gold_relative_se"]
                                              for p in further_sweep["points"] if p["method"] == "grad-dot"},
        "raw": {"lds_sweep": lds_sweep, "further_sweep": further_sweep},
    }, indent=2, default=float))


if __name__ == "__main__":
    main()
