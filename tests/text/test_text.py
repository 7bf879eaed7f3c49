"""Hugging Face text classifiers over text CSVs: a tiny BERT built and trained in the test with a
WordLevel tokenizer trained on the test's sentences (nothing downloaded)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gda_core import AttributionRequest, run_attribution
from gda_core.attribution.grads import GradientEngine
from gda_core.attribution.grouping import make_grouping
from gda_core.attribution.methods.base import make_method
from gda_core.errors import GDAError
from gda_core.inputs.choices import accept_data_upload, accept_model_upload, load_inputs, prepare_split
from gda_core.inputs.datasets import DataSplit
from gda_core.inputs.huggingface import load_text_model
from gda_core.inputs.parsers import DataOptions, parse_data

from .tiny import save_tiny_bert, sentences, text_csv, zipped

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder of the saved tiny BERT, the text CSV's bytes, a cache folder)."""
    root = tmp_path_factory.mktemp("text")
    texts, labels = sentences()
    return save_tiny_bert(root / "tiny-bert", texts, labels), text_csv(texts, labels), root / "cache"


@pytest.fixture(scope="module")
def loaded(tiny):
    """The tiny model and its tokenised split, as a job loads them."""
    folder, payload, cache = tiny
    data = accept_data_upload("reviews.csv", payload, cache, DataOptions(text_column="sentence", max_length=12))
    request = AttributionRequest(data=data, model=str(folder), method="grad-dot", grouping="per-example")
    return load_inputs(request, cache)


def test_text_csv_is_tokenised_by_the_models_tokenizer(loaded, tiny):
    split, model = loaded
    assert split.train.is_text and split.train.features.dtype == torch.long
    assert split.train.features.shape[1] <= 12  # cut at --max-length, padded to the longest
    first = split.train.texts[0]
    ids = model.text.tokenizer(first)["input_ids"]
    assert split.train.features[0, :len(ids)].tolist() == ids
    assert (split.train.features[0, len(ids):] == model.text.pad_id).all()
    with torch.no_grad():  # the wrapper computes the model's own logits, masks from the pad id
        ours = model.module(split.test.features)
        theirs = model.module.reference_logits(split.test.features)
    torch.testing.assert_close(ours, theirs)


def test_upload_round_trip_gives_the_in_memory_scores(tiny, loaded, tmp_path):
    folder, payload, cache = tiny
    split, _ = loaded
    model_choice = accept_model_upload({"tiny-bert.zip": zipped(folder)}, split.train.subset(slice(0, 5)), cache)
    data = accept_data_upload("reviews.csv", payload, cache, DataOptions(text_column="sentence", max_length=12))
    result = run_attribution(AttributionRequest(data=data, model=model_choice, method="grad-dot",
                                                grouping="per-example", method_options={"parameters": "last-1"}),
                             cache_dir=cache)
    # In memory: the folder loaded directly, the CSV parsed directly, the same engine.
    model = load_text_model(folder)
    raw = parse_data(payload, "reviews.csv", DataOptions(text_column="sentence", max_length=12)).split(seed=0)
    memory = prepare_split(DataSplit(raw.train, raw.test), model)
    engine = GradientEngine(model.module, parameters="last-1")
    train_side = engine.stacked(engine.per_example_gradients(memory.train), len(memory.train))
    expected = (engine.test_gradients(memory.test) @ train_side.T).numpy()
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-6)
    assert result.method_info["attributed_parameters"] == engine.space.dim


def test_group_gradient_is_the_sum_of_member_gradients_on_a_subset(loaded):
    split, model = loaded
    engine = GradientEngine(model.module, parameters="last-1", chunk_examples=7)
    names = set(engine.params)
    assert names and all(".layer.1." in n or "pooler" in n or "classifier" in n for n in names)
    assert not any(".layer.0." in n or "embeddings" in n for n in names)
    labels = np.arange(len(split.train)) % 4
    groups = engine.stacked(engine.group_gradients(split.train, labels, 4), 4)
    members = engine.stacked(engine.per_example_gradients(split.train), len(split.train))
    expected = torch.stack([members[torch.as_tensor(labels == k)].sum(0) for k in range(4)])
    torch.testing.assert_close(groups, expected, rtol=1e-4, atol=1e-6)
    # a one-point group is a per-example gradient: the vmap of token ids keeps them integers
    head = GradientEngine(model.module, parameters="head")
    assert head.space.dim < engine.space.dim < sum(p.numel() for p in model.module.parameters())


@pytest.mark.parametrize("method, options", [
    ("grad-dot", {}), ("grad-cos", {}), ("tracin", {"checkpoints": "final"}), ("datainf", {}),
    ("trak", {"projection_dim": 32}), ("if-exact", {}), ("if-cg", {"max_iterations": 5}),
    ("if-lissa", {"depth": 5}), ("if-arnoldi", {"rank": 4, "iterations": 8}), ("if-kfac", {}), ("if-ekfac", {}),
])
def test_every_method_runs_on_the_head_subset(loaded, method, options):
    split, model = loaded
    groups = make_grouping("repr-kmeans", 4, seed=0).fit(split.train, model.module)
    fitted = make_method(method, model, parameters="head", **options).fit(split.train, groups)
    scores = fitted.attribute(split.test.subset(slice(0, 3)))
    assert scores.shape == (3, 4) and np.isfinite(scores).all()


def test_last_layer_mode_works_on_the_pooled_embedding(loaded):
    split, model = loaded
    engine = GradientEngine(model.module, last_layer_only=True)
    assert engine.inputs(split.train).shape == (len(split.train), model.module.head.in_features)
    with pytest.raises(GDAError, match="^last-layer mode already restricts gradients to the head"):
        GradientEngine(model.module, last_layer_only=True, parameters="last-1")


def _copy(folder, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    return target


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_pickled_weights_are_refused(tiny, tmp_path):
    folder = _copy(tiny[0], tmp_path)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not opened")
    with pytest.raises(GDAError, match=r"^pytorch_model\.bin: \.bin files are pickles"):
        load_text_model(folder)


def test_remote_code_is_refused(tiny, tmp_path):
    folder = _copy(tiny[0], tmp_path)
    _edit_config(folder, auto_map={"AutoModelForSequenceClassification": "modeling.Custom"})
    with pytest.raises(GDAError, match=r"^config\.json asks for custom code \(auto_map\), which is never run"):
        load_text_model(folder)


def test_an_unknown_architecture_is_refused(tiny, tmp_path):
    folder = _copy(tiny[0], tmp_path)
    _edit_config(folder, architectures=["BertForMaskedLM"])
    with pytest.raises(GDAError, match=r"^unknown architecture \['BertForMaskedLM'\]; supported: "):
        load_text_model(folder)


def test_a_missing_tokenizer_is_refused(tiny, tmp_path):
    folder = _copy(tiny[0], tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(GDAError, match=r"^model has no tokenizer \(one of tokenizer\.json"):
        load_text_model(folder)


def test_missing_safetensors_are_refused(tiny, tmp_path):
    folder = _copy(tiny[0], tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(GDAError, match=r"^model has no model\.safetensors"):
        load_text_model(folder)


def test_a_missing_text_column_is_one_line(tiny):
    with pytest.raises(GDAError, match=r"^reviews\.csv has no text column 'text' \(columns: 'sentence, label, id'\)"):
        parse_data(tiny[1], "reviews.csv", DataOptions(text_column="text"))


def test_text_data_with_a_zoo_model_and_a_text_model_with_numbers_are_one_line(tiny, digits):
    folder, payload, cache = tiny
    data = accept_data_upload("reviews.csv", payload, cache, DataOptions(text_column="sentence"))
    with pytest.raises(GDAError, match="^the zoo's mlp takes numbers, and this data is text"):
        load_inputs(AttributionRequest(data=data, model="mlp", method="grad-dot", grouping="random", n_groups=3),
                    cache)
    with pytest.raises(GDAError, match="is a text model but digits has no text"):
        load_inputs(AttributionRequest(data="digits", model=str(folder), method="grad-dot", grouping="random",
                                       n_groups=3), cache)
