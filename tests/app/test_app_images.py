"""The pages on real 28x28 digits with a conv net: mnist and an (uploaded, tiny) ResNet-9 on
Home, Compute, Explore and Noisy labels in Streamlit's AppTest; and colour images drawn in
colour."""

from __future__ import annotations

import base64
import dataclasses
import io

import numpy as np
import pytest
from PIL import Image
from test_app import decoded, plotly_specs  # tests/ is on the path under pytest's default import mode

from gda_core.inputs.datasets import load_builtin
from gda_core.inputs.zoo import ModelConfig, TrainConfig, save_model, train_model
from gda_core.requests import AttributionRequest, EmbeddingRequest, FlagRequest
from gda_core.runs.jobs import run_in_foreground
from gda_core.runs.store import ScoreStore
from gda_core.viz.figures import image_grid_figure


@pytest.fixture(scope="module")
def resnet_path(app_cache):
    """A width-2 ResNet-9 trained one epoch on mnist, saved as an upload would be, and the
    runs the pages show computed in the store (the pages' buttons are tested on digits)."""
    split = load_builtin("mnist")
    config = ModelConfig(arch="resnet", n_features=784, n_classes=10, image_shape=(1, 28, 28), resnet_width=2)
    trained = train_model(config, split.train, TrainConfig(epochs=1, lr=3e-3, n_checkpoints=1))
    folder = save_model(trained, app_cache / "tiny-resnet")
    model = str(folder / "model.safetensors")
    store = ScoreStore(app_cache)
    run_in_foreground("attribute", dataclasses.asdict(AttributionRequest(
        data="mnist", model=model, method="grad-dot", grouping="grad-kmeans", n_groups=20, test_size=None)), store)
    run_in_foreground("embed", dataclasses.asdict(EmbeddingRequest(data="mnist", model=model, embedder="pca")),
                      store)
    run_in_foreground("flag", FlagRequest(data="mnist", model=model, method="grad-dot",
                                          grouping="per-example").to_json(), store)
    return model


@pytest.fixture()
def app(app_cache, open_app, resnet_path):
    app = open_app(app_cache)
    app.session_state["data"] = "mnist"
    app.session_state["model"] = resnet_path
    app.run()
    assert not app.exception
    return app


def test_home_shows_mnist_images_and_offers_the_resnet(app):
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Training points"] == "4000" and metrics["Features"] == "784" and metrics["Classes"] == "10"
    assert any("28x28 pixels, grey (1 channel)" in c.value and "per-channel" in c.value for c in app.caption)
    grid = next(s for s in plotly_specs(app) if s["data"] and s["data"][0]["type"] == "heatmap")
    assert len(grid["data"]) == 16  # the first 16 training images
    app.radio(key="model_source").set_value("Built-in").run()
    assert app.selectbox(key="model").options == ["logreg", "mlp", "cnn", "resnet"]


def test_compute_estimates_the_per_example_cost(app):
    app.switch_page("pages/1_Compute.py").run()
    assert not app.exception
    table = next(frame.value for frame in app.dataframe if "gradients of" in frame.value.columns)
    assert list(table["gradients of"]) == ["full model", "last layer"]
    assert table["parameters"].iloc[1] == 16 * 10 + 10  # the head of a width-2 ResNet-9
    assert (table["gradient pass, s (est.)"] >= 0).all()
    runs = next(frame.value for frame in app.dataframe if "grouping" in frame.value.columns)
    assert ((runs["grouping"] == "grad-kmeans") & (runs["groups"] == 20)).sum() == 1


def test_explore_shows_the_map_and_member_images(app):
    app.switch_page("pages/2_Explore.py").run()
    assert not app.exception
    specs = plotly_specs(app)
    map_spec = next(s for s in specs if s["layout"].get("title", {}).get("text", "").startswith("Training points"))
    assert len(decoded(map_spec["data"][0]["x"])) == 4000
    member_grids = [c for c in app.get("plotly_chart") if "members" in str(c.proto.id)]
    assert member_grids, "the most helpful and harmful groups show their member images"


def test_noisy_labels_reviews_mnist_images(app):
    app.switch_page("pages/4_Noisy_labels.py").run()
    assert not app.exception
    assert any(b.label == "Keep" for b in app.button)
    assert any(m.value.startswith("Given label:") for m in app.markdown)
    current = [c for c in app.get("plotly_chart") if "current_image" in str(c.proto.id)]
    assert len(current) == 1


def test_colour_images_are_drawn_in_colour():
    red = np.zeros((2, 3, 4, 4))
    red[:, 0] = 1.0
    figure = image_grid_figure(red, ["a", "b"], columns=2)
    assert [trace.type for trace in figure.data] == ["image", "image"]
    png = base64.b64decode(figure.data[0].source.split(",", 1)[1])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape == (4, 4, 3) and (pixels[..., 0] == 255).all() and (pixels[..., 1:] == 0).all()
    grey = image_grid_figure(red[:, :1], ["a", "b"], columns=2)
    assert [trace.type for trace in grey.data] == ["heatmap", "heatmap"]
