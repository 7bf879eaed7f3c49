"""K-FAC and EK-FAC influence against brute force: explicit Kronecker matrices, the exact GGN
where the factorisation is exact, group linearity, cached factors and a conv net."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from gda_core.attribution.grads import GradientEngine
from gda_core.attribution.grouping import make_grouping
from gda_core.attribution.methods import make_method
from gda_core.attribution.methods.curvature import CurvatureOperator
from gda_core.errors import GDAError
from gda_core.inputs.datasets import load_builtin
from gda_core.inputs.zoo import ModelConfig, TrainConfig, default_train_config, model_config_for, train_model

DAMPING = 1e-3
#: the exact GGN on every row (the defaults sample one output-Hessian column and fit A and S on 256 rows)
EXACT = {"ggn_samples": None, "factor_samples": None}


@pytest.fixture(autouse=True)
def factor_cache(tmp_path, monkeypatch):
    """Factors are cached in the cache folder: each test gets its own."""
    monkeypatch.setenv("GDA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _scores(name, model, train, test, groups=None, **options):
    groups = groups or make_grouping("per-example").fit(train)
    method = make_method(name, model, **options).fit(train, groups)
    return method.attribute(test), method


def _kernel_scores(model, train, test, curvature: torch.Tensor) -> np.ndarray:
    """g_test^T (C + damping I)^-1 g_train for an explicit P x P matrix C."""
    engine = GradientEngine(model.module)
    test_grads = engine.test_gradients(test).double()
    train_grads = engine.test_gradients(train).double()
    identity = torch.eye(len(curvature), dtype=torch.float64)
    return (test_grads @ torch.linalg.solve(curvature + DAMPING * identity, train_grads.T)).numpy()


def _weight_major(model) -> torch.Tensor:
    """Positions in the flat (weight, bias) vector of the matrix [W | b], row-major."""
    out, width = model.module.head.weight.shape
    positions = torch.arange(out * (width + 1)).reshape(out, width + 1)
    flat = torch.empty(out * (width + 1), dtype=torch.long)
    flat[positions[:, :width].flatten()] = torch.arange(out * width)
    flat[positions[:, width]] = out * width + torch.arange(out)
    return flat  # flat[i]: the index in the parameter vector of entry i of vec([W | b])


def _to_parameter_order(matrix: torch.Tensor, model) -> torch.Tensor:
    order = _weight_major(model)
    out = torch.empty_like(matrix)
    out[order[:, None], order[None, :]] = matrix
    return out


@pytest.fixture(scope="module")
def logreg(small_digits):
    train, test = small_digits
    return train_model(model_config_for("logreg", train), train, default_train_config("logreg")), train, test


def test_kfac_equals_an_explicit_kronecker_matrix_on_a_linear_model(logreg):
    """For one linear layer (logreg) each example's GGN is H_i (x) a_i a_i^T (a with a 1 for the
    bias), so K-FAC is by definition E[H] (x) E[a a^T]: built here by hand from the softmax
    outputs and the features, in the weight's row-major order with the bias as a last column."""
    model, train, test = logreg
    test = test.subset(slice(0, 8))
    with torch.no_grad():
        p = torch.softmax(model.module(train.features), dim=1).double()
    hessian = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    inputs = torch.cat([train.features.double(), torch.ones(len(train), 1, dtype=torch.float64)], 1)
    activation = inputs.T @ inputs / len(train)
    explicit = _to_parameter_order(torch.kron(hessian, activation), model)
    scores, method = _scores("if-kfac", model, train, test, damping=DAMPING, curvature_samples=None, **EXACT)
    np.testing.assert_allclose(scores, _kernel_scores(model, train, test, explicit), rtol=1e-4,
                               atol=1e-6 * np.abs(scores).max())
    info = method.solver_info_[0]
    assert info["covered_parameters"] == info["total_parameters"] and info["uncovered"] == []
    assert info["eigenvalue_correction"] is False and method.damping_ == [DAMPING]


def test_ekfac_is_the_exact_ggns_diagonal_in_the_kronecker_eigenbasis(logreg):
    """EK-FAC keeps K-FAC's eigenbasis Q = Q_S (x) Q_A and replaces its eigenvalues by
    diag(Q^T GGN Q) (George et al. 2018); checked against the exact GGN (CurvatureOperator)."""
    model, train, test = logreg
    test = test.subset(slice(0, 8))
    scores, method = _scores("if-ekfac", model, train, test, damping=DAMPING, curvature_samples=None, **EXACT)
    factors = method.factors_[0]
    basis = torch.kron(factors.gradient[0][1], factors.activation[0][1])
    engine = GradientEngine(model.module)
    ggn = CurvatureOperator(engine, train, np.arange(len(train))).matrix().double()
    order = _weight_major(model)
    exact = ggn[order[:, None], order[None, :]]  # in vec([W | b]) order
    corrected = torch.diag(basis.T @ exact @ basis)
    np.testing.assert_allclose(factors.eigenvalues[0].flatten().numpy(), corrected.numpy(), rtol=1e-4,
                               atol=1e-5 * float(corrected.max()))  # a float32 GGN
    explicit = _to_parameter_order(basis @ torch.diag(corrected) @ basis.T, model)
    np.testing.assert_allclose(scores, _kernel_scores(model, train, test, explicit), rtol=1e-4,
                               atol=1e-6 * np.abs(scores).max())
    assert method.solver_info_[0]["eigenvalue_correction"] is True


@pytest.mark.parametrize("name", ["if-kfac", "if-ekfac"])
def test_kronecker_influence_equals_exact_influence_where_the_factorisation_is_exact(name):
    """Ridge regression (one linear layer, squared error): the output Hessian is 1 for every
    example, so the GGN is exactly 1 (x) E[a a^T], K-FAC's product, and EK-FAC's correction
    changes nothing: both must equal the exact inverse."""
    split = load_builtin("diabetes", seed=0)
    train, test = split.train, split.test.subset(slice(0, 10))
    model = train_model(model_config_for("logreg", train), train, default_train_config("logreg"))
    exact, _ = _scores("if-exact", model, train, test, damping=DAMPING, curvature_samples=None)
    approximate, _ = _scores(name, model, train, test, damping=DAMPING, curvature_samples=None, **EXACT)
    np.testing.assert_allclose(approximate, exact, rtol=1e-3, atol=1e-5 * np.abs(exact).max())


@pytest.fixture(scope="module")
def mlp(small_digits):
    train, test = small_digits
    model = train_model(model_config_for("mlp", train, hidden=(16,)), train,
                        TrainConfig(epochs=2, lr=3e-3, batch_size=32, seed=0, n_checkpoints=1))
    return model, train, test.subset(slice(0, 10))


def test_kronecker_influence_tracks_exact_influence_on_an_mlp(mlp):
    """Both are block-diagonal approximations of the GGN on a two-layer MLP: with the default
    damping (a tenth of the top eigenvalue) their per-test-point rankings of the 400 training
    points follow the exact inverse's, and EK-FAC's curvature is closer to the exact GGN's
    blocks in Frobenius norm than K-FAC's (its eigenvalues are the optimal ones in that basis)."""
    model, train, test = mlp
    exact, exact_method = _scores("if-exact", model, train, test, curvature_samples=None)
    damping = exact_method.damping_[0]
    results = {name: _scores(name, model, train, test, damping=damping, curvature_samples=None)
               for name in ("if-kfac", "if-ekfac")}
    for name, (scores, _) in results.items():
        rho = [spearmanr(scores[i], exact[i])[0] for i in range(len(test))]
        assert np.mean(rho) > 0.75 and np.min(rho) > 0.6, (name, rho)
    values, vectors = exact_method.eigen_[0]
    ggn = (vectors * values) @ vectors.T

    def block_error(method) -> float:
        layout, factors = method.layouts_[0], method.factors_[0]
        identity = torch.eye(layout.dim, dtype=torch.float64)
        columns = layout.split(identity)
        dense = layout.merge([q_s @ ((q_s.T @ block @ q_a) * v) @ q_a.T for block, (_, q_a), (_, q_s), v
                              in zip(columns, factors.activation, factors.gradient, factors.eigenvalues)])
        mask = dense != 0
        return float((dense - ggn * mask).norm() / (ggn * mask).norm())

    assert block_error(results["if-ekfac"][1]) < block_error(results["if-kfac"][1])


def test_group_scores_are_sums_of_member_scores_and_cached_factors_give_the_same_scores(mlp, factor_cache):
    model, train, test = mlp
    groups = make_grouping("random", 20, seed=0).fit(train)
    first, method = _scores("if-ekfac", model, train, test, groups=groups)
    assert method.solver_info_[0]["factor_cache"] == "computed"
    assert len(list((factor_cache / "factors").glob("*.npz"))) == 2  # the K-FAC factors and the correction
    per_example, again = _scores("if-ekfac", model, train, test)
    assert again.solver_info_[0]["factor_cache"] == "reused"
    np.testing.assert_allclose(first, per_example @ groups.membership_matrix().T, rtol=1e-4,
                               atol=1e-6 * np.abs(first).max())
    # the first run summed its training side in the correction pass; a run on the reloaded
    # factors forms it from group gradients, rotated: the same scores, to float32 round-off
    reloaded, third = _scores("if-ekfac", model, train, test, groups=groups)
    assert third.solver_info_[0]["factor_cache"] == "reused"
    assert f"({len(train)} of them in the correction pass), 0 from group" in method.solver_info_[0]["training_side"]
    assert "(0 of them in the correction pass), 0 from group" in third.solver_info_[0]["training_side"]
    np.testing.assert_allclose(reloaded, first, rtol=1e-4, atol=1e-6 * np.abs(first).max())
    # K-FAC shares the cached factors fitted on the same rows (EK-FAC's default 256); turning
    # the cache off refits them, to the same scores
    kfac, kfac_method = _scores("if-kfac", model, train, test, groups=groups, factor_samples=256)
    assert kfac_method.solver_info_[0]["factor_cache"] == "reused"
    refit, refit_method = _scores("if-kfac", model, train, test, groups=groups, factor_samples=256,
                                  cache_factors=False)
    assert refit_method.solver_info_[0]["factor_cache"] == "off"
    np.testing.assert_allclose(refit, kfac, rtol=1e-6, atol=1e-9 * np.abs(kfac).max())


def test_a_damaged_factor_file_is_refitted(mlp, factor_cache):
    model, train, test = mlp
    first, _ = _scores("if-kfac", model, train, test)
    for path in (factor_cache / "factors").glob("*.npz"):
        path.write_bytes(b"damaged")
    second, method = _scores("if-kfac", model, train, test)
    assert method.solver_info_[0]["factor_cache"] == "computed"
    np.testing.assert_array_equal(first, second)


def test_last_layer_mode_factors_only_the_head(mlp):
    model, train, test = mlp
    scores, method = _scores("if-ekfac", model, train, test, last_layer_only=True)
    info = method.solver_info_[0]
    assert [layer["layer"] for layer in info["layers"]] == ["(model)"]
    assert info["covered_parameters"] == info["total_parameters"] == 16 * 10 + 10
    assert np.isfinite(scores).all()


@pytest.fixture(scope="module")
def resnet():
    """A width-2 ResNet-9 trained one epoch on 200 mnist digits (module scope: loaded from the
    usual cache folder, before each test's own factor cache is set)."""
    split = load_builtin("mnist", seed=0)
    train, test = split.train.subset(slice(0, 200)), split.test.subset(slice(0, 4))
    config = ModelConfig(arch="resnet", n_features=784, n_classes=10, image_shape=(1, 28, 28), resnet_width=2)
    model = train_model(config, train, TrainConfig(epochs=1, lr=3e-3, batch_size=64, seed=0, n_checkpoints=1))
    return model, train, test


def test_a_conv_net_with_batchnorm_covers_its_convolutions_and_leaves_batchnorm_out(resnet):
    """Every convolution of a ResNet-9 and its head are factored, BatchNorm's affine weights
    are left out (zero on the test side, so the score is the inner product over the covered
    parameters), and method_info says so."""
    model, train, test = resnet
    groups = make_grouping("random", 10, seed=0).fit(train)
    scores, method = _scores("if-ekfac", model, train, test, groups=groups, chunk_examples=64)
    assert scores.shape == (4, 10) and np.isfinite(scores).all() and np.abs(scores).max() > 0
    info = method.solver_info_[0]
    kinds = [layer["kind"] for layer in info["layers"]]
    assert kinds.count("conv2d") == 8 and kinds[-1] == "linear"
    assert info["uncovered"] and all(".1." in name for name in info["uncovered"])  # the BatchNorm of each stage
    assert 0 < info["covered_parameters"] < info["total_parameters"]
    assert "BatchNorm" in info["note"]
    # both sides live in the covered parameters' eigenbasis: the uncovered ones add nothing
    engine = method.views_[0].engine
    gradients = engine.test_gradients(test)
    transformed = method._transform_test(0, method.views_[0], gradients)
    assert transformed.shape == (4, info["covered_parameters"])
    layout, noisy = method.layouts_[0], gradients.clone()
    for name in layout.uncovered:
        noisy[:, layout.offsets[name]] = torch.randn_like(noisy[:, layout.offsets[name]])
    torch.testing.assert_close(method._transform_test(0, method.views_[0], noisy), transformed)


def test_an_uploaded_program_without_layer_modules_is_a_one_line_refusal(mlp, tmp_path):
    from gda_core.inputs.programs import export_program, load_model_file

    model, train, _ = mlp
    path = tmp_path / "mlp.pt2"
    path.write_bytes(export_program(model.module, train.n_features))
    with pytest.raises(GDAError, match=r"^if-kfac factors nn.Linear and nn.Conv2d layers and this model has none"):
        make_method("if-kfac", load_model_file(path)).fit(train, make_grouping("random", 5).fit(train))


def test_layer_mean_damping_is_a_tenth_of_each_layers_mean_eigenvalue(mlp):
    """damping_rule="layer-mean" (kronfluence's heuristic): layer l's block is inverted as
    (C_l + lambda_l I)^-1 with lambda_l = 0.1 x the mean of its eigenvalues; checked against a
    dense solve of the block-diagonal matrix with those lambdas on its diagonal."""
    model, train, test = mlp
    _, method = _scores("if-ekfac", model, train, test, damping_rule="layer-mean", cache_factors=False)
    layout, factors = method.layouts_[0], method.factors_[0]
    expected = [0.1 * float(values.mean()) for values in factors.eigenvalues]
    np.testing.assert_allclose(method.layer_damping_[0], expected, rtol=1e-12)
    assert len(set(expected)) == len(expected) and method.damping_[0] == max(expected)
    info = method.solver_info_[0]
    assert info["damping_rule"] == "layer-mean" and [layer["damping"] for layer in info["layers"]] == expected
    columns = layout.split(torch.eye(layout.dim, dtype=torch.float64))
    curvature = layout.merge([q_s @ ((q_s.T @ block @ q_a) * v) @ q_a.T for block, (_, q_a), (_, q_s), v
                              in zip(columns, factors.activation, factors.gradient, factors.eigenvalues)])
    diagonal = layout.merge([torch.full((1, layer.out_dim, layer.in_dim), value, dtype=torch.float64)
                             for layer, value in zip(layout.layers, expected)])[0]
    generator = torch.Generator().manual_seed(0)
    tests, trains = (torch.randn(3, layout.dim, dtype=torch.float64, generator=generator) for _ in range(2))
    dense = tests @ torch.linalg.solve(curvature + torch.diag(diagonal), trains.T)
    view = method.views_[0]  # a score: the transformed test side . the transformed training side
    ours = method._transform_test(0, view, tests) @ method._train_transform(0, view)(trains).T
    np.testing.assert_allclose(ours.numpy(), dense.numpy(), rtol=1e-6, atol=1e-9 * float(dense.abs().max()))
    given = make_method("if-ekfac", model, damping=DAMPING, damping_rule="layer-mean", cache_factors=False)
    given.fit(train, make_grouping("per-example").fit(train))
    assert given.layer_damping_[0] == [DAMPING] * len(layout.layers)  # a given damping is one lambda for all
    assert given.solver_info_[0]["damping_rule"] == "given"


def test_sampled_ggn_converges_to_the_exact_ggn_and_is_seeded(mlp):
    """ggn_samples=k back-propagates k Gaussian combinations of each example's output-Hessian
    columns: A is untouched, S is the exact one in expectation (close at k = 256) and the
    same seed gives the same factors, another seed others."""
    model, train, test = mlp

    def fitted(**options):
        return _scores("if-kfac", model, train, test, damping=DAMPING, cache_factors=False, **options)[1]

    exact, sampled = fitted(ggn_samples=None), fitted(ggn_samples=256)
    for (a_exact, s_exact), (a_sampled, s_sampled) in zip(
            zip(exact.factors_[0].activation, exact.factors_[0].gradient),
            zip(sampled.factors_[0].activation, sampled.factors_[0].gradient)):
        np.testing.assert_allclose(a_sampled[0].numpy(), a_exact[0].numpy(), rtol=1e-10)
        matrix = [(v * values) @ v.T for values, v in (s_exact, s_sampled)]
        assert float((matrix[1] - matrix[0]).norm() / matrix[0].norm()) < 0.15
    one, same, other = fitted(ggn_samples=1), fitted(ggn_samples=1), fitted(ggn_samples=1, seed=1)
    values = [method.factors_[0].gradient[0][0] for method in (one, same, other)]
    assert torch.equal(values[0], values[1]) and not torch.allclose(values[0], values[2])
    assert "Monte Carlo" in one.solver_info_[0]["curvature"] and "no sampled" in exact.solver_info_[0]["curvature"]


def test_kronecker_options_are_checked(mlp):
    model, _, _ = mlp
    with pytest.raises(GDAError, match="damping must be > 0"):
        make_method("if-kfac", model, damping=0.0)
    with pytest.raises(GDAError, match="has no option curvature"):
        make_method("if-ekfac", model, curvature="hessian")
    with pytest.raises(GDAError, match="damping_rule must be one of top, layer-mean"):
        make_method("if-kfac", model, damping_rule="mean")
    with pytest.raises(GDAError, match="ggn_samples must be >= 1"):
        make_method("if-ekfac", model, ggn_samples=0)


@pytest.fixture(scope="module")
def tiny_cnn(small_digits):
    """An untrained two-convolution zoo cnn on 8x8 digits, small enough for its exact GGN."""
    from gda_core.inputs.zoo import TrainedModel, build_model

    train, test = small_digits
    torch.manual_seed(0)
    config = ModelConfig(arch="cnn", n_features=64, n_classes=10, image_shape=(1, 8, 8), cnn_channels=(2, 3),
                         hidden=(4,))
    return TrainedModel(build_model(config).eval(), config), train.subset(slice(0, 40)), test.subset(slice(0, 4))


def test_captured_layer_pairs_rebuild_the_per_example_gradients_of_a_conv_net(tiny_cnn):
    """sum_t g_t a_t^T from the capture (unfolded patches, a bias column) is each example's
    weight gradient: the same numbers as the GradientEngine's per-example gradients."""
    from gda_core.attribution.layers import LayerLayout, capture, find_layers, layer_gradients

    model, train, _ = tiny_cnn
    engine = GradientEngine(model.module)
    layers = find_layers(engine.function_module, engine.space.names)
    assert [layer.kind for layer in layers] == ["conv2d", "conv2d", "linear", "linear"]

    def loss_gradient(outputs):
        return torch.func.grad(lambda o: train.task.loss(o, train.labels).sum())(outputs)[None]

    batch = capture(engine.function_module, engine.params, layers, engine.inputs(train), loss_gradient)
    blocks = [layer_gradients(a, g[0]) for a, g in zip(batch.activations, batch.gradients)]
    rebuilt = LayerLayout(engine.space, layers).merge(blocks)
    expected = engine.stacked(engine.per_example_gradients(train), len(train))
    torch.testing.assert_close(rebuilt, expected, rtol=1e-4, atol=1e-6)


def test_ekfac_on_a_conv_net_is_each_blocks_exact_ggn_diagonal_in_its_eigenbasis(tiny_cnn):
    """For Conv2d layers too: EK-FAC's eigenvalues are diag(Q^T B Q), B the exact GGN's block
    of the layer (CurvatureOperator), Q = Q_S (x) Q_A of the unfolded-patch factors."""
    model, train, test = tiny_cnn
    _, method = _scores("if-ekfac", model, train, test, damping=DAMPING, curvature_samples=None, **EXACT)
    engine = method.views_[0].engine
    ggn = CurvatureOperator(engine, train, np.arange(len(train))).matrix().double()
    layout, factors = method.layouts_[0], method.factors_[0]
    positions = layout.split(torch.arange(layout.dim, dtype=torch.float64)[None])
    for i, layer in enumerate(layout.layers):
        index = positions[i][0].flatten().long()  # parameter index of entry (o, i) of [W | b]
        block = ggn[index[:, None], index[None, :]]
        basis = torch.kron(factors.gradient[i][1], factors.activation[i][1])
        expected = torch.diag(basis.T @ block @ basis)
        np.testing.assert_allclose(factors.eigenvalues[i].flatten().numpy(), expected.numpy(), rtol=1e-3,
                                   atol=1e-5 * float(expected.max()), err_msg=layer.name)


def test_both_rotation_orders_give_each_examples_gradient_in_the_eigenbasis():
    """Rotating the patches and output gradients before the sum over positions, or the
    per-example gradients after it, gives Q_S^T (sum_t g_t a_t^T) Q_A: checked example by example."""
    from gda_core.attribution.methods.kfac import rotated_gradients

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(5, 7, 6, dtype=torch.float64, generator=generator)
    g = torch.randn(2, 5, 7, 4, dtype=torch.float64, generator=generator)
    q_a = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=generator))[0]
    q_s = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=generator))[0]
    expected = torch.stack([torch.stack([q_s.T @ (g[c, n].T @ a[n]) @ q_a for n in range(5)]) for c in range(2)])
    for order in (True, False, None):
        torch.testing.assert_close(rotated_gradients(a, g, q_a, q_s, rotate_patches=order), expected)


@pytest.mark.parametrize("n_groups", [None, 10, 4])
def test_the_training_side_summed_from_captured_pairs_equals_rotated_group_gradients(resnet, n_groups):
    """A fresh EK-FAC fit sums the training side from its correction pass's captured pairs
    (the rows outside the curvature sample back-propagate only the loss there, or, for groups
    of 32 points or more, give group gradients); a fit on reloaded factors captures them in a
    pass of its own; one whose training side does not fit ``cache_bytes`` streams group
    gradients at attribution against the test side taken back to the parameters. On a conv
    net with BatchNorm: the same scores and self-influence."""
    model, train, test = resnet
    groups = None if n_groups is None else make_grouping("random", n_groups, seed=0).fit(train)
    options = {"curvature_samples": 120, "chunk_examples": 64}
    fused, fused_method = _scores("if-ekfac", model, train, test, groups=groups, **options)
    reloaded, reloaded_method = _scores("if-ekfac", model, train, test, groups=groups, **options)
    small, small_method = _scores("if-ekfac", model, train, test, groups=groups, cache_factors=False,
                                  cache_bytes=1, **options)
    sides = [method.solver_info_[0]["training_side"] for method in (fused_method, reloaded_method, small_method)]
    captured = 120 if n_groups == 4 else 200  # groups of 50: the other 80 rows by group gradients
    assert sides[0] == (f"in the eigenbasis, at fit: {captured} rows from captured layer pairs (120 of them in the "
                        f"correction pass), {200 - captured} from group gradients")
    reloaded_captured = 0 if n_groups == 4 else 200  # no correction pass to ride along
    assert sides[1] == (f"in the eigenbasis, at fit: {reloaded_captured} rows from captured layer pairs (0 of them "
                        f"in the correction pass), {200 - reloaded_captured} from group gradients")
    assert sides[2] == "group gradients at attribution (the test side taken back to the parameters)"
    assert reloaded_method.solver_info_[0]["factor_cache"] == "reused"
    scale = np.abs(fused).max()
    for other in (reloaded, small):
        np.testing.assert_allclose(other, fused, rtol=1e-3, atol=1e-5 * scale)
    expected = fused_method.self_influence()
    for method in (reloaded_method, small_method):
        np.testing.assert_allclose(method.self_influence(), expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())


def test_factors_are_fitted_on_a_seeded_subset_of_at_least_twice_the_widest_linear_input(mlp):
    """factor_samples rows of the curvature sample give A and S; they are raised to twice the
    widest Linear input (65 here, the 64 pixels and the bias), and the correction keeps all rows."""
    model, train, test = mlp
    fitted = {rows: _scores("if-ekfac", model, train, test, cache_factors=False, factor_samples=rows)[1]
              for rows in (10, 200, None)}
    info = {rows: method.solver_info_[0] for rows, method in fitted.items()}
    assert info[10]["factor_samples"] == 130 and info[200]["factor_samples"] == 200
    assert info[None]["factor_samples"] == info[None]["curvature_samples"] == len(train)
    assert all(value["curvature_samples"] == len(train) for value in info.values())
    again = _scores("if-ekfac", model, train, test, cache_factors=False, factor_samples=200)[1]
    assert torch.equal(again.factors_[0].activation[0][0], fitted[200].factors_[0].activation[0][0])  # seeded
    assert not torch.allclose(fitted[200].factors_[0].activation[0][0], fitted[None].factors_[0].activation[0][0])
