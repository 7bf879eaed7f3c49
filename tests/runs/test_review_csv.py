"""Exported review CSVs: class names that start like a spreadsheet formula are escaped."""

from __future__ import annotations

import csv
import io

import numpy as np

from gda_core.io import spreadsheet_safe
from gda_core.runs.review import ReviewSession
from gda_core.runs.store import ScoreStore

NAMES = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "-1", "plain"]


def test_formula_like_class_names_are_escaped_in_every_export(tmp_path):
    session = ReviewSession.create(ScoreStore(tmp_path), "csv", flagged=np.arange(6), labels=np.arange(6),
                                   class_names=NAMES)
    for index in range(6):
        session.relabel(index, (index + 1) % 6)
    decisions = list(csv.DictReader(io.StringIO(session.decisions_csv())))
    labels = list(csv.DictReader(io.StringIO(session.labels_csv())))
    expected = ["'=HYPERLINK(\"http://x\")", "'+1+1", "'-2+3", "'@SUM(A1)", "-1", "plain"]
    assert [row["given_label"] for row in decisions] == expected
    assert [row["new_label"] for row in decisions] == expected[1:] + expected[:1]
    assert [row["label"] for row in labels] == expected[1:] + expected[:1]
    for row in decisions + labels:
        assert not any(cell.startswith(("=", "+", "@")) for cell in row.values())


def test_spreadsheet_safe_leaves_text_and_numbers_alone():
    assert [spreadsheet_safe(text) for text in ("cat", "-0.5", "3", "", "\tx")] == ["cat", "-0.5", "3", "", "'\tx"]
