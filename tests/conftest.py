"""Shared fixtures: small built-in data and quickly trained zoo models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gda_core.inputs.datasets import load_builtin
from gda_core.inputs.zoo import TrainConfig, default_train_config, model_config_for, train_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    return load_builtin("digits", seed=0)


@pytest.fixture(scope="session")
def small_digits(digits):
    """400 training and 40 test points of digits: enough for every known-answer check."""
    rows = np.random.default_rng(0).choice(len(digits.train), 400, replace=False)
    return digits.train.subset(np.sort(rows)), digits.test.subset(slice(0, 40))


def _train(arch: str, train, epochs: int = 8):
    config = model_config_for(arch, train, hidden=(32, 16) if arch == "mlp" else None)
    if arch == "logreg":
        train_config = default_train_config("logreg")
    else:
        train_config = TrainConfig(epochs=epochs, lr=3e-3, batch_size=32, seed=0, n_checkpoints=3)
    return train_model(config, train, train_config)


@pytest.fixture(scope="session")
def zoo(small_digits):
    """One trained model of each zoo architecture on the small digits set."""
    train, _ = small_digits
    return {arch: _train(arch, train) for arch in ("logreg", "mlp", "cnn")}


APP = Path(__file__).resolve().parents[1] / "app.py"


def rendered(markdown: str) -> tuple[str, set[str]]:
    """Markdown as a CommonMark renderer reads it: the text a reader sees, and the kinds of
    inline elements in it (``link_open``, ``image``, ``html_inline``, ...)."""
    from markdown_it import MarkdownIt

    tokens = [child for block in MarkdownIt("commonmark").parseInline(markdown) for child in block.children or ()]
    text = "".join(token.content for token in tokens if token.type in ("text", "code_inline"))
    return text, {token.type for token in tokens} - {"text", "code_inline", "softbreak", "strong_open", "strong_close"}


@pytest.fixture()
def render_markdown():
    """``render_markdown(markdown)``: (text, inline element kinds), see :func:`rendered`."""
    return rendered


@pytest.fixture()
def shown():
    """``shown(markdown)``: the text a reader sees (what the app's escaping must keep readable)."""
    return lambda markdown: rendered(markdown)[0]


@pytest.fixture()
def open_app(monkeypatch):
    """``open_app(cache)``: the app (Streamlit's AppTest of app.py) on the cache folder
    ``cache``, with the PCA stand-in for UMAP (the browser test runs the real one)."""
    from streamlit.testing.v1 import AppTest

    def open_(cache, timeout: float = 240) -> AppTest:
        monkeypatch.setenv("GDA_CACHE_DIR", str(cache))
        monkeypatch.setenv("GDA_EMBEDDER", "pca")
        return AppTest.from_file(str(APP), default_timeout=timeout)

    return open_
