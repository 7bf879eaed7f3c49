"""``noisy``: flip labels (seeded), retrain, flag, and measure how many flips each ranking finds."""

from __future__ import annotations

from typing import Any

from ...evaluation.noisy import run_noisy
from ...requests import NoisyConfig
from .base import RetrainingKind


class Noisy(RetrainingKind, name="noisy", request_type=NoisyConfig, draws_figure=True,
            description="flip labels, retrain, and measure how many flips flagging finds"):
    @classmethod
    def describe(cls, result: dict) -> str:
        return "\n".join(f"{ranking['label']:<58} AUC {ranking['auc']:.3f}  found at 20%: "
                         f"{ranking['recall_at']['0.2']:.1%}  {ranking['seconds']:7.2f} s"
                         for ranking in result["rankings"].values())

    evaluate = staticmethod(run_noisy)

    @classmethod
    def figure(cls, result: dict) -> Any:
        from ...viz.figures import noisy_detection_figure  # plotly: only when a figure is asked for

        return noisy_detection_figure(result)
