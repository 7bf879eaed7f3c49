"""Uploaded model configs name everything that changes the function (the activation), and
absurd or broken configs and weights are refused in one line, before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gda_core.attribution.pipeline import run_attribution
from gda_core.errors import GDAError
from gda_core.inputs.choices import load_model_choice
from gda_core.inputs.datasets import load_builtin
from gda_core.inputs.programs import export_program
from gda_core.inputs.zoo import ModelConfig, TrainConfig, TrainedModel, build_model, train_model, weights_files
from gda_core.requests import AttributionRequest


@pytest.fixture(scope="module")
def wine():
    return load_builtin("wine", seed=0)


def _write(folder: Path, weights: bytes, config: dict | bytes, name: str = "model") -> Path:
    (folder / f"{name}.safetensors").write_bytes(weights)
    (folder / f"{name}.json").write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
    return folder / f"{name}.safetensors"


def _scores(path: Path, cache: Path) -> np.ndarray:
    request = AttributionRequest(data="wine", model=str(path), method="grad-dot", grouping="random",
                                 n_groups=6, test_size=5)
    return run_attribution(request, cache_dir=cache).scores


def test_a_relu_upload_gives_the_scores_of_its_exported_program(wine, tmp_path):
    config = ModelConfig("mlp", wine.train.n_features, wine.train.n_classes, hidden=(16,), activation="relu")
    trained = train_model(config, wine.train, TrainConfig(epochs=3, seed=0, n_checkpoints=1))
    assert isinstance(trained.module.body[1], torch.nn.ReLU)
    weights, saved = weights_files(trained)
    assert json.loads(saved)["model"]["activation"] == "relu"  # the zoo writes it
    bare = config.to_json()  # an upload with the bare ModelConfig fields
    safetensors = _write(tmp_path, weights, bare)
    (tmp_path / "relu.pt2").write_bytes(export_program(trained.module, wine.train.n_features))
    from_safetensors = _scores(safetensors, tmp_path)
    np.testing.assert_allclose(from_safetensors, _scores(tmp_path / "relu.pt2", tmp_path), rtol=1e-4, atol=1e-7)
    # the same weights read as tanh are another function, with other scores
    tanh = _write(tmp_path, weights, {**bare, "activation": "tanh"}, name="tanh")
    assert not np.allclose(from_safetensors, _scores(tanh, tmp_path), rtol=1e-3)


@pytest.mark.parametrize("wrap", [False, True], ids=["bare fields", "model payload"])
def test_an_uploaded_mlp_config_must_name_its_activation(wine, tmp_path, wrap):
    config = ModelConfig("mlp", wine.train.n_features, wine.train.n_classes, hidden=(8,))
    weights, _ = weights_files(TrainedModel(build_model(config), config))
    fields = {k: v for k, v in config.to_json().items() if k != "activation"}
    path = _write(tmp_path, weights, {"model": fields} if wrap else fields)
    with pytest.raises(GDAError, match=r'^model\.json: the config has no "activation" field; name .* tanh, '
                                       r'relu, gelu') as error:
        load_model_choice(str(path), wine.train, tmp_path)
    assert "\n" not in str(error.value)


def test_the_cnn_takes_the_activation_too():
    config = ModelConfig("cnn", 64, 10, image_shape=(8, 8), activation="gelu")
    assert sum(isinstance(m, torch.nn.GELU) for m in build_model(config).modules()) == 3
    assert not any(isinstance(m, torch.nn.Tanh) for m in build_model(config).modules())


BAD_CONFIGS = {
    "fractional size": ({"arch": "mlp", "n_features": 13.5, "n_classes": 3, "activation": "tanh"},
                        "n_features must be a whole number, got 13.5"),
    "unknown activation": ({"arch": "mlp", "n_features": 13, "n_classes": 3, "activation": "swish"},
                           "unknown activation 'swish'; choose from: tanh, relu, gelu"),
    "200000 layers": ({"arch": "mlp", "n_features": 13, "n_classes": 3, "activation": "tanh",
                       "hidden": [1] * 200_000}, "200000 hidden layers, over the limit of 64"),
    "huge layers": ({"arch": "mlp", "n_features": 13, "n_classes": 3, "activation": "tanh",
                     "hidden": [10 ** 6, 10 ** 6]}, "parameters, over the limit of 500,000,000"),
    "nested 100000 deep": (b"[" * 100_000 + b"]" * 100_000, "model.json is not a valid model config"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_configs_are_refused_before_building(case, wine, tmp_path):
    payload, message = BAD_CONFIGS[case]
    config = ModelConfig("mlp", 13, 3, hidden=(4,))
    weights, _ = weights_files(TrainedModel(build_model(config), config))
    with pytest.raises(GDAError) as error:
        load_model_choice(str(_write(tmp_path, weights, payload)), wine.train, tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("model_format", ["safetensors", "pt2"])
def test_non_finite_weights_are_refused(model_format, wine, tmp_path):
    config = ModelConfig("mlp", 13, 3, hidden=(4,))
    module = build_model(config)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.fill_(float("nan"))
    if model_format == "pt2":
        path = tmp_path / "model.pt2"
        path.write_bytes(export_program(module, 13))
    else:
        path = _write(tmp_path, weights_files(TrainedModel(module, config))[0], config.to_json())
    with pytest.raises(GDAError, match=rf"^model\.{model_format}: model\.{model_format} holds non-finite weights|"
                                       rf"^model\.{model_format} holds non-finite weights") as error:
        load_model_choice(str(path), wine.train, tmp_path)
    assert "\n" not in str(error.value)
