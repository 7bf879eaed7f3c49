"""The score store: an SQLite index (WAL mode) of runs, arrays in checksummed files beside it.

One row per run, keyed by content (a hash of everything the result depends on). Arrays are
written to a temporary name and renamed, then the row is marked ``done`` with each file's
SHA-256; a row without its files, or a file whose checksum does not match, is a miss and is
recomputed, never shown. Several processes (app sessions, CLI runs, job workers) may use one
store at once: claiming a run is one ``BEGIN IMMEDIATE`` transaction, so a run is computed
once, and a run whose worker died is reclaimed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import GDAError
from ..io import atomic_write_bytes, content_key, default_cache_dir
from ..version import __version__

KINDS = ("scores", "gold", "lds", "sweep", "umap", "groups", "flags", "noisy", "prune")
STATUSES = ("queued", "running", "done", "failed", "cancelled")
#: a running row whose worker has not reported for this long is considered dead
STALE_SECONDS = 600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    phase TEXT DEFAULT '',
    progress REAL DEFAULT 0,
    eta REAL,
    created REAL NOT NULL,
    started REAL,
    updated REAL,
    finished REAL,
    seconds REAL,
    error TEXT,
    files TEXT DEFAULT '{}',
    summary TEXT DEFAULT '{}',
    version TEXT NOT NULL,
    worker_pid INTEGER,
    cancel_requested INTEGER DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind, created);
"""


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class Run:
    """One row of the index."""

    key: str
    kind: str
    status: str
    params: dict
    phase: str
    progress: float
    eta: float | None
    created: float
    started: float | None
    updated: float | None
    finished: float | None
    seconds: float | None
    error: str | None
    files: dict
    summary: dict
    version: str
    worker_pid: int | None
    cancel_requested: bool

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Run":
        values = dict(row)
        for name in ("params", "files", "summary"):
            values[name] = json.loads(values[name] or "{}")
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values)

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class JobCancelled(Exception):
    """Raised inside a job when the user asked to cancel it."""


class ScoreStore:
    """The cache of runs under ``root`` (``cache/`` by default, or ``GDA_CACHE_DIR``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.sqlite"
        self.arrays_root = self.root / "arrays"
        with self._connection() as connection:
            connection.executescript(_SCHEMA)

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.index_path, timeout=60, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=60000")
            connection.execute("PRAGMA synchronous=NORMAL")
            yield connection
        finally:
            connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def connection(self) -> AbstractContextManager[sqlite3.Connection]:
        """A connection to the index, for tables that live beside the runs (e.g. reviews)."""
        return self._connection()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction on the index (``BEGIN IMMEDIATE``: one writer at a time)."""
        return self._transaction()

    def _update(self, key: str, **values) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._transaction() as connection:
            connection.execute(f"UPDATE runs SET {assignments} WHERE key = ?", (*values.values(), key))

    # ------------------------------------------------------------------- reading
    def get(self, key: str) -> Run | None:
        with self._connection() as connection:
            row = connection.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else Run.from_row(row)

    def runs(self, kind: str | None = None, status: str | None = None) -> list[Run]:
        query, args = "SELECT * FROM runs", []
        conditions = []
        if kind:
            conditions.append("kind = ?")
            args.append(kind)
        if status:
            conditions.append("status = ?")
            args.append(status)
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        with self._connection() as connection:
            rows = connection.execute(query + " ORDER BY created DESC", args).fetchall()
        return [Run.from_row(row) for row in rows]

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays of a finished run, each verified against its checksum; None on a miss.
        A damaged entry is marked failed, so the next request recomputes it."""
        run = self.get(key)
        if run is None or run.status != "done":
            return None
        arrays = {}
        for name, meta in run.files.items():
            path = self.root / meta["path"]
            try:
                payload = path.read_bytes()
            except OSError:
                payload = None
            if payload is None or _sha256(payload) != meta["sha256"]:
                self._update(key, status="failed", error=f"array {name!r} missing or corrupt; recompute")
                return None
            arrays[name] = np.load(io.BytesIO(payload), allow_pickle=False)
        return arrays

    def file_path(self, key: str, name: str) -> Path:
        return self.arrays_root / key / f"{name}.npy"

    # ------------------------------------------------------------------- writing
    def claim(self, key: str, kind: str, params: dict) -> bool:
        """Take the run for computing. True: the caller computes it (new, failed, cancelled,
        or its worker died). False: it is done, or another live worker is on it."""
        if kind not in KINDS:
            raise GDAError(f"unknown run kind {kind!r}")
        now = time.time()
        with self._transaction() as connection:
            row = connection.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
            if row is not None:
                run = Run.from_row(row)
                if run.status == "done":
                    return False
                if run.status in ("queued", "running"):
                    heartbeat = run.updated or run.created
                    if _alive(run.worker_pid) and now - heartbeat < STALE_SECONDS:
                        return False
                connection.execute("DELETE FROM runs WHERE key = ?", (key,))
            connection.execute(
                "INSERT INTO runs (key, kind, status, params, created, started, updated, version, worker_pid)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (key, kind, json.dumps(params, sort_keys=True, default=str), now, now, now, __version__, os.getpid()),
            )
        return True

    def set_worker(self, key: str, pid: int) -> None:
        self._update(key, worker_pid=pid, updated=time.time())

    def report(self, key: str, phase: str, fraction: float, eta: float | None = None) -> None:
        """Progress of a running job; raises :class:`JobCancelled` if cancel was requested."""
        with self._transaction() as connection:
            row = connection.execute("SELECT cancel_requested FROM runs WHERE key = ?", (key,)).fetchone()
            connection.execute("UPDATE runs SET phase = ?, progress = ?, eta = ?, updated = ? WHERE key = ?",
                               (phase, float(fraction), eta, time.time(), key))
        if row is not None and row[0]:
            raise JobCancelled(key)

    def reporter(self, key: str) -> Callable[[str, float], None]:
        """A progress callback for one run that also estimates the time left."""
        started = time.perf_counter()

        def report(phase: str, fraction: float) -> None:
            elapsed = time.perf_counter() - started
            self.report(key, phase, fraction, elapsed * (1 - fraction) / fraction if fraction > 0.01 else None)

        return report

    def save_part(self, key: str, name: str, array: np.ndarray) -> None:
        """A finished chunk of a run in progress, kept for resuming after a crash."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        payload = buffer.getvalue()
        path = self.arrays_root / key / "parts" / f"{name}.npy"
        atomic_write_bytes(path.with_suffix(".sha256"), _sha256(payload).encode())
        atomic_write_bytes(path, payload)

    def load_part(self, key: str, name: str) -> np.ndarray | None:
        path = self.arrays_root / key / "parts" / f"{name}.npy"
        try:
            payload, digest = path.read_bytes(), path.with_suffix(".sha256").read_text()
        except OSError:
            return None
        if _sha256(payload) != digest:
            return None
        return np.load(io.BytesIO(payload), allow_pickle=False)

    def complete(self, key: str, arrays: dict[str, np.ndarray], summary: dict | None = None) -> None:
        """Write the arrays (atomically, checksummed), then mark the run done."""
        files = {}
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(array), allow_pickle=False)
            payload = buffer.getvalue()
            path = self.file_path(key, name)
            atomic_write_bytes(path, payload)
            files[name] = {"path": str(path.relative_to(self.root)), "sha256": _sha256(payload),
                           "bytes": len(payload)}
        now = time.time()
        with self._transaction() as connection:
            row = connection.execute("SELECT started FROM runs WHERE key = ?", (key,)).fetchone()
            started = row[0] if row is not None and row[0] else now
            connection.execute(
                "UPDATE runs SET status = 'done', files = ?, summary = ?, progress = 1, phase = 'done', eta = 0,"
                " finished = ?, updated = ?, seconds = ?, error = NULL WHERE key = ?",
                (json.dumps(files), json.dumps(summary or {}, default=float), now, now, now - started, key),
            )
        shutil.rmtree(self.arrays_root / key / "parts", ignore_errors=True)

    def fail(self, key: str, error: str) -> None:
        self._update(key, status="failed", error=error, finished=time.time(), updated=time.time())

    def request_cancel(self, key: str) -> None:
        self._update(key, cancel_requested=1)

    def mark_cancelled(self, key: str) -> None:
        self._update(key, status="cancelled", finished=time.time(), updated=time.time(), error="cancelled by user")

    def delete(self, key: str) -> bool:
        with self._transaction() as connection:
            deleted = connection.execute("DELETE FROM runs WHERE key = ?", (key,)).rowcount
        shutil.rmtree(self.arrays_root / key, ignore_errors=True)
        return bool(deleted)

    def prune(self, older_than_days: float | None = None, statuses: tuple[str, ...] = ("failed", "cancelled")) -> list[str]:
        """Delete finished-with-error runs, and any run older than ``older_than_days``."""
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        doomed = [run.key for run in self.runs()
                  if run.status in statuses or (cutoff is not None and run.created < cutoff
                                                and run.status not in ("queued", "running"))]
        for key in doomed:
            self.delete(key)
        return doomed

    # -------------------------------------------------------------------- compute
    def get_or_compute(self, kind: str, params: dict, compute: Callable[[Callable[[str, float], None]], tuple[dict, dict]],
                       *, wait_seconds: float = 3600, poll: float = 0.2) -> tuple[dict[str, np.ndarray], dict, bool]:
        """The arrays and summary of the run for ``params``: from the store, or computed here
        by ``compute(report) -> (arrays, summary)``. Returns (arrays, summary, cache_hit).
        If another live process is computing the same run, waits for it."""
        key = content_key(kind, params)
        deadline = time.time() + wait_seconds
        while True:
            arrays = self.load(key)
            if arrays is not None:
                return arrays, self.get(key).summary, True
            if self.claim(key, kind, params):
                break
            if time.time() > deadline:
                raise GDAError(f"timed out waiting for run {key} computed by another process")
            time.sleep(poll)
        try:
            arrays, summary = compute(self.reporter(key))
        except JobCancelled:
            self.mark_cancelled(key)
            raise
        except BaseException as error:
            self.fail(key, f"{type(error).__name__}: {error}")
            raise
        self.complete(key, arrays, summary)
        return arrays, summary, False
