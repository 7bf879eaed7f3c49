"""The Streamlit pages, driven by Streamlit's AppTest on the built-in demo.

Jobs really run (in spawned worker processes, through the store); the map uses the PCA
stand-in for UMAP here (GDA_EMBEDDER=pca) because these tests are about the pages: the
browser test runs the real UMAP."""

from __future__ import annotations

import base64
import dataclasses
import json
import time

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from gda_core.requests import GoldConfig, SweepConfig
from gda_core.runs.jobs import run_in_foreground
from gda_core.runs.store import ScoreStore
from gda_core.viz.figures import SIGN_NOTE

PAGES = {"compute": "pages/1_Compute.py", "explore": "pages/2_Explore.py", "fidelity": "pages/3_Fidelity.py"}


@pytest.fixture()
def app(app_cache, open_app):
    return open_app(app_cache)


def plotly_specs(app: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]


def decoded(values) -> np.ndarray:
    """Plotly 7 stores arrays base64-encoded as {dtype, bdata}."""
    if isinstance(values, dict) and "bdata" in values:
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"]))
    return np.asarray(values)


def button(app: AppTest, label: str):
    matches = [b for b in app.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in app.button]}"
    return matches[0]


def run_until(app: AppTest, condition, timeout: float = 240) -> None:
    """Rerun the page (as its polling fragment would) until ``condition(app)`` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        app.run()
        assert not app.exception, app.exception
        if condition(app):
            return
        time.sleep(0.5)
    raise AssertionError("the page never showed the expected result")


def runs_table(app: AppTest):
    """The Compute page's table of finished runs (the cost estimate is a table too)."""
    return next(frame.value for frame in app.dataframe if "grouping" in frame.value.columns)


def test_home_page_shows_the_demo(app):
    app.run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Training points"] == "1438" and metrics["Classes"] == "10"
    assert float(metrics["Test accuracy"].rstrip("%")) > 90
    titles = [spec["layout"].get("title", {}).get("text") for spec in plotly_specs(app)]
    assert "Training points per class" in titles


def test_switching_data_set_updates_summary(app):
    app.run()
    app.selectbox(key="data").set_value("wine").run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Classes"] == "3" and metrics["Features"] == "13"
    assert "cnn" not in app.selectbox(key="model").options  # no images, no CNN


def test_compute_runs_a_job_then_hits_the_cache(app):
    app.switch_page(PAGES["compute"]).run()
    assert not app.exception
    app.selectbox(key="grouping").set_value("random")
    app.slider(key="n_groups").set_value(12)
    button(app, "Compute").click().run()
    run_until(app, lambda a: any(m.label == "Groups" for m in a.metric))
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Groups"] == "12" and metrics["Test points scored"] == "359"
    table = runs_table(app)
    assert ((table["grouping"] == "random") & (table["groups"] == 12)).sum() == 1
    button(app, "Compute").click().run()  # the same request again: from the cache
    assert any("loaded from the cache" in s.value for s in app.success)
    assert ((runs_table(app)["groups"] == 12) & (runs_table(app)["grouping"] == "random")).sum() == 1
    # where a job runs is not part of its result: the same request on Ray is the same cache entry
    app.selectbox(key="executor").set_value("ray").run()
    button(app, "Compute").click().run()
    assert not app.exception and any("loaded from the cache" in s.value for s in app.success)
    assert ((runs_table(app)["groups"] == 12) & (runs_table(app)["grouping"] == "random")).sum() == 1


def test_explore_map_has_one_point_per_training_point(app):
    app.switch_page(PAGES["explore"]).run()
    assert not app.exception
    if any(b.label == "Compute group scores" for b in app.button):  # nothing computed yet in this module
        button(app, "Compute group scores").click().run()
        run_until(app, lambda a: not any(b.label == "Compute group scores" for b in a.button))
    if any(b.label == "Compute the map" for b in app.button):
        assert any("not computed yet" in i.value for i in app.info)
        button(app, "Compute the map").click().run()
        run_until(app, lambda a: any(s["layout"].get("title", {}).get("text", "").startswith("Training points by group")
                                     for s in plotly_specs(a)))
    specs = {s["layout"].get("title", {}).get("text", ""): s for s in plotly_specs(app)}
    map_spec = next(s for title, s in specs.items() if title.startswith("Training points by group"))
    train_trace = map_spec["data"][0]
    assert len(decoded(train_trace["x"])) == 1438 and len(decoded(train_trace["y"])) == 1438
    names = [trace["name"] for trace in map_spec["data"]]
    assert "most helpful groups" in names and "most harmful groups" in names
    assert "Most helpful groups" in specs and "Most harmful groups" in specs
    assert any(SIGN_NOTE in c.value for c in app.caption)

    # choosing a misclassified test point moves the chosen point and the rankings
    wrong = [option for option in app.selectbox(key="pick_wrong").options if option != "-"]
    assert wrong, "the demo model misclassifies some test points"
    chosen = int(wrong[0].split(":")[0].lstrip("#"))  # options read "#12: label 3, predicted 8"
    app.selectbox(key="pick_wrong").set_value(chosen).run()
    assert not app.exception
    assert app.number_input(key="test_index").value == chosen
    map_spec = next(s for s in plotly_specs(app) if s["layout"].get("title", {}).get("text", "").startswith("Training"))
    assert any(trace["name"] == f"chosen test point #{chosen}" for trace in map_spec["data"])

    # colouring by score puts the chosen point's group scores on a diverging scale
    app.radio(key="map_colour").set_value("score").run()
    map_spec = next(s for s in plotly_specs(app) if s["layout"].get("title", {}).get("text", "").startswith("Training"))
    marker = map_spec["data"][0]["marker"]
    assert marker["colorscale"] and marker["cmin"] == -marker["cmax"]
    assert len(decoded(marker["color"])) == 1438


def test_pages_keep_the_choices(app, shown):
    app.run()
    app.selectbox(key="data").set_value("breast_cancer").run()
    app.switch_page(PAGES["compute"]).run()
    app.selectbox(key="method").set_value("tracin").run()
    app.switch_page(PAGES["fidelity"]).run()
    app.switch_page("pages/0_Home.py").run()
    assert app.selectbox(key="data").value == "breast_cancer"
    app.switch_page(PAGES["compute"]).run()
    assert not app.exception
    assert app.selectbox(key="method").value == "tracin"
    assert "breast_cancer" in shown(app.caption[0].value)


def test_fidelity_page_names_its_gold_standard(app, app_cache):
    app.switch_page(PAGES["fidelity"]).run()
    assert not app.exception
    assert any(b.label == "Run a small sweep" for b in app.button)
    assert any(c.value.startswith("The small sweep takes roughly ") for c in app.caption)  # from the sizes
    if not any("Fidelity vs speed" in s["layout"].get("title", {}).get("text", "") for s in plotly_specs(app)):
        assert any("No sweep" in i.value for i in app.info)
    config = SweepConfig(data="digits", model="mlp", methods=("grad-dot",), groupings=("random",), group_counts=(10,),
                         per_example=True, test_size=10, gold=GoldConfig(kind="lds", n_subsets=4))
    run_in_foreground("fidelity", dataclasses.asdict(config), ScoreStore(app_cache))
    app.run()
    assert not app.exception
    titles = [s["layout"].get("title", {}).get("text", "") for s in plotly_specs(app)]
    assert any("Fidelity vs speed" in t and "gold: LDS" in t for t in titles)
    assert any(s["layout"]["yaxis"]["title"]["text"] == "point-level LDS" for s in plotly_specs(app)
               if "Fidelity vs speed" in s["layout"].get("title", {}).get("text", ""))
    table = app.dataframe[0].value
    assert len(table) == 2
    # Point-level LDS leads; the group-level LDS sits beside the group size distribution.
    assert {"point-level LDS", "group-level LDS", "largest group", "median group", "smallest group",
            "singletons", "kept of per-example"} <= set(table.columns)
    grouped = table[table["grouping"] == "random"].iloc[0]
    assert grouped["largest group"] >= grouped["smallest group"] >= 1
    assert 0 < grouped["kept of per-example"] < 1  # ten random groups keep little of the per-example scores
    assert table[table["grouping"] == "per-example"]["kept of per-example"].isna().all()


def test_a_running_job_shows_progress_and_can_be_cancelled(app):
    app.switch_page(PAGES["compute"]).run()
    app.selectbox(key="method").set_value("if-cg")
    app.selectbox(key="grouping").set_value("per-example").run()
    assert any("fixed by this grouping" in m.value for m in app.markdown)
    button(app, "Compute").click().run()
    assert not app.exception
    progress = app.get("progress")
    assert progress and "Attribution:" in progress[0].proto.text
    button(app, "Cancel").click().run()
    run_until(app, lambda a: any("was cancelled" in w.value for w in a.warning), timeout=60)
    assert not any(b.label == "Cancel" for b in app.button)


def test_advanced_options_are_read_as_their_fields_types(app, shown):
    """An optional option (``int | None``) takes a whole number, not a float; a bad one is
    one error line on the page, not a refused job."""
    app.switch_page(PAGES["compute"]).run()
    app.selectbox(key="method").set_value("if-arnoldi").run()
    app.text_input(key="option:if-arnoldi:iterations").set_value("40").run()
    assert not app.exception and not app.error
    app.text_input(key="option:if-arnoldi:iterations").set_value("1.5").run()
    assert [shown(e.value) for e in app.error] == ["iterations: '1.5' is not a whole number"]
