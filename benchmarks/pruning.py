"""Pruning benchmark, printing one JSON object: test accuracy after removing the lowest-value
groups (total influence on a held-out validation loss) against removing random groups, on
clean digits and with 10% of the labels flipped, averaged over seeds.

Usage: python benchmarks/pruning.py [--threads 2] [--method if-cg] [--groups 150]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gda_core.evaluation.pruning import run_pruning  # noqa: E402
from gda_core.requests import PruneConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="if-cg")
    parser.add_argument("--groups", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pruning = {}
    for flip in (0.0, 0.1):
        outcome = run_pruning(PruneConfig(method=args.method, grouping="grad-kmeans", n_groups=args.groups,
                                          fractions=(0.1, 0.2, 0.3, 0.5), seeds=3, flip=flip))
        pruning[f"flip={flip:g}"] = {
            "full": outcome["full_accuracy"]["mean"],
            "lowest_value_removed": {f"{f:g}": a["mean"] for f, a in zip(outcome["fractions"], outcome["accuracy"])},
            "random_removed": {f"{f:g}": a["mean"] for f, a in zip(outcome["fractions"], outcome["random_accuracy"])},
            "scoring_seconds": outcome["scoring_seconds"],
        }
    print(json.dumps({"data": "digits", "model": "mlp", "method": args.method, "pruning": pruning,
                      "torch_threads": torch.get_num_threads(),
                      "total_seconds": round(time.perf_counter() - started, 1)}, indent=2))


if __name__ == "__main__":
    main()
