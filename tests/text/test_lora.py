"""peft LoRA adapters saved beside a model (``adapter_config.json`` + ``adapter_model.safetensors``):
loaded offline, attributed over with ``--parameters lora``; a tiny BERT and a tiny LoRA config
built in the test."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gda_core.attribution.grads import GradientEngine
from gda_core.errors import GDAError
from gda_core.inputs.huggingface import load_text_model

from .tiny import save_tiny_bert, sentences

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """(folder holding the tiny BERT and its LoRA adapter, the in-memory peft model, token ids, labels)."""
    from transformers import BertForSequenceClassification, PreTrainedTokenizerFast

    texts, labels = sentences(30)
    folder = save_tiny_bert(tmp_path_factory.mktemp("lora") / "tiny-bert", texts, labels, epochs=5)
    base = BertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager")
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS",
                             lora_dropout=0.0)
    model = peft.get_peft_model(base, config)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained adapter and classifier: lora_B and the retrained copy moved off their start
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    model.save_pretrained(str(folder))  # the adapter, beside the base model's own files
    model.eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    ids = tokenizer(texts, padding="longest", return_tensors="pt")["input_ids"]
    targets = torch.tensor([sorted(set(labels)).index(label) for label in labels])
    return folder, model, ids, targets


def test_the_adapter_is_applied_and_lora_differentiates_its_weights(adapted):
    folder, reference, ids, targets = adapted
    loaded = load_text_model(folder).module
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), reference(input_ids=ids, attention_mask=(ids != 0).long()).logits)
    assert isinstance(loaded.head, torch.nn.Linear)  # peft's wrapper of the retrained classifier is unwrapped
    engine = GradientEngine(loaded, parameters="lora")
    lora = [name for name in engine.params if "lora_" in name]
    assert len(lora) == 8 and set(engine.params) - set(lora) == {n for n in engine.params if "classifier" in n
                                                                  or "pooler" in n}
    assert engine.prefix_description.startswith("the embeddings:")  # LoRA from layer 0: only the embeddings freeze
    # Brute force: the adapter's gradients by autograd on the peft model, example by example.
    from gda_core.inputs.datasets import Dataset

    data = Dataset(features=ids[:5], labels=targets[:5], class_names=["neg", "pos"], name="lora")
    ours = engine.stacked(engine.per_example_gradients(data), 5)
    by_name = dict(reference.named_parameters())
    for row in range(5):
        reference.zero_grad()
        logits = reference(input_ids=ids[row:row + 1], attention_mask=(ids[row:row + 1] != 0).long()).logits
        torch.nn.functional.cross_entropy(logits, targets[row:row + 1]).backward()
        flat = torch.cat([by_name["base_model.model." + n.removeprefix("model.")].grad.flatten() for n in lora])
        torch.testing.assert_close(ours[row, :flat.numel()], flat, rtol=1e-4, atol=1e-6)


def test_adapters_that_cannot_be_read_are_refused(adapted, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(adapted[0], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(GDAError, match=r"^adapter_config\.json is a 'IA3' adapter; only LoRA adapters"):
        load_text_model(folder)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(GDAError, match=r"^adapter_model\.bin: \.bin files are pickles"):
        load_text_model(folder)
    (folder / "adapter_model.bin").unlink()
    with pytest.raises(GDAError, match=r"^model has adapter_config\.json but no adapter_model\.safetensors"):
        load_text_model(folder)
