"""LDS on a text model: its fine-tuned part (the last encoder layer and the head) retrained on
subsets of the training points from the pretrained encoder, on the frozen layers' output
computed once; checked against a plain retraining through the whole model (tiny BERT from the
test's fixtures, its own folder standing in for the pretrained encoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gda_core.errors import GDAError
from gda_core.evaluation.gold import lds, point_lds, point_lds_ensemble
from gda_core.inputs.huggingface import DEMO_RECIPE, TextRetraining

from .tiny import tiny_inputs

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return tiny_inputs(tmp_path_factory.mktemp("text-lds"))


def plain_retraining(folder, module, train, test, rows: np.ndarray, seed: int) -> torch.Tensor:
    """The reference: a fresh copy of the model, its last layer and head trained (AdamW, the
    recipe's rates, the same seeded batches) through the whole model; its test losses."""
    from transformers import BertForSequenceClassification

    from gda_core.inputs.huggingface import SequenceClassifier

    fresh = SequenceClassifier(BertForSequenceClassification.from_pretrained(str(folder)).float().eval(),
                               module.pad_id)
    fresh.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    std = fresh.model.config.initializer_range
    with torch.no_grad():
        fresh.head.weight.copy_(torch.randn(fresh.head.weight.shape, generator=generator) * std)
        fresh.head.bias.zero_()
    named = dict(fresh.named_parameters())
    chosen = fresh.parameter_subset("last-1")
    head = [named[n] for n in chosen if ".pooler." in n or ".classifier." in n]
    layer = [named[n] for n in chosen if ".encoder." in n]
    for parameter in head + layer:
        parameter.requires_grad_(True)
    optimiser = torch.optim.AdamW([{"params": layer, "lr": DEMO_RECIPE["layer_lr"]},
                                   {"params": head, "lr": DEMO_RECIPE["head_lr"]}],
                                  weight_decay=DEMO_RECIPE["weight_decay"])
    rows = torch.as_tensor(rows)
    batches = torch.Generator().manual_seed(seed)
    for _ in range(DEMO_RECIPE["epochs"]):
        order = rows[torch.randperm(len(rows), generator=batches)]
        for start in range(0, len(order), DEMO_RECIPE["batch_size"]):
            batch = order[start:start + DEMO_RECIPE["batch_size"]]
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(fresh(train.features[batch]), train.labels[batch]).backward()
            optimiser.step()
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(fresh(test.features), test.labels, reduction="none")


def test_retraining_on_the_frozen_prefix_equals_a_plain_retraining(loaded):
    split, model, folder = loaded
    retraining = TextRetraining(lambda: folder, list(split.train.class_names))
    test = split.test.subset(slice(0, 5))
    masks = np.zeros((2, len(split.train)), dtype=bool)
    masks[0, ::2] = True
    masks[1, np.random.default_rng(1).permutation(len(split.train))[:20]] = True
    outputs = retraining.subset_outputs(model.module, split.train, test, masks, seed=7)
    for index, mask in enumerate(masks):
        expected = plain_retraining(folder, model.module, split.train, test, np.flatnonzero(mask), seed=7 + index)
        np.testing.assert_allclose(outputs[index], expected.double().numpy(), rtol=1e-4, atol=1e-6)
    assert not np.allclose(outputs[0], outputs[1])  # different subsets, different models
    # The attributed model is left as it was.
    before = model.module(test.features)
    retraining.subset_outputs(model.module, split.train, test, masks[:1])
    torch.testing.assert_close(model.module(test.features), before, rtol=0, atol=0)


def test_point_level_lds_runs_on_a_text_model_that_says_how_it_is_retrained(loaded):
    split, model, folder = loaded
    test = split.test.subset(slice(0, 4))
    with pytest.raises(GDAError, match="an uploaded text model does not say how it was fine-tuned"):
        point_lds_ensemble(model, split.train, test, n_subsets=2)
    model.text.retraining = TextRetraining(lambda: folder, list(split.train.class_names))
    try:
        ensemble = point_lds_ensemble(model, split.train, test, n_subsets=4, alpha=0.5, seed=3)
    finally:
        model.text.retraining = None
    assert ensemble.masks.shape == (4, len(split.train)) and ensemble.outputs.shape == (4, len(test))
    assert (ensemble.masks.sum(1) == len(split.train) // 2).all()
    assert ensemble.params["recipe"]["layer_lr"] == DEMO_RECIPE["layer_lr"]
    retrained = TextRetraining(lambda: folder, list(split.train.class_names)).subset_outputs(
        model.module, split.train, test, ensemble.masks, seed=3)
    np.testing.assert_allclose(ensemble.outputs, retrained)
    # Scores that predict the observed outputs exactly (minus the loss of each subset's model,
    # through the masks' least-squares fit) score LDS 1 at point level, as at group level.
    fit = np.linalg.lstsq(ensemble.masks.astype(float), -ensemble.outputs, rcond=None)[0].T
    assert lds(fit, ensemble)["lds"] == pytest.approx(1.0)
    from gda_core.evaluation.gold import per_point_groups

    assert point_lds(fit, per_point_groups(len(split.train)), ensemble)["lds"] == pytest.approx(1.0)
