"""The pages on a regression set (diabetes): Home shows a target histogram and R^2, Explore
colours the map by target, the Noisy labels page says in one line that it needs classes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_app import decoded, plotly_specs  # tests/ is on the path under pytest's default import mode

from gda_core.requests import AttributionRequest, EmbeddingRequest
from gda_core.runs.jobs import run_in_foreground
from gda_core.runs.store import ScoreStore


@pytest.fixture()
def app(app_cache, open_app):
    app = open_app(app_cache)
    app.run()
    app.selectbox(key="data").set_value("diabetes").run()
    return app


def test_home_page_shows_targets_not_classes(app):
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Task"] == "regression" and metrics["Training points"] == "354" and "Classes" not in metrics
    assert 0.2 < float(metrics["Test R^2"]) < 1
    specs = {s["layout"].get("title", {}).get("text"): s for s in plotly_specs(app)}
    assert "Training points per class" not in specs
    histogram = specs["Training targets (standardised)"]["data"][0]
    assert histogram["type"] == "histogram" and len(decoded(histogram["x"])) == 354


def test_explore_colours_the_map_by_target(app, app_cache):
    store = ScoreStore(app_cache)
    run_in_foreground("attribute", dataclasses.asdict(AttributionRequest(
        data="diabetes", model="mlp", method="grad-dot", grouping="grad-kmeans", n_groups=20, test_size=None)), store)
    run_in_foreground("embed", dataclasses.asdict(EmbeddingRequest(data="diabetes", model="mlp", embedder="pca")),
                      store)
    app.switch_page("pages/2_Explore.py").run()
    assert not app.exception
    worst = [option for option in app.selectbox(key="pick_wrong").options if option != "-"]
    assert len(worst) == 20 and "predicted" in worst[0]  # the worst predictions, by absolute error
    app.radio(key="map_colour").set_value("class").run()
    assert not app.exception
    map_spec = next(s for s in plotly_specs(app) if s["layout"].get("title", {}).get("text", "").startswith("Training"))
    marker = map_spec["data"][0]["marker"]
    assert marker["colorbar"]["title"]["text"] == "target"
    colours = decoded(marker["color"])
    assert len(colours) == 354 and len(np.unique(colours)) > 100  # a continuous scale, not class colours


def test_noisy_labels_page_says_it_needs_classes(app, shown):
    app.switch_page("pages/4_Noisy_labels.py").run()
    assert not app.exception
    assert [shown(i.value) for i in app.info] == [
        "the Noisy labels page needs class labels (it flips labels to other classes and reports accuracy); "
        "diabetes has regression targets"]
