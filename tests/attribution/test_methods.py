"""Known answers for the attribution methods: group linearity, sign, brute-force formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gda_core.attribution.grads import GradientEngine
from gda_core.attribution.grouping import Groups, make_grouping
from gda_core.attribution.methods import make_method
from gda_core.errors import GDAError
from gda_core.registry import METHODS

FAST_OPTIONS = {
    "if-cg": {"max_iterations": 300, "damping": 1e-2},
    "if-lissa": {"depth": 100, "batch_size": None, "damping": 1e-2},
    "if-arnoldi": {"rank": 32},
    "if-exact": {"damping": 1e-2},
    "trak": {"projection_dim": 128},
}


def _scores(name, model, train, groups, test, **extra):
    return make_method(name, model, **{**FAST_OPTIONS.get(name, {}), **extra}).fit(train, groups).attribute(test)


def test_every_method_is_registered():
    expected = {"grad-dot", "grad-cos", "tracin", "if-exact", "if-cg", "if-lissa", "if-arnoldi", "trak", "datainf"}
    assert expected <= set(METHODS)


@pytest.mark.parametrize("name", [n for n, cls in METHODS.items() if cls.gradient_linear])
def test_group_scores_equal_sum_of_member_scores(zoo, small_digits, name):
    train, test = small_digits
    model = zoo["logreg"] if name == "if-exact" else zoo["mlp"]
    test = test.subset(slice(0, 10))
    per_example = _scores(name, model, train, make_grouping("per-example").fit(train), test)
    groups = make_grouping("random", 25, seed=0).fit(train)
    grouped = _scores(name, model, train, groups, test)
    summed = per_example @ groups.membership_matrix().T
    assert grouped.shape == (10, 25)
    np.testing.assert_allclose(grouped, summed, rtol=2e-3, atol=2e-4 * np.abs(grouped).max())


def test_grad_cos_is_bounded_and_not_a_sum(zoo, small_digits):
    train, test = small_digits
    groups = make_grouping("random", 25, seed=0).fit(train)
    scores = _scores("grad-cos", zoo["mlp"], train, groups, test)
    assert np.abs(scores).max() <= 1 + 1e-5
    per_example = _scores("grad-cos", zoo["mlp"], train, make_grouping("per-example").fit(train), test)
    assert not np.allclose(scores, per_example @ groups.membership_matrix().T)


def test_positive_grad_dot_means_a_step_on_the_group_lowers_test_loss(zoo, small_digits):
    """Sign convention: a small gradient step on group G changes test loss by -lr * score."""
    train, test = small_digits
    model = zoo["mlp"]
    groups = make_grouping("random", 8, seed=0).fit(train)
    scores = _scores("grad-dot", model, train, groups, test.subset(slice(0, 1)))[0]
    engine = GradientEngine(model.module)
    group_gradients = engine.stacked(engine.group_gradients(train, groups.labels, 8), 8)
    test_point = test.subset(slice(0, 1))
    step = 1e-4
    params = torch.nn.utils.parameters_to_vector(model.module.parameters()).detach()
    with torch.no_grad():
        base_loss = float(torch.nn.functional.cross_entropy(model.module(test_point.features), test_point.labels))
    changes = []
    for group in range(8):
        torch.nn.utils.vector_to_parameters(params - step * group_gradients[group], model.module.parameters())
        with torch.no_grad():
            loss = float(torch.nn.functional.cross_entropy(model.module(test_point.features), test_point.labels))
        changes.append(loss - base_loss)
    torch.nn.utils.vector_to_parameters(params, model.module.parameters())
    np.testing.assert_allclose(np.array(changes), -step * scores, rtol=0.05, atol=1e-9)
    assert (np.sign(changes) == -np.sign(scores)).all()


def test_tracin_is_lr_weighted_grad_dot_over_checkpoints(zoo, small_digits):
    train, test = small_digits
    model = zoo["mlp"]
    groups = make_grouping("random", 6, seed=0).fit(train)
    expected = 0.0
    for checkpoint in model.checkpoints:
        engine = GradientEngine(model.checkpoint_module(checkpoint))
        train_side = engine.stacked(engine.group_gradients(train, groups.labels, 6), 6)
        expected = expected + checkpoint.lr * (engine.test_gradients(test) @ train_side.T)
    assert len(model.checkpoints) == 3
    np.testing.assert_allclose(_scores("tracin", model, train, groups, test), expected.numpy(), rtol=1e-4, atol=1e-7)
    final_only = _scores("tracin", model, train, groups, test, checkpoints="final")
    np.testing.assert_allclose(final_only, _scores("grad-dot", model, train, groups, test), rtol=1e-6)


def test_datainf_matches_its_closed_form(zoo, small_digits):
    train, test = small_digits
    model = zoo["logreg"]
    engine = GradientEngine(model.module)
    gradients = engine.stacked(engine.per_example_gradients(train), len(train)).double()
    test_gradients = engine.test_gradients(test.subset(slice(0, 5))).double()
    expected_blocks = []
    for block in engine.space.layer_slices():
        layer = gradients[:, block]
        damping = 0.1 * float((layer ** 2).mean())
        inverse = torch.zeros(layer.shape[1], layer.shape[1], dtype=torch.float64)
        for row in layer:  # the rank-one inverses, averaged, written out explicitly
            inverse += (torch.eye(len(row), dtype=torch.float64) - torch.outer(row, row) / (damping + row @ row)) / damping
        inverse /= len(layer)
        expected_blocks.append(test_gradients[:, block] @ inverse @ layer.T)
    expected = sum(expected_blocks)
    scores = _scores("datainf", model, train, make_grouping("per-example").fit(train), test.subset(slice(0, 5)))
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-3, atol=1e-6 * float(expected.abs().max()))


def test_trak_matches_its_formula(zoo, small_digits):
    train, test = small_digits
    model = zoo["logreg"]
    method = make_method("trak", model, projection_dim=64, curvature_samples=None).fit(
        train, make_grouping("per-example").fit(train))
    scores = method.attribute(test.subset(slice(0, 5)))
    engine = GradientEngine(model.module)
    projector = method.projectors_[0]
    features = projector.project(engine.stacked(engine.per_example_gradients(train, objective="log-odds"), len(train))).double()
    test_features = projector.project(engine.test_gradients(test.subset(slice(0, 5)), measurement="log-odds")).double()
    probabilities = torch.softmax(model.module(train.features), 1).detach()
    residual = 1 - probabilities[torch.arange(len(train)), train.labels].double()
    kernel = features.T @ features
    ridge = float(kernel.trace()) / kernel.shape[0]  # default: the kernel's mean eigenvalue
    assert method.damping_[0] == pytest.approx(ridge, rel=1e-6)
    expected = test_features @ torch.linalg.solve(kernel + ridge * torch.eye(projector.dim, dtype=torch.float64), features.T * residual)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=2e-3, atol=1e-4 * float(expected.abs().max()))


def test_bad_method_options_fail_with_one_line(zoo):
    with pytest.raises(GDAError, match="has no option"):
        make_method("grad-dot", zoo["mlp"], dampnig=1.0)
    with pytest.raises(GDAError, match="damping must be > 0"):
        make_method("if-cg", zoo["mlp"], damping=-1.0)
    with pytest.raises(GDAError, match="unknown method"):
        make_method("influence", zoo["mlp"])


def test_attribute_before_fit_is_an_error(zoo, small_digits):
    with pytest.raises(GDAError, match="before attribute"):
        make_method("grad-dot", zoo["mlp"]).attribute(small_digits[1])


def test_groups_must_cover_the_training_set(zoo, small_digits):
    train, _ = small_digits
    with pytest.raises(GDAError, match="grouping covers"):
        make_method("grad-dot", zoo["mlp"]).fit(train, Groups(np.arange(10) % 2, 2))


def test_trak_ensemble_averages_independently_trained_models(zoo, small_digits):
    from gda_core.inputs.zoo import TrainConfig, TrainedModel, train_model

    train, test = small_digits
    model = zoo["mlp"]
    groups = make_grouping("random", 12, seed=0).fit(train)
    ensemble = make_method("trak", model, projection_dim=64, ensemble=2).fit(train, groups)
    scores = ensemble.attribute(test)
    assert len(ensemble.views_) == 2
    # The second member is the same recipe with another seed; each member's TRAK uses its own
    # projection seed (seed + member index).
    settings = TrainConfig(**{**model.train_config.to_json(), "seed": model.train_config.seed + 1000})
    member = train_model(model.config, train, settings)
    first = make_method("trak", model, projection_dim=64).fit(train, groups).attribute(test)
    second_method = make_method("trak", TrainedModel(member.module, model.config, settings), projection_dim=64, seed=1)
    second = second_method.fit(train, groups).attribute(test)
    np.testing.assert_allclose(scores, 0.5 * (first + second), rtol=1e-4, atol=1e-6 * np.abs(scores).max())


def _float_options() -> list[tuple[str, str]]:
    import dataclasses

    return [(name, field.name) for name, cls in sorted(METHODS.items()) for field in dataclasses.fields(cls.Options)
            if "float" in str(field.type)]


@pytest.mark.parametrize(("name", "option"), _float_options())
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_float_options_are_refused(zoo, name, option, value):
    with pytest.raises(GDAError, match=rf"^option {option} of method '{name}' must be a finite number, got (nan|inf)$"):
        make_method(name, zoo["mlp"], **{option: value})


def test_if_exact_refuses_a_large_model_before_any_curvature_work(zoo, small_digits, monkeypatch):
    from gda_core.attribution.methods import curvature

    def no_work(*args, **kwargs):
        raise AssertionError("curvature work started before the size refusal")

    monkeypatch.setattr(curvature.CurvatureOperator, "__init__", no_work)
    train, _ = small_digits
    method = make_method("if-exact", zoo["cnn"])  # about 38,000 parameters
    with pytest.raises(GDAError, match=r"^the exact inverse needs a \d+ x \d+ matrix; use if-cg"):
        method.fit(train, make_grouping("random", 4, seed=0).fit(train))


def test_the_pipeline_refuses_by_size_before_grouping(tmp_path):
    from gda_core.attribution.pipeline import run_attribution
    from gda_core.inputs.zoo import ModelConfig, TrainedModel, build_model, weights_files
    from gda_core.requests import AttributionRequest

    config = ModelConfig("cnn", 64, 10, image_shape=(8, 8))
    weights, payload = weights_files(TrainedModel(build_model(config), config))
    (tmp_path / "cnn.safetensors").write_bytes(weights)
    (tmp_path / "cnn.json").write_bytes(payload)
    phases = []
    request = AttributionRequest(data="digits", model=str(tmp_path / "cnn.safetensors"), method="if-exact",
                                 grouping="grad-kmeans", n_groups=4, test_size=3)
    with pytest.raises(GDAError, match="the exact inverse needs a"):
        run_attribution(request, cache_dir=tmp_path, progress=lambda phase, fraction: phases.append(phase))
    assert "grouping" not in phases and "fit" not in phases


def test_tracin_refuses_a_model_without_checkpoints(zoo, small_digits):
    from gda_core.inputs.zoo import TrainedModel

    train, test = small_digits
    bare = TrainedModel(zoo["mlp"].module, zoo["mlp"].config)  # what a .pt2 or bare state dict gives
    groups = make_grouping("random", 4, seed=0).fit(train)
    with pytest.raises(GDAError, match=r"^TracIn needs training checkpoints, which this model does not carry .*"
                                       r"checkpoints=final"):
        make_method("tracin", bare).fit(train, groups)
    final = make_method("tracin", bare, checkpoints="final").fit(train, groups).attribute(test)
    np.testing.assert_allclose(final, _scores("grad-dot", bare, train, groups, test), rtol=1e-6)


def test_a_zoo_model_too_large_for_if_exact_is_refused_before_it_is_trained(tmp_path):
    from gda_core.attribution.pipeline import run_attribution
    from gda_core.requests import AttributionRequest

    request = AttributionRequest(data="digits", model="cnn", method="if-exact", grouping="random", n_groups=4)
    with pytest.raises(GDAError, match="the exact inverse needs a 38282 x 38282 matrix"):
        run_attribution(request, cache_dir=tmp_path)
    assert not (tmp_path / "models").exists()  # no demo model was trained (or cached)
    last_layer = AttributionRequest(data="digits", model="cnn", method="if-exact", grouping="random", n_groups=4,
                                    method_options={"last_layer_only": True}, test_size=2)
    assert run_attribution(last_layer, cache_dir=tmp_path).scores.shape == (2, 4)  # the head alone fits
