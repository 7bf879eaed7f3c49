"""``point-stats``: per training point, the model's loss, prediction and confidence and a
method's self-influence (the map's colourings and the selection table)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...progress import Progress
from ...requests import PointStatsRequest
from .base import JobKind, Result

if TYPE_CHECKING:
    from ..store import ScoreStore


class PointStats(JobKind, name="point-stats", request_type=PointStatsRequest,
                 description="per training point: loss, prediction, confidence and self-influence"):
    @classmethod
    def run(cls, request: PointStatsRequest, store: ScoreStore, key: str, report: Progress) -> Result:
        from ...evaluation.points import point_statistics

        return point_statistics(request, cache_dir=store.root, progress=report)

    @classmethod
    def describe(cls, result: dict) -> str:
        return (f"{result['n_train']} training points: loss, prediction and {result['method']} self-influence "
                f"in {result['seconds']:.2f} s")
