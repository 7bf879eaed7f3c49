"""Faults of the store itself: keys that are paths, an unreadable index, a read-only or full
disk, a cache path that is a file, workers killed while someone waits. Each is one line."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gda_core.cli import main
from gda_core.errors import GDAError
from gda_core.runs import store as store_module
from gda_core.runs.jobs import JobManager
from gda_core.runs.store import ScoreStore

KEY = "0123456789abcdef01234567"


def _store_with_a_run(root: Path) -> ScoreStore:
    store = ScoreStore(root)
    assert store.claim(KEY, "scores", {"a": 1})
    store.complete(KEY, {"scores": np.arange(6, dtype=np.float32)})
    return store


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("key", ["OUTSIDE", "../../outside", "", ".", "..", "arrays", "../index.sqlite", KEY + "/.."])
def test_cache_rm_of_a_path_removes_nothing(tmp_path, capsys, key):
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    store = _store_with_a_run(cache)
    (outside / "keep").mkdir(parents=True)
    key = str(outside) if key == "OUTSIDE" else key
    assert main(["cache", "rm", key, "--cache", str(cache)]) == 2
    assert "no such run" in _one_line_error(capsys)
    assert (outside / "keep").is_dir() and store.index_path.is_file()
    assert store.load(KEY) is not None  # the cache's run and its arrays are untouched


def test_paths_are_built_only_from_run_keys(tmp_path):
    store = _store_with_a_run(tmp_path)
    for key in ("..", "", "../x", "/tmp"):
        with pytest.raises(GDAError, match="not a run key"):
            store.file_path(key, "scores")
    assert store.delete(KEY) and not (store.arrays_root / KEY).exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "folder"])
def test_an_unreadable_index_is_one_line_saying_how_to_recover(tmp_path, capsys, damage):
    index = _store_with_a_run(tmp_path).index_path
    payload = index.read_bytes()
    if damage == "folder":
        index.unlink()
        index.mkdir()
    else:
        index.write_bytes(payload[:100] if damage == "truncated" else b"not an index\n" * 500)
    assert main(["cache", "ls", "--cache", str(tmp_path)]) == 2
    assert "move it aside" in _one_line_error(capsys)
    # ...and doing so recovers: a fresh index is made
    index.rename(index.with_name("index.bad"))
    assert main(["cache", "ls", "--cache", str(tmp_path)]) == 0


def test_a_broken_row_is_a_miss_not_an_error(tmp_path, capsys):
    store = _store_with_a_run(tmp_path)
    with store.transaction() as connection:
        connection.execute("UPDATE runs SET files = '{\"scores\": ' WHERE key = ?", (KEY,))
    assert store.load(KEY) is None
    assert store.get(KEY).status == "failed" and "damaged" in store.get(KEY).error
    assert main(["cache", "ls", "--cache", str(tmp_path)]) == 0
    assert "damaged" in capsys.readouterr().out
    assert store.claim(KEY, "scores", {"a": 1})  # recomputed on the next request


@pytest.mark.parametrize("variable", [True, False])
def test_a_cache_path_that_is_a_file_is_one_line(tmp_path, capsys, monkeypatch, variable):
    regular = tmp_path / "file"
    regular.write_text("x")
    if variable:
        monkeypatch.setenv("GDA_CACHE_DIR", str(regular))
    assert main(["cache", "ls"] + ([] if variable else ["--cache", str(regular)])) == 2
    assert "is a file, not a folder" in _one_line_error(capsys)


class _FullDisk:
    """A connection on a full disk: every write fails as sqlite's does, and sqlite has already
    rolled the transaction back (so a second ROLLBACK would fail with 'no transaction')."""

    def __init__(self, connection: sqlite3.Connection):
        self._connection = connection

    def __getattr__(self, name):
        return getattr(self._connection, name)

    def __setattr__(self, name, value):
        if name == "_connection":
            object.__setattr__(self, name, value)
        else:
            setattr(self._connection, name, value)

    def execute(self, sql, *args):
        if sql.split()[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            self._connection.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._connection.execute(sql, *args)


def test_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    store = _store_with_a_run(tmp_path)
    connect = sqlite3.connect
    monkeypatch.setattr(store_module.sqlite3, "connect", lambda *a, **k: _FullDisk(connect(*a, **k)))
    with pytest.raises(GDAError, match="disk holding the cache index .* is full"):
        store.claim("1" * 24, "scores", {})
    assert main(["cache", "rm", KEY, "--cache", str(tmp_path)]) == 2
    assert "is full" in _one_line_error(capsys)


def test_a_full_disk_writing_arrays_is_one_line(tmp_path, monkeypatch):
    store = _store_with_a_run(tmp_path)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "atomic_write_bytes", full)
    assert store.claim("1" * 24, "scores", {})
    with pytest.raises(GDAError, match="No space left on device"):
        store.complete("1" * 24, {"scores": np.zeros(3)})


def test_a_read_only_index_is_one_line(tmp_path, capsys, monkeypatch):
    _store_with_a_run(tmp_path)
    if os.geteuid() == 0:  # root writes through permissions: have sqlite refuse as it would
        def read_only(*args, **kwargs):
            raise sqlite3.OperationalError("attempt to write a readonly database")

        monkeypatch.setattr(store_module.sqlite3, "connect", read_only)
    else:
        for path in (tmp_path, *tmp_path.iterdir()):
            path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        assert main(["cache", "prune", "--cache", str(tmp_path)]) == 2
        assert "is read-only" in _one_line_error(capsys)
    finally:
        for path in (tmp_path, *tmp_path.iterdir()):
            path.chmod(0o755)


def test_a_job_manager_reclaims_a_run_whose_owner_was_killed(tmp_path):
    """A ``gda`` process computing a run is SIGKILLed while a JobManager (the app) waits on
    it: the manager reports the run failed (worker dead), as a new claimant would see it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GDA_CACHE_DIR": str(tmp_path)}
    owner = subprocess.Popen(
        [sys.executable, "-m", "gda_core.cli", "attribute", "--data", "digits", "--model", "logreg",
         "--method", "if-cg", "--grouping", "per-example", "--test-size", "359", "--damping", "1e-4",
         "--option", "max_iterations=100", "--option", "tolerance=1e-30"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = ScoreStore(tmp_path)
    manager = JobManager(store)
    deadline = time.time() + 240
    while not store.runs(status="running") and time.time() < deadline and owner.poll() is None:
        time.sleep(0.05)
    try:
        (run,) = store.runs(status="running")
        assert run.worker_pid == owner.pid and manager.status(run.key).status == "running"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    finished = manager.wait(run.key, timeout=10)
    assert finished.status == "failed" and f"worker {owner.pid} died" in finished.error
    assert store.claim(run.key, run.kind, run.params)  # and it can be computed again
