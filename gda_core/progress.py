"""Progress callbacks: ``progress(phase, fraction)`` along long work, one signature everywhere."""

from __future__ import annotations

import time
from typing import Callable

#: ``progress(phase, fraction)``: the phase's name and how much of the whole is done (0..1)
Progress = Callable[[str, float], None]
#: ``progress(fraction)``: a sub-task's share done, for callers that name the phase themselves
FractionDone = Callable[[float], None]


def no_progress(phase: str, fraction: float) -> None:
    """The default callback: reports go nowhere."""
    return None


def no_fraction(fraction: float) -> None:
    return None


def both(first: Progress, second: Progress) -> Progress:
    """One callback that reports to two."""
    def update(phase: str, fraction: float) -> None:
        first(phase, fraction)
        second(phase, fraction)

    return update


def throttled(report: Progress, interval: float = 0.25) -> Progress:
    """Report at most every ``interval`` seconds (and every phase change, and the end): a
    store is a database, not a progress bar. Throttling never hides a cancel for long."""
    state = {"last": 0.0, "phase": None}

    def update(phase: str, fraction: float) -> None:
        now = time.perf_counter()
        if phase != state["phase"] or fraction >= 1.0 or now - state["last"] >= interval:
            state["last"], state["phase"] = now, phase
            report(phase, fraction)

    return update
