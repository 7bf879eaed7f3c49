"""Influence functions against brute force: leave-one-out retraining and the exact inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gda_core.attribution.grouping import make_grouping
from gda_core.attribution.methods import make_method
from gda_core.inputs.datasets import load_builtin
from gda_core.inputs.zoo import TrainConfig, model_config_for, train_model

WEIGHT_DECAY = 1e-2


@pytest.fixture(scope="module")
def convex_problem():
    """L2-regularised logistic regression on breast cancer, in float64, at its optimum."""
    split = load_builtin("breast_cancer", seed=0)
    train, test = split.train.to("cpu", torch.float64), split.test.subset(slice(0, 30)).to("cpu", torch.float64)
    config = TrainConfig(epochs=100, lr=1.0, batch_size=10**9, optimizer="lbfgs",
                         weight_decay=WEIGHT_DECAY, seed=0, n_checkpoints=1)
    torch.set_default_dtype(torch.float64)
    try:
        model = train_model(model_config_for("logreg", train), train, config)
    finally:
        torch.set_default_dtype(torch.float32)
    return train, test, model


def _retrain_without(model, train, removed: int) -> torch.nn.Module:
    """Exact leave-one-out: re-optimise the same objective without one point, warm-started."""
    module = type(model.module)(torch.nn.Identity(), torch.nn.Linear(train.n_features, train.n_classes).double())
    module.load_state_dict(model.module.state_dict())
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[removed] = False
    features, labels = train.features[keep], train.labels[keep]
    optimizer = torch.optim.LBFGS(module.parameters(), lr=1.0, max_iter=500, tolerance_grad=1e-13,
                                  tolerance_change=1e-16, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        # The same denominator n as the full objective, so only point `removed` differs.
        loss = torch.nn.functional.cross_entropy(module(features), labels, reduction="sum") / len(train)
        loss = loss + 0.5 * WEIGHT_DECAY * sum((p * p).sum() for p in module.parameters())
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    return module


def _test_loss(module, test) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(module(test.features), test.labels, reduction="sum"))


def test_exact_influence_predicts_leave_one_out_retraining(convex_problem):
    train, test, model = convex_problem
    scores = make_method("if-exact", model, damping=WEIGHT_DECAY, curvature_samples=None).fit(
        train, make_grouping("per-example").fit(train)).attribute(test)
    total = scores.sum(axis=0)  # scores for the summed test loss
    rng = np.random.default_rng(0)
    removed = np.unique(np.concatenate([np.argsort(-np.abs(total))[:20], rng.choice(len(train), 20, replace=False)]))
    base = _test_loss(model.module, test)
    actual = np.array([_test_loss(_retrain_without(model, train, int(i)), test) - base for i in removed])
    # Removing point i raises the test loss by about score_i / n (a helpful point hurts when removed).
    predicted = total[removed] / len(train)
    pearson = np.corrcoef(actual, predicted)[0, 1]
    assert pearson > 0.95, pearson
    # Where removal is a small perturbation the first-order prediction is accurate in value too;
    # the most influential points move the optimum further and IF underestimates them (known).
    small = np.abs(actual) < 0.005
    assert small.sum() >= 10
    np.testing.assert_allclose(predicted[small], actual[small], rtol=0.1, atol=1e-6)


def _exact(model, train, test, damping):
    groups = make_grouping("per-example").fit(train)
    scores = make_method("if-exact", model, damping=damping, curvature_samples=None).fit(train, groups).attribute(test)
    return model, train, test, groups, damping, scores


@pytest.fixture(scope="module")
def exact_reference(zoo, small_digits):
    """Exact scores of the (non-convex) MLP, where the GGN and the Hessian differ."""
    return _exact(zoo["mlp"], *small_digits, damping=1e-3)


@pytest.fixture(scope="module")
def exact_logreg_reference(zoo, small_digits):
    return _exact(zoo["logreg"], *small_digits, damping=1e-2)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("name,reference,options,threshold", [
    ("if-cg", "exact_reference", {"max_iterations": 500, "tolerance": 1e-7}, 0.999),
    ("if-lissa", "exact_logreg_reference", {"depth": 1500, "batch_size": None}, 0.99),
    ("if-arnoldi", "exact_logreg_reference", {"rank": 10**6, "iterations": 10**6, "keep_above": 0}, 0.999),
])
def test_solvers_agree_with_the_exact_inverse(request, name, reference, options, threshold):
    model, train, test, groups, damping, exact = request.getfixturevalue(reference)
    method = make_method(name, model, damping=damping, curvature_samples=None, **options).fit(train, groups)
    scores = method.attribute(test)
    assert _cosine(scores, exact) > threshold, (name, method.solver_info_)
    rows = [np.corrcoef(scores[i], exact[i])[0, 1] for i in range(len(test))]
    assert np.median(rows) > threshold


def test_lissa_stops_at_its_truncation_bound_with_the_deep_series_answer(exact_logreg_reference):
    model, train, test, groups, damping, exact = exact_logreg_reference
    deep = make_method("if-lissa", model, damping=damping, curvature_samples=None, batch_size=None, depth=250,
                       tolerance=1e-12).fit(train, groups)
    deep_scores = deep.attribute(test)  # to float32 round-off (its steps vanish) or 250 steps
    early = make_method("if-lissa", model, damping=damping, curvature_samples=None, batch_size=None, depth=250,
                        tolerance=1e-3).fit(train, groups)
    scores = early.attribute(test)
    info = early.solver_info_[0]
    assert info["stopped_by"] in ("truncation bound", "relative step")
    assert info["steps"] < deep.solver_info_[0]["steps"] / 2, (info, deep.solver_info_)
    assert info["truncation_bound"] <= 1e-3 or info["last_relative_step"] <= 1e-3
    # The truncated series misses at most a fraction rho^(J+1) of each eigencomponent.
    assert np.linalg.norm(scores - deep_scores) / np.linalg.norm(deep_scores) < 2e-3, info


def test_cg_reports_when_it_did_not_converge(exact_reference):
    model, train, test, groups, damping, _ = exact_reference
    method = make_method("if-cg", model, damping=1e-6, max_iterations=3, curvature_samples=None).fit(train, groups)
    method.attribute(test)
    assert method.solver_info_[0]["converged"] is False
    assert method.solver_info_[0]["iterations"] == 3


def test_low_rank_arnoldi_keeps_most_of_the_exact_scores(exact_reference):
    model, train, test, groups, damping, exact = exact_reference
    scores = make_method("if-arnoldi", model, damping=damping, rank=60, curvature_samples=None).fit(
        train, groups).attribute(test)
    assert _cosine(scores, exact) > 0.75


def test_arnoldi_stops_once_the_eigenpairs_above_its_threshold_have_converged(exact_logreg_reference):
    """The kept Ritz values are the exact GGN eigenvalues above keep_above x damping (each to
    within its residual bound), found in fewer steps than the iteration cap, and the scores are
    those of the exact inverse with the same eigenpairs kept."""
    model, train, test, groups, _, _ = exact_logreg_reference
    method = make_method("if-arnoldi", model, curvature_samples=None, rank=10**6, iterations=400).fit(train, groups)
    info, damping = method.solver_info_[0], method.damping_[0]
    assert info["stopped_by"] == "converged" and info["lanczos_steps"] < 400, info
    exact_values, exact_vectors = torch.linalg.eigh(method.operators_[0].matrix().double())
    above = exact_values[exact_values >= 0.25 * damping].flip(0)
    values, basis = method.eigen_[0]
    assert len(values) == len(above) == info["rank"], (len(values), len(above), info)
    np.testing.assert_allclose(values.numpy(), above.numpy(), atol=0.01 * damping)
    # exact inverse with the same truncation: 1/lambda outside the kept eigenspace
    kept = exact_vectors[:, exact_values >= 0.25 * damping]
    gain = 1 / (exact_values[exact_values >= 0.25 * damping] + damping) - 1 / damping
    vectors = torch.randn(5, len(exact_values), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = vectors / damping + ((vectors @ kept) * gain) @ kept.T
    got = method._inverse(0, None, vectors.float()).double()
    assert _cosine(got.numpy(), expected.numpy()) > 0.9999


def test_arnoldi_keeps_rank_pairs_and_runs_every_step_when_asked(exact_logreg_reference):
    model, train, test, groups, damping, _ = exact_logreg_reference
    method = make_method("if-arnoldi", model, damping=damping, rank=12, iterations=30, keep_above=0,
                         curvature_samples=None).fit(train, groups)
    assert method.solver_info_[0]["lanczos_steps"] == 30 and method.solver_info_[0]["stopped_by"] == "iterations"
    assert len(method.eigen_[0][0]) == 12


def test_hessian_curvature_matches_ggn_on_a_convex_model(convex_problem):
    """For logistic regression the Hessian and the Gauss-Newton matrix coincide."""
    train, test, model = convex_problem
    groups = make_grouping("random", 20, seed=0).fit(train)
    ggn = make_method("if-exact", model, damping=WEIGHT_DECAY, curvature="ggn").fit(train, groups).attribute(test)
    hessian = make_method("if-exact", model, damping=WEIGHT_DECAY, curvature="hessian").fit(train, groups).attribute(test)
    np.testing.assert_allclose(hessian, ggn, rtol=1e-6, atol=1e-9)


def test_default_damping_is_a_tenth_of_the_top_curvature_eigenvalue(zoo, small_digits):
    train, _ = small_digits
    model = zoo["logreg"]
    groups = make_grouping("random", 5).fit(train)
    exact = make_method("if-exact", model, curvature_samples=None).fit(train, groups)
    top = exact.solver_info_[0]["max_eigenvalue"]
    assert exact.damping_[0] == pytest.approx(0.1 * top, rel=1e-2)
    scaled = make_method("if-cg", model, curvature_samples=None, damping_scale=10.0).fit(train, groups)
    assert scaled.damping_[0] == pytest.approx(10 * exact.damping_[0], rel=1e-2)
    explicit = make_method("if-cg", model, damping=0.5).fit(train, groups)
    assert explicit.damping_ == [0.5]
