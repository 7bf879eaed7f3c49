"""Group gradients are sums of per-example gradients, for every zoo model and mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gda_core.attribution.grads import GradientEngine, RandomProjector, group_members
from gda_core.task import CLASSIFICATION


def _brute_force_gradient(module, features, label, objective):
    module.zero_grad()
    logits = module(features[None])
    CLASSIFICATION.objective(objective)(logits, label[None]).sum().backward()
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()]).clone()


@pytest.mark.parametrize("arch", ["logreg", "mlp", "cnn"])
def test_group_gradient_equals_sum_of_member_gradients(zoo, small_digits, arch):
    train, _ = small_digits
    # A tiny chunk budget forces padding, several groups per chunk, and split large groups.
    engine = GradientEngine(zoo[arch].module, chunk_examples=37)
    labels = np.random.default_rng(1).integers(0, 9, len(train))
    labels[:60] = 9  # one group larger than the chunk budget
    per_example = engine.stacked(engine.per_example_gradients(train), len(train))
    grouped = engine.stacked(engine.group_gradients(train, labels, 10), 10)
    summed = torch.zeros_like(grouped).index_add_(0, torch.as_tensor(labels), per_example)
    torch.testing.assert_close(grouped, summed, rtol=1e-4, atol=1e-5)


def test_groups_larger_than_one_backward_are_summed_over_pieces_and_chunks_fit_the_device_budget(zoo, small_digits):
    import gda_core.attribution.grads as grads

    train, _ = small_digits
    engine = GradientEngine(zoo["cnn"].module)  # the default bounds: pieces of BACKWARD_ROWS
    labels = (np.arange(len(train)) >= 330).astype(np.int64)  # groups of 330 and 70 points
    assert 330 > grads.BACKWARD_ROWS
    per_example = engine.stacked(engine.per_example_gradients(train), len(train))
    grouped = engine.stacked(engine.group_gradients(train, labels, 2), 2)
    summed = torch.zeros_like(grouped).index_add_(0, torch.as_tensor(labels), per_example)
    torch.testing.assert_close(grouped, summed, rtol=1e-4, atol=1e-5)
    # Rows of per-example gradients at once: the caller's bound, or the device's byte budget.
    cpu = torch.zeros(1)
    assert grads.chunk_rows(1024, 2**20, cpu) == grads.CPU_CHUNK_BYTES // 2**22 == 8
    assert grads.chunk_rows(4, 2**20, cpu) == 4 and grads.chunk_rows(1024, 2**40, cpu) == 1

    class OnCuda:  # chunk_rows asks a reference tensor only for its device and element size
        device = torch.device("cuda")

        def element_size(self):
            return 4

    assert grads.chunk_rows(1024, 2**20, OnCuda()) == 256  # 1 GiB on the device
    assert engine.chunk_examples == grads.chunk_rows(1024, engine.space.dim, cpu)


@pytest.mark.parametrize("last_layer_only", [False, True])
def test_backward_and_vmap_group_paths_agree(zoo, small_digits, monkeypatch, last_layer_only):
    """Large groups take one ordinary backward each, small ones share a vmap: the two paths
    give the same weighted group gradients, and a program's functional_call works in both."""
    import gda_core.attribution.grads as grads

    train, _ = small_digits
    labels = np.random.default_rng(2).integers(0, 6, len(train))
    weights = torch.rand(len(train), generator=torch.Generator().manual_seed(3))
    results = []
    for threshold in (10**9, 2):  # vmap only, then backward for every group of 2 or more
        monkeypatch.setattr(grads, "BACKWARD_GROUP_SIZE", threshold)
        engine = GradientEngine(zoo["cnn"].module, last_layer_only=last_layer_only, chunk_examples=50)
        results.append(engine.stacked(engine.group_gradients(train, labels, 6, weights=weights), 6))
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("objective", ["loss", "margin", "log-odds"])
def test_per_example_gradients_match_autograd(zoo, small_digits, objective):
    train, _ = small_digits
    module = zoo["mlp"].module
    engine = GradientEngine(module)
    rows = [0, 5, 17]
    subset = train.subset(rows)
    batched = engine.stacked(engine.per_example_gradients(subset, objective=objective), len(rows))
    for slot, row in enumerate(rows):
        expected = _brute_force_gradient(module, train.features[row], train.labels[row], objective)
        torch.testing.assert_close(batched[slot], expected, rtol=1e-4, atol=1e-6)


def test_weighted_group_gradient(zoo, small_digits):
    train, _ = small_digits
    engine = GradientEngine(zoo["mlp"].module)
    weights = torch.rand(len(train), generator=torch.Generator().manual_seed(0))
    per_example = engine.stacked(engine.per_example_gradients(train), len(train))
    total = engine.stacked(engine.group_gradients(train, np.zeros(len(train)), 1, weights=weights), 1)
    torch.testing.assert_close(total[0], weights @ per_example, rtol=1e-4, atol=1e-5)


def test_last_layer_mode_is_the_head_block_of_the_full_gradient(zoo, small_digits):
    train, _ = small_digits
    module = zoo["mlp"].module
    full = GradientEngine(module)
    last = GradientEngine(module, last_layer_only=True)
    full_gradients = full.stacked(full.per_example_gradients(train.subset(slice(0, 20))), 20)
    last_gradients = last.stacked(last.per_example_gradients(train.subset(slice(0, 20))), 20)
    head_size = sum(p.numel() for p in module.head.parameters())
    assert last.space.dim == head_size
    torch.testing.assert_close(last_gradients, full_gradients[:, -head_size:], rtol=1e-4, atol=1e-6)


def test_margin_is_correct_logit_minus_best_other():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    labels = torch.tensor([1, 0])
    # Negative margin: best other logit minus the correct one (lower is better).
    torch.testing.assert_close(CLASSIFICATION.objective("margin")(logits, labels), torch.tensor([2.0 - 5.0, 3.0 - 0.0]))
    probability = torch.softmax(logits, 1)[0, 1]
    torch.testing.assert_close(CLASSIFICATION.objective("log-odds")(logits, labels)[0], -torch.log(probability / (1 - probability)))


def test_projection_preserves_inner_products_on_average():
    vectors = torch.randn(20, 3000, generator=torch.Generator().manual_seed(0))
    projector = RandomProjector(3000, 2048, seed=3)
    projected = projector.project(vectors)
    exact, approx = vectors @ vectors.T, projected @ projected.T
    assert torch.corrcoef(torch.stack([exact.flatten(), approx.flatten()]))[0, 1] > 0.98
    # Deterministic by seed, also when the matrix is regenerated block by block.
    uncached = RandomProjector(3000, 2048, seed=3, cache_bytes=0)
    torch.testing.assert_close(uncached.project(vectors), projected)


def test_group_members_partition():
    labels = np.array([2, 0, 2, 1, 0])
    members = group_members(labels, 3)
    assert [m.tolist() for m in members] == [[1, 4], [3], [0, 2]]


@pytest.mark.parametrize("grouped", [False, True], ids=["per-example", "grouped"])
def test_the_head_subset_of_a_zoo_model_runs_its_features_once(zoo, small_digits, grouped):
    """``--parameters head`` cuts a zoo model before its head (the frozen prefix is its
    ``features``); the gradients are those of running the whole model for every gradient."""
    train, _ = small_digits
    model = zoo["cnn"].module
    cut = GradientEngine(model, parameters="head", chunk_examples=64)
    whole = GradientEngine(model, parameters="head", chunk_examples=64, frozen_prefix=False)
    assert cut.prefix_description.startswith("the features") and whole.prefix is None
    assert cut.space.names == whole.space.names == ["head.weight", "head.bias"]
    labels = np.arange(len(train)) % 7 if grouped else np.arange(len(train))
    n_groups = int(labels.max()) + 1
    torch.testing.assert_close(cut.stacked(cut.group_gradients(train, labels, n_groups), n_groups),
                               whole.stacked(whole.group_gradients(train, labels, n_groups), n_groups),
                               rtol=1e-4, atol=1e-6)
    assert cut.inputs(train).shape == (len(train), model.head.in_features)
