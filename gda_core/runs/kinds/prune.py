"""``prune``: remove the lowest-value groups at several fractions, retrain, report test accuracy."""

from __future__ import annotations

from typing import Any

from ...evaluation.pruning import run_pruning
from ...requests import PruneConfig
from .base import RetrainingKind


class Prune(RetrainingKind, name="prune", request_type=PruneConfig, draws_figure=True,
            description="remove the lowest-value groups, retrain, report test accuracy"):
    @classmethod
    def describe(cls, result: dict) -> str:
        lines = [f"removed   lowest-value   random      (full data: {result['full_accuracy']['mean']:.1%})"]
        lines += [f"{fraction:>6.0%}   {value['mean']:>10.1%}   {random['mean']:>8.1%}"
                  for fraction, value, random in zip(result["fractions"], result["accuracy"], result["random_accuracy"])]
        return "\n".join(lines)

    evaluate = staticmethod(run_pruning)

    @classmethod
    def figure(cls, result: dict) -> Any:
        from ...viz.figures import pruning_figure  # plotly: only when a figure is asked for

        return pruning_figure(result)
