"""The Streamlit home page, driven by Streamlit's AppTest on the built-in demo."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from gda_core.viz import SIGN_NOTE


@pytest.fixture()
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("GDA_CACHE_DIR", str(tmp_path))
    return AppTest.from_file("../app.py", default_timeout=180)


def test_home_page_shows_the_demo(app):
    app.run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Training points"] == "1438" and metrics["Classes"] == "10"
    assert float(metrics["Test accuracy"].rstrip("%")) > 90
    assert any(SIGN_NOTE in info.value for info in app.info)
    assert "Nothing computed yet" in " ".join(m.value for m in app.markdown)


def test_compute_shows_helpful_and_harmful_groups(app):
    app.run()
    app.selectbox(key="data")  # the demo data set is preselected
    app.button[0].click().run()
    assert not app.exception
    charts = [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]
    titles = [chart["layout"].get("title", {}).get("text") for chart in charts]
    assert "Most helpful groups" in titles and "Most harmful groups" in titles
    helpful = charts[titles.index("Most helpful groups")]["data"][0]
    assert len(helpful["y"]) == 5


def test_switching_data_set_updates_summary(app):
    app.run()
    app.selectbox(key="data").set_value("wine").run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Classes"] == "3" and metrics["Features"] == "13"
