"""Regression end to end on scikit-learn's diabetes: known answers for ridge regression, the
group/per-example identities, every method and gold standard, and the one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gda_core.attribution.grads import GradientEngine
from gda_core.attribution.grouping import make_grouping
from gda_core.attribution.methods import make_method
from gda_core.errors import GDAError
from gda_core.evaluation.gold import further_training, lds_ensemble, leave_group_out
from gda_core.evaluation.noisy import run_noisy
from gda_core.evaluation.pruning import run_pruning
from gda_core.inputs.datasets import load_builtin
from gda_core.inputs.zoo import TrainConfig, default_train_config, model_config_for, train_model
from gda_core.registry import METHODS
from gda_core.requests import NoisyConfig, PruneConfig
from gda_core.task import REGRESSION

FAST_OPTIONS = {"if-lissa": {"depth": 50, "damping": 1e-1}, "if-arnoldi": {"rank": 8}, "trak": {"projection_dim": 32}}


@pytest.fixture(scope="module")
def diabetes():
    return load_builtin("diabetes", seed=0)


@pytest.fixture(scope="module")
def ridge(diabetes):
    return train_model(model_config_for("logreg", diabetes.train), diabetes.train, default_train_config("logreg"))


@pytest.fixture(scope="module")
def small(diabetes):
    """120 training and 8 test points with a small regression MLP (checkpoints for TracIn)."""
    train, test = diabetes.train.subset(slice(0, 120)), diabetes.test.subset(slice(0, 8))
    model = train_model(model_config_for("mlp", train, hidden=(8,)), train,
                        TrainConfig(epochs=5, lr=1e-2, batch_size=32, seed=0, n_checkpoints=2))
    return model, train, test


def test_diabetes_is_a_standardised_regression_set(diabetes):
    train, test = diabetes.train, diabetes.test
    assert train.task is REGRESSION and test.task is REGRESSION
    assert (len(train), len(test), train.n_features) == (354, 88, 10)
    labels = train.labels.numpy().astype(np.float64)
    assert abs(labels.mean()) < 1e-5 and abs(labels.std() - 1) < 1e-5  # training statistics
    assert abs(test.labels.numpy().mean()) > 1e-4  # the test part is not re-centred on itself


def _ridge_solution(features: np.ndarray, targets: np.ndarray, strength: float) -> np.ndarray:
    """argmin mean((x w + b - y)^2) / 2 + strength / 2 ||(w, b)||^2, bias penalised as in training."""
    augmented = np.hstack([features, np.ones((len(features), 1))])
    matrix = augmented.T @ augmented / len(features) + strength * np.eye(augmented.shape[1])
    return np.linalg.solve(matrix, augmented.T @ targets / len(features))


def test_ridge_trains_to_the_closed_form_optimum(diabetes, ridge):
    features, targets = diabetes.train.features.double().numpy(), diabetes.train.labels.double().numpy()
    expected = _ridge_solution(features, targets, ridge.train_config.weight_decay)
    found = np.concatenate([ridge.module.head.weight.detach().numpy().ravel(), ridge.module.head.bias.detach().numpy()])
    np.testing.assert_allclose(found, expected, atol=2e-4)


def test_exact_influence_matches_exact_leave_one_out_on_ridge(diabetes, ridge):
    """With damping = the ridge strength, if-exact inverts the exact Hessian of the training
    objective; its scores must track closed-form leave-one-out retraining."""
    train, test = diabetes.train, diabetes.test.subset(slice(0, 20))
    strength = ridge.train_config.weight_decay
    method = make_method("if-exact", ridge, damping=strength, curvature_samples=None)
    scores = method.fit(train, make_grouping("per-example").fit(train)).attribute(test)
    features, targets = train.features.double().numpy(), train.labels.double().numpy()
    test_features = np.hstack([test.features.double().numpy(), np.ones((len(test), 1))])
    test_targets = test.labels.double().numpy()

    def test_losses(solution):
        return 0.5 * (test_features @ solution - test_targets) ** 2

    full = test_losses(_ridge_solution(features, targets, strength))
    loo = np.empty((len(test), len(train)))
    for i in range(len(train)):
        keep = np.arange(len(train)) != i
        loo[:, i] = test_losses(_ridge_solution(features[keep], targets[keep], strength)) - full
    # removing a helpful point (positive score) raises the test loss
    correlations = [np.corrcoef(scores[t], loo[t])[0, 1] for t in range(len(test))]
    # the issue asks for > 0.95; exact influence gets 0.999 here, Grad-Dot 0.78, if-exact
    # damped 1000x too much 0.93
    assert np.mean(correlations) > 0.99, correlations


def test_summed_per_example_gradients_equal_group_gradients(small):
    model, train, _ = small
    engine = GradientEngine(model.module, chunk_examples=50)
    groups = make_grouping("random", 7, seed=0).fit(train)
    per_example = engine.stacked(engine.per_example_gradients(train), len(train))
    grouped = engine.stacked(engine.group_gradients(train, groups.labels, groups.n_groups), groups.n_groups)
    expected = torch.as_tensor(groups.membership_matrix()) @ per_example
    torch.testing.assert_close(grouped, expected, rtol=1e-4, atol=1e-5)


def test_regression_gradient_is_residual_times_input_for_a_linear_model(diabetes, ridge):
    train = diabetes.train.subset(slice(0, 5))
    gradients = GradientEngine(ridge.module).stacked(GradientEngine(ridge.module).per_example_gradients(train), 5)
    with torch.no_grad():
        residual = ridge.module(train.features)[:, 0] - train.labels
    expected = torch.cat([residual[:, None] * train.features, residual[:, None]], dim=1)
    torch.testing.assert_close(gradients, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_on_regression_and_groups_sum_members(small, name):
    model, train, test = small
    groups = make_grouping("random", 6, seed=0).fit(train)
    options = FAST_OPTIONS.get(name, {})
    grouped = make_method(name, model, **options).fit(train, groups).attribute(test)
    per_example = make_method(name, model, **options).fit(train, make_grouping("per-example").fit(train)).attribute(test)
    assert grouped.shape == (len(test), 6) and np.isfinite(grouped).all() and np.abs(per_example).max() > 0
    if METHODS[name].gradient_linear:
        np.testing.assert_allclose(grouped, per_example @ groups.membership_matrix().T, rtol=2e-3,
                                   atol=1e-4 * np.abs(grouped).max())


def test_trak_on_regression_measures_the_loss(small):
    model, train, test = small
    method = make_method("trak", model, projection_dim=16).fit(train, make_grouping("random", 4).fit(train))
    assert method.measurement_ == "loss"


def test_gold_standards_run_on_regression(small):
    model, train, test = small
    groups = make_grouping("random", 5, seed=0).fit(train)
    gold = further_training(model, train, test, groups, epochs=(1.0,), seeds=2)
    assert gold.scores[0].shape == (len(test), 5) and np.abs(gold.scores).max() > 0
    assert np.isfinite(leave_group_out(model, train, test, groups, seeds=1, epochs=1).scores).all()
    ensemble = lds_ensemble(model, train, test, groups, n_subsets=4, seeds=1, epochs=1)
    assert np.isfinite(ensemble.outputs).all()
    # Grad-Dot predicts one short step of further training: same sign on most entries
    scores = make_method("grad-dot", model).fit(train, groups).attribute(test)
    assert np.mean(np.sign(scores) == np.sign(gold.scores[0])) > 0.7


@pytest.mark.parametrize("grouping", ["per-class", "grad-kmeans-per-class", "inputs-kmeans-per-class"])
def test_per_class_groupings_refuse_regression_in_one_line(small, grouping):
    model, train, _ = small
    with pytest.raises(GDAError, match="needs class labels .* has regression targets") as error:
        make_grouping(grouping, 5).fit(train, model.module)
    assert "\n" not in str(error.value)


def test_margin_measurement_is_refused_on_regression(small):
    model, train, _ = small
    with pytest.raises(GDAError, match="the margin measurement needs classes"):
        make_method("grad-dot", model, measurement="margin").fit(train, make_grouping("random", 3).fit(train))


def test_a_model_of_another_task_is_refused(small, digits):
    model, train, _ = small
    classifier = train_model(model_config_for("logreg", digits.train), digits.train.subset(slice(0, 100)),
                             default_train_config("logreg"))
    with pytest.raises(GDAError, match="the model is a classification model but the data is regression data"):
        make_method("grad-dot", classifier).fit(train, make_grouping("random", 3).fit(train))
    with pytest.raises(GDAError, match="the model is a regression model but the data is classification data"):
        make_method("grad-dot", model).fit(digits.train, make_grouping("random", 3).fit(digits.train))


@pytest.mark.parametrize("run,config", [(run_noisy, NoisyConfig), (run_pruning, PruneConfig)])
def test_noisy_labels_and_pruning_refuse_regression(run, config):
    with pytest.raises(GDAError, match="needs class labels \\(it .*flips? labels to other classes"):
        run(config(data="diabetes", model="logreg", method="grad-dot", grouping="random", n_groups=5))
