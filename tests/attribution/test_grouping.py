"""Groupings are partitions into exactly K non-empty groups, deterministic by seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gda_core.attribution.grouping import Groups, cap_groups, kmeans_labels, make_grouping, size_cap
from gda_core.errors import GDAError
from gda_core.inputs.datasets import Dataset
from gda_core.registry import GROUPINGS

SIZED = [name for name, cls in GROUPINGS.items() if not cls.fixed_group_count]


def test_registry_lists_every_grouping():
    expected = {"per-example", "random", "per-class", "inputs-kmeans", "repr-kmeans", "grad-kmeans",
                "inputs-kmeans-per-class", "repr-kmeans-per-class", "grad-kmeans-per-class"}
    assert expected == set(GROUPINGS)


@pytest.mark.parametrize("name", SIZED)
@pytest.mark.parametrize("n_groups", [1, 17, 60])
def test_partition_into_exactly_k_nonempty_groups(zoo, small_digits, name, n_groups):
    train, _ = small_digits
    if name.endswith("per-class") and n_groups < train.n_classes:
        with pytest.raises(GDAError, match="at least one group per class"):
            make_grouping(name, n_groups).fit(train, zoo["mlp"].module)
        return
    groups = make_grouping(name, n_groups, seed=3).fit(train, zoo["mlp"].module)
    assert groups.labels.shape == (len(train),)
    assert groups.n_groups == n_groups
    assert set(np.unique(groups.labels)) == set(range(n_groups))
    again = make_grouping(name, n_groups, seed=3).fit(train, zoo["mlp"].module)
    np.testing.assert_array_equal(groups.labels, again.labels)
    if name.endswith("per-class"):
        # every group holds one class only
        classes = train.labels.numpy()
        assert all(len(np.unique(classes[groups.labels == k])) == 1 for k in range(n_groups))


def test_random_grouping_depends_on_seed_and_is_balanced(small_digits):
    train, _ = small_digits
    first = make_grouping("random", 30, seed=0).fit(train)
    second = make_grouping("random", 30, seed=1).fit(train)
    assert not np.array_equal(first.labels, second.labels)
    assert first.sizes.max() - first.sizes.min() <= 1


def test_fixed_groupings(small_digits):
    train, _ = small_digits
    per_example = make_grouping("per-example").fit(train)
    assert per_example.n_groups == len(train) and (per_example.sizes == 1).all()
    per_class = make_grouping("per-class").fit(train)
    assert per_class.n_groups == 10
    np.testing.assert_array_equal(per_class.labels, train.labels.numpy())
    with pytest.raises(GDAError, match="K = number of classes"):
        make_grouping("per-class", 4).fit(train)


def test_kmeans_with_duplicate_points_still_gives_k_groups():
    """Fewer distinct points than clusters: empty clusters are filled, never dropped."""
    features = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)  # 3 distinct points, 30 rows
    labels = kmeans_labels(features, 7, seed=0)
    assert set(np.unique(labels)) == set(range(7))


def test_grad_kmeans_groups_are_more_alike_in_gradient_space_than_random(zoo, small_digits):
    from gda_core.attribution.grads import GradientEngine

    train, _ = small_digits
    engine = GradientEngine(zoo["mlp"].module, last_layer_only=True)
    gradients = engine.stacked(engine.per_example_gradients(train), len(train)).numpy()

    def within_spread(groups: Groups) -> float:
        return sum(((gradients[groups.labels == k] - gradients[groups.labels == k].mean(0)) ** 2).sum()
                   for k in range(groups.n_groups))

    kmeans = make_grouping("grad-kmeans", 20).fit(train, zoo["mlp"].module)
    random = make_grouping("random", 20).fit(train)
    assert within_spread(kmeans) < 0.7 * within_spread(random)


@pytest.mark.parametrize("n_groups", [0, -3, 401])
def test_bad_group_counts(small_digits, n_groups):
    train, _ = small_digits
    with pytest.raises(GDAError, match="between 1 and the training set size 400"):
        make_grouping("random", n_groups).fit(train)


def test_unknown_grouping_and_missing_model(small_digits):
    train, _ = small_digits
    with pytest.raises(GDAError, match="unknown grouping"):
        make_grouping("clusters", 5)
    with pytest.raises(GDAError, match="needs the trained model"):
        make_grouping("repr-kmeans", 5).fit(train)


def test_groups_validate_their_labels():
    with pytest.raises(GDAError, match="at least once"):
        Groups(np.array([0, 0, 2]), 3)
    tiny = Dataset(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), ["a", "b"])
    assert make_grouping("random", 4).fit(tiny).n_groups == 4


@pytest.mark.parametrize("name", [n for n in SIZED if "kmeans" in n])
@pytest.mark.parametrize("n_groups", [10, 25, 80])
def test_no_kmeans_group_exceeds_the_size_cap(zoo, small_digits, name, n_groups):
    train, _ = small_digits
    groups = make_grouping(name, n_groups).fit(train, zoo["mlp"].module)
    assert groups.sizes.max() <= size_cap(len(train), n_groups)
    assert groups.size_warning() is None


def test_capping_splits_a_giant_group_and_keeps_k_groups():
    """The collapse K-means on raw gradients gives: one group of 90 points near the origin
    and ten singletons; the cap spreads the giant group, keeps every group non-empty and
    leaves the outliers alone."""
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 0.01, (90, 2)), rng.normal(0, 5, (10, 2))]).astype(np.float32)
    labels = np.concatenate([np.zeros(90, dtype=np.int64), np.arange(1, 11)])
    before = Groups(labels, 11)
    assert before.size_warning().startswith("the largest group holds 90 of 100 points (90%)")
    capped = Groups(cap_groups(labels, features, 11, size_cap(100, 11)), 11)
    assert capped.sizes.max() <= size_cap(100, 11) == 19 and capped.size_warning() is None
    np.testing.assert_array_equal(capped.labels[90:], labels[90:])  # the outliers keep their groups
    with pytest.raises(GDAError, match="a cap of 5 points cannot hold 100 points in 11 groups"):
        cap_groups(labels, features, 11, 5)


def test_raw_gradient_scaling_is_an_option(zoo, small_digits):
    train, _ = small_digits
    raw = make_grouping("grad-kmeans", 20, gradient_scaling="raw").fit(train, zoo["mlp"].module)
    direction = make_grouping("grad-kmeans", 20).fit(train, zoo["mlp"].module)
    assert raw.sizes.max() <= size_cap(len(train), 20) and not np.array_equal(raw.labels, direction.labels)
    with pytest.raises(GDAError, match="gradient_scaling must be one of direction, raw, got 'log'"):
        make_grouping("grad-kmeans", 20, gradient_scaling="log").fit(train, zoo["mlp"].module)


def test_last_layer_features_equal_projected_vmap_gradients(zoo, small_digits):
    """The one-forward-pass features are the vmap last-layer gradients (weight then bias,
    rearranged as output x [input, 1]) projected by the same Kronecker product."""
    from gda_core.attribution.grads import GradientEngine
    from gda_core.attribution.grouping import kronecker_dims, last_layer_gradient_features

    train, _ = small_digits
    module = zoo["mlp"].module
    features = last_layer_gradient_features(module, train, dim=64, seed=5)
    engine = GradientEngine(module, last_layer_only=True)
    gradients = engine.space.unflatten(engine.stacked(engine.per_example_gradients(train), len(train)))
    outer = torch.cat([gradients["weight"], gradients["bias"][:, :, None]], dim=2)  # (n, C, H + 1)
    n_outputs, n_inputs = module.head.weight.shape
    out_dim, in_dim = kronecker_dims(n_outputs, n_inputs + 1, 64)
    generator = torch.Generator().manual_seed(5)
    out_projection = torch.randn(n_outputs, out_dim, generator=generator) / np.sqrt(out_dim)
    in_projection = torch.randn(n_inputs + 1, in_dim, generator=generator) / np.sqrt(in_dim)
    expected = torch.einsum("nci,cp,iq->npq", outer, out_projection, in_projection).reshape(len(train), -1)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-6)
    # and the Kronecker projection roughly keeps inner products of the full last-layer gradients (0.74
    # measured at 8 x 8 dimensions on this model)
    flat = outer.reshape(len(train), -1)
    exact, approx = flat @ flat.T, features @ features.T
    assert np.corrcoef(exact.flatten().numpy(), approx.flatten().numpy())[0, 1] > 0.6


def test_grad_kmeans_does_not_collapse_on_the_demo(digits):
    """The measured fault: on digits / MLP at K = 50, raw-gradient K-means put 86% of the
    points in one group. Gradient directions, capped, spread them."""
    from gda_core.inputs.zoo import default_train_config, model_config_for, train_model

    train = digits.train
    model = train_model(model_config_for("mlp", train), train, default_train_config("mlp"))
    groups = make_grouping("grad-kmeans", 50).fit(train, model.module)
    summary = groups.size_summary()
    assert summary["largest"] <= size_cap(len(train), 50) and summary["median"] >= 0.5 * len(train) / 50
