"""``flag``: rank the training points of a data set and model, most suspicious label first."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ...progress import Progress
from ...requests import FlagRequest
from .base import Result, ScoringKind

if TYPE_CHECKING:
    from ..jobs import JobOutcome
    from ..store import ScoreStore


class Flag(ScoringKind, name="flag", request_type=FlagRequest,
           description="rank the demo model's training points, most suspicious label first"):
    @classmethod
    def run(cls, request: FlagRequest, store: ScoreStore, key: str, report: Progress) -> Result:
        from ...evaluation.flagging import run_flagging

        flags, train, summary = run_flagging(request, cache_dir=store.root, progress=report)
        arrays = {"order": flags.order, "scores": flags.scores, "refined": flags.refined,
                  "groups": flags.group_labels, "labels": train.labels.cpu().numpy(), "source_rows": train.indices}
        return arrays, summary

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--top", type=int, default=20, help="flagged points printed (default 20)")

    @classmethod
    def result(cls, outcome: JobOutcome, args: argparse.Namespace, store: ScoreStore) -> dict:
        return {**super().result(outcome, args, store), "flagged": outcome.arrays["order"][:args.top].tolist()}

    @classmethod
    def describe(cls, result: dict) -> str:
        from ...evaluation.flagging import flag_summary_label

        label = flag_summary_label(result)
        return (f"{label}: "
                f"{result['n_train']} points ranked in {result['seconds']:.2f} s; most suspicious first: "
                f"{' '.join(map(str, result['flagged']))}")
