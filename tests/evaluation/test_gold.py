"""Gold standards: paired further training, leave-group-out, LDS; fidelity metrics; sweeps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gda_core.attribution.grouping import Groups, make_grouping
from gda_core.attribution.methods import make_method
from gda_core.errors import GDAError
from gda_core.evaluation.gold import (
    BatchedTrainer,
    damping_for_horizon,
    further_training,
    lds,
    lds_ensemble,
    leave_group_out,
)
from gda_core.evaluation.statistics import fidelity
from gda_core.evaluation.sweeps import run_sweep
from gda_core.inputs.datasets import load_builtin
from gda_core.inputs.zoo import TrainConfig, model_config_for, train_model
from gda_core.requests import GoldConfig, Recipe, SweepConfig
from gda_core.runs.store import ScoreStore
from gda_core.viz.figures import fidelity_speed_figure


def test_batched_trainer_reproduces_train_model(small_digits):
    train, test = small_digits
    settings = TrainConfig(epochs=3, lr=3e-3, batch_size=32, seed=7)
    trained = train_model(model_config_for("mlp", train, hidden=(16,)), train, settings)
    trainer = BatchedTrainer(trained, Recipe.of_model(trained))
    steps = 3 * int(np.ceil(len(train) / 32))
    measured = trainer.run(torch.ones(2, len(train)), train, test, seed=7, init_seed=7, record_steps=[steps])
    final = trainer.measure({n: p.detach()[None] for n, p in trained.module.named_parameters()}, test, "loss")
    torch.testing.assert_close(measured[0, 0], final[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(measured[0, 0], measured[0, 1])


def test_further_training_with_zero_epsilon_is_exactly_zero(zoo, small_digits):
    train, test = small_digits
    groups = make_grouping("random", 12, seed=0).fit(train)
    gold = further_training(zoo["mlp"], train, test, groups, epochs=[0.5, 1.0], epsilon=0.0, seeds=2,
                            copies_per_chunk=5)  # several chunks, each with its own baseline copy
    assert gold.differences.shape == (2, 2, len(test), 12)
    assert np.count_nonzero(gold.differences) == 0


def _mislabeled(train, count: int = 30):
    """A copy of the training set whose first `count` points carry a wrong label."""
    labels = train.labels.clone()
    labels[:count] = (labels[:count] + 1) % train.n_classes
    flipped = train.subset(np.arange(len(train)))
    flipped.labels = labels
    return flipped


def test_upweighting_mislabeled_points_hurts_and_matches_plain_training(zoo, small_digits):
    train, test = small_digits
    noisy = _mislabeled(train)
    group_of = np.where(np.arange(len(train)) < 30, 0, 1 + np.arange(len(train)) % 5)
    groups = Groups(group_of, 6)
    recipe = Recipe(optimizer="sgd", lr=0.05, batch_size=50)
    gold = further_training(zoo["mlp"], noisy, test, groups, epochs=[2.0], epsilon=1.0, seeds=1, recipe=recipe)
    # The mislabeled group hurts the (clean) test points on average.
    assert gold.scores[0][:, 0].mean() < 0
    # Brute force: plain SGD with the group's weight doubled, same batches, minus the plain run.
    module = zoo["mlp"].module

    def train_from_final(weights):
        import copy as copying

        trained = copying.deepcopy(module)
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.05)
        generator = torch.Generator().manual_seed(0)
        for _ in range(2):
            order = torch.randperm(len(noisy), generator=generator)
            for start in range(0, len(noisy), 50):
                rows = order[start:start + 50]
                optimizer.zero_grad()
                losses = torch.nn.functional.cross_entropy(trained(noisy.features[rows]), noisy.labels[rows],
                                                           reduction="none")
                ((losses * weights[rows]).sum() / len(rows)).backward()
                optimizer.step()
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(trained(test.features), test.labels, reduction="none")

    weights = torch.ones(len(noisy))
    baseline = train_from_final(weights)
    weights[:30] = 2.0
    changed = train_from_final(weights)
    expected = -(changed - baseline).numpy()  # score sign: positive = helps
    np.testing.assert_allclose(gold.scores[0][:, 0], expected, rtol=1e-3, atol=1e-5)


def test_more_seeds_give_a_smaller_standard_error(zoo, small_digits):
    train, test = small_digits
    groups = make_grouping("random", 8, seed=0).fit(train)
    recipe = Recipe(optimizer="sgd", lr=0.05, batch_size=32)
    few = further_training(zoo["mlp"], train, test, groups, epochs=[1.0], seeds=2, recipe=recipe)
    many = further_training(zoo["mlp"], train, test, groups, epochs=[1.0], seeds=8, recipe=recipe)
    assert np.isfinite(few.standard_error).all()
    # The squared standard error is an unbiased estimate of variance / S: 4x more seeds, ~1/4.
    ratio = np.mean(many.standard_error ** 2) / np.mean(few.standard_error ** 2)
    assert ratio < 0.6, ratio


@pytest.fixture(scope="module")
def convex_lds():
    """L2-regularised logistic regression on wine, 20 random groups, 40 half-subsets."""
    split = load_builtin("wine", seed=0)
    train, test = split.train, split.test
    settings = TrainConfig(epochs=100, lr=1.0, batch_size=10**9, optimizer="lbfgs", weight_decay=0.05, n_checkpoints=1)
    model = train_model(model_config_for("logreg", train), train, settings)
    groups = make_grouping("random", 20, seed=0).fit(train)
    recipe = Recipe(optimizer="adam", lr=0.05, batch_size=len(train), weight_decay=0.05, normalize="weights")
    ensemble = lds_ensemble(model, train, test, groups, n_subsets=40, epochs=400, recipe=recipe)
    return model, train, test, groups, ensemble


def test_lds_of_leave_group_out_and_exact_influence_is_high_on_a_convex_model(convex_lds):
    model, train, test, groups, ensemble = convex_lds
    recipe = Recipe(optimizer="adam", lr=0.05, batch_size=len(train), weight_decay=0.05, normalize="weights")
    gold = leave_group_out(model, train, test, groups, epochs=400, recipe=recipe)
    assert lds(gold.scores[0], ensemble)["lds"] > 0.9
    exact = make_method("if-exact", model, damping=0.05, curvature_samples=None).fit(train, groups).attribute(test)
    assert lds(exact, ensemble)["lds"] > 0.9


def test_lds_of_random_scores_is_near_zero(convex_lds):
    _, _, test, groups, ensemble = convex_lds
    rng = np.random.default_rng(0)
    values = [lds(rng.normal(size=(len(test), groups.n_groups)), ensemble)["lds"] for _ in range(5)]
    assert abs(np.mean(values)) < 0.1


def test_lds_rejects_mismatched_scores(convex_lds):
    *_, ensemble = convex_lds
    with pytest.raises(GDAError, match="do not match the ensemble"):
        lds(np.zeros((3, 3)), ensemble)


def test_fidelity_metrics_on_hand_made_matrices():
    gold = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    same = fidelity(gold * 5, gold, top_k=2)
    assert same["cosine"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    assert same["top2_overlap"] == 1.0
    reversed_scores = fidelity(gold[:, ::-1].copy(), gold, top_k=2)
    assert reversed_scores["spearman"] == pytest.approx(-1.0) and reversed_scores["top2_overlap"] == 0.0
    partial = fidelity(np.array([[3.0, 0.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0]]), gold, top_k=2)
    # row 0: top-2 {0, 2} vs gold {0, 1}: overlap 1/2; row 1: identical: 1.
    assert partial["top2_overlap"] == pytest.approx(0.75)
    assert partial["top2_overlap_se"] == pytest.approx(0.25)
    orthogonal = fidelity(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), top_k=1)
    assert orthogonal["cosine"] == pytest.approx(0.0)
    with pytest.raises(GDAError, match="same"):
        fidelity(np.zeros((2, 3)), np.zeros((2, 4)))


def test_damping_for_horizon_is_inverse_training_time():
    assert damping_for_horizon(0.01, 100) == pytest.approx(1.0)
    with pytest.raises(GDAError):
        damping_for_horizon(0.0, 10)


def test_small_sweep_has_every_requested_point(tmp_path):
    config = SweepConfig(data="wine", model="logreg", methods=("grad-dot", "if-exact"),
                         groupings=("random", "inputs-kmeans"), group_counts=(5, 20, 500), test_size=20,
                         gold=GoldConfig(kind="further-training", epochs=(1.0, 3.0), seeds=2, batch_size=32),
                         horizon_matched=True)
    sweep = run_sweep(config, ScoreStore(tmp_path))
    json.dumps(sweep)  # JSON-ready
    cells = {(p["grouping"], p["n_groups"]) for p in sweep["points"]}
    assert cells == {("random", 5), ("random", 20), ("inputs-kmeans", 5), ("inputs-kmeans", 20), ("per-example", 142)}
    assert sweep["skipped"] and sweep["skipped"][0]["n_groups"] == 500
    methods = {p["method"] for p in sweep["points"]}
    assert methods == {"grad-dot", "if-exact", "if-exact@T=1", "if-exact@T=3"}
    for point in sweep["points"]:
        assert set(point["fidelity"]) == {"1", "3"}
        assert point["seconds"] > 0 and np.isfinite(point["peak_mb"])
        assert -1 <= point["cosine"] <= 1
        assert point["group_sizes"]["largest"] >= point["group_sizes"]["median"] >= point["group_sizes"]["smallest"]
        assert "point_lds" not in point  # paired gold standards are per group; LDS sweeps have the point-level scale
    # First-order scores follow short further training closely.
    grad_dot = [p for p in sweep["points"] if p["method"] == "grad-dot" and p["grouping"] == "random"]
    assert min(p["fidelity"]["1"]["cosine"] for p in grad_dot) > 0.8
    figure = fidelity_speed_figure(sweep)
    assert figure.layout.xaxis.type == "log" and "further training" in figure.layout.title.text
    # The gold standard is cached: a second sweep reuses it.
    again = run_sweep(config, ScoreStore(tmp_path))
    assert sum(again["gold_seconds"].values()) < sum(sweep["gold_seconds"].values())
