"""Data loading and splitting; model training, checkpoints and safe save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gda_core.errors import GDAError
from gda_core.inputs.datasets import BUILTIN_DATASETS, Dataset, load_builtin
from gda_core.inputs.zoo import (
    ModelConfig,
    TrainConfig,
    default_train_config,
    demo_model,
    load_model,
    model_config_for,
    model_score,
    save_model,
    train_model,
)


@pytest.mark.parametrize("name,n_features,n_classes", [("digits", 64, 10), ("breast_cancer", 30, 2), ("wine", 13, 3)])
def test_builtin_sets_are_standardised_and_split(name, n_features, n_classes):
    split = load_builtin(name, seed=0)
    assert split.train.n_features == n_features and split.train.n_classes == n_classes
    total = len(split.train) + len(split.test)
    assert abs(len(split.test) / total - 0.2) < 0.01
    assert not set(split.train.indices) & set(split.test.indices)
    mean, std = split.train.features.mean(0), split.train.features.std(0)
    varying = std > 1e-6
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std[varying], torch.ones_like(std[varying]), atol=1e-2)
    again = load_builtin(name, seed=0)
    np.testing.assert_array_equal(split.train.indices, again.train.indices)
    other = load_builtin(name, seed=1)
    assert not np.array_equal(split.train.indices, other.train.indices)


def test_digits_keep_raw_images_for_display():
    split = load_builtin("digits")
    assert split.train.image_shape == (1, 8, 8)  # (channels, height, width)
    assert split.train.images.shape == (len(split.train), 1, 8, 8)
    assert split.train.images.max() == 16.0  # raw pixel intensities, not standardised


def test_unknown_data_set():
    with pytest.raises(GDAError, match="unknown data set 'cifar10'; choose from: digits"):
        load_builtin("cifar10")
    assert set(BUILTIN_DATASETS) == {"digits", "mnist", "breast_cancer", "wine", "diabetes", "reviews", "digits-noisy"}


@pytest.mark.parametrize("features,labels,message", [
    (torch.full((3, 2), float("nan")), [0, 1, 0], "NaN"),
    (torch.zeros(3, 2), [0, 1], "one label per row"),
    (torch.zeros(3, 2), [0, 1, 5], "labels must lie in 0..1"),
    (torch.zeros(0, 2), [], "empty"),
])
def test_dataset_validation(features, labels, message):
    with pytest.raises(GDAError, match=message):
        Dataset(features, torch.tensor(labels, dtype=torch.long), ["a", "b"])


@pytest.mark.parametrize("arch", ["logreg", "mlp", "cnn"])
def test_save_and_load_round_trip(zoo, small_digits, tmp_path, arch):
    trained = zoo[arch]
    save_model(trained, tmp_path / arch)
    loaded = load_model(tmp_path / arch)
    _, test = small_digits
    torch.testing.assert_close(loaded.module(test.features), trained.module(test.features))
    assert len(loaded.checkpoints) == len(trained.checkpoints)
    for mine, theirs in zip(loaded.checkpoints, trained.checkpoints):
        assert mine.lr == theirs.lr and mine.epoch == theirs.epoch
        for name in theirs.state:
            torch.testing.assert_close(mine.state[name], theirs.state[name])
    assert loaded.fingerprint() == trained.fingerprint()


def test_corrupt_or_mismatched_weights_fail_cleanly(zoo, tmp_path):
    save_model(zoo["mlp"], tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(GDAError, match="not a valid safetensors"):
        load_model(tmp_path / "m")
    save_model(zoo["mlp"], tmp_path / "m2")
    config = json.loads((tmp_path / "m2" / "config.json").read_text())
    config["model"]["hidden"] = [8]
    (tmp_path / "m2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(GDAError, match="weights do not fit"):
        load_model(tmp_path / "m2")
    with pytest.raises(GDAError, match="needs both"):
        load_model(tmp_path / "missing")


def test_training_is_seeded_and_records_checkpoints(small_digits):
    train, test = small_digits
    config = model_config_for("mlp", train, hidden=(16,))
    settings = TrainConfig(epochs=6, lr=3e-3, batch_size=32, seed=4, n_checkpoints=3)
    first, second = train_model(config, train, settings), train_model(config, train, settings)
    assert first.fingerprint() == second.fingerprint()
    assert [c.epoch for c in first.checkpoints] == [2, 4, 6]
    final = {k: v for k, v in first.module.state_dict().items()}
    for name, value in first.checkpoints[-1].state.items():
        torch.testing.assert_close(value, final[name])
    assert model_score(first.module, test) > 0.8


def test_logistic_regression_is_trained_to_its_optimum(small_digits):
    train, _ = small_digits
    settings = default_train_config("logreg")
    trained = train_model(model_config_for("logreg", train), train, settings)
    module = trained.module
    module.zero_grad()
    loss = torch.nn.functional.cross_entropy(module(train.features), train.labels)
    loss = loss + 0.5 * settings.weight_decay * sum((p * p).sum() for p in module.parameters())
    loss.backward()
    gradient_norm = float(torch.cat([p.grad.reshape(-1) for p in module.parameters()]).norm())
    assert gradient_norm < 1e-3


def test_demo_model_is_trained_once_then_loaded(small_digits, tmp_path):
    train, _ = small_digits
    calls = []
    first = demo_model("logreg", train, tmp_path, progress=calls.append)
    assert calls  # trained
    calls.clear()
    second = demo_model("logreg", train, tmp_path, progress=calls.append)
    assert not calls  # loaded from the cache
    assert first.fingerprint() == second.fingerprint()


def test_model_config_validation():
    with pytest.raises(GDAError, match="unknown model"):
        ModelConfig(arch="vit", n_features=4, n_classes=2)
    with pytest.raises(GDAError, match="the resnet model needs image data"):
        ModelConfig(arch="resnet", n_features=4, n_classes=2)
    with pytest.raises(GDAError, match="at least 16x16 pixels, got \\(1, 8, 8\\); use the cnn"):
        ModelConfig(arch="resnet", n_features=64, n_classes=2, image_shape=(8, 8))
    with pytest.raises(GDAError, match="needs image data"):
        ModelConfig(arch="cnn", n_features=30, n_classes=2)
    with pytest.raises(GDAError, match="unknown optimizer"):
        TrainConfig(optimizer="rmsprop")
