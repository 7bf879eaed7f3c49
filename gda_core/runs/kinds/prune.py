"""``prune``: remove the lowest-value groups at several fractions, retrain, report test accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...progress import Progress
from ...requests import PruneConfig
from .base import Result, RetrainingKind

if TYPE_CHECKING:
    from ..store import ScoreStore


class Prune(RetrainingKind):
    name = "prune"
    request_type = PruneConfig
    draws_figure = True
    description = "remove the lowest-value groups, retrain, report test accuracy"

    @classmethod
    def run(cls, request: PruneConfig, store: ScoreStore, key: str, report: Progress) -> Result:
        from ...evaluation.pruning import run_pruning

        return {}, run_pruning(request, progress=report)

    @classmethod
    def figure(cls, result: dict) -> Any:
        from ...viz.figures import pruning_figure

        return pruning_figure(result)

    @classmethod
    def describe(cls, result: dict) -> str:
        lines = [f"removed   lowest-value   random      (full data: {result['full_accuracy']['mean']:.1%})"]
        lines += [f"{fraction:>6.0%}   {value['mean']:>10.1%}   {random['mean']:>8.1%}"
                  for fraction, value, random in zip(result["fractions"], result["accuracy"], result["random_accuracy"])]
        return "\n".join(lines)
