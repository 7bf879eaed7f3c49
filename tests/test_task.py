"""The Task: each loss, measurement and output curvature against autograd or a formula."""

from __future__ import annotations

import pytest
import torch

from gda_core import CLASSIFICATION, REGRESSION, get_task
from gda_core.attribution.grads import GradientEngine
from gda_core.attribution.methods.curvature import CurvatureOperator
from gda_core.errors import GDAError
from gda_core.inputs.datasets import Dataset
from gda_core.inputs.zoo import ModelConfig, build_model


def _regression_data(n: int = 30, d: int = 4, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=generator)
    targets = features @ torch.randn(d, generator=generator) + 0.1 * torch.randn(n, generator=generator)
    return Dataset(features, targets, [], name="toy")


def test_tasks_are_registered_by_name():
    assert get_task("classification") is CLASSIFICATION and get_task("regression") is REGRESSION
    with pytest.raises(GDAError, match="unknown task 'ordinal'"):
        get_task("ordinal")


def test_classification_loss_is_cross_entropy_and_the_default():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    expected = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert torch.equal(CLASSIFICATION.loss(logits, labels), expected)
    assert Dataset(torch.randn(5, 2), labels, ["a", "b", "c"]).task is CLASSIFICATION


def test_regression_loss_is_half_squared_error_and_refuses_margin_in_one_line():
    outputs, targets = torch.tensor([[1.0], [-2.0]]), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(REGRESSION.loss(outputs, targets), torch.tensor([0.125, 4.5]))
    for name in ("margin", "log-odds"):
        with pytest.raises(GDAError, match=f"the {name} measurement needs classes; a regression task measures: loss"):
            REGRESSION.measurement(name, outputs, targets)
    with pytest.raises(GDAError, match="unknown measurement 'accuracy'"):
        REGRESSION.check_measurement("accuracy")


def test_regression_data_has_float_targets_and_no_classes():
    data = _regression_data()
    assert data.task is REGRESSION and data.labels.dtype == torch.float32 and data.n_classes == 0
    with pytest.raises(GDAError, match="regression targets contain NaN"):
        Dataset(torch.randn(2, 2), torch.tensor([0.0, float("nan")]), [])


def test_regression_ggn_matches_autograd_hessian_of_a_linear_model():
    """For squared error on a linear model the GGN is the exact Hessian of the mean loss."""
    data = _regression_data()
    module = build_model(ModelConfig("logreg", data.n_features, task="regression")).double()
    engine = GradientEngine(module)
    features, targets = data.features.double(), data.labels.double()
    weight, bias = module.head.weight.detach(), module.head.bias.detach()

    def mean_loss(flat):
        outputs = features @ flat[:4].reshape(1, 4).T + flat[4:]
        return REGRESSION.loss(outputs, targets).mean()

    expected = torch.autograd.functional.hessian(mean_loss, torch.cat([weight.ravel(), bias]))
    double_data = Dataset(features, targets, [])
    for kind in ("ggn", "hessian"):
        matrix = CurvatureOperator(engine, double_data, torch.arange(len(data)), kind=kind).matrix()
        torch.testing.assert_close(matrix, expected)
    # and the known closed form: [X 1]^T [X 1] / n
    augmented = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(expected, augmented.T @ augmented / len(features))


def test_classification_output_hessian_is_softmax_curvature():
    logits, tangent = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    for row in range(4):
        hessian = torch.autograd.functional.hessian(
            lambda z: CLASSIFICATION.loss(z[None], labels[row:row + 1]).sum(), logits[row])
        torch.testing.assert_close(CLASSIFICATION.output_hessian_product(logits[row:row + 1], tangent[row:row + 1])[0],
                                   hessian @ tangent[row])


@pytest.mark.parametrize("task", [CLASSIFICATION, REGRESSION])
def test_trak_residual_weights_times_output_gradient_is_the_loss_gradient(task):
    outputs = torch.randn(6, 3 if task is CLASSIFICATION else 1, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 2, 1, 1, 0, 2]) if task is CLASSIFICATION else torch.randn(6, dtype=torch.float64)
    if task is CLASSIFICATION:
        outputs = outputs[:, :2]  # binary: d CE / d(-log-odds) = 1 - p exactly
        targets = targets % 2
    (loss_gradient,) = torch.autograd.grad(task.loss(outputs, targets).sum(), outputs)
    (output_gradient,) = torch.autograd.grad(task.objective(task.trak_output)(outputs, targets).sum(), outputs)
    weights = task.residual_weights(outputs.detach(), targets)
    torch.testing.assert_close(weights[:, None] * output_gradient, loss_gradient)


def test_scores_are_accuracy_and_r2():
    assert CLASSIFICATION.score(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])) == 0.5
    targets = torch.tensor([1.0, 2.0, 3.0])
    assert REGRESSION.score(targets[:, None], targets) == 1.0
    assert REGRESSION.score(torch.full((3, 1), 2.0), targets) == 0.0


def test_a_one_output_model_on_class_labels_is_refused_for_its_output_count():
    with pytest.raises(GDAError, match="the model has a single output \\(a regression model\\?\\)"):
        CLASSIFICATION.check_outputs(1, torch.tensor([0, 1, 1]))
    with pytest.raises(GDAError, match="labels go up to 2 but the model has 2 outputs"):
        CLASSIFICATION.check_outputs(2, torch.tensor([0, 2]))
