"""Cached built-in data and demo models: checked against their checksums, recomputed (with a
warning) when damaged, and trained once however many processes ask at the same time."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from gda_core.inputs import zoo
from gda_core.inputs.datasets import load_builtin
from gda_core.inputs.zoo import demo_model


def _flip(path, offsets) -> None:
    payload = bytearray(path.read_bytes())
    for offset in offsets:
        payload[offset] ^= 0x01
    path.write_bytes(bytes(payload))


def test_a_flipped_bit_in_a_cached_demo_model_retrains_it(small_digits, tmp_path, caplog):
    train, _ = small_digits
    first = demo_model("logreg", train, tmp_path)
    (weights,) = tmp_path.glob("models/*/model.safetensors")
    _flip(weights, [len(weights.read_bytes()) - 7])  # in the tensor data: the file still loads
    calls = []
    with caplog.at_level(logging.WARNING, logger="gda_core.inputs.zoo"):
        again = demo_model("logreg", train, tmp_path, progress=calls.append)
    assert calls, "the damaged model was used instead of retrained"
    assert "damaged" in caplog.text and "retraining" in caplog.text
    assert again.fingerprint() == first.fingerprint()
    calls.clear()
    assert demo_model("logreg", train, tmp_path, progress=calls.append).fingerprint() == first.fingerprint()
    assert not calls  # the retrained model was cached with its checksum


def test_damaged_cached_data_is_loaded_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GDA_CACHE_DIR", str(tmp_path))
    fresh = load_builtin("wine")
    cached = tmp_path / "data" / "wine.npz"
    assert cached.is_file() and cached.with_name("wine.npz.sha256").is_file()
    _flip(cached, [1000, 1001, 1002, 1003])  # inside the features: np.load alone raises BadZipFile
    with caplog.at_level(logging.WARNING, logger="gda_core.inputs.datasets"):
        again = load_builtin("wine")
    assert "damaged" in caplog.text
    np.testing.assert_array_equal(again.train.features.numpy(), fresh.train.features.numpy())
    assert again.train.fingerprint() == fresh.train.fingerprint()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gda_core.inputs.datasets"):
        load_builtin("wine")
    assert not caplog.text  # rewritten whole


def test_concurrent_first_runs_train_the_demo_model_once(small_digits, tmp_path, monkeypatch):
    train, _ = small_digits
    trained = []
    original = zoo.train_model

    def slow_train(*args, **kwargs):
        trained.append(1)
        time.sleep(0.5)  # wide enough for the second caller to arrive while the first trains
        return original(*args, **kwargs)

    monkeypatch.setattr(zoo, "train_model", slow_train)
    models = []
    threads = [threading.Thread(target=lambda: models.append(demo_model("logreg", train, tmp_path)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(trained) == 1 and len(models) == 2
    assert models[0].fingerprint() == models[1].fingerprint()
