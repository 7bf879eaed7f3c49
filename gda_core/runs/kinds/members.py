"""``members``: drill into one group of an attribution run, its members scored one by one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...progress import Progress
from ...requests import MembersRequest
from .attribute import Attribute
from .base import Result, ScoringKind

if TYPE_CHECKING:
    from ..store import ScoreStore


class Members(ScoringKind, name="members", request_type=MembersRequest,
              description="score one group's members per example for an attribution run's test points"):
    @classmethod
    def run(cls, request: MembersRequest, store: ScoreStore, key: str, report: Progress) -> Result:
        from ...attribution.pipeline import score_group_members

        # The groups of the run drilled into, as stored with its scores (computed afresh if absent).
        attribution_key, _ = Attribute.key(request.attribution(), store)
        stored = store.load(attribution_key)
        group_labels = None if stored is None else stored["groups"]
        result = score_group_members(request, group_labels=group_labels, cache_dir=store.root, progress=report)
        summary = result.summary()
        if stored is not None and result.method_info["gradient_linear"]:
            # The members' scores must add up to the group's: say how closely they do.
            group_scores = stored["scores"][:, request.group].astype(np.float64)
            sums = result.scores.sum(axis=1)
            scale = max(float(np.abs(group_scores).max()), 1e-12)
            summary["sum_deviation"] = float(np.abs(sums[:len(group_scores)] - group_scores).max() / scale)
        summary["attribution_key"] = attribution_key if stored is not None else None
        return {"members": result.members, "scores": result.scores.astype(np.float32)}, summary

    @classmethod
    def describe(cls, result: dict) -> str:
        check = (f"; members sum to the group's score to {result['sum_deviation']:.1e} (relative)"
                 if result.get("sum_deviation") is not None else "")
        return (f"group {result['group']}: {result['n_members']} members x {result['n_test']} test points "
                f"in {result['seconds']:.2f} s{check}")

