"""Small valid files of every upload format, for the app's downloads and the README."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np

from ..io import npz_bytes
from .datasets import BUILTIN_DATASETS
from .parsers import UploadedData
from .programs import export_program
from .zoo import default_train_config, model_config_for, train_model, weights_files

EXAMPLE_FILES = ("wine.csv", "wine.npz", "digits-images.zip", "wine-logreg.safetensors", "wine-logreg.json",
                 "wine-logreg.pt2")
FORMATS_HELP = (
    "**Data**: a CSV of numeric feature columns plus a label column (name it; optionally a `split` column "
    "of train/test), an `.npz` with `X` (rows x features; images as rows x height x width, or rows x "
    "channels x height x width or rows x height x width x channels, 1 or 3 channels, detected) and `y` "
    "(optionally `X_test`, `y_test`, standardised with the training part's statistics), or a zip with one "
    "folder of PNG/JPEG images per class (resized; kept in colour unless every image is grey, or *grey* is "
    "chosen). Image data is standardised per channel. "
    "Without a test part the data is split 80/20, stratified and seeded. "
    "**Model**: a `torch.export` program (`.pt2`, exported with a dynamic batch dimension, "
    "`torch.export.Dim`), or a `.safetensors` state dict of a zoo model with its `.json` config "
    "(`arch`, `n_features`, `n_classes`, `hidden`, `activation`: relu, tanh or gelu, required for mlp, "
    "cnn and resnet, ...), e.g. `{\"arch\": \"mlp\", \"n_features\": 13, \"n_classes\": 3, \"hidden\": [64, 64], "
    "\"activation\": \"relu\"}`. Pickles (`.pkl`, `.pt`, `.pth`) are refused. "
    "Files up to 500 MB (`GDA_MAX_UPLOAD_MB`).")


def example_files() -> dict[str, bytes]:
    """Small valid files of every upload format, for the app's downloads and the README:
    a CSV and an NPZ of wine, a zip of digit images, and a logistic regression trained on
    wine as ``.safetensors`` + ``.json`` and as a ``.pt2`` program."""
    from PIL import Image

    features, labels, class_names, _ = BUILTIN_DATASETS["wine"]()
    header = [f"f{i}" for i in range(features.shape[1])] + ["label"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for row, label in zip(features, labels):
        writer.writerow([f"{value:g}" for value in row] + [int(label)])
    files = {"wine.csv": text.getvalue().encode(), "wine.npz": npz_bytes({"X": features, "y": labels})}

    digits, digit_labels, digit_names, shape = BUILTIN_DATASETS["digits"]()
    archive_buffer = io.BytesIO()
    with zipfile.ZipFile(archive_buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(200):
            image = Image.fromarray((digits[index].reshape(shape[-2:]) * 15).astype(np.uint8), mode="L")
            png = io.BytesIO()
            image.save(png, format="PNG")
            archive.writestr(f"digits/{digit_names[digit_labels[index]]}/{index:04d}.png", png.getvalue())
    files["digits-images.zip"] = archive_buffer.getvalue()

    split = UploadedData(features.astype(np.float64), labels.astype(np.int64), class_names, name="wine").split()
    trained = train_model(model_config_for("logreg", split.train), split.train, default_train_config("logreg"))
    weights, config = weights_files(trained)
    files["wine-logreg.safetensors"], files["wine-logreg.json"] = weights, config
    files["wine-logreg.pt2"] = export_program(trained.module, split.train.n_features)
    assert tuple(files) == EXAMPLE_FILES
    return files
