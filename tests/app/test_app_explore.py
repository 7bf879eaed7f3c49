"""Explore's drill-down, map selection, colourings and comparison, in Streamlit's AppTest on
the digits demo (runs made in the foreground first, so the page reads them from the store)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_app import button, decoded, plotly_specs, run_until  # tests/ is on the path under pytest

from gda_app.map_events import apply_map_event
from gda_core.requests import AttributionRequest, EmbeddingRequest, MembersRequest
from gda_core.runs.jobs import run_in_foreground
from gda_core.runs.review import ReviewSession
from gda_core.runs.store import ScoreStore

EXPLORE = "pages/2_Explore.py"
REQUEST = AttributionRequest(data="digits", model="mlp", method="grad-dot", grouping="grad-kmeans", n_groups=30,
                             test_size=None)


@pytest.fixture(scope="module")
def stored(app_cache):
    store = ScoreStore(app_cache)
    attribution = run_in_foreground("attribute", REQUEST.to_json(), store)
    run_in_foreground("embed", dataclasses.asdict(EmbeddingRequest(data="digits", model="mlp", embedder="pca")), store)
    return store, attribution


@pytest.fixture()
def app(app_cache, open_app, stored):
    return open_app(app_cache)


def map_spec(app) -> dict:
    return next(s for s in plotly_specs(app) if s["layout"].get("title", {}).get("text", "").startswith("Training"))


def test_drilling_into_a_group_scores_its_members_and_they_add_up(app, stored):
    store, attribution = stored
    app.switch_page(EXPLORE).run()
    assert not app.exception
    helpful = [b for b in app.button if b.label.startswith("Drill into group")]
    assert helpful, "each listed group offers a drill-down"
    group = int(helpful[0].label.rsplit(" ", 1)[-1])
    helpful[0].click().run()
    run_until(app, lambda a: any(frame.value.columns[-1] == "own score" for frame in a.dataframe))
    table = next(frame.value for frame in app.dataframe if frame.value.columns[-1] == "own score")
    members = np.flatnonzero(attribution.arrays["groups"] == group)
    assert sorted(table["training point"]) == members.tolist()
    assert (np.diff(table["own score"].to_numpy()) <= 0).all(), "members ranked by their own score"
    # a gradient-linear method: the members' own scores add up to their group's score
    group_score = attribution.arrays["scores"][0, group]
    assert table["own score"].sum() == pytest.approx(group_score, rel=1e-3, abs=1e-6)
    assert set(table["group"]) == {group}
    trace = next(t for t in map_spec(app)["data"] if t["name"] == "members of the chosen group")
    assert len(decoded(trace["x"])) == len(members)
    # the job's own record agrees
    members_run = run_in_foreground("members", MembersRequest(**REQUEST.to_json(), group=group).to_json(), store)
    assert members_run.cache_hit and members_run.summary["sum_deviation"] < 1e-4


def test_a_click_on_a_training_point_drills_into_its_group(stored):
    _, attribution = stored
    groups = attribution.arrays["groups"]
    session: dict = {}
    click = {"selection": {"points": [{"curve_number": 0, "point_index": 17, "point_number": 17, "x": 0.1, "y": 0.2}],
                           "point_indices": [17], "box": [], "lasso": []}}
    apply_map_event(click, session, group_labels=groups, test_trace=3)
    assert session["drill_group"] == groups[17]
    session["drill_group"] = None  # the user picks another group: the same event delivered again changes nothing
    apply_map_event(click, session, group_labels=groups, test_trace=3)
    assert session["drill_group"] is None
    apply_map_event({"selection": {"points": [{"curve_number": 3, "point_index": 5}], "box": [], "lasso": []}},
                    session, group_labels=groups, test_trace=3)
    assert session["test_index"] == 5


def test_a_box_selection_lists_the_training_points_and_goes_to_review(app, stored, app_cache):
    store, _ = stored
    # as Streamlit delivers a box over the map: points of every trace under it, and the box
    box = {"selection": {"points": [{"curve_number": 0, "point_index": i} for i in (4, 9, 2)]
                         + [{"curve_number": 1, "point_index": 0}, {"curve_number": 3, "point_index": 7}],
                         "point_indices": [4, 9, 2], "box": [{"x": [0, 1], "y": [0, 1], "xref": "x", "yref": "y"}],
                         "lasso": []}}
    session: dict = {}
    apply_map_event(box, session, group_labels=np.zeros(20, dtype=int), test_trace=3)
    assert session["selected_points"] == [2, 4, 9] and "test_index" not in session

    app.switch_page(EXPLORE).run()
    app.session_state["selected_points"] = [2, 4, 9]
    app.run()
    assert not app.exception
    table = next(frame.value for frame in app.dataframe if "training point" in frame.value.columns
                 and "own score" not in frame.value.columns)
    assert table["training point"].tolist() == [2, 4, 9]
    assert set(table.columns) >= {"label", "prediction", "group", "group score"}
    button(app, "Send to the Noisy-labels review").click().run()
    assert not app.exception
    name = app.session_state["flag_run"]
    assert name.startswith("selection:") and ReviewSession(store, name).flagged.tolist() == [2, 4, 9]
    app.switch_page("pages/4_Noisy_labels.py").run()
    assert not app.exception
    assert app.selectbox(key="flag_run").value == name
    assert any(m.value.startswith("**Training point #2**") for m in app.markdown)


def test_the_map_colours_by_loss_and_self_influence_once_computed(app):
    app.switch_page(EXPLORE).run()
    app.radio(key="map_colour").set_value("loss").run()
    assert not app.exception
    if any(b.label == "Compute loss and self-influence" for b in app.button):
        button(app, "Compute loss and self-influence").click().run()
        run_until(app, lambda a: "colorbar" in map_spec(a)["data"][0]["marker"])
    marker = map_spec(app)["data"][0]["marker"]
    assert marker["colorbar"]["title"]["text"] == "loss"
    losses = decoded(marker["color"])
    assert len(losses) == 1438 and (losses >= 0).all() and losses.std() > 0
    app.radio(key="map_colour").set_value("self-influence").run()
    assert map_spec(app)["data"][0]["marker"]["colorbar"]["title"]["text"] == "self-influence"


def test_two_test_points_compared_side_by_side(app, stored):
    _, attribution = stored
    app.switch_page(EXPLORE).run()
    app.number_input(key="compare_index").set_value(5).run()
    assert not app.exception
    titles = [c.proto.id for c in app.get("plotly_chart")]
    assert sum("compare_first" in t for t in titles) == 2 and sum("compare_second" in t for t in titles) == 2
    line = next(m.value for m in app.markdown if m.value.startswith("Spearman correlation"))
    from scipy.stats import spearmanr

    expected = spearmanr(attribution.arrays["scores"][0], attribution.arrays["scores"][5]).statistic
    assert f"**{expected:.2f}**" in line


def test_the_test_point_search_filters_by_label_and_prediction(app):
    app.switch_page(EXPLORE).run()
    app.checkbox(key="search_wrong").uncheck().run()
    app.selectbox(key="search_label").set_value(3).run()
    assert not app.exception
    options = [o for o in app.selectbox(key="pick_wrong").options if o != "-"]
    assert options and all(", predicted" in o and "label 3," in o for o in options)
    app.selectbox(key="search_prediction").set_value(8).run()
    options = [o for o in app.selectbox(key="pick_wrong").options if o != "-"]
    assert all(o.endswith("predicted 8") for o in options)
