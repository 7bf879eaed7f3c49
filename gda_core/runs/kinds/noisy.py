"""``noisy``: flip labels (seeded), retrain, flag, and measure how many flips each ranking finds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...progress import Progress
from ...requests import NoisyConfig
from .base import Result, RetrainingKind

if TYPE_CHECKING:
    from ..store import ScoreStore


class Noisy(RetrainingKind):
    name = "noisy"
    request_type = NoisyConfig
    draws_figure = True
    description = "flip labels, retrain, and measure how many flips flagging finds"

    @classmethod
    def run(cls, request: NoisyConfig, store: ScoreStore, key: str, report: Progress) -> Result:
        from ...evaluation.noisy import run_noisy

        return {}, run_noisy(request, progress=report)

    @classmethod
    def figure(cls, result: dict) -> Any:
        from ...viz.figures import noisy_detection_figure

        return noisy_detection_figure(result)

    @classmethod
    def describe(cls, result: dict) -> str:
        return "\n".join(f"{ranking['label']:<58} AUC {ranking['auc']:.3f}  found at 20%: "
                         f"{ranking['recall_at']['0.2']:.1%}  {ranking['seconds']:7.2f} s"
                         for ranking in result["rankings"].values())
