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
import dataclasses
import hashlib
import io
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GDAError
from ..inputs.parsers import UploadedData
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
    target INTEGER,             -- undo only: the batch it cancels
    created REAL NOT NULL,
    batch INTEGER,              -- the first seq of a bulk action's rows (NULL: a single decision)
    PRIMARY KEY (session, seq)
);
"""


def _ensure_schema(connection) -> None:
    """Create the review tables, and add the ``batch`` column to a store made before it."""
    connection.executescript(_SCHEMA)
    columns = {row[1] for row in connection.execute("PRAGMA table_info(review_decisions)")}
    if "batch" not in columns:
        try:
            connection.execute("ALTER TABLE review_decisions ADD COLUMN batch INTEGER")
            connection.commit()
        except sqlite3.OperationalError as error:  # another process added it first
            if "duplicate column" not in str(error):
                raise


def _batch_of(row) -> int:
    """The batch a decision row belongs to: its bulk action's, or its own seq."""
    return row["batch"] if row["batch"] is not None else row["seq"]


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
            _ensure_schema(connection)
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
            _ensure_schema(connection)
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
        """Replay the log: decisions not cancelled by an undo, oldest first (an undo cancels
        a whole bulk action)."""
        stack: list = []
        for row in rows:
            if row["action"] == "undo":
                stack = [kept for kept in stack if _batch_of(kept) != row["target"]]
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
        self._check_class(new_label)
        return self._decide("relabel", train_index, int(new_label))

    def _check_class(self, label: int) -> None:
        if not 0 <= int(label) < len(self.class_names):
            raise GDAError(f"new label must be a class index in 0..{len(self.class_names) - 1}, got {label}")

    def _check_item(self, train_index: int) -> None:
        if int(train_index) not in self._flagged_set:
            raise GDAError(f"training point {int(train_index)} is not in this review's flagged list")

    def undo(self) -> Decision:
        """Cancel the latest decision still in force (all of it, for a bulk action); returns
        it (a bulk action's last row)."""
        def append(connection, seq: int) -> Decision:
            in_force = self._in_force(connection.execute(
                "SELECT * FROM review_decisions WHERE session = ? ORDER BY seq", (self.name,)).fetchall())
            if not in_force:
                raise GDAError("nothing to undo")
            last = in_force[-1]
            connection.execute("INSERT INTO review_decisions (session, seq, action, target, created)"
                               " VALUES (?, ?, 'undo', ?, ?)", (self.name, seq, _batch_of(last), time.time()))
            return Decision(last["item"], last["action"], last["new_label"], last["seq"], last["created"])

        return self._write(append)

    def relabel_many(self, new_labels: dict[int, int]) -> list[Decision]:
        """Relabel several points in one bulk action (one row each, undone together)."""
        if not new_labels:
            raise GDAError("no points to relabel")
        for train_index, label in new_labels.items():
            self._check_item(train_index)
            self._check_class(label)

        def append(connection, seq: int) -> list[Decision]:
            now, written = time.time(), []
            for offset, (train_index, label) in enumerate(sorted(new_labels.items())):
                connection.execute("INSERT INTO review_decisions (session, seq, action, item, new_label, created, batch)"
                                   " VALUES (?, ?, 'relabel', ?, ?, ?, ?)",
                                   (self.name, seq + offset, int(train_index), int(label), now, seq))
                written.append(Decision(int(train_index), "relabel", int(label), seq + offset, now))
            return written

        return self._write(append)

    def bulk_relabel_proposal(self, predicted: np.ndarray, confidence: np.ndarray, min_confidence: float) -> dict[int, int]:
        """The undecided flagged points where the model predicts another class than the given
        one with at least ``min_confidence``, each with the class it predicts."""
        if not 0.0 <= min_confidence <= 1.0:
            raise GDAError(f"confidence must lie in 0..1, got {min_confidence}")
        return {index: int(predicted[index]) for index in self.undecided()
                if int(predicted[index]) != int(self.labels[index]) and float(confidence[index]) >= min_confidence}

    def _decide(self, action: str, train_index: int, new_label: int | None = None) -> Decision:
        train_index = int(train_index)
        self._check_item(train_index)

        def append(connection, seq: int) -> Decision:
            now = time.time()
            connection.execute("INSERT INTO review_decisions (session, seq, action, item, new_label, created)"
                               " VALUES (?, ?, ?, ?, ?, ?)", (self.name, seq, action, train_index, new_label, now))
            return Decision(train_index, action, new_label, seq, now)

        return self._write(append)

    def _write(self, append):
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

    def cleaned_data(self, raw: UploadedData) -> UploadedData:
        """``raw`` (the data's own rows, which the source rows point at) with every training
        point's label replaced by its label after the review: the cleaned data set."""
        if not raw.class_names or list(raw.class_names) != self.class_names:
            raise GDAError("these rows are not the data this review was made on (other classes)")
        n_rows = len(raw.labels)
        labels = raw.labels.copy()
        test_labels = None if raw.test_labels is None else raw.test_labels.copy()
        for row, label in zip(self.source_rows, self.cleaned_labels()):
            if row < n_rows:
                labels[row] = label
            elif test_labels is not None and row - n_rows < len(test_labels):
                test_labels[row - n_rows] = label
            else:
                raise GDAError(f"source row {row} is outside the data ({n_rows} rows): not the data of this review")
        return dataclasses.replace(raw, labels=labels, test_labels=test_labels)

    def cleaned_npz(self, raw: UploadedData) -> bytes:
        """The cleaned data set as an .npz in the layout this project reads (X, y, class_names, ...)."""
        return self.cleaned_data(raw).to_npz_bytes()

    def cleaned_csv(self, raw: UploadedData) -> str:
        """The cleaned data set as a CSV this project reads back: the feature columns (or the
        ``text`` column), ``label`` (class names) and, for data with a test part, ``split``
        (train or test; read it back with ``--split-column split``)."""
        cleaned = self.cleaned_data(raw)
        parts = [(cleaned.features, cleaned.labels, cleaned.texts, "train")]
        if cleaned.test_labels is not None:
            parts.append((cleaned.test_features, cleaned.test_labels, cleaned.test_texts, "test"))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        text = cleaned.texts is not None
        n_columns = 0 if text else cleaned.features.shape[1]
        split = [["split"]] if len(parts) > 1 else [[]]
        writer.writerow((["text"] if text else [f"x{column}" for column in range(n_columns)]) + ["label"] + split[0])
        for features, labels, texts, part in parts:
            for index, label in enumerate(labels):
                cells = [spreadsheet_safe(str(texts[index]))] if text else [repr(float(v)) for v in features[index]]
                writer.writerow(cells + [self._class_cell(label)] + ([part] if len(parts) > 1 else []))
        return buffer.getvalue()

    def score(self, true_labels: np.ndarray) -> dict:
        """How the review did where the truth is known (the built-in noisy demo): of the flagged
        points, how many labels were wrong, and what each decision did with them."""
        true_labels = np.asarray(true_labels, dtype=np.int64)
        if len(true_labels) != len(self.labels):
            raise GDAError(f"{len(true_labels)} true labels for a review of {len(self.labels)} training points")
        wrong = self.labels != true_labels
        counts = dict.fromkeys(("fixed", "relabelled to another wrong class", "relabelled a right label",
                                "kept a wrong label", "kept a right label", "skipped"), 0)
        for index, decision in self._decisions.items():
            if decision.action == "relabel":
                key = ("fixed" if decision.new_label == true_labels[index] else "relabelled to another wrong class") \
                    if wrong[index] else "relabelled a right label"
            elif decision.action == "keep":
                key = "kept a wrong label" if wrong[index] else "kept a right label"
            else:
                key = "skipped"
            counts[key] += 1
        decided = len(self._decisions)
        right = counts["fixed"] + counts["kept a right label"]
        return {"wrong_labels": int(wrong.sum()), "flagged": len(self.flagged),
                "wrong_among_flagged": int(wrong[self.flagged].sum()), "decided": decided, **counts,
                "right_decisions": right, "accuracy": round(right / decided, 4) if decided else None,
                "share_of_wrong_labels_fixed": round(counts["fixed"] / max(1, int(wrong.sum())), 4)}

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
        _ensure_schema(connection)
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
