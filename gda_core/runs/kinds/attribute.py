"""``attribute``: score training groups for test points (the scores and each point's group)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...io import check_output_path, npy_bytes, write_output
from ...progress import Progress
from ...requests import AttributionRequest
from .base import Result, ScoringKind

if TYPE_CHECKING:
    from ..jobs import JobOutcome
    from ..store import ScoreStore


class Attribute(ScoringKind, name="attribute", request_type=AttributionRequest,
                description="score training groups for test points"):
    @classmethod
    def run(cls, request: AttributionRequest, store: ScoreStore, key: str, report: Progress) -> Result:
        from ...attribution.pipeline import run_attribution

        def save(name: str, array: np.ndarray) -> None:
            store.save_part(key, name, array)

        # Chunks of test points are kept as they finish, so a killed job resumes where it stopped.
        result = run_attribution(request, cache_dir=store.root, progress=report,
                                 parts=(lambda name: store.load_part(key, name), save))
        return {"scores": result.scores.astype(np.float32), "groups": result.groups.labels}, result.summary()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--out", default=None, help="write the scores here (.npy); refuses to overwrite")
        parser.add_argument("--overwrite", action="store_true", help="allow --out to replace a file")

    @classmethod
    def check_outputs(cls, args: argparse.Namespace) -> None:
        super().check_outputs(args)
        if args.out is not None:
            check_output_path(args.out, "--out", overwrite=args.overwrite)

    @classmethod
    def result(cls, outcome: JobOutcome, args: argparse.Namespace, store: ScoreStore) -> dict:
        scores_path = store.file_path(outcome.key, "scores")
        if args.out is not None:
            write_output(args.out, npy_bytes(outcome.arrays["scores"]), "--out")
            scores_path = Path(args.out)
        return {**super().result(outcome, args, store), "scores_path": str(scores_path),
                "groups_path": str(store.file_path(outcome.key, "groups")),
                "scores_shape": list(outcome.arrays["scores"].shape)}

    @classmethod
    def describe(cls, result: dict) -> str:
        return (f"{result['method']} / {result['grouping']} K={result['n_groups']}: {result['n_test']} x "
                f"{result['n_groups']} scores in {result['seconds']:.2f} s -> {result['scores_path']}")
