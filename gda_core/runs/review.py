"""Review of flagged training points: keep, relabel or skip each, with undo, saved in the store.

Decisions are an append-only table in the store's SQLite index: each action is one row with
a sequence number, written in one ``BEGIN IMMEDIATE`` transaction, so a decision is saved
the moment it is made and survives reloads and restarts. The current decisions are a replay
of the log (an ``undo`` row cancels the latest decision still in force). Every writer says
which version (last sequence number) it has seen; if another tab or process wrote since, the
write is refused with a one-line :class:`GDAError` instead of silently overruling it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GDAError
from ..io import atomic_write_bytes, spreadsheet_safe
from .store import ScoreStore

ACTIONS = ("keep", "relabel", "skip")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_sessions (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL,
    items TEXT NOT NULL,        -- JSON: flagged training indices, in review order
    labels TEXT NOT NULL,       -- JSON: the given label of every training point
    source_rows TEXT NOT NULL,  -- JSON: the row of each training point in the original data
    class_names TEXT NOT NULL,  -- JSON
    info TEXT DEFAULT '{}'      -- JSON: where the flags came from
);
CREATE TABLE IF NOT EXISTS review_decisions (
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    action TEXT NOT NULL,       -- keep | relabel | skip | undo
    item INTEGER,               -- training index (NULL for undo)
    new_label INTEGER,          -- relabel only
    target INTEGER,             -- undo only: the seq it cancels
    created REAL NOT NULL,
    PRIMARY KEY (session, seq)
);
"""


@dataclass(frozen=True)
class Decision:
    """The decision in force for one training point."""

    train_index: int
    action: str
    new_label: int | None
    seq: int
    created: float


class ReviewSession:
    """One review of a list of flagged training points, backed by the store.

    ``version`` is the last decision this object has seen; writes made elsewhere since then
    make the next write here fail until :meth:`refresh` is called."""

    def __init__(self, store: ScoreStore, name: str):
        self.store, self.name = store, name
        with store.connection() as connection:
            connection.executescript(_SCHEMA)
            row = connection.execute("SELECT * FROM review_sessions WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise GDAError(f"no review session {name!r}")
        self.flagged = np.asarray(json.loads(row["items"]), dtype=np.int64)
        self.labels = np.asarray(json.loads(row["labels"]), dtype=np.int64)
        self.source_rows = np.asarray(json.loads(row["source_rows"]), dtype=np.int64)
        self.class_names = list(json.loads(row["class_names"]))
        self.info = json.loads(row["info"] or "{}")
        self._flagged_set = set(self.flagged.tolist())
        self.refresh()

    # ---------------------------------------------------------------------- creation
    @classmethod
    def create(cls, store: ScoreStore, name: str, *, flagged: np.ndarray, labels: np.ndarray,
               class_names: list[str], source_rows: np.ndarray | None = None, info: dict | None = None) -> "ReviewSession":
        """Open the session ``name``, creating it with these flagged points if it is new (an
        existing session keeps its own list: its decisions refer to it)."""
        labels = np.asarray(labels, dtype=np.int64)
        flagged = np.asarray(flagged, dtype=np.int64)
        if len(flagged) and (flagged.min() < 0 or flagged.max() >= len(labels)):
            raise GDAError(f"flagged points must be training indices in 0..{len(labels) - 1}")
        source_rows = np.arange(len(labels)) if source_rows is None else np.asarray(source_rows, dtype=np.int64)
        with store.connection() as connection:
            connection.executescript(_SCHEMA)
        with store.transaction() as connection:
            connection.execute(
                "INSERT OR IGNORE INTO review_sessions (name, created, items, labels, source_rows, class_names, info)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, time.time(), json.dumps(flagged.tolist()), json.dumps(labels.tolist()),
                 json.dumps(source_rows.tolist()), json.dumps(list(class_names)), json.dumps(info or {})))
        return cls(store, name)

    # ----------------------------------------------------------------------- reading
    def _rows(self) -> list:
        with self.store.connection() as connection:
            return connection.execute("SELECT * FROM review_decisions WHERE session = ? ORDER BY seq",
                                      (self.name,)).fetchall()

    @staticmethod
    def _in_force(rows: list) -> list:
        """Replay the log: decisions not cancelled by an undo, oldest first."""
        stack: list = []
        for row in rows:
            if row["action"] == "undo":
                stack = [kept for kept in stack if kept["seq"] != row["target"]]
            else:
                stack.append(row)
        return stack

    def refresh(self) -> "ReviewSession":
        """Read the decisions again (e.g. after another tab wrote)."""
        rows = self._rows()
        self.version = rows[-1]["seq"] if rows else 0
        self._decisions = {row["item"]: Decision(row["item"], row["action"], row["new_label"], row["seq"], row["created"])
                           for row in self._in_force(rows)}
        return self

    def decisions(self) -> dict[int, Decision]:
        """The decision in force for each decided training point (the latest one wins)."""
        return dict(self._decisions)

    def items(self) -> list[dict]:
        """The flagged points in review order, each with its given label and decision."""
        return [{"train_index": int(index), "source_row": int(self.source_rows[index]),
                 "given_label": int(self.labels[index]),
                 "decision": self._decisions.get(int(index))} for index in self.flagged]

    def undecided(self) -> list[int]:
        return [int(index) for index in self.flagged if int(index) not in self._decisions]

    def cleaned_labels(self) -> np.ndarray:
        """The given labels with every relabel in force applied."""
        labels = self.labels.copy()
        for decision in self._decisions.values():
            if decision.action == "relabel":
                labels[decision.train_index] = decision.new_label
        return labels

    # ----------------------------------------------------------------------- writing
    def keep(self, train_index: int) -> Decision:
        return self._decide("keep", train_index)

    def skip(self, train_index: int) -> Decision:
        return self._decide("skip", train_index)

    def relabel(self, train_index: int, new_label: int) -> Decision:
        if not 0 <= int(new_label) < len(self.class_names):
            raise GDAError(f"new label must be a class index in 0..{len(self.class_names) - 1}, got {new_label}")
        return self._decide("relabel", train_index, int(new_label))

    def undo(self) -> Decision:
        """Cancel the latest decision still in force; returns it."""
        def append(connection, seq: int) -> Decision:
            in_force = self._in_force(connection.execute(
                "SELECT * FROM review_decisions WHERE session = ? ORDER BY seq", (self.name,)).fetchall())
            if not in_force:
                raise GDAError("nothing to undo")
            last = in_force[-1]
            connection.execute("INSERT INTO review_decisions (session, seq, action, target, created)"
                               " VALUES (?, ?, 'undo', ?, ?)", (self.name, seq, last["seq"], time.time()))
            return Decision(last["item"], last["action"], last["new_label"], last["seq"], last["created"])

        return self._write(append)

    def _decide(self, action: str, train_index: int, new_label: int | None = None) -> Decision:
        train_index = int(train_index)
        if train_index not in self._flagged_set:
            raise GDAError(f"training point {train_index} is not in this review's flagged list")

        def append(connection, seq: int) -> Decision:
            now = time.time()
            connection.execute("INSERT INTO review_decisions (session, seq, action, item, new_label, created)"
                               " VALUES (?, ?, ?, ?, ?, ?)", (self.name, seq, action, train_index, new_label, now))
            return Decision(train_index, action, new_label, seq, now)

        return self._write(append)

    def _write(self, append) -> Decision:
        """One transaction: check nobody wrote since ``version``, append, move ``version`` on."""
        with self.store.transaction() as connection:
            latest = connection.execute("SELECT MAX(seq) FROM review_decisions WHERE session = ?",
                                        (self.name,)).fetchone()[0] or 0
            if latest != self.version:
                raise GDAError(f"this review changed elsewhere (another tab or process is at decision {latest}, "
                               f"this view at {self.version}); reload to see its decisions, then decide again")
            result = append(connection, latest + 1)
        self.refresh()
        return result

    # ------------------------------------------------------------------------ export
    def decisions_csv(self) -> str:
        """One row per decided point: training index, source row, given label, decision, new
        label (class names), time (UTC, ISO 8601) and sequence number."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["train_index", "source_row", "given_label", "decision", "new_label", "decided_at", "seq"])
        for decision in sorted(self._decisions.values(), key=lambda d: d.seq):
            index = decision.train_index
            writer.writerow([index, int(self.source_rows[index]), self._class_cell(self.labels[index]),
                             decision.action,
                             "" if decision.new_label is None else self._class_cell(decision.new_label),
                             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(decision.created)), decision.seq])
        return buffer.getvalue()

    def labels_csv(self) -> str:
        """Every training point's label after the relabels in force (class names), and whether
        it changed."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["train_index", "source_row", "label", "changed"])
        cleaned = self.cleaned_labels()
        for index, (label, given) in enumerate(zip(cleaned, self.labels)):
            writer.writerow([index, int(self.source_rows[index]), self._class_cell(label), int(label != given)])
        return buffer.getvalue()

    def _class_cell(self, label: int) -> str:
        """A class name for a CSV cell: class names come from uploaded data, and one starting
        like a formula (``=``, ``+``, ``-``, ``@``) would run when the CSV is opened in a spreadsheet."""
        return spreadsheet_safe(self.class_names[label])

    def export_decisions_csv(self, path: str | Path) -> Path:
        atomic_write_bytes(Path(path), self.decisions_csv().encode())
        return Path(path)

    def export_labels_csv(self, path: str | Path) -> Path:
        atomic_write_bytes(Path(path), self.labels_csv().encode())
        return Path(path)


def review_for_flags(store: ScoreStore, flag_key: str, n_items: int | None = None) -> ReviewSession:
    """The review session of a finished ``flag`` job (created on first use with its top
    ``n_items`` points, default 10% of the training set)."""
    run = store.get(flag_key)
    arrays = store.load(flag_key)
    if run is None or arrays is None:
        raise GDAError(f"no finished flag run {flag_key}")
    order = arrays["order"]
    n_items = n_items or max(1, round(0.1 * len(order)))
    return ReviewSession.create(
        store, f"flags:{flag_key}", flagged=order[:n_items], labels=arrays["labels"],
        class_names=run.summary["class_names"], source_rows=arrays["source_rows"],
        info={"flag_key": flag_key, "data": run.params.get("data"), "model": run.params.get("model")})


def review_sessions(store: ScoreStore, *, data: str | None = None, model: str | None = None) -> list[tuple[str, dict]]:
    """The review sessions in the store (name and ``info``), newest first, optionally only
    those of one data set and model."""
    with store.connection() as connection:
        connection.executescript(_SCHEMA)
        rows = connection.execute("SELECT name, info FROM review_sessions ORDER BY created DESC").fetchall()
    sessions = [(row["name"], json.loads(row["info"] or "{}")) for row in rows]
    return [(name, info) for name, info in sessions
            if (data is None or info.get("data") == data) and (model is None or info.get("model") == model)]


def review_for_selection(store: ScoreStore, points: np.ndarray, *, labels: np.ndarray, class_names: list[str],
                         source_rows: np.ndarray | None = None, data: str, model: str) -> ReviewSession:
    """A review of hand-picked training points (e.g. a box selected on the map), named by its
    content: sending the same selection twice opens the same review, decisions kept."""
    points = np.unique(np.asarray(points, dtype=np.int64))
    if not len(points):
        raise GDAError("the selection holds no training points")
    digest = hashlib.sha256(json.dumps([data, model, points.tolist()]).encode()).hexdigest()[:16]
    return ReviewSession.create(store, f"selection:{digest}", flagged=points, labels=labels, class_names=class_names,
                                source_rows=source_rows,
                                info={"data": data, "model": model, "selected": int(len(points))})


#: a training point's review state, as the map's "review" colouring shows it
REVIEW_STATES = {"keep": "kept", "relabel": "relabelled", "skip": "skipped"}


def review_states(store: ScoreStore, n_train: int, names: list[str]) -> np.ndarray:
    """One state per training point over the named reviews: "" (in none), "flagged" (listed,
    undecided), or its decision ("kept", "relabelled", "skipped"; a later review's wins)."""
    states = np.full(n_train, "", dtype=object)
    for name in reversed(names):  # oldest first, so the newest review's state is the one left
        session = ReviewSession(store, name)
        if len(session.labels) != n_train:
            continue  # a review of another split of the data: its indices mean other points
        states[session.flagged] = "flagged"
        for index, decision in session.decisions().items():
            states[index] = REVIEW_STATES[decision.action]
    return states
