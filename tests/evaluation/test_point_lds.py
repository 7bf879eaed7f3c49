"""The point-level yardstick: one LDS ensemble on subsets of points for every grouping and K."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from gda_core.attribution.grouping import Groups, make_grouping
from gda_core.attribution.methods import make_method
from gda_core.errors import GDAError
from gda_core.evaluation.gold import (
    LDSEnsemble,
    kept_variance,
    lds,
    lds_ensemble,
    point_lds,
    point_lds_ensemble,
    point_scores,
)
from gda_core.evaluation.sweeps import run_sweep
from gda_core.inputs.choices import load_inputs
from gda_core.inputs.datasets import load_builtin
from gda_core.inputs.zoo import TrainConfig, model_config_for, train_model
from gda_core.requests import GoldConfig, Recipe, SweepConfig
from gda_core.runs.store import ScoreStore
from gda_core.viz.figures import fidelity_speed_figure


def _linear_ensemble(masks: np.ndarray, true_scores: np.ndarray, noise: float = 0.0, seed: int = 0) -> LDSEnsemble:
    """Retrained "models" whose measurement is exactly minus the sum of the kept columns' true
    scores (lower is better, so a helpful column lowers it), plus optional Gaussian noise."""
    masks = np.asarray(masks, dtype=bool)
    outputs = -(masks.astype(np.float64) @ np.atleast_2d(true_scores).T)
    outputs += noise * np.random.default_rng(seed).normal(size=outputs.shape)
    return LDSEnsemble(masks, outputs, 0.5, {})


ALL_PAIRS = np.array([[i in pair for i in range(4)] for pair in itertools.combinations(range(4), 2)])


def test_equal_share_spreads_a_group_score_over_its_members():
    groups = Groups(np.array([0, 0, 1, 1, 1]), 2)
    np.testing.assert_allclose(point_scores(np.array([[4.0, 3.0]]), groups), [[2.0, 2.0, 1.0, 1.0, 1.0]])
    singletons = Groups(np.arange(3), 3)
    np.testing.assert_array_equal(point_scores(np.array([[1.0, -2.0, 5.0]]), singletons), [[1.0, -2.0, 5.0]])
    with pytest.raises(GDAError, match="one column per group"):
        point_scores(np.zeros((1, 3)), groups)


def test_point_lds_is_one_where_equal_share_is_exact():
    # Members of each group contribute equally: 1, 1 and 5, 5.
    true = np.array([1.0, 1.0, 5.0, 5.0])
    groups = Groups(np.array([0, 0, 1, 1]), 2)
    ensemble = _linear_ensemble(ALL_PAIRS, true)
    group_scores = np.array([[2.0, 10.0]])  # the sums of their members' scores
    assert point_lds(group_scores, groups, ensemble)["lds"] == pytest.approx(1.0)


def test_point_lds_where_equal_share_is_not_exact_has_its_hand_computed_value():
    # Group {0, 1} sums to 4 but its members give 4 and 0; equal share says 2 and 2.
    true = np.array([4.0, 0.0, 5.0, 5.0])
    groups = Groups(np.array([0, 0, 1, 1]), 2)
    ensemble = _linear_ensemble(ALL_PAIRS, true)
    # The six pairs observe 4, 9, 9, 5, 5, 10 and are predicted 4, 7, 7, 7, 7, 10: mean ranks
    # (1, 4.5, 4.5, 2.5, 2.5, 6) against (1, 3.5, 3.5, 3.5, 3.5, 6), Spearman 5 / sqrt(33).
    assert point_lds(np.array([[4.0, 10.0]]), groups, ensemble)["lds"] == pytest.approx(5 / np.sqrt(33))
    # The per-point truth itself scores 1 on the same subsets.
    assert point_lds(true[None], Groups(np.arange(4), 4), ensemble)["lds"] == pytest.approx(1.0)


def test_kept_variance_has_its_hand_computed_value_and_is_the_correlation_of_the_predictions():
    # Test point 0: members 1, 3 (mean 2) and 5, 5; kept = (2 * 4 + 2 * 25) / (1 + 9 + 25 + 25).
    # Test point 1: the groups' members cancel (means 0): nothing is kept.
    scores = np.array([[1.0, 3.0, 5.0, 5.0], [1.0, -1.0, 2.0, -2.0]])
    groups = Groups(np.array([0, 0, 1, 1]), 2)
    np.testing.assert_allclose(kept_variance(scores, groups), [58.0 / 60.0, 0.0])
    np.testing.assert_allclose(kept_variance(scores, Groups(np.arange(4), 4)), [1.0, 1.0])
    # Its square root is the Pearson correlation of the two predictions on independent masks.
    rng = np.random.default_rng(0)
    many = rng.normal(size=(3, 60)) + np.repeat(rng.normal(size=(3, 6)), 10, axis=1)
    ten = Groups(np.repeat(np.arange(6), 10), 6)
    masks = rng.random((200_000, 60)) < 0.5
    shares = point_scores(many @ ten.membership_matrix().T, ten)
    observed = [np.corrcoef(masks @ many[t], masks @ shares[t])[0, 1] for t in range(3)]
    np.testing.assert_allclose(observed, np.sqrt(kept_variance(many, ten)), atol=0.01)
    with pytest.raises(GDAError, match="one column per training point"):
        kept_variance(np.zeros((1, 3)), groups)


def test_point_lds_refuses_a_group_level_ensemble():
    groups = Groups(np.array([0, 0, 1, 1]), 2)
    group_ensemble = LDSEnsemble(np.ones((3, 2), dtype=bool), np.zeros((3, 1)), 0.5, {})
    with pytest.raises(GDAError, match="subsets of points"):
        point_lds(np.zeros((1, 2)), groups, group_ensemble)


def test_group_size_summary():
    summary = Groups(np.array([0, 0, 0, 0, 1, 2, 3, 3]), 4).size_summary()
    assert summary == {"largest": 4, "median": 1.5, "smallest": 1, "singletons": 2}
    json.dumps(summary)


def test_a_giant_group_with_singletons_no_longer_beats_a_random_partition():
    """One giant group holding every influential point plus singletons of uninfluential ones is
    easy to predict at group level (the giant group is in or out), but says nothing about
    which of its members matter; a random partition of the same K keeps more of that."""
    rng = np.random.default_rng(0)
    n, m = 200, 100
    true = np.concatenate([0.5 + rng.normal(size=m), 0.01 * rng.normal(size=n - m)])  # (N,) one test point
    giant = Groups(np.concatenate([np.zeros(m, dtype=np.int64), 1 + np.arange(n - m)]), n - m + 1)
    random_labels = np.concatenate([np.arange(n - m + 1), rng.integers(0, n - m + 1, size=m - 1)])
    random = Groups(rng.permutation(random_labels), n - m + 1)
    assert giant.size_summary() == {"largest": m, "median": 1.0, "smallest": 1, "singletons": n - m}

    def exact_group_scores(groups):  # what a perfect gradient-linear method gives: the sums
        return (groups.membership_matrix() @ true)[None]

    def group_masks(k, seed):
        masks = np.zeros((400, k), dtype=bool)
        generator = np.random.default_rng(seed)
        for row in masks:
            row[generator.choice(k, size=k // 2, replace=False)] = True
        return masks

    def group_level(groups, seed):  # a noisy ensemble on random halves of the groups
        masks = group_masks(groups.n_groups, seed)
        return lds(exact_group_scores(groups), _linear_ensemble(masks, exact_group_scores(groups)[0], noise=15.0,
                                                                seed=seed))["lds"]

    point_ensemble = _linear_ensemble(group_masks(n, 1), true, noise=1.0, seed=1)
    giant_group, random_group = group_level(giant, 2), group_level(random, 2)
    giant_point = point_lds(exact_group_scores(giant), giant, point_ensemble)["lds"]
    random_point = point_lds(exact_group_scores(random), random, point_ensemble)["lds"]
    assert giant_group > random_group + 0.1, (giant_group, random_group)      # flattered at group level
    assert giant_point < random_point - 0.1, (giant_point, random_point)      # not on the point-level scale


@pytest.fixture(scope="module")
def wine_logreg():
    split = load_builtin("wine", seed=0)
    settings = TrainConfig(epochs=100, lr=1.0, batch_size=10**9, optimizer="lbfgs", weight_decay=0.05, n_checkpoints=1)
    return split.train, split.test, train_model(model_config_for("logreg", split.train), split.train, settings)


def test_per_example_point_lds_equals_the_per_example_lds_on_the_same_subsets(wine_logreg):
    train, test, model = wine_logreg
    recipe = Recipe(optimizer="adam", lr=0.05, batch_size=len(train), weight_decay=0.05, normalize="weights")
    per_example = make_grouping("per-example", None).fit(train)
    on_points = point_lds_ensemble(model, train, test, n_subsets=12, epochs=50, recipe=recipe)
    today = lds_ensemble(model, train, test, per_example, n_subsets=12, epochs=50, recipe=recipe)
    np.testing.assert_array_equal(on_points.masks, today.masks)
    np.testing.assert_allclose(on_points.outputs, today.outputs)
    assert on_points.masks.shape == (12, len(train)) and (on_points.masks.sum(axis=1) == round(len(train) / 2)).all()
    scores = make_method("grad-dot", model).fit(train, per_example).attribute(test)
    assert point_lds(scores, per_example, on_points)["lds"] == lds(scores, today)["lds"]


def test_lds_sweep_scores_every_cell_against_one_point_level_ensemble(tmp_path):
    config = SweepConfig(data="wine", model="logreg", methods=("grad-dot",), groupings=("random", "inputs-kmeans"),
                         group_counts=(5, 20), test_size=10, gold=GoldConfig(kind="lds", n_subsets=6))
    store = ScoreStore(tmp_path)
    sweep = run_sweep(config, store)
    json.dumps(sweep)
    assert sweep["metric"] == "point_lds"
    assert "points" in sweep["gold_seconds"]
    # One point-level ensemble, shared with the per-example cell's (the same models), plus one
    # group-level ensemble per other cell: 4 + 1 LDS entries in the store.
    assert len([run for run in store.runs() if run.kind == "lds"]) == 5
    for point in sweep["points"]:
        assert set(point["group_sizes"]) == {"largest", "median", "smallest", "singletons"}
        assert -1 <= point["point_lds"] <= 1 and -1 <= point["group_lds"] <= 1
    per_example = next(p for p in sweep["points"] if p["grouping"] == "per-example")
    assert per_example["point_lds"] == per_example["group_lds"]
    assert per_example["group_sizes"] == {"largest": 1, "median": 1.0, "smallest": 1,
                                          "singletons": sweep["n_train"]}
    # Every grouped cell says how much of the per-example scores its equal shares keep.
    split, model = load_inputs(config, store.root, "cpu")
    train, test = split.train, split.test.subset(slice(0, config.test_size))
    scores = make_method("grad-dot", model).fit(train, make_grouping("per-example").fit(train)).attribute(test)
    assert "kept_variance" not in per_example
    for point in (p for p in sweep["points"] if p["grouping"] != "per-example"):
        groups = make_grouping(point["grouping"], point["n_groups"], seed=config.seed).fit(train, model.module)
        assert point["kept_variance"] == pytest.approx(np.nanmean(kept_variance(scores, groups)), rel=1e-6)
        assert 0 < point["kept_variance"] < 1
    figure = fidelity_speed_figure(sweep)
    assert figure.layout.yaxis.title.text == "point-level LDS"
