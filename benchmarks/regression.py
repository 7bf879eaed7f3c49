"""Regression benchmark, printing one JSON object: the proof that the Task seam is real.

diabetes (scikit-learn's bundled set, target standardised with training statistics; 354 train)
with the regression MLP (10 -> 64 -> 64 -> 1, half squared error), gold = further training
(SGD, lr 0.01, batch 64) recorded at T = 1, 10 and 50 epochs and averaged over seeds: the
cosine (and Spearman) of Grad-Dot and of influence (if-cg; and if-cg with the damping
matched to each horizon, 1 / (lr x T)) to the gold scores at each T, per example and on
random groups. One torch thread unless --threads says otherwise.

Usage: python benchmarks/regression.py [--threads 1] [--seeds 5] [--test-size 50] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gda_core.evaluation.sweeps import run_sweep  # noqa: E402
from gda_core.requests import GoldConfig, SweepConfig  # noqa: E402
from gda_core.runs.store import ScoreStore  # noqa: E402

HORIZONS = (1.0, 10.0, 50.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--test-size", type=int, default=50)
    parser.add_argument("--cache", default=None, help="run store folder (default: a fresh temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = SweepConfig(data="diabetes", model="mlp", methods=("grad-dot", "if-cg"), groupings=("random",),
                         group_counts=(30,), per_example=True, test_size=args.test_size, horizon_matched=True,
                         gold=GoldConfig(kind="further-training", epochs=HORIZONS, seeds=args.seeds))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        sweep = run_sweep(config, ScoreStore(Path(args.cache or scratch)))
    table: dict[str, dict] = {}
    for point in sweep["points"]:
        row = table.setdefault(f"{point['grouping']}/K={point['n_groups']}", {})
        row[point["method"]] = {f"T={h}": {"cosine": round(values["cosine"], 4), "spearman": round(values["spearman"], 4)}
                                for h, values in point["fidelity"].items()}
    print(json.dumps({
        "data": "diabetes (regression, half squared error)", "model": "mlp (one output)",
        "n_train": sweep["n_train"], "n_test": sweep["n_test"], "gold": "further training (SGD lr 0.01, batch 64)",
        "gold_seeds": args.seeds, "horizons_epochs": list(HORIZONS), "torch_threads": torch.get_num_threads(),
        "fidelity": table, "seconds": round(time.perf_counter() - started, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
