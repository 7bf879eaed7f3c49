"""Noisy labels and pruning: flagging against injected noise, the shared self-influence and
validation-influence paths, review sessions in the store, pruning, and the CLI."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from gda_core.attribution.grouping import make_grouping
from gda_core.attribution.methods import make_method
from gda_core.cli import main
from gda_core.errors import GDAError
from gda_core.attribution.grouping import refine_groups
from gda_core.evaluation.noisy import detection_curve, flip_labels, run_noisy
from gda_core.evaluation.pruning import points_to_remove
from gda_core.requests import FlagRequest, NoisyConfig, PruneConfig
from gda_core.runs.jobs import run_in_foreground
from gda_core.runs.review import ReviewSession, review_for_flags
from gda_core.runs.store import ScoreStore
from gda_core.viz.figures import noisy_detection_figure, pruning_figure


# ------------------------------------------------------------------- the shared method paths
def test_self_influence_is_each_group_scored_on_itself(zoo, small_digits):
    """Per example, self-influence is the diagonal of attributing the training set to itself;
    for a group, Grad-Dot's is the squared norm of the summed gradient."""
    train, _ = small_digits
    model = zoo["logreg"]
    per_example = make_grouping("per-example").fit(train)
    method = make_method("if-exact", model).fit(train, per_example)
    diagonal = np.diag(method.attribute(train))
    np.testing.assert_allclose(method.self_influence(), diagonal, rtol=1e-4, atol=1e-8)
    assert (diagonal > 0).all()  # a positive definite inverse: every point helps itself

    groups = make_grouping("random", 7, seed=0).fit(train)
    grad_dot = make_method("grad-dot", model).fit(train, groups)
    engine = grad_dot.views_[0].engine
    summed = engine.stacked(engine.group_gradients(train, groups.labels, 7), 7).double()
    np.testing.assert_allclose(grad_dot.self_influence(), (summed ** 2).sum(1).numpy(), rtol=1e-4)


def test_validation_influence_is_the_summed_attribution(zoo, small_digits):
    train, test = small_digits
    groups = make_grouping("random", 9, seed=1).fit(train)
    method = make_method("if-cg", zoo["mlp"]).fit(train, groups)
    np.testing.assert_allclose(method.attribute_total(test), method.attribute(test).sum(0), rtol=1e-3, atol=1e-6)


def test_refinement_keeps_the_fitted_state(zoo, small_digits):
    """with_groups re-points a fitted method: the refined points' scores equal a per-example
    run's, without recomputing curvature."""
    train, _ = small_digits
    coarse = make_grouping("random", 20, seed=0).fit(train)
    fine, refined_points = refine_groups(coarse.labels, np.array([3, 11]))
    assert set(refined_points) == set(np.flatnonzero(np.isin(coarse.labels, [3, 11])))
    assert fine.n_groups == len(refined_points) + 1
    method = make_method("if-cg", zoo["mlp"]).fit(train, coarse)
    damping = method.damping_
    refined = method.with_groups(fine).self_influence()[:len(refined_points)]
    assert method.damping_ is damping
    reference = make_method("if-cg", zoo["mlp"]).fit(train, make_grouping("per-example").fit(train)).self_influence()
    np.testing.assert_allclose(refined, reference[refined_points], rtol=1e-3)


# --------------------------------------------------------------------------- injected noise
def test_flip_labels_is_seeded_and_always_changes_the_label():
    labels = np.repeat(np.arange(10), 50)
    noisy, flipped = flip_labels(labels, 0.1, 10, seed=3)
    again, _ = flip_labels(labels, 0.1, 10, seed=3)
    assert flipped.sum() == 50 and (noisy[flipped] != labels[flipped]).all()
    assert (noisy[~flipped] == labels[~flipped]).all() and (noisy == again).all()


def test_detection_curve_counts_what_was_found():
    flipped = np.array([True, False, False, True, False, False, False, False, False, False])
    curve = detection_curve(np.array([0, 3, 1, 2, 4, 5, 6, 7, 8, 9]), flipped, points=11)
    assert curve["recall_at"]["0.2"] == 1.0 and curve["recall"][1] == 0.5
    assert curve["auc"] > 0.85


@pytest.mark.parametrize("grouping, n_groups, floor", [("per-example", None, 0.85), ("grad-kmeans", 150, 0.8)])
def test_flagging_finds_flipped_labels_far_better_than_random(grouping, n_groups, floor):
    """digits / MLP with 10% of the labels flipped. Measured with Grad-Dot self-influence
    (seeds 0, 1, 2): found at 20% inspected 0.954 / 0.923 / 0.915 per example and 0.931 /
    0.869 / 0.885 with gradient K-means at K = 150; random inspection finds 0.20."""
    evaluation = run_noisy(NoisyConfig(method="grad-dot", grouping=grouping, n_groups=n_groups, signal="self-influence",
                                       baselines=()))
    ranking = evaluation["rankings"]["influence"]
    assert evaluation["n_flipped"] == round(0.1 * evaluation["n_train"])
    assert ranking["recall_at"]["0.2"] >= floor
    assert ranking["recall_at"]["0.2"] >= 4 * evaluation["rankings"]["random"]["recall_at"]["0.2"]
    assert ranking["auc"] >= 0.82
    if grouping != "per-example":
        assert abs(ranking["n_refined"] - 0.3 * evaluation["n_train"]) < 0.1 * evaluation["n_train"]
    figure = noisy_detection_figure(evaluation)
    assert len(figure.data) == 2 and figure.data[0].y[-1] == 1.0


def test_bad_requests_are_one_line_errors():
    for bad in (dict(flip=0.0), dict(flip=1.5), dict(baselines=("oracle",)), dict(signal="vibes"),
                dict(validation_fraction=0.7), dict(method="nope"), dict(grouping="grad-kmeans")):
        with pytest.raises(GDAError) as error:
            NoisyConfig(**bad)
        assert "\n" not in str(error.value)
    with pytest.raises(GDAError):
        PruneConfig(fractions=(0.1, 1.0))


# --------------------------------------------------------------------------------- review
def _session(store: ScoreStore) -> ReviewSession:
    return ReviewSession.create(store, "test-review", flagged=np.array([5, 2, 9]), labels=np.arange(12) % 3,
                                class_names=["a", "b", "c"], source_rows=np.arange(12) + 100)


def test_review_decisions_persist_and_undo(tmp_path):
    session = _session(ScoreStore(tmp_path))
    session.keep(5)
    session.relabel(2, 0)
    session.skip(9)
    session.relabel(9, 1)  # a later decision on the same point wins
    assert session.undo().action == "relabel"  # undoes the relabel of 9: the skip is back

    reopened = ReviewSession(ScoreStore(tmp_path), "test-review")  # a new store instance (a restart)
    decisions = reopened.decisions()
    assert {i: d.action for i, d in decisions.items()} == {5: "keep", 2: "relabel", 9: "skip"}
    assert decisions[2].new_label == 0
    assert reopened.cleaned_labels()[2] == 0 and reopened.cleaned_labels()[5] == 5 % 3
    assert [item["train_index"] for item in reopened.items()] == [5, 2, 9]
    assert reopened.undecided() == []
    reopened.undo()
    reopened.undo()
    reopened.undo()
    assert reopened.decisions() == {}
    with pytest.raises(GDAError, match="nothing to undo"):
        reopened.undo()
    with pytest.raises(GDAError, match="not in this review"):
        reopened.keep(3)
    with pytest.raises(GDAError, match="class index"):
        reopened.relabel(5, 7)


def test_review_exports_round_trip(tmp_path):
    session = _session(ScoreStore(tmp_path))
    session.relabel(2, 0)
    session.keep(5)
    decisions_path = session.export_decisions_csv(tmp_path / "decisions.csv")
    labels_path = session.export_labels_csv(tmp_path / "labels.csv")
    rows = list(csv.DictReader(io.StringIO(decisions_path.read_text())))
    assert [(int(r["train_index"]), r["decision"], r["new_label"]) for r in rows] == [(2, "relabel", "a"), (5, "keep", "")]
    assert rows[0]["source_row"] == "102" and rows[0]["given_label"] == "c"
    names = session.class_names
    read_back = {int(r["train_index"]): (names.index(r["new_label"]) if r["new_label"] else None) for r in rows}
    assert read_back == {i: d.new_label for i, d in session.decisions().items()}
    labels = list(csv.DictReader(io.StringIO(labels_path.read_text())))
    assert len(labels) == 12
    assert [names.index(r["label"]) for r in labels] == session.cleaned_labels().tolist()
    assert [int(r["changed"]) for r in labels] == [int(i == 2) for i in range(12)]


def test_a_stale_concurrent_write_is_refused(tmp_path):
    first = _session(ScoreStore(tmp_path))
    second = ReviewSession(ScoreStore(tmp_path), "test-review")  # another tab, same decisions
    first.keep(5)
    with pytest.raises(GDAError) as error:
        second.relabel(5, 1)
    assert "changed elsewhere" in str(error.value) and "\n" not in str(error.value)
    assert first.refresh().decisions()[5].action == "keep"  # nothing was overwritten
    second.refresh().relabel(5, 1)  # after a reload the second tab may decide
    with pytest.raises(GDAError):
        first.undo()
    assert ReviewSession(ScoreStore(tmp_path), "test-review").decisions()[5].action == "relabel"


def test_flag_job_feeds_a_review(tmp_path):
    store = ScoreStore(tmp_path)
    request = FlagRequest(method="grad-dot", grouping="per-example", signal="self-influence").to_json()
    outcome = run_in_foreground("flag", request, store)
    assert sorted(outcome.arrays["order"].tolist()) == list(range(1438))
    assert run_in_foreground("flag", request, store).cache_hit
    session = review_for_flags(store, outcome.key)
    assert len(session.items()) == round(0.1 * 1438)
    assert session.items()[0]["train_index"] == int(outcome.arrays["order"][0])
    session.relabel(session.items()[0]["train_index"], 3)
    assert review_for_flags(store, outcome.key).decisions()  # the same session on reopening


# -------------------------------------------------------------------------------- pruning
def test_points_to_remove_reaches_the_fraction_exactly():
    labels = np.array([0] * 80 + [1] * 10 + [2] * 10)  # one big group, as gradient K-means makes
    removed = points_to_remove(np.array([1, 0, 2]), labels, 0.3, seed=0)
    assert len(removed) == 30 and set(range(80, 90)) <= set(removed.tolist())


def test_pruning_reports_one_accuracy_per_fraction_and_the_random_baseline(tmp_path):
    config = PruneConfig(method="grad-dot", grouping="grad-kmeans", n_groups=30, fractions=(0.1, 0.3), seeds=1)
    outcome = run_in_foreground("prune", config.to_json(), ScoreStore(tmp_path))
    result = outcome.summary
    assert result["fractions"] == [0.1, 0.3]
    assert len(result["accuracy"]) == len(result["random_accuracy"]) == 2
    for point in result["accuracy"] + result["random_accuracy"] + [result["full_accuracy"]]:
        assert 0.5 < point["mean"] <= 1.0 and len(point["values"]) == 1
    assert len(pruning_figure(result).data) == 2


# ------------------------------------------------------------------------------------ CLI
def test_cli_noisy_prints_one_json_object(tmp_path, capsys):
    code = main(["noisy", "--method", "grad-dot", "--grouping", "per-example", "--baselines", "loss",
                 "--cache", str(tmp_path), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["rankings"]) == {"influence", "loss", "random"}
    assert result["rankings"]["influence"]["recall_at"]["0.2"] > 0.5


@pytest.mark.parametrize("argv", [["noisy", "--flip", "0"], ["prune", "--fractions", "0.2,abc"],
                                  ["flag", "--signal", "vibes"], ["noisy", "--grouping", "grad-kmeans"]])
def test_cli_bad_input_exits_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "\n" not in error



def test_image_grid_titles_sit_over_their_images():
    """Plotly orders facet titles bottom row first; each title must still name its own image."""
    from gda_core.viz.figures import image_grid_figure

    figure = image_grid_figure(np.zeros((12, 8, 8)), [f"image {i}" for i in range(12)], columns=8)
    for index, trace in enumerate(figure.data):
        suffix = trace.xaxis[1:]
        x_domain = figure.layout[f"xaxis{suffix}"].domain
        y_domain = figure.layout[f"yaxis{suffix}"].domain
        (title,) = [a for a in figure.layout.annotations
                    if x_domain[0] <= a.x <= x_domain[1] and abs(a.y - y_domain[1]) < 1e-6]
        assert title.text == f"image {index}"


@pytest.mark.parametrize("config", [NoisyConfig, PruneConfig])
def test_noisy_and_prune_jobs_follow_the_data_files_content(config, tmp_path):
    """A data file with new content at the same path is a new run, not a cache hit."""
    from gda_core.runs.jobs import job_key

    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    keys = []
    for rows in (40, 50):
        np.savez(path, X=rng.normal(size=(rows, 3)), y=np.arange(rows) % 2)
        request = config(data=str(path), model="logreg", method="grad-dot", grouping="random", n_groups=4)
        keys.append(job_key(config.__name__.replace("Config", "").lower(), request.to_json(), ScoreStore(tmp_path))[0])
    assert keys[0] != keys[1]


def test_noisy_and_prune_refuse_an_uploaded_model_in_one_line(tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(b"PK")
    for config in (NoisyConfig, PruneConfig):
        with pytest.raises(GDAError, match=r"retrains the model from scratch, so it needs a zoo architecture"):
            config(model=str(path), method="grad-dot", grouping="random", n_groups=4)


def test_image_grid_titles_are_text_not_markup():
    """Titles hold class names; Plotly would render <a href> in them as a link."""
    from gda_core.viz.figures import image_grid_figure

    figure = image_grid_figure(np.zeros((1, 8, 8)), ['<a href="https://host/x">open me</a>'], columns=1)
    assert figure.layout.annotations[0].text == '&lt;a href="https://host/x"&gt;open me&lt;/a&gt;'
