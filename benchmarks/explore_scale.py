"""The Explore page at scale: its script run with 100k synthetic training points, everything
cached (the map, the scores, a drill-down, a selection), timed with Streamlit's AppTest (the
server-side work of a page load). Prints JSON: median and max seconds per view, the map's
payload size, and how long the cache took to fill (data, model, attribution, map).

    python benchmarks/explore_scale.py [--points 100000] [--repeats 5] [--embedder pca|umap]

The model is the zoo's logistic regression (it trains in seconds on 100k points); the map is
PCA unless ``--embedder umap`` (UMAP fits on 20k points and places the rest, with progress).
Target: every view under 1 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import time_reruns  # benchmarks/ is on the path when a benchmark runs

ROOT = Path(__file__).resolve().parents[1]


def synthetic_npz(path: Path, n_points: int, n_test: int, seed: int = 0) -> Path:
    """Ten Gaussian classes in 20 dimensions, with a separate test split."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(10, 20))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, size=n)
        return (centres[labels] + rng.normal(size=(n, 20))).astype(np.float32), labels

    x, y = draw(n_points)
    x_test, y_test = draw(n_test)
    np.savez(path, X=x, y=y, X_test=x_test, y_test=y_test)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--test-points", type=int, default=500)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--embedder", default="pca", choices=("pca", "umap"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gda-explore-scale-"))
    os.environ["GDA_CACHE_DIR"] = str(folder / "cache")
    os.environ["GDA_EMBEDDER"] = args.embedder

    import torch
    from streamlit.testing.v1 import AppTest

    from gda_core.inputs.choices import prepare_data_choice
    from gda_core.inputs.parsers import DataOptions
    from gda_core.requests import AttributionRequest, EmbeddingRequest, MembersRequest
    from gda_core.runs.jobs import run_in_foreground
    from gda_core.runs.store import ScoreStore

    torch.set_num_threads(1)
    store = ScoreStore(os.environ["GDA_CACHE_DIR"])
    fill: dict[str, float] = {}
    started = time.perf_counter()
    data = prepare_data_choice(str(synthetic_npz(folder / "synthetic.npz", args.points, args.test_points)),
                               DataOptions(), store.root)
    fill["data"] = time.perf_counter() - started
    request = AttributionRequest(data=data, model="logreg", method="grad-dot", grouping="grad-kmeans",
                                 n_groups=args.groups, test_size=None)
    started = time.perf_counter()
    attribution = run_in_foreground("attribute", request.to_json(), store)
    fill["model_and_attribution"] = time.perf_counter() - started
    started = time.perf_counter()
    embedding = run_in_foreground("embed", dataclasses.asdict(EmbeddingRequest(data=data, model="logreg",
                                                                                embedder=args.embedder)), store)
    fill[f"map_{args.embedder}"] = time.perf_counter() - started
    top_group = int(np.argmax(attribution.arrays["scores"][0]))
    started = time.perf_counter()
    run_in_foreground("members", MembersRequest(**request.to_json(), group=top_group).to_json(), store)
    fill["drill_down"] = time.perf_counter() - started

    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    app.session_state["data"], app.session_state["model"] = data, "logreg"
    app.switch_page("pages/2_Explore.py")
    started = time.perf_counter()
    app.run()  # first load: imports, data and model into Streamlit's resource cache
    first_load = time.perf_counter() - started
    assert not app.exception, app.exception

    def timed(prepare=None) -> dict:
        if prepare is not None:
            prepare(app)
        return time_reruns(app, args.repeats)

    views = {"map by group": timed()}
    payload = max(len(chart.proto.spec) for chart in app.get("plotly_chart"))
    views["map by group score"] = timed(lambda a: a.radio(key="map_colour").set_value("score"))
    views["drill-down"] = timed(lambda a: a.session_state.__setitem__("drill_group", top_group))
    selected = np.random.default_rng(0).choice(args.points, 5000, replace=False).tolist()
    views["selection of 5000 points"] = timed(lambda a: a.session_state.__setitem__("selected_points", selected))
    print(json.dumps({
        "points": args.points, "test_points": args.test_points, "groups": args.groups, "embedder": args.embedder,
        "map_fitted_on": embedding.summary.get("fitted_on"), "torch_threads": 1, "repeats": args.repeats,
        "fill_seconds": {k: round(v, 1) for k, v in fill.items()}, "first_load_s": round(first_load, 2),
        "map_payload_mb": round(payload / 2**20, 2), "views": views,
        "target": "every view's median under 1 s",
        "met": all(v["median_s"] < 1.0 for v in views.values()),
    }, indent=2))


if __name__ == "__main__":
    main()
