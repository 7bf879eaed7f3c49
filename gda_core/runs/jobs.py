"""Jobs: engine requests run through the store, in a worker process or in the foreground.

The same job code runs in both places: :func:`run_in_foreground` (the CLI, with a terminal
progress bar) and :class:`JobManager` (the app: a spawned worker process per job, so torch
work never blocks the Streamlit server). Progress (phase, fraction, ETA) goes to the store,
where any process can read it; cancel is a flag in the store that the job sees at its next
progress report (and a worker that does not stop within a few seconds is terminated).
Attribution results are saved in chunks of test points as they finish, so a job that was
killed resumes where it stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass

import numpy as np

from ..errors import GDAError
from ..io import content_key
from ..progress import Progress, throttled
from .store import JobCancelled, Run, ScoreStore

JOB_KINDS = {"attribute": "scores", "fidelity": "sweep", "embed": "umap", "flag": "flags", "noisy": "noisy",
             "prune": "prune"}


@dataclass
class JobOutcome:
    key: str
    arrays: dict[str, np.ndarray]
    summary: dict
    cache_hit: bool
    seconds: float


def job_params(kind: str, request: dict, store: ScoreStore) -> dict:
    """What a job's result depends on: the request, and the fingerprints of the data and of
    the model's weights (so a retrained model, or an uploaded file with new content at the
    same path, is a different run)."""
    if kind == "attribute":
        from ..inputs.choices import load_inputs
        from ..requests import AttributionRequest, resolve_device

        parsed = AttributionRequest(**request)
        split, model = load_inputs(parsed, store.root, resolve_device(parsed.device))
        return parsed.identity(split, model)
    if kind == "fidelity":
        from ..inputs.choices import input_fingerprints, load_inputs
        from ..requests import PLACEMENT_FIELDS, SweepConfig, resolve_device

        parsed = SweepConfig(**request)
        split, model = load_inputs(parsed, store.root, resolve_device(parsed.device))
        # Where it runs stays out of the key, as for attribution; the result's config says
        # which executor measured its wall times.
        return {**{k: v for k, v in request.items() if k not in PLACEMENT_FIELDS}, **input_fingerprints(split, model)}
    if kind == "embed":
        from ..inputs.choices import input_fingerprints, load_inputs
        from ..requests import EmbeddingRequest, resolve_device

        parsed = EmbeddingRequest(**request)
        split, model = load_inputs(parsed, store.root, resolve_device(parsed.device))
        return {**{k: v for k, v in request.items() if k != "device"}, **input_fingerprints(split, model)}
    if kind == "flag":
        from ..inputs.choices import input_fingerprints, load_inputs
        from ..requests import FlagRequest, resolve_device

        parsed = FlagRequest(**request)
        split, model = load_inputs(parsed, store.root, resolve_device(parsed.device))
        return {**parsed.params(), **input_fingerprints(split, model)}
    if kind in ("noisy", "prune"):
        from ..inputs.choices import load_data_choice
        from ..requests import NoisyConfig, PruneConfig

        # These retrain their own model, so only the data's content joins the request (a data
        # file with new content at the same path is a new run).
        parsed = (NoisyConfig if kind == "noisy" else PruneConfig)(**request)
        split = load_data_choice(parsed.data, seed=parsed.seed)
        return {**parsed.params(), "data_fingerprint": split.train.fingerprint() + split.test.fingerprint()}
    raise GDAError(f"unknown job kind {kind!r}; choose from: {', '.join(JOB_KINDS)}")


def job_key(kind: str, request: dict, store: ScoreStore) -> tuple[str, dict]:
    params = job_params(kind, request, store)
    return content_key(JOB_KINDS[kind], params), params


def execute(kind: str, request: dict, store: ScoreStore, key: str, report: Progress) -> tuple[dict, dict]:
    """Compute one job's arrays and summary. ``report`` may raise :class:`JobCancelled`."""
    if kind == "attribute":
        from ..attribution.pipeline import run_attribution
        from ..requests import AttributionRequest

        def save(name: str, array: np.ndarray) -> None:
            store.save_part(key, name, array)

        result = run_attribution(AttributionRequest(**request), cache_dir=store.root, progress=report,
                                 parts=(lambda name: store.load_part(key, name), save))
        return {"scores": result.scores.astype(np.float32), "groups": result.groups.labels}, result.summary()
    if kind == "embed":
        return _embed(request, store, report)
    if kind == "flag":
        return _flag(request, store, report)
    if kind == "noisy":
        from ..evaluation.noisy import run_noisy
        from ..requests import NoisyConfig

        return {}, run_noisy(NoisyConfig(**request), progress=report)
    if kind == "prune":
        from ..evaluation.pruning import run_pruning
        from ..requests import PruneConfig

        return {}, run_pruning(PruneConfig(**request), progress=report)
    from ..evaluation.sweeps import run_sweep
    from ..requests import SweepConfig

    sweep = run_sweep(SweepConfig(**request), store, progress=report)
    return {}, sweep


def _embed(request: dict, store: ScoreStore, report: Progress) -> tuple[dict, dict]:
    from ..inputs.choices import load_inputs
    from ..requests import EmbeddingRequest, resolve_device
    from ..viz.embeddings import embed_points, embedding_inputs

    parsed = EmbeddingRequest(**request)
    started = time.perf_counter()
    report("load", 0.0)
    split, model = load_inputs(parsed, store.root, resolve_device(parsed.device), report)
    train, test = embedding_inputs(split, model, parsed.space)
    report(f"embed ({parsed.embedder})", 0.1)
    train_xy, test_xy = embed_points(train, test, embedder=parsed.embedder, seed=parsed.seed,
                                     n_neighbors=parsed.n_neighbors)
    report(f"embed ({parsed.embedder})", 1.0)
    summary = {"embedder": parsed.embedder, "space": parsed.space, "n_train": len(train_xy),
               "n_test": len(test_xy), "seconds": round(time.perf_counter() - started, 3)}
    return {"train": train_xy, "test": test_xy}, summary


def _flag(request: dict, store: ScoreStore, report: Progress) -> tuple[dict, dict]:
    from ..evaluation.flagging import run_flagging
    from ..requests import FlagRequest

    flags, train, summary = run_flagging(FlagRequest(**request), cache_dir=store.root, progress=report)
    arrays = {"order": flags.order, "scores": flags.scores, "refined": flags.refined, "groups": flags.group_labels,
              "labels": train.labels.cpu().numpy(), "source_rows": train.indices}
    return arrays, summary


def run_in_foreground(kind: str, request: dict, store: ScoreStore | None = None,
                      progress: Progress | None = None) -> JobOutcome:
    """Run a job here (the CLI path): a cache hit returns at once; otherwise compute, report
    progress to the store and to ``progress``, and store the result."""
    store = store or ScoreStore()
    started = time.perf_counter()
    key, params = job_key(kind, request, store)

    def compute(report: Progress) -> tuple[dict, dict]:
        def both(phase: str, fraction: float) -> None:
            if progress is not None:
                progress(phase, fraction)
            report(phase, fraction)

        return execute(kind, request, store, key, throttled(both))

    arrays, summary, hit = store.get_or_compute(JOB_KINDS[kind], params, compute)
    return JobOutcome(key, arrays, summary, hit, time.perf_counter() - started)


def _worker(root: str, kind: str, request: dict, key: str) -> None:
    """Entry point of a spawned worker process."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    store = ScoreStore(root)
    store.set_worker(key, os.getpid())
    try:
        arrays, summary = execute(kind, request, store, key, throttled(store.reporter(key)))
    except JobCancelled:
        store.mark_cancelled(key)
        return
    except BaseException as error:  # noqa: BLE001 - a worker reports every failure to the store
        store.fail(key, f"{type(error).__name__}: {error}")
        return
    store.complete(key, arrays, summary)


class JobManager:
    """Submits jobs to worker processes and reads their state back from the store."""

    def __init__(self, store: ScoreStore | None = None):
        self.store = store or ScoreStore()
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[str, multiprocessing.process.BaseProcess] = {}

    def submit(self, kind: str, request: dict) -> tuple[str, bool]:
        """Start a job unless its result is stored. Returns (key, cache_hit)."""
        key, params = job_key(kind, request, self.store)
        if self.store.load(key) is not None:
            return key, True
        if self.store.claim(key, JOB_KINDS[kind], params):
            process = self._context.Process(target=_worker, args=(str(self.store.root), kind, request, key),
                                            daemon=True)
            process.start()
            self.store.set_worker(key, process.pid)
            self._processes[key] = process
        return key, False

    def status(self, key: str) -> Run | None:
        run = self.store.get(key)
        process = self._processes.get(key)
        if run is not None and run.status == "running" and process is not None and not process.is_alive():
            process.join()
            run = self.store.get(key)
            if run.status == "running":  # died without a word (killed)
                self.store.fail(key, f"worker exited with code {process.exitcode}")
                run = self.store.get(key)
        return run

    def wait(self, key: str, timeout: float = 600, poll: float = 0.1) -> Run:
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.status(key)
            if run is not None and run.status not in ("queued", "running"):
                return run
            time.sleep(poll)
        raise GDAError(f"job {key} did not finish within {timeout:.0f} s")

    def cancel(self, key: str, grace: float = 3.0) -> Run | None:
        """Ask the job to stop; a worker that has not stopped after ``grace`` s is terminated."""
        self.store.request_cancel(key)
        process = self._processes.get(key)
        deadline = time.time() + grace
        while process is not None and process.is_alive() and time.time() < deadline:
            time.sleep(0.05)
        if process is not None and process.is_alive():
            process.terminate()
            process.join(5)
        run = self.store.get(key)
        if run is not None and run.status in ("queued", "running"):
            self.store.mark_cancelled(key)
        return self.store.get(key)

    def result(self, key: str) -> dict[str, np.ndarray] | None:
        return self.store.load(key)
