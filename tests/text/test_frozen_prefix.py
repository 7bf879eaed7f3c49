"""The frozen prefix: with a parameter subset, the layers before the first differentiated
parameter run once per data set and only the rest is differentiated; the scores are those of
running the whole model for every gradient (tiny BERT from the test's fixtures)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gda_core.attribution.factored import FactoredEngine, KroneckerProjector, make_projector
from gda_core.attribution.grads import GradientEngine, _prefix_cache, frozen_split
from gda_core.attribution.grouping import make_grouping
from gda_core.attribution.methods.base import make_method
from gda_core.errors import GDAError
from gda_core.inputs.huggingface import _Prefix

from .tiny import tiny_inputs

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return tiny_inputs(tmp_path_factory.mktemp("prefix"))[:2]


@pytest.mark.parametrize("spec, frozen", [("head", "encoder layers 0-1"), ("last-1", "encoder layer 0"),
                                          ("last-2", "the embeddings")])
def test_the_split_reproduces_the_logits_and_keeps_parameter_names(loaded, spec, frozen):
    split, model = loaded
    module, ids = model.module, split.train.features
    names = module.parameter_subset(spec)
    prefix, suffix, description = frozen_split(module, names)
    assert description.endswith(frozen)
    with torch.no_grad():
        torch.testing.assert_close(suffix(prefix(ids)), module(ids), rtol=0, atol=1e-6)
    assert set(names) <= {name for name, _ in suffix.named_parameters()}
    assert frozen_split(module, module.parameter_subset("all")) is None  # the embeddings are differentiated


def test_the_prefix_runs_once_per_data_set(loaded):
    split, model = loaded
    _prefix_cache(model.module).clear()
    engine = GradientEngine(model.module, parameters="last-1")
    calls = []
    prefix = engine.prefix
    engine.prefix = lambda ids: calls.append(len(ids)) or prefix(ids)
    first = engine.inputs(split.train)
    again = engine.inputs(split.train.subset(np.arange(len(split.train))))  # the same content, a new tensor
    assert again is first and calls == [len(split.train)]
    assert first.shape == (*split.train.features.shape, model.module.model.config.hidden_size + 1)
    # Another engine with the same cut on the same module shares the output; another cut does not.
    assert GradientEngine(model.module, parameters="last-1").inputs(split.train) is first
    assert GradientEngine(model.module, parameters="head").inputs(split.train).shape == first.shape
    assert calls == [len(split.train)]
    # A change to the model's weights (in place) is a miss, not stale data.
    embeddings = model.module.model.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        embeddings.mul_(1.0)
    assert engine.inputs(split.train) is not first and calls == [len(split.train)] * 2


@pytest.mark.parametrize("grouping", ["repr-kmeans", "grad-kmeans"])
@pytest.mark.parametrize("spec", ["last-1", "head"])
def test_grouping_features_through_the_prefix_equal_those_without_and_share_it(loaded, monkeypatch, grouping, spec):
    split, model = loaded
    module, train = model.module, split.train
    _prefix_cache(module).clear()
    plain = make_grouping(grouping, 5, seed=0)
    reference = plain.grouping_features(train, module)  # no engine: the whole model
    method = make_method("grad-dot", model, parameters=spec)
    calls = []
    original = _Prefix.__call__
    monkeypatch.setattr(_Prefix, "__call__", lambda self, ids: calls.append(len(ids)) or original(self, ids))
    through = make_grouping(grouping, 5, seed=0)
    groups = through.fit(train, module, engine=method.engine())
    np.testing.assert_allclose(through.grouping_features(train, module), reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(groups.labels, plain.fit(train, module).labels)
    method.fit(train, groups).attribute(split.test.subset(slice(0, 2)))
    assert calls.count(len(train)) == 1  # the grouping's prefix pass is the method's
    with pytest.raises(GDAError, match="engine must be on the grouping's model"):
        make_grouping(grouping, 5).fit(train, module, engine=GradientEngine(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("method, options", [
    ("grad-dot", {}), ("trak", {"projection_dim": 16}), ("if-arnoldi", {"rank": 4, "iterations": 8}),
    ("if-ekfac", {}),
])
@pytest.mark.parametrize("grouped", [False, True], ids=["per-example", "grouped"])
def test_scores_with_the_frozen_prefix_equal_those_without(loaded, method, options, grouped):
    split, model = loaded
    groups = (make_grouping("repr-kmeans", 4, seed=0) if grouped else make_grouping("per-example", None)) \
        .fit(split.train, model.module)
    test = split.test.subset(slice(0, 4))
    scores = {}
    for cached in (True, False):
        fitted = make_method(method, model, parameters="last-1", frozen_prefix=cached, **options)
        scores[cached] = fitted.fit(split.train, groups).attribute(test)
        assert fitted.views_[0].engine.prefix_description.startswith(
            "the embeddings and encoder layer 0: run once" if cached else "none: the whole model runs")
    np.testing.assert_allclose(scores[True], scores[False], rtol=1e-4, atol=1e-6 * np.abs(scores[False]).max())


def test_layernorm_is_factored_and_a_kronecker_projection_projects_it_densely(loaded):
    split, model = loaded
    engine = FactoredEngine(model.module, parameters="last-1")
    sample = split.train.subset(slice(0, 30))
    assert engine.factored and engine.has_layer_norms and engine.check(sample), engine.path
    gradients = engine.stacked(engine.per_example_gradients(sample), 30).double()
    # LayerNorm's factors (elementwise, summed over the tokens) and the layers' against vmap
    reference = GradientEngine(model.module, parameters="last-1")
    vmapped = reference.stacked(reference.per_example_gradients(sample), 30).double()
    assert float((gradients - vmapped).norm() / vmapped.norm()) < 1e-5
    layernorm_columns = torch.cat([torch.arange(sl.start, sl.stop) for name, sl in engine.layout.offsets.items()
                                   if "LayerNorm" in name])
    assert vmapped[:, layernorm_columns].abs().max() > 0
    torch.testing.assert_close(gradients[:, layernorm_columns], vmapped[:, layernorm_columns], rtol=1e-4, atol=1e-7)
    layernorm = sum(p.numel() for name, p in engine.params.items() if "LayerNorm" in name)
    full = make_projector(engine, engine.space.dim, seed=0)
    assert isinstance(full, KroneckerProjector) and full.dim == engine.space.dim  # every factor the identity
    assert full.info()["dense_parameters"] == layernorm == full.info()["dense_dim"]
    torch.testing.assert_close(full.project(gradients) @ full.project(gradients).T, gradients @ gradients.T)
    factors = [f for _, f in engine.factor_chunks(sample)]
    torch.testing.assert_close(torch.cat([full.project_factors(f) for f in factors]).double(), full.project(gradients),
                               rtol=1e-4, atol=1e-6)
    rest = gradients[:, full.rest_columns]
    gram, errors = rest @ rest.T, []
    for seed in range(4):
        small = make_projector(engine, 1200, seed=seed)
        assert 1000 <= small.dim <= 1400 and 0 < small.info()["dense_dim"] < layernorm
        projected = small.project(gradients)[:, -small.rest_dim:]  # the dense part comes last
        errors.append(float((projected @ projected.T - gram).norm() / gram.norm()))
    assert np.mean(errors) < 0.5  # unbiased: roughly 1/sqrt(k) relative error
    groups = make_grouping("per-example", None).fit(split.train, model.module)
    trak = make_method("trak", model, parameters="last-1", projection_dim=64).fit(split.train, groups)
    trak.attribute(split.test.subset(slice(0, 2)))
    projection = trak.solver_info_[0]["projection"]
    assert projection["kind"] == "kronecker" and projection["dense_parameters"] == layernorm
