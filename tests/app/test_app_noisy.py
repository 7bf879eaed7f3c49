"""The Noisy labels page in Streamlit's AppTest: flag (a real job), review with keep / relabel /
undo saved in the store, a stale tab refused, downloads, and the evaluation figure."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
from streamlit.testing.v1 import AppTest
from test_app import button  # tests/ is on the path under pytest's default import mode

from gda_core.requests import FlagRequest, NoisyConfig, PruneConfig
from gda_core.runs.jobs import run_in_foreground
from gda_core.runs.review import ReviewSession
from gda_core.runs.store import ScoreStore

PAGE = "pages/4_Noisy_labels.py"


@pytest.fixture()
def app(app_cache, open_app):
    app = open_app(app_cache)
    app.run()
    return app.switch_page(PAGE)


def current_point(app: AppTest) -> int:
    text = next(m.value for m in app.markdown if m.value.startswith("**Training point #"))
    return int(text.split("#")[1].split("*")[0])


def session(app_cache) -> ReviewSession:
    store = ScoreStore(app_cache)
    (run,) = store.runs(kind="flags", status="done")
    return ReviewSession(store, f"flags:{run.key}")


def test_home_links_to_the_page(app_cache, open_app):
    home = open_app(app_cache)
    home.run()
    assert any(link.proto.page == "Noisy_labels" for link in home.get("page_link"))


def test_flag_then_review_with_undo_and_downloads(app, app_cache):
    app.run()
    assert not app.exception
    assert any("No flagged points" in i.value for i in app.info)
    assert any("No evaluation" in i.value for i in app.info)
    button(app, "Flag training points").click().run()  # Grad-Dot per example: the page's quick default
    for _ in range(480):  # the job runs in a worker process; rerun as the page's poll would
        if any(b.label == "Keep" for b in app.button):
            break
        time.sleep(0.5)
        app.run()
    assert not app.exception
    shortcuts = {b.label: b.proto.shortcut.upper() for b in app.button}
    assert shortcuts["Keep"] == "K" and shortcuts["Relabel"] == "L" and shortcuts["Undo"] == "U"
    assert any(m.value.startswith("Given label:") and "confidence" in m.value for m in app.markdown)
    titles = [json.loads(c.proto.spec)["layout"]["annotations"][0]["text"] for c in app.get("plotly_chart")
              if c.key == "current_image" or "current_image" in str(c.proto.id)]
    first = current_point(app)
    assert titles == [f"training point #{first}"]

    button(app, "Keep").click().run()
    second = current_point(app)
    assert second != first and session(app_cache).decisions()[first].action == "keep"
    app.selectbox(key=f"relabel_to:{second}").set_value(4).run()
    button(app, "Relabel").click().run()
    decisions = session(app_cache).decisions()
    assert decisions[second].action == "relabel" and decisions[second].new_label == 4
    button(app, "Undo").click().run()
    assert current_point(app) == second and second not in session(app_cache).decisions()

    table = app.dataframe[0].value
    assert table.loc[table["training point"] == first, "decision"].item() == "keep"
    downloads = app.get("download_button")
    assert [d.proto.label for d in downloads] == ["Download decisions (CSV)", "Download cleaned labels (CSV)",
                                                 "Download cleaned data (CSV)", "Download cleaned data (NPZ)"]
    rows = list(csv.DictReader(io.StringIO(session(app_cache).decisions_csv())))
    assert [(int(r["train_index"]), r["decision"]) for r in rows] == [(first, "keep")]


@pytest.fixture()
def flagged(app_cache):
    """A flagged list in the cache (the one the flag test makes with the page's button, made
    here when this test runs alone)."""
    store = ScoreStore(app_cache)
    if not store.runs(kind="flags", status="done"):
        run_in_foreground("flag", FlagRequest(method="grad-dot", grouping="per-example").to_json(), store)


def test_a_decision_from_a_stale_tab_is_refused(flagged, app, app_cache):
    app.run()
    shown = current_point(app)
    other_tab = session(app_cache)
    other_tab.skip(shown)  # another tab decides after this one rendered
    button(app, "Keep").click().run()
    assert not app.exception
    assert any("changed elsewhere" in w.value for w in app.warning)
    assert session(app_cache).decisions()[shown].action == "skip"  # not overwritten
    assert current_point(app) != shown  # the page now shows the other tab's decision


def test_evaluation_and_pruning_figures_from_the_store(app, app_cache):
    app.run()
    assert any("No pruning run" in i.value for i in app.info)
    store = ScoreStore(app_cache)
    run_in_foreground("noisy", NoisyConfig(method="grad-dot", grouping="per-example", baselines=("loss",)).to_json(),
                      store)
    run_in_foreground("prune", PruneConfig(method="grad-dot", grouping="grad-kmeans", n_groups=20, fractions=(0.2,),
                                           seeds=1).to_json(), store)
    app.run()
    assert not app.exception
    titles = [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in app.get("plotly_chart")]
    assert any(t.startswith("Finding 130 flipped labels") for t in titles)
    assert any(t.startswith("Pruning digits / mlp by grad-dot") for t in titles)
    table = next(d.value for d in app.dataframe if "AUC" in d.value.columns)
    assert len(table) == 3 and table["found at 20%"].iloc[0] > 0.8


def test_runs_of_another_seed_are_not_listed(flagged, app, app_cache):
    """The page shows the seed-0 split and model; a flag run of another seed (from the CLI)
    indexes other rows, so it must not be offered for review."""
    store = ScoreStore(app_cache)
    other = run_in_foreground("flag", FlagRequest(method="grad-dot", grouping="per-example", seed=1).to_json(), store)
    app.run()
    assert not app.exception
    offered = app.selectbox(key="flag_run").options
    assert len(offered) == 1 and other.key not in str(offered)


def test_the_noisy_demo_is_reviewed_in_bulk_and_scored(app_cache, open_app):
    """digits-noisy: Home says what was flipped; the neighbours flags are relabelled in bulk
    to the model's class, the review is scored against the truth, and one Undo takes it back."""
    app = open_app(app_cache)
    app.session_state["data"] = "digits-noisy"
    app.run()
    assert not app.exception
    assert any("10% of its training labels flipped on purpose" in i.value for i in app.info)
    app.switch_page(PAGE).run()
    assert any("is a noisy demo" in i.value and "144 of its 1438" in i.value for i in app.info)
    button(app, "Flag training points").click().run()
    for _ in range(240):
        if any(b.label == "Keep" for b in app.button):
            break
        time.sleep(0.5)
        app.run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    wrong, flagged = (int(n) for n in metrics["Wrong labels in this list"].split(" of "))
    assert flagged == 144 and wrong >= 120  # the neighbours signal puts most flips in the top 10%
    app.slider(key="bulk_confidence").set_value(0.6).run()
    bulk = next(b for b in app.button if b.key == "bulk_relabel")
    n_bulk = int(bulk.label.split()[1])
    assert n_bulk >= 20
    bulk.click().run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    fixed, right = int(metrics["Fixed"]), int(metrics["Right decisions"].split(" of ")[0])
    assert metrics["Right decisions"].endswith(f" of {n_bulk}") and fixed == right and fixed >= 0.9 * n_bulk
    button(app, "Undo").click().run()
    assert {m.label: m.value for m in app.metric}["Fixed"] == "0"
