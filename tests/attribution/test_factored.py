"""The factored per-example path (per-layer activations x output gradients) against the vmap
reference: gradients, inner products, norms, projections and whole methods, for an MLP, a
CNN (Conv2d), a bias-free layer, per-example and grouped mode and last-layer mode; and the
fallbacks to vmap, which say why."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gda_core.attribution.factored import FactoredEngine, KroneckerProjector, factor_dot, factor_sq_norms
from gda_core.attribution.grads import GradientEngine
from gda_core.attribution.grouping import Groups, make_grouping
from gda_core.attribution.methods import make_method
from gda_core.inputs.zoo import TrainedModel, ZooModel

RTOL = 1e-5


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _no_bias_model(n_features: int) -> ZooModel:
    torch.manual_seed(0)
    return ZooModel(nn.Sequential(nn.Linear(n_features, 12, bias=False), nn.Tanh()), nn.Linear(12, 10)).eval()


@pytest.fixture(scope="module")
def modules(zoo, small_digits):
    train, _ = small_digits
    return {"mlp": zoo["mlp"].module, "cnn": zoo["cnn"].module, "no-bias": _no_bias_model(train.features.shape[1])}


@pytest.mark.parametrize("name", ["mlp", "cnn", "no-bias"])
@pytest.mark.parametrize("last_layer_only", [False, True])
def test_factored_gradients_products_and_norms_match_vmap(modules, small_digits, name, last_layer_only):
    train, test = small_digits
    module = modules[name]
    train, test = train.subset(slice(0, 50 if name != "cnn" else 20)), test.subset(slice(0, 7))
    reference = GradientEngine(module, last_layer_only=last_layer_only, chunk_examples=16)
    engine = FactoredEngine(module, last_layer_only=last_layer_only, chunk_examples=16)
    assert engine.factored and engine.check(train)
    assert engine.path.startswith("factored")
    gradients = reference.stacked(reference.per_example_gradients(train), len(train))
    factored = engine.stacked(engine.per_example_gradients(train), len(train))
    assert _relative(factored, gradients) < RTOL
    weights = torch.rand(len(train))  # TRAK's residual weights go through the cotangent
    weighted = reference.stacked(reference.per_example_gradients(train, weights=weights), len(train))
    assert _relative(engine.stacked(engine.per_example_gradients(train, weights=weights), len(train)), weighted) < RTOL
    test_factors = next(engine.factor_chunks(test))[1]
    train_factors = [f for _, f in engine.factor_chunks(train)]
    dots = torch.cat([factor_dot(test_factors, f) for f in train_factors], dim=1)
    assert _relative(dots, reference.test_gradients(test) @ gradients.T) < RTOL
    norms = torch.cat([factor_sq_norms(f) for f in train_factors])
    assert _relative(norms, (gradients ** 2).sum(1)) < RTOL
    projector = KroneckerProjector(engine, engine.layers, 64, seed=3)
    assert _relative(torch.cat([projector.project_factors(f) for f in train_factors]), projector.project(gradients)) < RTOL


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_factors_match_vmap(small_digits, bias):
    """A LayerNorm's per-example gradient is elementwise (weight: d * xhat, bias: d): the
    factored path covers it and agrees with vmap, in gradients, products, norms and a
    Kronecker projection (which projects it densely)."""
    train, test = small_digits
    train, test = train.subset(slice(0, 40)), test.subset(slice(0, 5))
    torch.manual_seed(0)
    width = train.features.shape[1]
    norm = nn.LayerNorm(8, bias=bias)
    module = ZooModel(nn.Sequential(nn.Linear(width, 8), norm, nn.Tanh()), nn.Linear(8, 10)).eval()
    with torch.no_grad():  # not the identity affine map it starts as
        norm.weight.normal_()
        if bias:
            norm.bias.normal_()
    reference = GradientEngine(module, chunk_examples=16)
    engine = FactoredEngine(module, chunk_examples=16)
    assert engine.factored and engine.has_layer_norms and engine.check(train), engine.path
    gradients = reference.stacked(reference.per_example_gradients(train), len(train))
    assert _relative(engine.stacked(engine.per_example_gradients(train), len(train)), gradients) < RTOL
    train_factors = [f for _, f in engine.factor_chunks(train)]
    test_factors = next(engine.factor_chunks(test))[1]
    dots = torch.cat([factor_dot(test_factors, f) for f in train_factors], dim=1)
    assert _relative(dots, reference.test_gradients(test) @ gradients.T) < RTOL
    assert _relative(torch.cat([factor_sq_norms(f) for f in train_factors]), (gradients ** 2).sum(1)) < RTOL
    projector = KroneckerProjector(engine, engine.layers, 40, seed=1)
    assert projector.info()["dense_parameters"] == 8 * (1 + bias)
    assert _relative(torch.cat([projector.project_factors(f) for f in train_factors]),
                     projector.project(gradients)) < RTOL
    method = make_method("grad-dot", TrainedModel(module, None)).fit(train, Groups(np.arange(len(train)), len(train)))
    assert method.gradient_path_["train_side"].startswith("factored")
    np.testing.assert_allclose(method.attribute(test), (reference.test_gradients(test) @ gradients.T).numpy(),
                               rtol=1e-4, atol=1e-7)


def test_kronecker_projection_keeps_inner_products_and_is_exact_at_full_size(modules, small_digits):
    train, _ = small_digits
    engine = FactoredEngine(modules["mlp"])
    gradients = engine.stacked(engine.per_example_gradients(train.subset(slice(0, 40))), 40).double()
    full = KroneckerProjector(engine, engine.layers, engine.space.dim)
    assert full.dim == engine.space.dim  # identity factors: no projection at all
    assert torch.allclose(full.project(gradients) @ full.project(gradients).T, gradients @ gradients.T, rtol=1e-10)
    gram = gradients @ gradients.T
    errors = []
    for seed in range(4):
        small = KroneckerProjector(engine, engine.layers, 400, seed=seed)
        assert 300 <= small.dim <= 500
        projected = small.project(gradients)
        errors.append(_relative(projected @ projected.T, gram))
    assert np.mean(errors) < 0.5  # a random projection, unbiased: roughly 1/sqrt(k) relative error


# Every method on both models, except Lanczos on the CNN (half a minute; its gradients are
# covered by the other methods on the CNN).
FACTORED_METHODS = ("grad-dot", "grad-cos", "tracin", "if-arnoldi", "datainf", "trak")


@pytest.mark.parametrize("method, arch", [(method, arch) for arch in ("mlp", "cnn") for method in FACTORED_METHODS
                                          if (method, arch) != ("if-arnoldi", "cnn")])
def test_methods_on_the_factored_path_match_the_vmap_reference(zoo, small_digits, monkeypatch, method, arch):
    from gda_core.attribution.methods import base

    train, test = small_digits
    train, test = train.subset(slice(0, 80)), test.subset(slice(0, 6))
    model = zoo[arch]
    options = {"if-arnoldi": {"curvature_samples": 40, "rank": 8, "iterations": 12},
               "datainf": {"curvature_samples": 40},
               "trak": {"curvature_samples": 40, "projection_dim": 64, "seed_agreement": False}}.get(method, {})
    for grouping in ("per-example", "modulo"):
        groups = (make_grouping("per-example").fit(train) if grouping == "per-example"
                  else Groups(np.arange(len(train)) % 9, 9, "modulo"))
        fast = make_method(method, model, **options).fit(train, groups)
        scores = fast.attribute(test)
        monkeypatch.setattr(base, "FactoredEngine", _VmapOnly)
        reference = make_method(method, model, **options).fit(train, groups).attribute(test)
        monkeypatch.undo()
        if method == "trak":  # the same Kronecker projection, of factors or of vmap's gradients
            assert fast.solver_info_[0]["projection"]["kind"] == "kronecker"
        assert np.linalg.norm(scores - reference) / np.linalg.norm(reference) < RTOL * 10
        if grouping == "per-example":
            assert fast.gradient_path_["train_side"].startswith("factored")
            if method in ("grad-dot", "grad-cos", "tracin", "if-arnoldi"):  # Arnoldi: plus its low-rank term
                assert fast.gradient_path_["scores"].startswith("per-layer factored")
        else:
            assert fast.gradient_path_["train_side"].startswith("group sums")


class _VmapOnly(FactoredEngine):
    """The reference: every gradient from the parent's vmap path (the layers still known, so
    TRAK draws the same Kronecker projection and applies it to vmap's gradients)."""

    def check(self, data, objective="loss"):
        return False

    def group_gradients(self, *args, **kwargs):
        return GradientEngine.group_gradients(self, *args, **kwargs)


def test_fallbacks_to_vmap_name_the_reason(small_digits):
    train, test = small_digits
    train = train.subset(slice(0, 30))
    torch.manual_seed(0)
    width = train.features.shape[1]
    batchnorm = ZooModel(nn.Sequential(nn.Linear(width, 8), nn.BatchNorm1d(8), nn.Tanh()), nn.Linear(8, 10))
    engine = FactoredEngine(batchnorm.eval())
    assert not engine.factored and "parameters outside Linear/Conv2d" in engine.path
    engine = FactoredEngine(batchnorm.train())
    assert not engine.factored and "train mode" in engine.path
    # A weight used again outside its layer: the capture misses that use, and the check catches it.

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(width, width)

        def forward(self, x):
            return self.layer(x)[:, :10] + x @ self.layer.weight[:10].T

    engine = FactoredEngine(Tied().eval())
    assert engine.factored  # by its layers
    assert not engine.check(train) and "differ" in engine.path
    reference = GradientEngine(engine.module)
    assert _relative(engine.stacked(engine.per_example_gradients(train), len(train)),
                     reference.stacked(reference.per_example_gradients(train), len(train))) < RTOL


def test_warm_up_is_paid_once_per_process():
    from gda_core.attribution import factored

    factored._WARM.clear()
    assert factored.warm_up() > 0.0
    assert factored.warm_up() == 0.0 and factored._WARM["seconds"] > 0.0


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_factored_ggn_products_match_vmap(modules, small_digits, monkeypatch, name):
    from gda_core.attribution.methods import curvature

    train, _ = small_digits
    rows = np.arange(24)
    fast = curvature.CurvatureOperator(FactoredEngine(modules[name]), train, rows)
    reference = curvature.CurvatureOperator(GradientEngine(modules[name]), train, rows)
    assert fast.path.startswith("factored") and reference.path.startswith("vmap")
    vectors = torch.randn(3, fast.dim, generator=torch.Generator().manual_seed(0))
    assert _relative(fast.matvec(vectors), reference.matvec(vectors)) < RTOL
    subset = torch.tensor([1, 5, 7, 20])
    assert _relative(fast.matvec_rows(vectors, subset), reference.matvec_rows(vectors, subset)) < RTOL
    monkeypatch.setattr(curvature, "FACTORED_CHUNK_ELEMENTS", 1)  # one row per product: the same sums
    assert _relative(fast.matvec(vectors), reference.matvec(vectors)) < RTOL
    hessian = curvature.CurvatureOperator(FactoredEngine(modules[name]), train, rows, kind="hessian")
    assert hessian.path.startswith("vmap (the Hessian")
    monkeypatch.setattr(curvature, "FACTORED_GGN_BYTES", 1024)
    assert "MB (>" in curvature.CurvatureOperator(FactoredEngine(modules[name]), train, rows).path
