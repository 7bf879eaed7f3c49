"""The score store: an SQLite index (WAL mode) of runs, arrays in checksummed files beside it.

One row per run, keyed by content (a hash of everything the result depends on). Arrays are
written to a temporary name and renamed, then the row is marked ``done`` with each file's
SHA-256; a row without its files, or a file whose checksum does not match, is a miss and is
recomputed, never shown. Several processes (app sessions, CLI runs, job workers) may use one
store at once: claiming a run is one ``BEGIN IMMEDIATE`` transaction, so a run is computed
once, and a run whose worker died is reclaimed. A run that fails keeps a one-line reason in its
row; a failure that is not the user's (not a ``GDAError``) also keeps its traceback in a log
beside the run's arrays, which the row's ``log`` names. A fault of the store itself (an
unreadable index, a read-only or full disk, a cache path that is a file) is one
:class:`GDAError` line saying what is wrong and what to do. A path is built only from a key
of the content-key form, so no key given by a user can name a folder outside ``arrays/``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import sqlite3
import time
import traceback
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import GDAError, first_line
from ..io import atomic_write_bytes, content_key, default_cache_dir, npy_bytes, sha256_hex
from ..registry import JOB_KINDS
from ..version import __version__

logger = logging.getLogger(__name__)

#: kinds of run the store keeps for itself (gold standards and what they need), besides the job kinds'
INTERNAL_KINDS = ("gold", "lds", "groups")
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
    cancel_requested INTEGER DEFAULT 0,
    log TEXT
);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind, created);
"""
#: columns added after the first release, each with its type: an older index gains them on open
_ADDED_COLUMNS = {"log": "TEXT"}


def store_kinds() -> tuple[str, ...]:
    """Every kind of run the store keeps: each registered job kind's, then its own."""
    from . import kinds  # noqa: F401 - importing the kinds registers them

    return tuple(dict.fromkeys([*(job.store_kind for job in JOB_KINDS.values()), *INTERNAL_KINDS]))


def __getattr__(name: str):
    # ``KINDS`` is read when asked for, so a job kind registered later (a plug-in, a test) is in it.
    if name == "KINDS":
        return store_kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: what :func:`gda_core.io.content_key` makes: the only keys a path is ever built from
_KEY = re.compile(r"[0-9a-f]{24}")


def is_run_key(key: object) -> bool:
    """Whether ``key`` has the form of a store key (24 hex digits): nothing else, a path, ``..``
    or an empty string, can name a folder under ``arrays/``."""
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


def _checked_key(key: str) -> str:
    if not is_run_key(key):
        raise GDAError(f"{key!r} is not a run key; run keys are the 24-character keys `gda cache ls` lists")
    return key


def _store_error(error: sqlite3.Error, index: Path) -> GDAError:
    """The one line for a failure of the index: what is wrong with it, and what to do."""
    message = str(error).lower()
    if "full" in message:
        return GDAError(f"the disk holding the cache index {index} is full; free some space (or `gda cache prune`) "
                        f"or choose another cache folder (--cache or GDA_CACHE_DIR)")
    # "unable to open" is what sqlite says when it may not make its WAL files in a read-only folder
    if "readonly" in message or ("unable to open" in message and not os.access(index.parent, os.W_OK)):
        return GDAError(f"the cache {index.parent} is read-only; make it writable or choose another cache folder "
                        f"(--cache or GDA_CACHE_DIR)")
    if "locked" in message or "busy" in message:
        return GDAError(f"the cache index {index} stayed locked by another process; try again when it is done")
    return GDAError(f"the cache index {index} is unreadable ({first_line(error)}); move it aside "
                    f"(mv {index} {index}.bad) and it will be rebuilt empty, or choose another cache folder")


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


def orphaned(run: Run, now: float) -> bool:
    """Whether a queued or running run has lost its worker: the process is gone, or it has not
    reported for ``STALE_SECONDS``. Such a run may be reclaimed by anyone."""
    heartbeat = run.updated or run.created
    return not (_alive(run.worker_pid) and now - heartbeat < STALE_SECONDS)


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
    #: the file holding the traceback of an internal failure (None for a user error)
    log: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Run":
        """The run of an index row. A row whose JSON columns do not parse is shown as failed
        (so it is never loaded, and the next request recomputes it), not as an error."""
        values = dict(row)
        damaged = []
        for name in ("params", "files", "summary"):
            try:
                values[name] = json.loads(values[name] or "{}")
            except (TypeError, ValueError):
                values[name], damaged = {}, [*damaged, name]
            if not isinstance(values[name], dict):
                values[name], damaged = {}, [*damaged, name]
        if damaged:
            values["status"] = "failed"
            values["error"] = f"index row damaged ({', '.join(damaged)} unreadable); recompute"
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values)

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class JobCancelled(Exception):
    """Raised inside a job when the user asked to cancel it."""


class RunFailed(Exception):
    """A run failed for a reason the user cannot fix (a bug, not a :class:`GDAError`).
    ``str(error)`` is one line that says where the traceback is kept (``log``)."""

    def __init__(self, message: str, log: Path):
        super().__init__(message)
        self.log = log


class ScoreStore:
    """The cache of runs under ``root`` (``cache/`` by default, or ``GDA_CACHE_DIR``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        if self.root.exists() and not self.root.is_dir():
            raise GDAError(f"the cache folder {self.root} is a file, not a folder; choose another cache folder "
                           f"(--cache or GDA_CACHE_DIR)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise GDAError(f"cannot make the cache folder {self.root} ({error.strerror or first_line(error)}); "
                           f"choose another cache folder (--cache or GDA_CACHE_DIR)") from None
        self.index_path = self.root / "index.sqlite"
        self.arrays_root = self.root / "arrays"
        with self._connection() as connection:
            connection.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns an index written by an older release lacks (one transaction, so
        two processes opening it at once add each column once)."""
        with self._connection() as connection:
            present = {row["name"] for row in connection.execute("PRAGMA table_info(runs)")}
        if present >= set(_ADDED_COLUMNS):
            return
        with self._transaction() as connection:
            present = {row["name"] for row in connection.execute("PRAGMA table_info(runs)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in present:
                    connection.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection to the index; any fault of the index is one :class:`GDAError` line."""
        if self.index_path.is_dir():
            raise GDAError(f"the cache index {self.index_path} is a folder; move it aside and it will be rebuilt "
                           f"empty, or choose another cache folder")
        try:
            connection = sqlite3.connect(self.index_path, timeout=60, isolation_level=None)
        except sqlite3.Error as error:
            raise _store_error(error, self.index_path) from None
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=60000")
            connection.execute("PRAGMA synchronous=NORMAL")
            yield connection
        except sqlite3.Error as error:
            raise _store_error(error, self.index_path) from None
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
                # sqlite may already have rolled back (a full disk does): then ROLLBACK itself
                # fails, and the error worth reporting is the first one, raised here.
                if connection.in_transaction:
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
            try:
                path = self.arrays_root / _checked_key(key) / Path(meta["path"]).name
                payload = path.read_bytes()
            except (OSError, GDAError, TypeError, KeyError):
                payload = None
            if payload is None or not isinstance(meta, dict) or sha256_hex(payload) != meta.get("sha256"):
                self._update(key, status="failed", error=f"array {name!r} missing or corrupt; recompute")
                return None
            arrays[name] = np.load(io.BytesIO(payload), allow_pickle=False)
        return arrays

    def run_folder(self, key: str) -> Path:
        """The folder of a run's files: ``arrays/<key>``, for a key of the store's form only."""
        return self.arrays_root / _checked_key(key)

    def file_path(self, key: str, name: str) -> Path:
        return self.run_folder(key) / f"{name}.npy"

    def log_path(self, key: str) -> Path:
        """Where the traceback of a run's internal failure is kept."""
        return self.run_folder(key) / "error.log"

    # ------------------------------------------------------------------- writing
    def claim(self, key: str, kind: str, params: dict) -> bool:
        """Take the run for computing. True: the caller computes it (new, failed, cancelled,
        or its worker died). False: it is done, or another live worker is on it."""
        if kind not in store_kinds():
            raise GDAError(f"unknown run kind {kind!r}; choose from: {', '.join(store_kinds())}")
        now = time.time()
        with self._transaction() as connection:
            row = connection.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
            if row is not None:
                run = Run.from_row(row)
                if run.status == "done":
                    return False
                if run.status in ("queued", "running") and not orphaned(run, now):
                    return False
                connection.execute("DELETE FROM runs WHERE key = ?", (key,))
            connection.execute(
                "INSERT INTO runs (key, kind, status, params, created, started, updated, version, worker_pid)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (key, kind, json.dumps(params, sort_keys=True, default=str), now, now, now, __version__, os.getpid()),
            )
        return True

    def reclaim(self, key: str) -> Run | None:
        """The run of ``key``, marked failed first if it is queued or running but orphaned (its
        worker died, or has not reported for ``STALE_SECONDS``): the test :meth:`claim` uses,
        so a reader waiting on a run sees its worker's death as a claimant would."""
        run = self.get(key)
        if run is None or run.status not in ("queued", "running") or not orphaned(run, time.time()):
            return run
        with self._transaction() as connection:
            row = connection.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
            current, now = (None if row is None else Run.from_row(row)), time.time()
            if current is not None and current.status in ("queued", "running") and orphaned(current, now):
                connection.execute(
                    "UPDATE runs SET status = 'failed', error = ?, finished = ?, updated = ? WHERE key = ?",
                    (f"worker {run.worker_pid} died before finishing (killed?); run it again to recompute",
                     now, now, key))
        return self.get(key)

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
        payload = npy_bytes(array)
        path = self.run_folder(key) / "parts" / f"{name}.npy"
        self._write(path.with_suffix(".sha256"), sha256_hex(payload).encode())
        self._write(path, payload)

    def load_part(self, key: str, name: str) -> np.ndarray | None:
        path = self.run_folder(key) / "parts" / f"{name}.npy"
        try:
            payload, digest = path.read_bytes(), path.with_suffix(".sha256").read_text()
        except OSError:
            return None
        if sha256_hex(payload) != digest:
            return None
        return np.load(io.BytesIO(payload), allow_pickle=False)

    def complete(self, key: str, arrays: dict[str, np.ndarray], summary: dict | None = None) -> None:
        """Write the arrays (atomically, checksummed), then mark the run done."""
        files = {}
        for name, array in arrays.items():
            payload = npy_bytes(array)
            path = self.file_path(key, name)
            self._write(path, payload)
            files[name] = {"path": str(path.relative_to(self.root)), "sha256": sha256_hex(payload),
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
        shutil.rmtree(self.run_folder(key) / "parts", ignore_errors=True)
        self.log_path(key).unlink(missing_ok=True)  # an earlier attempt's failure

    def fail(self, key: str, error: str, log: str | None = None) -> None:
        """Mark the run failed with a one-line ``error`` (and the relative path of its traceback)."""
        self._update(key, status="failed", error=error, log=log, finished=time.time(), updated=time.time())

    def record_failure(self, key: str, error: BaseException) -> RunFailed | None:
        """Mark the run failed by ``error``, in one line. A user error (:class:`GDAError`) or
        an interrupt is its message alone; anything else is a bug, whose traceback is written
        to a log beside the run's arrays that the row points to. Returns the one-line
        :class:`RunFailed` to raise for such a bug (``error`` itself when it already is one:
        an inner run's failure, logged there), None otherwise."""
        if isinstance(error, RunFailed):
            self.fail(key, str(error), log=str(error.log))
            return error
        if isinstance(error, GDAError) or not isinstance(error, Exception):
            self.fail(key, first_line(error))
            return None
        path = self.log_path(key)
        self._write(path, "".join(traceback.format_exception(error)).encode())
        line = f"{type(error).__name__}: {first_line(error, default='')} (traceback in {path})"
        logger.error("run %s failed: %s", key, line, exc_info=error)
        self.fail(key, line, log=str(path))
        return RunFailed(line, path)

    def request_cancel(self, key: str) -> None:
        self._update(key, cancel_requested=1)

    def mark_cancelled(self, key: str) -> None:
        self._update(key, status="cancelled", finished=time.time(), updated=time.time(), error="cancelled by user")

    def _write(self, path: Path, payload: bytes) -> None:
        """:func:`atomic_write_bytes` into the cache; a full or read-only disk is one line."""
        try:
            atomic_write_bytes(path, payload)
        except OSError as error:
            raise GDAError(f"cannot write {path} in the cache ({error.strerror or first_line(error)}); free some "
                           f"space or choose another cache folder (--cache or GDA_CACHE_DIR)") from None

    def delete(self, key: str) -> bool:
        """Remove a run's row and files. False, touching nothing, for a key the index does not
        hold: the key is checked against the index before any path is built from it."""
        if not is_run_key(key):
            return False
        with self._transaction() as connection:
            deleted = connection.execute("DELETE FROM runs WHERE key = ?", (key,)).rowcount
        if deleted:
            shutil.rmtree(self.run_folder(key), ignore_errors=True)
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
            failure = self.record_failure(key, error)
            if failure is None or failure is error:
                raise
            raise failure from error
        self.complete(key, arrays, summary)
        return arrays, summary, False
