"""The pages on text: an uploaded tiny BERT (saved with save_pretrained, zipped) over a text CSV,
on Home, Explore (the test sentence and the groups' member sentences) and Noisy labels (the
sentence, its given label and the model's prediction) in Streamlit's AppTest."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from gda_core.inputs.choices import accept_data_upload, accept_model_upload, load_data_choice
from gda_core.inputs.parsers import DataOptions
from gda_core.requests import AttributionRequest, EmbeddingRequest, FlagRequest
from gda_core.runs.jobs import run_in_foreground
from gda_core.runs.store import ScoreStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from text.tiny import save_tiny_bert, sentences, text_csv, zipped  # noqa: E402

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def text_choices(app_cache, tmp_path_factory):
    """The uploaded text data and model, and the runs the pages show, computed in the store."""
    texts, labels = sentences()
    folder = save_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert", texts, labels)
    data = accept_data_upload("reviews.csv", text_csv(texts, labels), app_cache,
                              DataOptions(text_column="sentence", max_length=12))
    model = accept_model_upload({"tiny-bert.zip": zipped(folder)}, load_data_choice(data).train, app_cache)
    store = ScoreStore(app_cache)
    run_in_foreground("attribute", dataclasses.asdict(AttributionRequest(
        data=data, model=model, method="grad-dot", grouping="repr-kmeans", n_groups=6, test_size=None,
        method_options={"parameters": "last-1"})), store)
    run_in_foreground("embed", dataclasses.asdict(EmbeddingRequest(data=data, model=model, embedder="pca")), store)
    run_in_foreground("flag", FlagRequest(data=data, model=model, method="grad-dot", grouping="per-example",
                                          method_options={"parameters": "head"}).to_json(), store)
    return data, model, texts


def text_tables(app) -> list:
    """The tables of sentences on the page (their ``text`` column), as data frames."""
    return [frame.value for frame in app.dataframe if "text" in frame.value.columns]


@pytest.fixture()
def app(app_cache, open_app, text_choices):
    app = open_app(app_cache)
    app.session_state["data"], app.session_state["model"] = text_choices[:2]
    app.run()
    assert not app.exception
    return app


def test_home_shows_sentences_and_their_labels(app, text_choices):
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Training points"] == "48" and metrics["Classes"] == "2" and int(metrics["Tokens"]) <= 12
    (table,) = text_tables(app)
    assert len(table) == 8 and set(table["text"]) <= set(text_choices[2]) and set(table["label"]) <= {"neg", "pos"}


def test_explore_shows_the_test_sentence_and_member_sentences(app, text_choices):
    app.switch_page("pages/2_Explore.py").run()
    assert not app.exception
    assert any(m.value.startswith("**Test point #0**") for m in app.markdown)
    assert any(t.value in text_choices[2] for t in app.text)
    tables = text_tables(app)  # three helpful groups' and three harmful groups' members
    assert len(tables) == 6 and all(len(t) >= 1 and set(t["text"]) <= set(text_choices[2]) for t in tables)


def test_noisy_labels_review_shows_the_sentence_given_label_and_prediction(app, text_choices):
    app.switch_page("pages/4_Noisy_labels.py").run()
    assert not app.exception
    assert any(m.value.startswith("**Training point #") for m in app.markdown)
    assert any(m.value.startswith("Given label: **") and "model predicts" in m.value for m in app.markdown)
    assert any(t.value in text_choices[2] for t in app.text)
    (upcoming,) = text_tables(app)
    assert 1 <= len(upcoming) <= 16 and set(upcoming["text"]) <= set(text_choices[2])
