"""Store overhead and cache-hit latency, printing one JSON object.

Measures, for one attribution request (digits / MLP / grad-dot / grad-kmeans K=150, 200
test points): the engine called directly; the same request through the store on a miss
(compute + checksummed writes + index rows); a hit in-process (key + checksum-verified
read); and a hit as a whole `gda attribute` process (Python and torch start-up included).
Medians of --repeats runs, torch threads pinned.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gda_core.attribution.pipeline import run_attribution  # noqa: E402
from gda_core.requests import AttributionRequest
from gda_core.runs.jobs import run_in_foreground  # noqa: E402
from gda_core.runs.store import ScoreStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    request = AttributionRequest(data="digits", model="mlp", method="grad-dot", grouping="grad-kmeans",
                                 n_groups=150, test_size=200).to_json()
    direct, miss, hit, cli_hit = [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder) / "shared"
        run_attribution(AttributionRequest(**request), cache_dir=models)  # trains the demo model once
        for repeat in range(args.repeats):
            started = time.perf_counter()
            run_attribution(AttributionRequest(**request), cache_dir=models)
            direct.append(time.perf_counter() - started)
            store_root = Path(folder) / f"store{repeat}"
            store_root.mkdir()
            (store_root / "models").symlink_to(models / "models")
            (store_root / "data").symlink_to(models / "data")
            store = ScoreStore(store_root)
            outcome = run_in_foreground("attribute", request, store)
            assert not outcome.cache_hit
            miss.append(outcome.seconds)
            outcome = run_in_foreground("attribute", request, store)
            assert outcome.cache_hit
            hit.append(outcome.seconds)
            started = time.perf_counter()
            completed = subprocess.run([sys.executable, "-m", "gda_core.cli", "attribute", "--data", "digits",
                                        "--model", "mlp", "--method", "grad-dot", "--grouping", "grad-kmeans",
                                        "--groups", "150", "--cache", str(store_root), "--json"],
                                       capture_output=True, text=True, check=True)
            cli_hit.append(time.perf_counter() - started)
            assert json.loads(completed.stdout)["cache_hit"] is True
    median = statistics.median
    print(json.dumps({
        "threads": args.threads, "repeats": args.repeats,
        "direct_engine_seconds": median(direct), "through_store_miss_seconds": median(miss),
        "store_overhead_seconds": median(miss) - median(direct),
        "store_overhead_ratio": median(miss) / median(direct),
        "hit_seconds_in_process": median(hit), "hit_vs_direct_ratio": median(hit) / median(direct),
        "hit_seconds_cli_process": median(cli_hit),
        "runs": {"direct": direct, "miss": miss, "hit": hit, "cli_hit": cli_hit},
    }, indent=2))


if __name__ == "__main__":
    main()
