"""Drill-down and comparison in the core: a group's members scored one by one add up to the
group's score, per-point statistics match brute force, and the test-point search filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gda_core.attribution.pipeline import compare_test_points, run_attribution, score_group_members, search_test_points
from gda_core.evaluation.points import point_statistics
from gda_core.requests import AttributionRequest, MembersRequest, PointStatsRequest

REQUEST = dict(data="wine", model="logreg", grouping="random", n_groups=8, test_size=10)


@pytest.mark.parametrize("method", ["grad-dot", "if-exact"])
def test_members_scored_one_by_one_add_up_to_their_group(method, tmp_path):
    grouped = run_attribution(AttributionRequest(method=method, **REQUEST), cache_dir=tmp_path)
    drilled = score_group_members(MembersRequest(method=method, group=3, **REQUEST), cache_dir=tmp_path,
                                  group_labels=grouped.groups.labels)
    np.testing.assert_array_equal(drilled.members, np.flatnonzero(grouped.groups.labels == 3))
    np.testing.assert_allclose(drilled.scores.sum(axis=1), grouped.scores[:, 3], rtol=1e-4, atol=1e-8)
    # and each member's score is its per-example score
    per_example = run_attribution(AttributionRequest(method=method, **{**REQUEST, "grouping": "per-example",
                                                                       "n_groups": None}), cache_dir=tmp_path)
    np.testing.assert_allclose(drilled.scores, per_example.scores[:, drilled.members], rtol=1e-4, atol=1e-8)
    # without the stored groups the (seeded) grouping is computed again, to the same members
    again = score_group_members(MembersRequest(method=method, group=3, **REQUEST), cache_dir=tmp_path)
    np.testing.assert_array_equal(again.members, drilled.members)


def test_a_group_that_does_not_exist_is_one_line(tmp_path):
    from gda_core.errors import GDAError

    with pytest.raises(GDAError, match=r"group must lie in 0\.\.7, got 8"):
        score_group_members(MembersRequest(method="grad-dot", group=8, **REQUEST), cache_dir=tmp_path)
    with pytest.raises(GDAError, match="group must be a group number >= 0"):
        MembersRequest(method="grad-dot", group=-1, **REQUEST)


def test_point_statistics_match_brute_force(tmp_path):
    arrays, summary = point_statistics(PointStatsRequest(data="wine", model="logreg", method="grad-dot"),
                                       cache_dir=tmp_path)
    from types import SimpleNamespace

    from gda_core.inputs.choices import load_inputs

    split, model = load_inputs(SimpleNamespace(data="wine", model="logreg", seed=0), tmp_path)
    module, train = model.module, split.train
    for i in (0, 5, 40):
        module.zero_grad()
        loss = torch.nn.functional.cross_entropy(module(train.features[i:i + 1]), train.labels[i:i + 1])
        loss.backward()
        gradient = torch.cat([p.grad.flatten() for p in module.parameters()])
        assert arrays["loss"][i] == pytest.approx(float(loss.detach()), rel=1e-5)
        assert arrays["self_influence"][i] == pytest.approx(float(gradient @ gradient), rel=1e-4)
    assert summary["n_train"] == len(train) and set(arrays) == {"loss", "predicted", "confidence", "self_influence"}


def test_compare_and_search_test_points():
    scores = np.array([[3.0, 2.0, 1.0, 0.0, -1.0], [3.0, 2.0, 1.0, 0.0, -1.0], [-1.0, 0.0, 1.0, 2.0, 3.0]])
    groups, labels = np.arange(5), np.array([0, 1, 0, 1, 0])
    same = compare_test_points(scores, groups, labels, ["a", "b"], 0, 1, count=2)
    assert same["spearman"] == pytest.approx(1.0) and same["shared"] == {"helpful": [0, 1], "harmful": [3, 4]}
    opposite = compare_test_points(scores, groups, labels, ["a", "b"], 0, 2, count=2)
    assert opposite["spearman"] == pytest.approx(-1.0) and opposite["shared"] == {"helpful": [], "harmful": []}
    truth, predicted = np.array([0, 1, 1, 2]), np.array([0, 2, 1, 1])
    assert search_test_points(truth, predicted, misclassified=True).tolist() == [1, 3]
    assert search_test_points(truth, predicted, label=1).tolist() == [1, 2]
    assert search_test_points(truth, predicted, label=1, prediction=2).tolist() == [1]
