"""Record, or compare against a recording, the results of a fixed set of requests.

A refactoring must not change what the engine computes. This script runs, through the ``gda``
command line (so it works whatever the package layout), every method on digits / MLP per
example and on grad-kmeans K = 150, a small fidelity sweep and a flag run, on one torch
thread, in a fresh cache folder; it saves every score array under ``DIR``. With
``--compare DIR`` it runs them again and reports, as JSON, whether each array is bitwise
equal to the recording (and the largest difference when not).

    python benchmarks/behaviour_check.py --record /tmp/before
    python benchmarks/behaviour_check.py --compare /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

METHODS = ("grad-dot", "grad-cos", "tracin", "if-exact", "if-cg", "if-lissa", "if-arnoldi", "trak", "datainf")
GROUPINGS = (("per-example", None), ("grad-kmeans", 150))
TEST_SIZE = 50
#: fields of a sweep point that are computed (not timed): the group-level LDS (named "lds" in
#: recordings made before the point-level yardstick, compared under that name) and, under
#: their own name, the point-level LDS
SWEEP_FIELDS = ("group_lds", "group_lds_se", "n_groups")
POINT_FIELDS = ("point_lds", "point_lds_se")


def _gda(arguments: list[str], cache: Path) -> dict | None:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GDA_CACHE_DIR": str(cache)}
    command = [sys.executable, "-c", "import sys, torch; torch.set_num_threads(1); "
               "from gda_core.cli import main; sys.exit(main(sys.argv[1:]))", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"gda {' '.join(arguments)} failed: {done.stderr.strip()}")
    at = arguments.index("--json") if "--json" in arguments else None
    prints_json = at is not None and (at + 1 == len(arguments) or arguments[at + 1].startswith("--"))
    return json.loads(done.stdout) if prints_json else None


def run_all(cache: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for method in METHODS:
        for grouping, k in GROUPINGS:
            arguments = ["attribute", "--data", "digits", "--model", "mlp", "--method", method,
                         "--grouping", grouping, "--test-size", str(TEST_SIZE)]
            if k is not None:
                arguments += ["--groups", str(k)]
            arguments.append("--json")  # last: _gda parses stdout as JSON only then
            summary = _gda(arguments, cache)
            arrays[f"attribute/{method}/{grouping}"] = np.load(summary["scores_path"])
            arrays[f"groups/{method}/{grouping}"] = np.load(summary["groups_path"])
            print(f"{method} {grouping}: {summary['seconds']:.2f} s", file=sys.stderr)
    flag = _gda(["flag", "--data", "digits", "--model", "mlp", "--method", "if-cg", "--grouping", "grad-kmeans",
                 "--groups", "150", "--json"], cache)
    for name in ("order", "scores", "refined"):
        arrays[f"flag/{name}"] = np.load(cache / "arrays" / flag["key"] / f"{name}.npy")
    sweep_path = cache / "sweep.json"
    _gda(["fidelity", "--data", "digits", "--model", "mlp", "--methods", "grad-dot,if-arnoldi",
          "--groupings", "random,grad-kmeans", "--groups", "15", "--gold", "lds", "--subsets", "10",
          "--test-size", "20", "--json", str(sweep_path)], cache)
    sweep = json.loads(sweep_path.read_text())
    for point in sweep["points"]:
        name = f"sweep/{point['method']}/{point['grouping']}/{point['n_groups']}"
        arrays[name] = np.array([float(point[field]) for field in SWEEP_FIELDS])
        arrays[f"sweep-points/{name[len('sweep/'):]}"] = np.array([float(point[field]) for field in POINT_FIELDS])
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--record", metavar="DIR")
    where.add_argument("--compare", metavar="DIR")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        arrays = run_all(Path(cache))
    if args.record:
        Path(args.record).mkdir(parents=True, exist_ok=True)
        np.savez(Path(args.record) / "results.npz", **arrays)
        print(json.dumps({"recorded": len(arrays), "to": args.record}))
        return
    with np.load(Path(args.compare) / "results.npz") as recorded:
        report = {}
        for name in sorted(set(recorded.files) | set(arrays)):
            if name not in recorded.files or name not in arrays:
                report[name] = "missing on one side"
                continue
            before, after = recorded[name], arrays[name]
            if before.shape != after.shape:
                report[name] = f"shape {before.shape} -> {after.shape}"
            elif np.array_equal(before, after, equal_nan=True):
                report[name] = "identical"
            else:
                report[name] = f"max abs difference {float(np.nanmax(np.abs(before - after))):.3g}"
    print(json.dumps({"identical": sum(v == "identical" for v in report.values()), "of": len(report),
                      "results": report}, indent=2))


if __name__ == "__main__":
    main()
