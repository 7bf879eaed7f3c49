"""What every page shares: the user's choices, cached loaders, the job manager, and the job
progress panel. UI only: all math lives in gda_core."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import streamlit as st

from gda_core.attribution.costs import GradientCost, estimate_gradient_costs
from gda_core.errors import GDAError, unexpected_reason
from gda_core.inputs.choices import (
    builtin_model_is_cached,
    is_builtin_data,
    is_builtin_model,
    load_data_choice,
    load_inputs,
    raw_data,
)
from gda_core.inputs.datasets import DataSplit
from gda_core.inputs.examples import example_files
from gda_core.inputs.parsers import UploadedData
from gda_core.inputs.zoo import TrainedModel, predict
from gda_core.io import default_cache_dir
from gda_core.requests import resolve_device
from gda_core.runs.jobs import JOB_KINDS, JobManager
from gda_core.runs.store import Run, ScoreStore

from .markup import escape

#: the user's choices, kept in st.session_state under these keys (the widgets' keys too)
CHOICES = {"data": "digits", "model": "mlp", "method": "grad-dot", "grouping": "grad-kmeans",
           "n_groups": 50, "test_index": 0, "result_key": None, "map_colour": "group",
           "executor": "local", "ray_address": ""}
ACTIVE = ("queued", "running")
#: the seed of the data split and demo model every page shows (and of the runs it lists)
APP_SEED = 0
POLL_SECONDS = 0.5


def page_setup(title: str) -> None:
    """Call first on every page. Re-assigning the choices stops Streamlit from dropping a
    widget's value when the user moves to a page that does not show that widget."""
    st.set_page_config(page_title=f"{title} - GDA Explorer", layout="wide")
    for name, default in CHOICES.items():
        st.session_state[name] = st.session_state.get(name, default)


def cache_dir() -> str:
    return str(default_cache_dir())


@st.cache_resource(show_spinner="Loading the data set...")
def _split(data: str) -> DataSplit:
    return load_data_choice(data, seed=APP_SEED)


def _or_stop(load):
    """A loader's result, or its one-line reason shown on the page (never a traceback)."""
    try:
        return load()
    except GDAError as error:
        st.error(escape(error))  # it names files and columns the user chose
        st.stop()
    except Exception as error:  # a case validation missed: still one line, never a traceback
        st.error(escape(unexpected_reason(error, "loading the data or the model")))
        st.stop()


def data_split() -> DataSplit:
    """The chosen data set (without its model): a built-in name or a stored upload."""
    return _or_stop(lambda: _split(st.session_state["data"]))


@st.cache_resource(show_spinner="Reading the data set's rows...")
def _raw_data(data: str) -> UploadedData:
    return raw_data(data)


def raw_rows() -> UploadedData:
    """The chosen data set's raw rows (what a cleaned export rewrites)."""
    return _or_stop(lambda: _raw_data(st.session_state["data"]))


def describe(choice: str) -> str:
    """How a data or model choice is shown: its name, or the uploaded file's original name."""
    if is_builtin_data(choice) or is_builtin_model(choice):
        return choice
    return st.session_state.get("upload_names", {}).get(choice, Path(choice).name)


def remember_upload(path: str, name: str) -> None:
    st.session_state.setdefault("upload_names", {})[path] = name


@st.cache_resource(show_spinner="Preparing the example files (trains a small model once)...")
def examples() -> dict[str, bytes]:
    return example_files()


@st.cache_resource(show_spinner="Loading the data and the model (a demo model trains on first use, then is cached)...")
def _inputs(data: str, model: str, directory: str) -> tuple[DataSplit, TrainedModel]:
    spec = SimpleNamespace(data=data, model=model, seed=APP_SEED)
    return load_inputs(spec, Path(directory), resolve_device("auto"))


def _train_demo_model_with_progress(data: str, model: str) -> None:
    """Train the chosen demo model (first use only) with a progress bar: it is cached on disk,
    and the cached loader below then only reads it."""
    split = data_split()
    if not is_builtin_model(model) or builtin_model_is_cached(model, split.train, cache_dir(), seed=APP_SEED):
        return
    bar = st.progress(0.0, text=f"Training the {model} demo model on {describe(data)} (first use only)...")
    spec = SimpleNamespace(data=data, model=model, seed=APP_SEED)
    load_inputs(spec, Path(cache_dir()), resolve_device("auto"),
                progress=lambda phase, f: bar.progress(min(max(f, 0.0), 1.0), text=f"Training the {model} demo model "
                                                       f"on {describe(data)} (first use only): {f:.0%}"))
    bar.empty()


def inputs() -> tuple[DataSplit, TrainedModel]:
    """The chosen data set and model, loaded once per server process (a demo model trains on
    first use, with a progress bar); a model that does not fit the data stops the page with
    its one-line reason."""
    data, model = st.session_state["data"], st.session_state["model"]
    _or_stop(lambda: _train_demo_model_with_progress(data, model))
    return _or_stop(lambda: _inputs(data, model, cache_dir()))


@st.cache_resource(show_spinner=False)
def _predictions(data: str, model: str, directory: str, part: str = "test") -> tuple[np.ndarray, np.ndarray]:
    split, trained = _inputs(data, model, directory)
    return predict(trained.module, getattr(split, part))


@st.cache_resource(show_spinner="Timing a gradient pass on a few training points...")
def _gradient_costs(data: str, model: str, directory: str) -> list[GradientCost]:
    split, trained = _inputs(data, model, directory)
    return estimate_gradient_costs(trained.module, split.train)


def gradient_costs() -> list[GradientCost]:
    """The measured per-example gradient cost of the chosen model (full, and last layer)."""
    return _or_stop(lambda: _gradient_costs(st.session_state["data"], st.session_state["model"], cache_dir()))


def test_predictions() -> tuple[np.ndarray, np.ndarray]:
    """The model's prediction (a class or a value) for every test point, and its probability (None for regression)."""
    return _predictions(st.session_state["data"], st.session_state["model"], cache_dir())


def train_predictions() -> tuple[np.ndarray, np.ndarray]:
    """The model's predicted class and its probability for every training point."""
    return _predictions(st.session_state["data"], st.session_state["model"], cache_dir(), "train")


@st.cache_resource(show_spinner=False)
def _manager(directory: str) -> JobManager:
    return JobManager(ScoreStore(directory))


def manager() -> JobManager:
    return _manager(cache_dir())


def store() -> ScoreStore:
    return manager().store


def finished_runs(kind: str) -> list[Run]:
    """Done runs of one job kind for the chosen data set and model, newest first. Only runs
    with the app's seed: its pages show the data split and model of that seed, and a run of
    another seed (e.g. from the CLI) has other rows behind its indices."""
    data, model = st.session_state["data"], st.session_state["model"]
    runs = store().runs(kind=JOB_KINDS[kind].store_kind, status="done")
    mine = [run for run in runs if run.params.get("data") == data and run.params.get("model") == model
            and run.params.get("seed", APP_SEED) == APP_SEED]
    return sorted(mine, key=lambda run: run.created, reverse=True)


def submit(kind: str, request: dict, slot: str) -> tuple[str, bool]:
    """Start (or find in the store) a job; ``slot`` names it in the session for its page."""
    key, cache_hit = manager().submit(kind, request)
    st.session_state[f"job:{slot}"] = key
    st.session_state[f"job:{slot}:hit"] = cache_hit
    return key, cache_hit


def submit_request(kind: str, build: Callable[[], object], slot: str) -> None:
    """Build a request (its dataclass validates it) and start its job; a request that does not
    validate is its one-line reason on the page, and nothing is submitted."""
    try:
        request = build()
    except GDAError as error:
        st.error(escape(error))
        return
    submit(kind, request.to_json(), slot)


def job_run(slot: str) -> Run | None:
    key = st.session_state.get(f"job:{slot}")
    return None if key is None else manager().status(key)


def describe_eta(run: Run) -> str:
    if run.eta is None or not np.isfinite(run.eta):
        return ""
    return f", about {run.eta:.0f} s left" if run.eta >= 1 else ", almost done"


def show_job(slot: str, label: str) -> Run | None:
    """Progress of the job in ``slot``: a progress bar with phase and ETA and a cancel button
    while it runs (polled in a fragment, so only this panel reruns), a notice when the result
    came from the cache, the error when it failed. Returns the run once it is done."""
    run = job_run(slot)
    if run is None:
        return None
    if run.status in ACTIVE:
        _progress_panel(slot, label)
        return None
    if run.status == "failed":
        st.error(f"{label} failed: {escape(run.error)}")
    elif run.status == "cancelled":
        st.warning(f"{label} was cancelled.")
    elif st.session_state.get(f"job:{slot}:hit"):
        st.success(f"{label}: loaded from the cache (computed earlier in {run.seconds or 0:.1f} s).")
    return run if run.status == "done" else None


@st.fragment(run_every=POLL_SECONDS)
def _progress_panel(slot: str, label: str) -> None:
    run = job_run(slot)
    if run is None or run.status not in ACTIVE:
        st.rerun()  # the whole page, which now shows the result
        return
    phase = run.phase or "starting"
    st.progress(min(max(run.progress, 0.0), 1.0),
                text=f"{label}: {phase} ({run.progress:.0%}{describe_eta(run)})")
    if st.button("Cancel", key=f"cancel:{slot}"):
        manager().cancel(run.key)
        st.rerun()


def request_json(request) -> dict:
    return dataclasses.asdict(request)
