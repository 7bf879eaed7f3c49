"""Jobs: engine requests run through the store, in a worker process or in the foreground.

The same job code runs in both places: :func:`run_in_foreground` (the CLI, with a terminal
progress bar) and :class:`JobManager` (the app: a spawned worker process per job, so torch
work never blocks the Streamlit server). Progress (phase, fraction, ETA) goes to the store,
where any process can read it; cancel is a flag in the store that the job sees at its next
progress report (and a worker that does not stop within a few seconds is terminated).
Attribution results are saved in chunks of test points as they finish, so a job that was
killed resumes where it stopped. What a job of each kind depends on and computes is its
:class:`JobKind` in ``JOB_KINDS`` (one module per kind in :mod:`gda_core.runs.kinds`).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass

import numpy as np

from ..errors import GDAError
from ..progress import Progress, throttled
from ..registry import JOB_KINDS
from . import kinds  # noqa: F401 - importing the kinds registers them in JOB_KINDS
from .kinds.base import JobKind
from .store import JobCancelled, Run, ScoreStore

__all__ = ["JOB_KINDS", "JobKind", "JobManager", "JobOutcome", "execute", "job_key", "run_in_foreground"]


@dataclass
class JobOutcome:
    key: str
    arrays: dict[str, np.ndarray]
    summary: dict
    cache_hit: bool
    seconds: float


def job_key(kind: str, request: dict, store: ScoreStore) -> tuple[str, dict]:
    """The store's content key of a job, and the parameters hashed into it (its kind's
    :meth:`JobKind.identity`). An unknown kind or a bad request is one :class:`GDAError` line."""
    job = JOB_KINDS.get_checked(kind)
    return job.key(job.request(request), store)


def execute(kind: str, request: dict, store: ScoreStore, key: str, report: Progress) -> tuple[dict, dict]:
    """Compute one job's arrays and summary. ``report`` may raise :class:`JobCancelled`."""
    job = JOB_KINDS.get_checked(kind)
    return job.run(job.request(request), store, key, report)


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

    arrays, summary, hit = store.get_or_compute(JOB_KINDS[kind].store_kind, params, compute)
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
        store.record_failure(key, error)  # one line; a bug's traceback goes to the run's log
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
        if self.store.claim(key, JOB_KINDS[kind].store_kind, params):
            process = self._context.Process(target=_worker, args=(str(self.store.root), kind, request, key),
                                            daemon=True)
            process.start()
            self.store.set_worker(key, process.pid)
            self._processes[key] = process
        return key, False

    def status(self, key: str) -> Run | None:
        """The run of ``key``. A run whose worker died (this manager's or any other process's,
        such as a ``gda`` command killed mid-run) is marked failed, not left ``running``."""
        run = self.store.get(key)
        process = self._processes.get(key)
        if run is not None and run.status == "running" and process is not None and not process.is_alive():
            process.join()
            run = self.store.get(key)
            if run.status == "running":  # died without a word (killed)
                self.store.fail(key, f"worker exited with code {process.exitcode}")
                run = self.store.get(key)
        if run is not None and run.status in ("queued", "running"):
            run = self.store.reclaim(key)  # the store's test of a dead worker, as claim uses
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
