"""Page load times of the Streamlit app once everything is computed (served from the cache).

Fills a cache with the demo's runs (an attribution, the map, a small sweep, a flagged list, a
small noisy-label evaluation and pruning), then times each page's script run with Streamlit's
AppTest (the server-side work of a page load: what the user waits for beyond the browser
drawing). Prints JSON: median and max seconds per page.

    python benchmarks/app_pages.py [--repeats 7] [--embedder umap|pca]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from harness import time_reruns  # benchmarks/ is on the path when a benchmark runs

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"home": "pages/0_Home.py", "compute": "pages/1_Compute.py", "explore": "pages/2_Explore.py",
         "fidelity": "pages/3_Fidelity.py", "noisy labels": "pages/4_Noisy_labels.py"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--embedder", default="umap", choices=("umap", "pca"))
    args = parser.parse_args()
    os.environ.setdefault("GDA_CACHE_DIR", tempfile.mkdtemp(prefix="gda-pages-"))
    os.environ["GDA_EMBEDDER"] = args.embedder

    import torch
    from streamlit.testing.v1 import AppTest

    from gda_core.requests import (
        AttributionRequest,
        EmbeddingRequest,
        FlagRequest,
        GoldConfig,
        NoisyConfig,
        PruneConfig,
        SweepConfig,
    )
    from gda_core.runs.jobs import run_in_foreground
    from gda_core.runs.store import ScoreStore

    torch.set_num_threads(1)
    store = ScoreStore(os.environ["GDA_CACHE_DIR"])
    started = time.perf_counter()
    request = AttributionRequest(data="digits", model="mlp", method="grad-dot", grouping="grad-kmeans", n_groups=50,
                                 test_size=None)
    run_in_foreground("attribute", request.to_json(), store)
    run_in_foreground("embed", dataclasses.asdict(EmbeddingRequest(embedder=args.embedder)), store)
    sweep = SweepConfig(methods=("grad-dot",), groupings=("random", "grad-kmeans"), group_counts=(15,),
                        per_example=False, test_size=20, gold=GoldConfig(kind="lds", n_subsets=5))
    run_in_foreground("fidelity", dataclasses.asdict(sweep), store)
    # what the Noisy labels page shows: a flagged list, a small evaluation and a small pruning
    run_in_foreground("flag", FlagRequest(method="grad-dot", grouping="per-example").to_json(), store)
    scoring = dict(method="grad-dot", grouping="grad-kmeans", n_groups=129)
    run_in_foreground("noisy", NoisyConfig(**scoring).to_json(), store)
    run_in_foreground("prune", PruneConfig(**scoring, fractions=(0.1, 0.2, 0.3), seeds=2).to_json(), store)
    fill_seconds = time.perf_counter() - started

    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    app.run()  # first load: imports, data and model into Streamlit's resource cache
    times = {}
    for name, path in PAGES.items():
        app.switch_page(path)
        times[name] = time_reruns(app, args.repeats)
    print(json.dumps({"embedder": args.embedder, "repeats": args.repeats, "torch_threads": 1,
                      "fill_cache_s": round(fill_seconds, 1), "pages": times}, indent=2))


if __name__ == "__main__":
    main()
