"""A tiny BERT sequence classifier and a text CSV made in the test: a WordLevel tokenizer trained
with ``tokenizers`` on the sentences themselves, a 2-layer BERT of width 16 built from a config,
briefly trained, saved with ``save_pretrained``. Nothing is downloaded."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import torch

GOOD = ["good", "great", "lovely", "fine", "superb", "warm"]
BAD = ["bad", "awful", "dull", "poor", "boring", "cold"]
NOUNS = ["film", "movie", "story", "plot", "cast", "ending"]


def sentences(count: int = 60, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short sentences and their labels (``pos``/``neg``), a few of them mislabelled."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for index in range(count):
        positive = index % 2 == 0
        words = GOOD if positive else BAD
        length = int(rng.integers(2, 6))
        text = " ".join([str(rng.choice(NOUNS)), "was"] + [str(rng.choice(words)) for _ in range(length - 1)])
        texts.append(text)
        labels.append("pos" if positive != (index % 17 == 5) else "neg")
    return texts, labels


def text_csv(texts: list[str], labels: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["sentence", "label", "id"])
    writer.writerows([text, label, index] for index, (text, label) in enumerate(zip(texts, labels)))
    return buffer.getvalue().encode()


def save_tiny_bert(folder: Path, texts: list[str], labels: list[str], *, epochs: int = 30) -> Path:
    """A 2-layer BERT classifier with its WordLevel tokenizer, trained on the sentences and
    saved (safetensors) into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")),
                                                 ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")
    torch.manual_seed(0)
    names = sorted(set(labels))
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                        num_labels=len(names), pad_token_id=0, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    encoded = fast(texts, padding="longest", return_tensors="pt")
    targets = torch.tensor([names.index(label) for label in labels])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = model(**{k: encoded[k] for k in ("input_ids", "attention_mask")}, labels=targets).loss
        loss.backward()
        optimiser.step()
    model.eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    fast.save_pretrained(str(folder))
    return folder


def zipped(folder: Path, enclosing: str | None = "tiny-bert") -> bytes:
    """The folder as a zip (inside one enclosing folder, as zipping a folder gives)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder).as_posix()
                archive.write(path, f"{enclosing}/{name}" if enclosing else name)
    return buffer.getvalue()


def tiny_inputs(root: Path, count: int = 40, epochs: int = 10):
    """(split, model, folder): a tiny BERT trained and saved under ``root``, and its text CSV
    uploaded and loaded as a request would (cut at 12 tokens)."""
    from gda_core.inputs.choices import accept_data_upload, load_inputs
    from gda_core.inputs.parsers import DataOptions
    from gda_core.requests import AttributionRequest

    texts, labels = sentences(count)
    folder = save_tiny_bert(root / "tiny-bert", texts, labels, epochs=epochs)
    data = accept_data_upload("reviews.csv", text_csv(texts, labels), root / "cache",
                              DataOptions(text_column="sentence", max_length=12))
    split, model = load_inputs(AttributionRequest(data=data, model=str(folder), method="grad-dot",
                                                  grouping="per-example"), root / "cache")
    return split, model, folder
