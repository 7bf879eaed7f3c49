"""The score store and background jobs: cache hits, crashes, corruption, concurrency, cancel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gda_core.requests import AttributionRequest
from gda_core.runs.jobs import JobManager, job_key, run_in_foreground
from gda_core.runs.store import ScoreStore

FAST = AttributionRequest(data="wine", model="logreg", method="grad-dot", grouping="random", n_groups=10,
                          test_size=20).to_json()
# Slow enough to interrupt (a few seconds): per-example CG influence on digits, always 100
# iterations, scored in six chunks of test points.
SLOW = AttributionRequest(data="digits", model="logreg", method="if-cg", grouping="per-example", test_size=359,
                          method_options={"damping": 1e-4, "max_iterations": 100, "tolerance": 1e-30}).to_json()


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("GDA_CACHE_DIR", str(tmp_path))
    return ScoreStore(tmp_path)


def test_same_request_is_a_hit_and_any_change_a_miss(store):
    first = run_in_foreground("attribute", FAST, store)
    second = run_in_foreground("attribute", FAST, store)
    assert not first.cache_hit and second.cache_hit
    np.testing.assert_array_equal(first.arrays["scores"], second.arrays["scores"])
    for change in ({"n_groups": 11}, {"method": "grad-cos"}, {"seed": 1}, {"test_size": 21},
                   {"method_options": {"measurement": "margin"}}):
        assert not run_in_foreground("attribute", {**FAST, **change}, store).cache_hit, change
    assert len(store.runs(kind="scores")) == 6


def test_corrupt_or_missing_array_is_recomputed(store):
    outcome = run_in_foreground("attribute", FAST, store)
    path = store.file_path(outcome.key, "scores")
    path.write_bytes(path.read_bytes()[:-16])  # truncated
    assert store.load(outcome.key) is None
    again = run_in_foreground("attribute", FAST, store)
    assert not again.cache_hit
    np.testing.assert_array_equal(again.arrays["scores"], outcome.arrays["scores"])
    path.unlink()
    assert store.load(outcome.key) is None
    assert not run_in_foreground("attribute", FAST, store).cache_hit


def _wait_for(condition, timeout=240.0, poll=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


def test_killed_worker_leaves_nothing_done_and_rerun_resumes(store, monkeypatch):
    manager = JobManager(store)
    key, hit = manager.submit("attribute", SLOW)
    assert not hit
    parts = store.arrays_root / key / "parts"
    assert _wait_for(lambda: parts.is_dir() and any(parts.glob("*.npy"))), store.get(key)
    os.kill(store.get(key).worker_pid, signal.SIGKILL)
    assert _wait_for(lambda: manager.status(key).status != "running", timeout=30)
    assert manager.status(key).status == "failed"
    assert store.load(key) is None and not store.file_path(key, "scores").exists()
    finished = {p.stem: np.load(p) for p in parts.glob("*.npy")}
    assert finished and len(finished) < 6
    from gda_core.attribution.methods.base import AttributionMethod

    calls = []
    original = AttributionMethod.attribute
    monkeypatch.setattr(AttributionMethod, "attribute", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    outcome = run_in_foreground("attribute", SLOW, store)
    assert len(calls) == 6 - len(finished)  # only the unfinished chunks were computed
    assert not outcome.cache_hit and outcome.arrays["scores"].shape == (359, 1438)
    assert store.get(key).status == "done" and not parts.exists()
    for name, part in finished.items():  # finished chunks were reused, not recomputed
        index = int(name.split("-")[1])
        np.testing.assert_array_equal(outcome.arrays["scores"][64 * index:64 * index + len(part)], part)


def test_cancel_stops_a_running_job(store):
    manager = JobManager(store)
    key, _ = manager.submit("attribute", SLOW)
    assert _wait_for(lambda: (store.get(key).phase or "") in ("fit", "attribute"))
    started = time.time()
    run = manager.cancel(key)
    assert time.time() - started < 5
    assert run.status == "cancelled"
    assert store.load(key) is None
    # A cancelled run is recomputed on the next request rather than shown.
    key_again, hit = manager.submit("attribute", SLOW)
    assert key_again == key and not hit
    manager.cancel(key)


def _cli(cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gda_core.cli", "attribute", "--data", "wine", "--model",
                             "logreg", "--method", "if-cg", "--grouping", "per-example", "--test-size", "36",
                             "--cache", str(cache), "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_with_the_same_request_compute_it_once(tmp_path):
    first, second = _cli(tmp_path), _cli(tmp_path)
    outputs = [json.loads(p.communicate(timeout=300)[0]) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0
    assert outputs[0]["key"] == outputs[1]["key"]
    assert sorted(o["cache_hit"] for o in outputs) == [False, True]
    np.testing.assert_array_equal(np.load(outputs[0]["scores_path"]), np.load(outputs[1]["scores_path"]))
    runs = ScoreStore(tmp_path).runs(kind="scores")
    assert len(runs) == 1 and runs[0].status == "done"


def test_readers_see_no_error_while_a_worker_writes(store):
    manager = JobManager(store)
    key, _ = manager.submit("attribute", SLOW)
    errors, reads = [], []
    stop = threading.Event()

    def reader() -> None:
        mine = ScoreStore(store.root)
        while not stop.is_set():
            try:
                mine.runs()
                run = mine.get(key)
                mine.load(key)
                reads.append(run.progress if run else 0.0)
                time.sleep(0.01)  # a polling page, not a busy loop that starves the worker
            except Exception as error:  # noqa: BLE001 - any error fails the test
                errors.append(error)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert _wait_for(lambda: (store.get(key).progress or 0) > 0.05)
    running = store.get(key)
    assert running.status == "running" and running.phase and running.eta is not None and running.eta >= 0
    stop.set()
    for thread in threads:
        thread.join()
    manager.cancel(key)
    assert not errors and len(reads) > 8


def test_cache_commands(tmp_path, capsys):
    from gda_core.cli import main

    store = ScoreStore(tmp_path)
    outcome = run_in_foreground("attribute", {**FAST}, store)
    assert main(["cache", "ls", "--cache", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [run["key"] for run in listed] == [outcome.key]
    assert main(["cache", "rm", outcome.key, "--cache", str(tmp_path)]) == 0
    assert store.get(outcome.key) is None and not (store.arrays_root / outcome.key).exists()
    assert main(["cache", "rm", "nonexistent", "--cache", str(tmp_path)]) == 2
    key, params = job_key("attribute", FAST, store)
    store.claim(key, "scores", params)
    store.fail(key, "boom")
    assert main(["cache", "prune", "--cache", str(tmp_path)]) == 0
    assert store.get(key) is None
