"""Bring your own data and model: uploads give the built-in path's scores, every bad upload
is one line (never a traceback, never code execution), and the parsers only ever raise GDAError."""

from __future__ import annotations

import csv
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gda_core.attribution.pipeline import run_attribution
from gda_core.cli import main
from gda_core.errors import GDAError
from gda_core.inputs.choices import load_inputs, load_model_choice, prepare_data_choice, store_model_upload
from gda_core.inputs.datasets import BUILTIN_DATASETS
from gda_core.inputs.examples import example_files
from gda_core.inputs.parsers import DataOptions, parse_csv, parse_data, parse_npz
from gda_core.inputs.programs import export_program
from gda_core.inputs.safety import UploadLimits
from gda_core.inputs.zoo import ModelConfig, TrainedModel, build_model, weights_files
from gda_core.io import npz_bytes
from gda_core.requests import AttributionRequest, EmbeddingRequest, SweepConfig
from gda_core.runs.store import ScoreStore

ATTRIBUTION = dict(method="grad-dot", grouping="grad-kmeans", n_groups=8, test_size=6)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads-cache")


@pytest.fixture(scope="module")
def builtin(cache):
    """The built-in digits split and its demo MLP (trained once, cached)."""
    return load_inputs(AttributionRequest(data="digits", model="mlp", **ATTRIBUTION), cache, torch.device("cpu"))


@pytest.fixture(scope="module")
def files(builtin, tmp_path_factory) -> dict[str, Path]:
    """The demo model as .pt2 and as .safetensors + .json; raw digits as CSV and NPZ; and
    the digits sorted by class (the order a folder-per-class zip has) as NPZ and image zip."""
    folder = tmp_path_factory.mktemp("uploads")
    _, model = builtin
    paths = {"pt2": folder / "mlp.pt2", "safetensors": folder / "mlp.safetensors"}
    paths["pt2"].write_bytes(export_program(model.module, 64))
    weights, config = weights_files(model)
    paths["safetensors"].write_bytes(weights)
    (folder / "mlp.json").write_bytes(config)

    features, labels, _, shape = BUILTIN_DATASETS["digits"]()
    paths["csv"] = folder / "digits.csv"
    with open(paths["csv"], "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([f"pixel{i}" for i in range(64)] + ["label"])
        writer.writerows([list(map(int, row)) + [int(label)] for row, label in zip(features, labels)])
    paths["npz"] = folder / "digits.npz"
    np.savez(paths["npz"], X=features, y=labels)

    order = np.argsort(labels, kind="stable")
    pixels = (features[order] * 15).astype(np.uint8)  # 0..16 -> 0..240, exact in a PNG
    paths["sorted-npz"] = folder / "digits-sorted.npz"
    np.savez(paths["sorted-npz"], X=pixels.reshape(-1, *shape) / 255.0, y=labels[order])
    paths["zip"] = folder / "digits.zip"
    with zipfile.ZipFile(paths["zip"], "w", zipfile.ZIP_DEFLATED) as archive:
        for index, (image, label) in enumerate(zip(pixels, labels[order])):
            png = io.BytesIO()
            Image.fromarray(image.reshape(shape[1:]), mode="L").save(png, format="PNG")
            archive.writestr(f"digits/{label}/{index:05d}.png", png.getvalue())
    return paths


def scores(data: str, model: str, cache: Path) -> np.ndarray:
    return run_attribution(AttributionRequest(data=data, model=model, **ATTRIBUTION), cache_dir=cache).scores


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("model_format", ["pt2", "safetensors"])
@pytest.mark.parametrize("data_format", ["csv", "npz"])
def test_uploads_give_the_builtin_scores(files, cache, builtin, data_format, model_format):
    expected = scores("digits", "mlp", cache)
    data = prepare_data_choice(str(files[data_format]), DataOptions(), cache)
    assert Path(data).parent == cache / "uploads" and Path(data).suffix == ".npz"
    np.testing.assert_allclose(scores(data, str(files[model_format]), cache), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("model_format", ["pt2", "safetensors"])
def test_image_zip_matches_the_same_pixels_as_npz(files, cache, model_format):
    from_zip = prepare_data_choice(str(files["zip"]), DataOptions(image_size=8), cache)
    split = load_inputs(AttributionRequest(data=from_zip, model=str(files[model_format]), **ATTRIBUTION),
                        cache, torch.device("cpu"))[0]
    assert split.train.image_shape == (1, 8, 8) and split.train.class_names == [str(c) for c in range(10)]
    np.testing.assert_array_equal(scores(from_zip, str(files[model_format]), cache),
                                  scores(str(files["sorted-npz"]), str(files[model_format]), cache))


def test_exported_zoo_model_keeps_last_layer_mode(files, cache):
    split, model = load_inputs(AttributionRequest(data="digits", model=str(files["pt2"]), **ATTRIBUTION), cache,
                               torch.device("cpu"))
    assert model.config is None and hasattr(model.module, "head")
    request = AttributionRequest(data="digits", model=str(files["pt2"]), method_options={"last_layer_only": True},
                                 **{**ATTRIBUTION, "grouping": "repr-kmeans"})
    assert run_attribution(request, cache_dir=cache).scores.shape == (6, 8)


def test_retraining_an_exported_program_asks_for_safetensors(files, cache):
    from gda_core.evaluation.sweeps import run_sweep
    from gda_core.requests import GoldConfig

    config = SweepConfig(data="digits", model=str(files["pt2"]), methods=("grad-dot",), groupings=("random",),
                         group_counts=(5,), per_example=False, test_size=4, gold=GoldConfig(kind="lds", n_subsets=2))
    with pytest.raises(GDAError, match=r"^Retraining from scratch \(LDS, leave-group-out\) needs to rebuild the "
                                       r"model, which an uploaded \.pt2 program cannot do; upload a \.safetensors"):
        run_sweep(config, ScoreStore(cache))


def test_every_request_type_accepts_paths_and_refuses_missing_ones(files, tmp_path):
    for request in (SweepConfig, EmbeddingRequest):
        request(data=str(files["npz"]), model=str(files["pt2"]))
        with pytest.raises(GDAError, match="does not exist"):
            request(data=str(tmp_path / "missing.npz"), model="mlp")


def test_an_exported_program_is_keyed_by_its_graph_not_only_its_weights(tmp_path):
    """Two programs with the same weights but another forward pass are different models."""
    torch.manual_seed(0)
    relu = torch.nn.Sequential(torch.nn.Linear(13, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    tanh = torch.nn.Sequential(torch.nn.Linear(13, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    tanh.load_state_dict(relu.state_dict())
    paths = []
    for name, module in (("relu", relu), ("tanh", tanh)):
        paths.append(tmp_path / f"{name}.pt2")
        paths[-1].write_bytes(export_program(module, 13))
    from gda_core.inputs.programs import load_model_file

    first, second = (load_model_file(path) for path in paths)
    assert first.fingerprint() != second.fingerprint()
    assert first.fingerprint() == load_model_file(paths[0]).fingerprint()  # and stable


def test_gradient_kmeans_works_on_an_exported_logreg(tmp_path, cache):
    """An exported logreg has a `head` but no `features`: gradient K-means must fall back to
    projected full gradients instead of asking for last-layer mode."""
    for name, payload in example_files().items():
        (tmp_path / name).write_bytes(payload)
    data = prepare_data_choice(str(tmp_path / "wine.csv"), DataOptions(), cache)
    request = AttributionRequest(data=data, model=str(tmp_path / "wine-logreg.pt2"), method="grad-dot",
                                 grouping="grad-kmeans", n_groups=5, test_size=4)
    assert run_attribution(request, cache_dir=cache).scores.shape == (4, 5)


def test_split_column_and_separate_test_file(tmp_path):
    rows = "a,b,label,part\n" + "".join(f"{i},{i % 3},{i % 2},{'test' if i % 4 == 0 else 'train'}\n" for i in range(40))
    with_column = parse_csv(rows.encode(), split_column="part")
    assert len(with_column.test_features) == 10 and with_column.features.shape == (30, 2)
    train = "a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(30))
    test = "a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(6))
    separate = parse_csv(train.encode(), test_payload=test.encode())
    split = separate.split()
    assert (len(split.train), len(split.test)) == (30, 6)
    texts = parse_csv(b"x,label\n1,cat\n2,dog\n3,cat\n")
    assert texts.class_names == ["cat", "dog"] and texts.labels.tolist() == [0, 1, 0]


def test_example_files_are_valid(tmp_path):
    examples = example_files()
    assert set(examples) == {"wine.csv", "wine.npz", "digits-images.zip", "wine-logreg.safetensors",
                             "wine-logreg.json", "wine-logreg.pt2"}
    for name in ("wine.csv", "wine.npz", "digits-images.zip"):
        assert len(parse_data(examples[name], name, DataOptions(image_size=8)).labels) > 100
    for name in ("wine-logreg.safetensors", "wine-logreg.json", "wine-logreg.pt2"):
        (tmp_path / name).write_bytes(examples[name])
    wine = parse_data(examples["wine.csv"], "wine.csv").split()
    for name in ("wine-logreg.safetensors", "wine-logreg.pt2"):
        model = load_model_choice(str(tmp_path / name), wine.train, tmp_path)
        assert model.module(wine.test.features).shape == (len(wine.test), 3)


# ------------------------------------------------------------------------- bad data files
def _zip(entries: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, payload in entries.items():
            entry = zipfile.ZipInfo(name)  # kept as given: ZipFile.write would clean '..' and '/'
            entry.compress_type = compression
            archive.writestr(entry, payload)
    return buffer.getvalue()


def _png(value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), value).save(buffer, format="PNG")
    return buffer.getvalue()


def _npz(**arrays) -> bytes:
    return npz_bytes(arrays)


def _future_zip_version() -> bytes:
    """A zip whose entry needs a zip version Python cannot read (found by fuzzing)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        entry = zipfile.ZipInfo("X.npy")
        entry.extract_version = 99
        archive.writestr(entry, b"")
    return buffer.getvalue()


def _corrupt_entry() -> bytes:
    payload = bytearray(_zip({"a/1.png": _png(), "b/2.png": _png(9)}, zipfile.ZIP_DEFLATED))
    start = payload.index(b"a/1.png") + len("a/1.png")
    payload[start + 5:start + 15] = b"\xff" * 10  # garble the deflated bytes: CRC or inflate fails
    return bytes(payload)


TWO_CLASSES = "x,label\n1,0\n2,1\n3,0\n4,1\n"
BAD_DATA = {
    "empty file": ("data.csv", b"", "data.csv is empty"),
    "not utf-8": ("data.csv", b"\xff\xfe\x00\x81", "not UTF-8 text"),
    "missing label column": ("data.csv", b"x,y\n1,2\n", "has no label column 'label'"),
    "non-numeric column": ("data.csv", b"x,label\n1,0\nabc,1\n", "column 'x' is not numeric (row 3: 'abc')"),
    "NaN in CSV": ("data.csv", b"x,label\n1,0\nnan,1\n", "column 'x' has NaN or infinite values (row 3)"),
    "inf in CSV": ("data.csv", b"x,label\n1,0\ninf,1\n", "has NaN or infinite values"),
    "one class": ("data.csv", b"x,label\n1,0\n2,0\n", "needs at least 2 classes, found 1"),
    "ragged row": ("data.csv", b"x,label\n1,0\n2\n", "row 3 has 1 fields but the header has 2"),
    "negative label": ("data.csv", b"x,label\n1,-1\n2,0\n", "whole numbers >= 0"),
    "header only": ("data.csv", b"x,label\n", "has a header but no data rows"),
    "npz without y": ("data.npz", _npz(X=np.zeros((4, 2))), "needs arrays X and y; found: 'X'"),
    "npz pickled array": ("data.npz", _npz(X=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1])),
                          "holds pickled objects"),
    "npz NaN": ("data.npz", _npz(X=np.array([[np.nan], [1.0]]), y=np.array([0, 1])),
                "features contain NaN or infinite values"),
    "npz shapes": ("data.npz", _npz(X=np.zeros((4, 2)), y=np.array([0, 1, 0])),
                   "features have 4 rows but there are 3 labels"),
    "npz 4-d X": ("data.npz", _npz(X=np.zeros((2, 2, 2, 2)), y=np.array([0, 1])),
                  "a 4-d X is images (rows, channels, height, width) or (rows, height, width, channels) with 1 or 3"),
    "npz 5-d X": ("data.npz", _npz(X=np.zeros((2, 1, 2, 2, 2)), y=np.array([0, 1])), "X must be (rows, features), "),
    "npz ambiguous layout": ("data.npz", _npz(X=np.zeros((2, 3, 4, 3)), y=np.array([0, 1])),
                             "could be channels first or last; add an array layout='NCHW' or 'NHWC'"),
    "npz bad layout": ("data.npz", _npz(X=np.zeros((2, 3, 4, 3)), y=np.array([0, 1]), layout=np.array("CHW")),
                       "layout must be one of NCHW, NHWC, got 'CHW'"),
    "npz layout with 4 channels": ("data.npz", _npz(X=np.zeros((2, 4, 4, 3)), y=np.array([0, 1]),
                                                    layout=np.array("NCHW")), "has 4 channels; images have 1"),
    "npz test images": ("data.npz", _npz(X=np.zeros((2, 3, 4, 4)), y=np.array([0, 1]), X_test=np.zeros((2, 3, 4, 5)),
                                         y_test=np.array([0, 1])), "X_test's images have shape (3, 4, 5), X's (3, 4, 4)"),
    "npz test axes": ("data.npz", _npz(X=np.zeros((2, 3, 4, 4)), y=np.array([0, 1]), X_test=np.zeros((2, 48)),
                                       y_test=np.array([0, 1])), "X_test must have as many axes as X (4)"),
    "npz image channels": ("data.npz", _npz(X=np.zeros((2, 8)), y=np.array([0, 1]), image_shape=np.array([2, 2, 2])),
                           "has 2 channels; images have 1 (grey) or 3 (RGB)"),
    "npz text X": ("data.npz", _npz(X=np.array([["a"], ["b"]]), y=np.array([0, 1])), "X must be numeric"),
    "npz test columns": ("data.npz", _npz(X=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]), X_test=np.zeros((2, 3)),
                                          y_test=np.array([0, 1])), "test features have 3 columns"),
    "npz empty images": ("data.npz", _npz(X=np.zeros((0, 2, 2)), y=np.zeros(0, dtype=int)), "X has no rows"),
    "npz negative image shape": ("data.npz", _npz(X=np.zeros((2, 4)), y=np.array([0, 1]), image_shape=np.array([-1, -4])),
                                 "image_shape must be (channels, height, width) or (height, width) of positive sizes"),
    "npz 1-d image shape": ("data.npz", _npz(X=np.zeros((2, 4)), y=np.array([0, 1]), image_shape=np.array([4])),
                            "image_shape must be (channels, height, width) or (height, width)"),
    "npy not npz": ("data.npz", b"\x93NUMPY" + b"\x00" * 20, "not a valid zip archive"),
    "unknown zip version": ("data.npz", _future_zip_version(), "data.npz is not a valid zip archive"),
    "truncated zip": ("images.zip", _zip({"a/1.png": _png(), "b/2.png": _png()})[:-30],
                      "not a valid zip archive (truncated or corrupt)"),
    "corrupt zip entry": ("images.zip", _corrupt_entry(), "cannot be read (truncated or corrupt archive)"),
    "zip with ..": ("images.zip", _zip({"a/1.png": _png(), "../b/2.png": _png()}),
                    "'../b/2.png' has an absolute path or '..'"),
    "zip absolute path": ("images.zip", _zip({"/etc/a/1.png": _png()}), "has an absolute path or '..'"),
    "zip bomb": ("images.zip", _zip({"a/1.png": _png(), "b/zeros.png": bytes(3 * 2 ** 20)}, zipfile.ZIP_DEFLATED),
                 "unpacks to 3 MB, over the limit of 1 MB"),
    "images resized too big": ("images.zip", _zip({f"{c}/{i}.png": _png() for c in "ab" for i in range(2)}),
                               "4 images at 256x256 take 6 MB, over the limit of 1 MB"),
    "image fails to decode": ("images.zip", _zip({"a/1.png": _png(), "b/2.png": b"\x89PNG\r\n\x1a\nnot really"}),
                              "image 'b/2.png' cannot be decoded"),
    "image outside class folders": ("images.zip", _zip({"1.png": _png(), "a/2.png": _png()}),
                                    "is not inside a class folder"),
    "one image class": ("images.zip", _zip({"a/1.png": _png(), "a/2.png": _png()}), "at least 2 classes"),
    "no images": ("images.zip", _zip({"a/readme.txt": b"hi"}), "holds no PNG or JPEG images"),
    "unsupported type": ("data.xlsx", b"PK...", "unsupported data file type '.xlsx'"),
    "pickle data": ("data.pkl", b"\x80\x04N.", "are pickles (or may hold them)"),
    "over size limit": ("data.csv", TWO_CLASSES.encode() * 200, "over the upload limit of 0.00391 MB"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_line(case, tmp_path, monkeypatch):
    monkeypatch.setenv("GDA_MAX_UPLOAD_MB", str(4096 / 2 ** 20))
    monkeypatch.setenv("GDA_MAX_UNPACKED_MB", "1")
    name, payload, message = BAD_DATA[case]
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(GDAError) as error:
        prepare_data_choice(str(path), DataOptions(image_size=256 if "too big" in case else 4), tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------------ bad model files
def _model_files(folder: Path, config: ModelConfig, name: str = "model") -> Path:
    trained = TrainedModel(build_model(config), config)
    weights, payload = weights_files(trained)
    (folder / f"{name}.safetensors").write_bytes(weights)
    (folder / f"{name}.json").write_bytes(payload)
    return folder / f"{name}.safetensors"


def _static_program(folder: Path) -> Path:
    """A program exported without a dynamic batch dimension: it only takes batches of 2."""
    module = build_model(ModelConfig("logreg", 64, 10)).eval()
    program = torch.export.export(module, (torch.zeros(2, 64),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    (folder / "static.pt2").write_bytes(buffer.getvalue())
    return folder / "static.pt2"


class _Detached(torch.nn.Module):
    """Outputs that do not depend on the parameters: nothing to attribute."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, inputs):
        with torch.no_grad():
            return self.linear(inputs)


def _bad_model(case: str, folder: Path, files: dict[str, Path]) -> Path:
    if case == "program with pickled weights":
        source, buffer = zipfile.ZipFile(files["pt2"]), io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for entry in source.infolist():
                payload = source.read(entry)
                if entry.filename.endswith("model_weights_config.json"):
                    config = json.loads(payload)
                    next(iter(config["config"].values()))["use_pickle"] = True
                    payload = json.dumps(config).encode()
                archive.writestr(entry, payload)
        (folder / "pickled.pt2").write_bytes(buffer.getvalue())
        return folder / "pickled.pt2"
    if case == "detached program":
        (folder / "detached.pt2").write_bytes(export_program(_Detached(), 64))
        return folder / "detached.pt2"
    if case == "features mismatch (safetensors)":
        return _model_files(folder, ModelConfig("mlp", 13, 10))
    if case == "features mismatch (pt2)":
        (folder / "wine.pt2").write_bytes(export_program(build_model(ModelConfig("logreg", 13, 3)), 13))
        return folder / "wine.pt2"
    if case == "labels outside the outputs":
        return _model_files(folder, ModelConfig("mlp", 64, 3))
    if case == "static batch program":
        return _static_program(folder)
    if case == "no config beside safetensors":
        (folder / "lonely.safetensors").write_bytes(files["safetensors"].read_bytes())
        return folder / "lonely.safetensors"
    if case == "config of another shape":
        path = _model_files(folder, ModelConfig("mlp", 64, 10))
        (folder / "model.json").write_text(json.dumps({"arch": "mlp", "n_features": 64, "n_classes": 10,
                                                       "hidden": [8], "activation": "tanh"}))
        return path
    if case == "config asking for huge layers":  # refused from the config's sizes, nothing allocated
        path = _model_files(folder, ModelConfig("mlp", 64, 10))
        (folder / "model.json").write_text(json.dumps({"arch": "mlp", "n_features": 10 ** 10, "n_classes": 10,
                                                       "hidden": [10 ** 6], "activation": "tanh"}))
        return path
    if case == "unknown architecture":
        path = _model_files(folder, ModelConfig("mlp", 64, 10))
        (folder / "model.json").write_text(json.dumps({"arch": "vit", "n_features": 64, "n_classes": 10}))
        return path
    if case == "config not JSON":
        path = _model_files(folder, ModelConfig("mlp", 64, 10))
        (folder / "model.json").write_text("{arch: mlp")
        return path
    if case == "corrupt safetensors":
        path = _model_files(folder, ModelConfig("mlp", 64, 10))
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
        return path
    payloads = {"empty program": b"", "truncated program": files["pt2"].read_bytes()[:500],
                "not a program": _zip({"hello.txt": b"hi"}), "unsupported type": b"ONNX"}
    suffix = ".onnx" if case == "unsupported type" else ".pt2"
    (folder / f"bad{suffix}").write_bytes(payloads[case])
    return folder / f"bad{suffix}"


BAD_MODELS = {
    "features mismatch (safetensors)": "the model takes 13 input features but the data has 64",
    "features mismatch (pt2)": "wine.pt2: the model takes 13 input features but the data has 64",
    "labels outside the outputs": "labels go up to 9 but the model has 3 outputs (classes 0..2)",
    "static batch program": "export it with a dynamic batch dimension (torch.export.Dim)",
    "program with pickled weights": "pickled.pt2 stores weights or constants pickled",
    "detached program": "the model's outputs do not depend on its parameters (torch.no_grad or .detach()",
    "no config beside safetensors": "lonely.safetensors needs its config beside it: lonely.json",
    "config of another shape": "weights do not fit the mlp config",
    "config asking for huge layers": "parameters, over the limit of 500,000,000; check its sizes",
    "unknown architecture": "model.json: unknown model 'vit'",
    "config not JSON": "model.json is not a valid model config",
    "corrupt safetensors": "model.safetensors is not a valid safetensors file",
    "empty program": "bad.pt2 is empty",
    "truncated program": "bad.pt2 is not a valid zip archive (truncated or corrupt)",
    "not a program": "bad.pt2 is not a valid torch.export program",
    "unsupported type": "unsupported model file type '.onnx'",
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_is_one_line(case, builtin, files, tmp_path):
    split, _ = builtin
    path = _bad_model(case, tmp_path, files)
    with pytest.raises(GDAError) as error:
        load_model_choice(str(path), split.train, tmp_path)
    assert BAD_MODELS[case] in str(error.value) and "\n" not in str(error.value)


class _WritesAFile:
    """A pickle payload: unpickling it writes a file."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return exec, (f"open({str(self.target)!r}, 'w').write('pwned')",)


def _program_with_pickled_sample_inputs(program: bytes, evil: bytes) -> bytes:
    """A real .pt2 whose sample inputs are replaced by the payload: plain torch.export.load
    falls back to full unpickling there (torch 2.13) and runs it."""
    source, buffer = zipfile.ZipFile(io.BytesIO(program)), io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry in source.infolist():
            archive.writestr(entry, evil if entry.filename.endswith("sample_inputs/model.pt") else source.read(entry))
    return buffer.getvalue()


@pytest.mark.parametrize("name,message", [
    ("model.pkl", "model.pkl: .pkl files are pickles"), ("model.pt", "model.pt: .pt files are pickles"),
    ("model.pth", "model.pth: .pth files are pickles"), ("model.pt2", "is not a valid zip archive"),
    ("model.safetensors", "is not a valid safetensors file"), ("data.npz", "is not a valid zip archive"),
    ("data.pkl", ".pkl files are pickles"), ("program.pt2", "holds pickled objects beyond plain tensors"),
])
def test_pickles_are_refused_and_never_run(name, message, builtin, files, tmp_path):
    target = tmp_path / "pwned.txt"
    evil = pickle.dumps(_WritesAFile(target))
    if name == "program.pt2":
        evil = _program_with_pickled_sample_inputs(files["pt2"].read_bytes(), evil)
    path = tmp_path / name
    path.write_bytes(evil)
    (tmp_path / "model.json").write_text(json.dumps({"arch": "mlp", "n_features": 64, "n_classes": 10,
                                                         "activation": "tanh"}))
    with pytest.raises(GDAError) as error:
        if name.startswith("data"):
            prepare_data_choice(str(path), DataOptions(), tmp_path)
        else:
            load_model_choice(str(path), builtin[0].train, tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not target.exists()


def test_model_uploads_are_stored_by_content(files, tmp_path):
    stored = store_model_upload({"mlp.safetensors": files["safetensors"].read_bytes(),
                                 "mlp.json": (files["safetensors"].with_suffix(".json")).read_bytes()}, tmp_path)
    assert stored.parent == tmp_path / "uploads" and stored.with_suffix(".json").is_file()
    with pytest.raises(GDAError, match="needs its .json config uploaded with it"):
        store_model_upload({"mlp.safetensors": b"x"}, tmp_path)
    with pytest.raises(GDAError, match="pickles"):
        store_model_upload({"mlp.pkl": b"x"}, tmp_path)


# ---------------------------------------------------------------------- property-based
def _valid_npz() -> bytes:
    return _npz(X=np.arange(12.0).reshape(4, 3), y=np.array([0, 1, 0, 1]), X_test=np.ones((2, 3)),
                y_test=np.array([1, 0]))


LIMITS = UploadLimits(max_file_bytes=2 ** 20, max_unpacked_bytes=2 ** 22)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutated(base: bytes):
    """Bytes near a valid file: a few bytes overwritten, then maybe truncated."""
    return st.tuples(st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), max_size=6),
                     st.integers(0, len(base))).map(
        lambda edit: bytes(_apply(bytearray(base), edit[0]))[:edit[1] or len(base)])


def _apply(payload: bytearray, changes) -> bytearray:
    for position, value in changes:
        payload[position] = value
    return payload


PARSER_INPUTS = {
    "csv": (parse_csv, st.binary(max_size=400)
            | st.text(alphabet="0123456789,.-eEnaif \n\"label\r", max_size=300).map(str.encode)
            | _mutated(TWO_CLASSES.encode())),
    "npz": (parse_npz, st.binary(max_size=400) | _mutated(_valid_npz())),
}


@pytest.mark.parametrize("kind", list(PARSER_INPUTS))
@FUZZ
@given(data=st.data())
def test_parsers_raise_only_gda_errors(kind, data):
    """Arbitrary bytes, and bytes near a valid file: a parsed upload or a one-line GDAError."""
    parser, payloads = PARSER_INPUTS[kind]
    try:
        parsed = parser(data.draw(payloads), limits=LIMITS)
    except GDAError as error:
        assert "\n" not in str(error)
    else:
        assert np.isfinite(parsed.features).all() and len(set(parsed.labels.tolist())) >= 2


# ----------------------------------------------------------------------------------- CLI
def test_cli_attributes_an_uploaded_npz_and_safetensors(files, tmp_path, capsys):
    code = main(["attribute", "--data", str(files["npz"]), "--model", str(files["safetensors"]), "--grouping",
                 "per-class", "--test-size", "5", "--cache", str(tmp_path), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["data"].startswith(str(tmp_path / "uploads")) and summary["n_groups"] == 10
    assert np.load(summary["scores_path"]).shape == (5, 10)


@pytest.mark.parametrize("args,message", [
    (["--data", "{bad_csv}"], "column 'x' is not numeric"),
    (["--data", "{bad_csv}", "--label-column", "nope"], "has no label column 'nope'"),
    (["--model", "{pickle}"], ".pkl files are pickles"),
    (["--data", "missing.npz"], "data file missing.npz does not exist"),
])
def test_cli_bad_file_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("x,label\n1,0\nabc,1\n")
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04N.")
    args = [a.format(bad_csv=tmp_path / "bad.csv", pickle=tmp_path / "model.pkl") for a in args]
    assert main(["attribute", *args, "--grouping", "per-class", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")


# ------------------------------------------------------------------------------- the app
def test_home_page_upload_path(tmp_path, open_app, shown):
    """Upload data and a model on the home page: bad files are one st.error line, good ones
    become the choices that every page uses."""
    examples = example_files()
    app = open_app(tmp_path, timeout=120)
    app.run()
    assert len(app.get("download_button")) == len(examples)
    app.radio(key="data_source").set_value("Upload").run()
    assert any("Upload a data file" in info.value for info in app.info)

    app.file_uploader(key="data_file").set_value(("bad.csv", b"x,label\n1,0\nabc,1\n", "text/csv")).run()
    assert not app.exception
    assert [shown(e.value) for e in app.error] == ["bad.csv: column 'x' is not numeric (row 3: 'abc')"]

    app.file_uploader(key="data_file").set_value(("wine.csv", examples["wine.csv"], "text/csv")).run()
    assert not app.exception and not app.error
    metrics = {m.label: m.value for m in app.metric}
    assert (metrics["Classes"], metrics["Features"], metrics["Training points"]) == ("3", "13", "142")
    data_choice = app.session_state["data"]
    assert Path(data_choice).parent == tmp_path / "uploads"

    app.radio(key="model_source").set_value("Upload").run()
    model_files = app.file_uploader(key="model_files")
    model_files.set_value([("wine-logreg.safetensors", examples["wine-logreg.safetensors"], "application/octet-stream"),
                           ("wine-logreg.json", examples["wine-logreg.json"], "application/json")]).run()
    assert not app.exception and not app.error
    assert any("wine-logreg.safetensors" in shown(c.value) for c in app.caption)
    assert float({m.label: m.value for m in app.metric}["Test accuracy"].rstrip("%")) > 90

    program = export_program(build_model(ModelConfig("logreg", 64, 10)), 64)
    app.file_uploader(key="model_files").set_value([("digits.pt2", program, "application/octet-stream")]).run()
    assert not app.exception
    assert [shown(e.value) for e in app.error] == ["digits.pt2: the model takes 64 input features but the data has 13"]

    program = ("wine-logreg.pt2", examples["wine-logreg.pt2"], "application/octet-stream")
    app.file_uploader(key="model_files").set_value([program]).run()
    app.switch_page("pages/1_Compute.py").run()
    assert not app.exception
    assert "wine.csv" in shown(app.caption[0].value) and "wine-logreg.pt2" in shown(app.caption[0].value)
