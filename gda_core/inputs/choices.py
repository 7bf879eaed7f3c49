"""The one resolver of data and model choices, and upload storage.

A data choice is a built-in name (``digits``) or a path to a ``.csv``, ``.npz`` or ``.zip`` of
image folders; a model choice is a zoo name (``mlp``), the built-in text model ``minilm``, or a
path to a ``.pt2`` program, a ``.safetensors`` state dict with its ``.json`` config, or a Hugging
Face ``save_pretrained`` folder (or a ``.zip`` of it). :func:`load_data_choice` and
:func:`load_model_choice` resolve them for every caller (engine, jobs, sweeps, app), so an
upload works wherever a built-in does. A validated upload is normalised to one ``.npz`` under
``<cache>/uploads/`` named by its content hash, whose path is then the data choice (that is
how the app and the CLI pass an uploaded CSV or image zip to jobs).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import GDAError
from ..io import atomic_write_bytes
from ..progress import Progress
from .datasets import (
    BUILTIN_DATASETS,
    BUILTIN_TEXT_MAX_LENGTH,
    BUILTIN_TEXTS,
    NOISY_DEMOS,
    Dataset,
    DataSplit,
    load_builtin,
    raw_builtin,
)
from .huggingface import (
    DEMO_TEXT_MODEL,
    demo_text_model,
    demo_text_model_folder,
    load_text_model,
    unpack_model_bytes,
    unpack_model_zip,
)
from .parsers import DATA_SUFFIXES, DataOptions, UploadedData, parse_data, parse_data_file
from .programs import check_model_fits, load_model_file
from .safety import UploadLimits, one_line, refuse_pickle
from .zoo import (
    ARCHITECTURES,
    TrainedModel,
    architectures_for,
    build_model,
    demo_model,
    demo_model_is_cached,
    model_config_for,
)

MODEL_SUFFIXES = (".pt2", ".safetensors", ".zip")
#: model names besides the zoo's: built-in models that are not rebuilt from a zoo config
MODEL_NAMES = (*ARCHITECTURES, DEMO_TEXT_MODEL)


def uploads_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "uploads"


def store_upload(data: UploadedData, cache_dir: str | Path) -> Path:
    """Write the normalised ``.npz`` to ``<cache>/uploads/<sha256>.npz`` (atomically; an
    identical upload reuses the file) and return its path: the data choice for jobs."""
    path = uploads_dir(cache_dir) / f"{data.fingerprint()}.npz"
    if not path.is_file():
        atomic_write_bytes(path, data.to_npz_bytes())
    return path.resolve()


def store_model_upload(files: dict[str, bytes], cache_dir: str | Path) -> Path:
    """Keep an uploaded model under ``<cache>/uploads/<sha256>.pt2`` (or ``.safetensors`` with
    ``.json`` beside it) and return the path of the model file: the model choice for jobs.
    ``files`` maps file names to their bytes: one ``.pt2``, one ``.safetensors`` and one ``.json``,
    or one ``.zip`` of a Hugging Face ``save_pretrained`` folder (unpacked, checked, under
    ``<cache>/uploads/<sha256>.hf/``, whose path is then returned)."""
    for file_name in files:
        refuse_pickle(file_name)
    by_suffix = {Path(n).suffix.lower(): payload for n, payload in files.items()}
    unknown = set(by_suffix) - {".pt2", ".safetensors", ".json", ".zip"}
    if unknown or len(by_suffix) != len(files):
        raise GDAError("upload one .pt2 file, one .safetensors file with its .json config, or one .zip of a "
                       "Hugging Face save_pretrained folder")
    if ".zip" in by_suffix:
        if len(files) != 1:
            raise GDAError("a zipped Hugging Face model is uploaded on its own")
        return unpack_model_bytes(by_suffix[".zip"], next(iter(files)), cache_dir, UploadLimits.from_env())
    if ".pt2" in by_suffix:
        if len(files) != 1:
            raise GDAError("a .pt2 program is uploaded on its own (no .safetensors or .json with it)")
        digest = hashlib.sha256(by_suffix[".pt2"]).hexdigest()
        path = uploads_dir(cache_dir) / f"{digest}.pt2"
        atomic_write_bytes(path, by_suffix[".pt2"])
        return path.resolve()
    if set(by_suffix) != {".safetensors", ".json"}:
        raise GDAError("a .safetensors state dict needs its .json config uploaded with it")
    digest = hashlib.sha256(by_suffix[".safetensors"] + b"\x00" + by_suffix[".json"]).hexdigest()
    folder = uploads_dir(cache_dir)
    atomic_write_bytes(folder / f"{digest}.safetensors", by_suffix[".safetensors"])
    atomic_write_bytes(folder / f"{digest}.json", by_suffix[".json"])  # config last, as save_model does
    return (folder / f"{digest}.safetensors").resolve()


def prepare_data_choice(choice: str, options: DataOptions, cache_dir: str | Path) -> str:
    """The data choice jobs should get: a built-in name as it is; a data file parsed with
    ``options`` (a CSV's label column, image size), validated, and stored normalised."""
    if choice in BUILTIN_DATASETS:
        changed = [f.metadata.get("flag", "--" + f.name.replace("_", "-")) for f in dataclasses.fields(options)
                   if getattr(options, f.name) != f.default]
        if changed:  # they would be silently ignored: a built-in set is read as it is
            raise GDAError(f"{', '.join(changed)} only appl{'y' if len(changed) > 1 else 'ies'} to a data file; "
                           f"the built-in data set {choice!r} is read as it is")
        return choice
    check_data_choice(choice)
    return str(store_upload(parse_data_file(choice, options), cache_dir))


def accept_data_upload(name: str, payload: bytes, cache_dir: str | Path, options: DataOptions = DataOptions(),
                       test_payload: bytes | None = None) -> str:
    """An uploaded file's bytes (the app's path), validated and stored normalised: the data choice."""
    return str(store_upload(parse_data(payload, name, options, test_payload=test_payload), cache_dir))


def accept_model_upload(files: dict[str, bytes], train: Dataset, cache_dir: str | Path) -> str:
    """Uploaded model files, stored and loaded once against the training data (so a model
    that does not fit is refused at upload): the model choice."""
    path = store_model_upload(files, cache_dir)
    try:
        load_model_choice(str(path), train, cache_dir)
    except GDAError as error:  # name the files as the user knows them, not by their hash
        if path.is_dir():
            raise GDAError(str(error).replace(path.name, next(iter(files)))) from None
        stored = {path.name: next(n for n in files if n.lower().endswith(path.suffix)),
                  path.with_suffix(".json").name: next((n for n in files if n.lower().endswith(".json")), "")}
        message = str(error)
        for hashed, original in stored.items():
            message = message.replace(hashed, original) if original else message
        raise GDAError(message) from None
    return str(path)


def prepare_model_choice(choice: str) -> str:
    """A zoo name as it is; a model file as an absolute path (jobs may run elsewhere)."""
    check_model_choice(choice)
    return choice if is_zoo_model(choice) else str(Path(choice).resolve())


# ------------------------------------------------------------------------ choice resolver
def _is_path_choice(choice: str) -> bool:
    return "/" in choice or "\\" in choice or Path(choice).suffix != ""


def _check_choice(choice: str, kind: str, names, suffixes, use: str) -> None:
    """A registered name, or an existing file with a supported suffix; one line otherwise."""
    if not isinstance(choice, str):
        raise GDAError(f"the {kind} choice must be a name or a path, got {one_line(choice)}")
    if choice in names:
        return
    if not _is_path_choice(choice):
        raise GDAError(f"unknown {'data set' if kind == 'data' else kind} {choice!r}; choose from: "
                       f"{', '.join(names)}, or give a path to a {', '.join(suffixes[:-1])} or {suffixes[-1]} file")
    refuse_pickle(choice)
    if Path(choice).suffix.lower() not in suffixes:
        raise GDAError(f"unsupported {kind} file type {one_line(Path(choice).suffix, 20)}; use {use}")
    if not Path(choice).is_file():
        raise GDAError(f"{kind} file {choice} does not exist")


def check_data_choice(choice: str) -> None:
    """A built-in name, or an existing data file with a supported suffix; one line otherwise."""
    _check_choice(choice, "data", BUILTIN_DATASETS, DATA_SUFFIXES, f"one of: {', '.join(DATA_SUFFIXES)}")


def check_model_choice(choice: str) -> None:
    """A zoo name, ``minilm``, a model folder (Hugging Face ``save_pretrained``), or an
    existing model file with a supported suffix; one line otherwise."""
    if isinstance(choice, str) and choice not in MODEL_NAMES and Path(choice).is_dir():
        return
    _check_choice(choice, "model", MODEL_NAMES, MODEL_SUFFIXES,
                  "a .pt2 program, a .safetensors state dict with its .json config, or a Hugging Face "
                  "save_pretrained folder or its .zip")


def is_builtin_data(choice: str) -> bool:
    return choice in BUILTIN_DATASETS


def is_zoo_model(choice: str) -> bool:
    return choice in ARCHITECTURES


def is_builtin_model(choice: str) -> bool:
    """A zoo name or the built-in text model: a model named, not uploaded."""
    return choice in MODEL_NAMES


def builtin_model_is_cached(choice: str, train: Dataset, cache_dir: str | Path, *, seed: int = 0) -> bool:
    """Whether a built-in model is trained (or fine-tuned) already and on disk: loading it is
    then quick, otherwise its first use trains it."""
    if is_zoo_model(choice):
        return demo_model_is_cached(choice, train, cache_dir, seed=seed)
    return (demo_text_model_folder(train, cache_dir, seed=seed) / "config.json").is_file()


def builtin_models_for(data: Dataset) -> list[str]:
    """The built-in models that can take ``data``: the zoo's that fit it, or for text the
    built-in text model."""
    return [DEMO_TEXT_MODEL] if data.is_text else architectures_for(data)


def load_data_choice(choice: str, *, seed: int = 0, options: DataOptions = DataOptions()) -> DataSplit:
    """The split of a built-in data set or of a data file (CSV read with ``options``)."""
    check_data_choice(choice)
    if choice in BUILTIN_DATASETS:
        return load_builtin(choice, seed=seed)
    return parse_data_file(choice, options).split(seed=seed)


def raw_data(choice: str, options: DataOptions = DataOptions()) -> UploadedData:
    """A data choice's raw (unstandardised) rows as the project reads them: a data file's own
    arrays, or a built-in set's (the noisy demo's with the labels it gives its training points).
    Its rows are what a :class:`Dataset`'s ``indices`` (a review's source rows) point at."""
    check_data_choice(choice)
    if choice not in BUILTIN_DATASETS:
        return parse_data_file(choice, options)
    base = NOISY_DEMOS[choice].base if choice in NOISY_DEMOS else choice
    if base in BUILTIN_TEXTS:
        texts, labels, class_names = BUILTIN_TEXTS[base]()
        raw = UploadedData(np.zeros((len(texts), 0)), labels, class_names, name=choice, texts=texts,
                           max_length=BUILTIN_TEXT_MAX_LENGTH)
    else:
        features, labels, class_names, image_shape = raw_builtin(base)
        raw = UploadedData(features, labels, class_names, name=choice, image_shape=image_shape)
    if choice in NOISY_DEMOS:
        train = load_builtin(choice).train
        labels = raw.labels.copy()
        labels[train.indices] = train.labels.numpy()
        raw = dataclasses.replace(raw, labels=labels)
    return raw


def load_model_choice(choice: str, train: Dataset, cache_dir: str | Path, *, seed: int = 0,
                      device: torch.device | str = "cpu",
                      progress: Callable[[float], None] | None = None) -> TrainedModel:
    """A zoo name trains (or loads the cached) demo model on ``train``; a path loads the
    uploaded model and checks that it fits the data (features in, classes out)."""
    check_model_choice(choice)
    if is_zoo_model(choice):
        return demo_model(choice, train, cache_dir, seed=seed, device=device, progress=progress)
    limits = UploadLimits.from_env()
    if choice == DEMO_TEXT_MODEL:
        model = demo_text_model(train, cache_dir, seed=seed, device=device, progress=progress)
    elif Path(choice).is_dir():
        model = load_text_model(choice, device=device, limits=limits)
    elif Path(choice).suffix.lower() == ".zip":
        model = load_text_model(unpack_model_zip(choice, cache_dir, limits), device=device, limits=limits)
    else:
        model = load_model_file(choice, device=device, limits=limits)
    try:
        check_model_fits(model, train)
    except GDAError as error:
        raise GDAError(f"{Path(choice).name}: {error}") from None
    return model


def input_fingerprints(split: DataSplit, model: TrainedModel) -> dict:
    """Content hashes of the data and of the model's weights, for cache keys: a retrained
    model or edited data is a different run."""
    return {"data_fingerprint": split.train.fingerprint() + split.test.fingerprint(),
            "model_fingerprint": model.fingerprint()}


def load_inputs(request, cache_dir: str | Path, device: torch.device | str = "cpu",
                progress: Progress | None = None,
                check_zoo_model: Callable[[torch.nn.Module], None] | None = None) -> tuple[DataSplit, TrainedModel]:
    """The data and model a request names (anything with ``data``, ``model`` and ``seed``):
    built-in names and zoo names, or paths to uploaded files (see :mod:`gda_core.inputs.choices`).
    ``check_zoo_model`` gets a zoo model's module built on the meta device (its sizes, no
    weights) before the demo model is trained or loaded, so that size refusals cost nothing."""
    split = load_data_choice(request.data, seed=request.seed)
    if check_zoo_model is not None and is_zoo_model(request.model):
        with torch.device("meta"):
            check_zoo_model(build_model(model_config_for(request.model, split.train)))
    model = load_model_choice(request.model, split.train, cache_dir, seed=request.seed, device=device,
                              progress=None if progress is None else (lambda f: progress("train model", f)))
    return prepare_split(split, model), model


def prepare_split(split: DataSplit, model: TrainedModel) -> DataSplit:
    """Both parts as the model takes them (text tokenised by a text model's tokenizer)."""
    return DataSplit(train=model.prepare(split.train), test=model.prepare(split.test))
