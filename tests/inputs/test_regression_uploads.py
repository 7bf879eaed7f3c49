"""Regression uploads: CSV and NPZ with a numeric target (``task="regression"``), the stored
normalised form keeping its task, a regression .safetensors config, and the refusals."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gda_core.attribution.pipeline import run_attribution
from gda_core.errors import GDAError
from gda_core.inputs.choices import load_data_choice, load_model_choice, prepare_data_choice
from gda_core.inputs.parsers import DataOptions, parse_data
from gda_core.inputs.zoo import ModelConfig, TrainedModel, build_model, weights_files
from gda_core.requests import AttributionRequest
from gda_core.task import CLASSIFICATION, REGRESSION

REGRESSION_OPTIONS = DataOptions(task="regression")


def _csv(rows: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, 3))
    target = features @ np.array([1.5, -2.0, 0.5]) + 10 + 0.1 * rng.normal(size=rows)
    lines = ["a,b,c,label"] + [",".join(f"{v:.6f}" for v in (*x, t)) for x, t in zip(features, target)]
    return ("\n".join(lines) + "\n").encode()


def test_a_csv_with_a_numeric_target_is_regression_data(tmp_path):
    data = parse_data(_csv(), "house.csv", REGRESSION_OPTIONS)
    assert data.class_names == [] and data.labels.dtype == np.float64
    split = data.split(seed=0)
    assert split.train.task is REGRESSION and split.test.task is REGRESSION
    assert abs(float(split.train.labels.mean())) < 1e-5  # standardised with the training statistics
    # The same file read for classification refuses its non-integer targets, naming the way out.
    with pytest.raises(GDAError, match="--task regression"):
        parse_data(_csv(), "house.csv")


def test_the_stored_upload_keeps_its_task_and_runs_end_to_end(tmp_path):
    source = tmp_path / "house.csv"
    source.write_bytes(_csv(rows=60))
    choice = prepare_data_choice(str(source), REGRESSION_OPTIONS, tmp_path)
    assert choice.endswith(".npz")
    split = load_data_choice(choice)  # default options: the normalised file names its task
    assert split.train.task is REGRESSION
    result = run_attribution(AttributionRequest(data=choice, model="logreg", method="if-exact", grouping="random",
                                                n_groups=5, test_size=4), cache_dir=tmp_path)
    assert result.scores.shape == (4, 5) and result.summary()["model_score_name"] == "R^2"
    assert result.summary()["model_test_score"] > 0.9  # a near-linear target


def test_an_npz_with_float_targets_is_regression_data():
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, X=rng.normal(size=(30, 2)), y=rng.normal(size=30))
    data = parse_data(buffer.getvalue(), "points.npz", REGRESSION_OPTIONS)
    assert data.split().train.task is REGRESSION
    stored = parse_data(data.to_npz_bytes(), "stored.npz")
    assert stored.class_names == [] and np.array_equal(stored.labels, data.labels)
    classes = parse_data(_labelled_npz(), "c.npz").to_npz_bytes()
    with pytest.raises(GDAError, match="stored.npz holds classification data, not regression"):
        parse_data(classes, "stored.npz", REGRESSION_OPTIONS)


def _labelled_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, X=np.arange(20.0).reshape(10, 2), y=np.arange(10) % 2)
    return buffer.getvalue()


def test_a_text_target_is_refused_for_regression_in_one_line():
    payload = b"a,label\n1,high\n2,low\n3,high\n"
    with pytest.raises(GDAError) as error:
        parse_data(payload, "grades.csv", REGRESSION_OPTIONS)
    assert str(error.value) == ("grades.csv: a regression target must be numeric, found 'high'; "
                                "use --task classification for class labels")


def test_image_zips_are_classification_only():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/1.png", b"")
    with pytest.raises(GDAError, match="an image zip is classification data"):
        parse_data(buffer.getvalue(), "images.zip", REGRESSION_OPTIONS)


def test_an_unknown_task_is_refused():
    with pytest.raises(GDAError, match="unknown task 'ranking'; choose from: classification, regression"):
        DataOptions(task="ranking")


def _safetensors(folder: Path, config: ModelConfig) -> Path:
    weights, payload = weights_files(TrainedModel(build_model(config), config))
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "model.json").write_bytes(payload)
    return folder / "model.safetensors"


def test_a_safetensors_config_names_its_task(tmp_path):
    train = load_data_choice("diabetes").train
    path = _safetensors(tmp_path, ModelConfig("mlp", 10, task="regression", hidden=(4,)))
    model = load_model_choice(str(path), train, tmp_path)
    assert model.config.task == "regression" and model.config.n_outputs == 1
    with pytest.raises(GDAError, match="model.safetensors: the model is a regression model but the data is "
                                       "classification data"):
        load_model_choice(str(_safetensors(tmp_path, ModelConfig("mlp", 13, task="regression"))),
                          load_data_choice("wine").train, tmp_path)
    with pytest.raises(GDAError, match="the model is a classification model but the data is regression data"):
        load_model_choice(str(_safetensors(tmp_path, ModelConfig("mlp", 10, 3))), train, tmp_path)


def test_model_configs_check_their_task():
    with pytest.raises(GDAError, match="a regression model has one output and no classes"):
        ModelConfig("mlp", 4, 3, task="regression")
    with pytest.raises(GDAError, match="a classification model needs >= 2 classes"):
        ModelConfig("mlp", 4)
    assert "task" not in ModelConfig("mlp", 4, 3).to_json()  # classification fingerprints as before
    assert ModelConfig.from_json(ModelConfig("mlp", 4, task="regression").to_json()).task == "regression"
    assert CLASSIFICATION.name == ModelConfig("mlp", 4, 3).task
