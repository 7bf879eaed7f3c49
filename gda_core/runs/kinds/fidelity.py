"""``fidelity``: every method x grouping x K against one gold standard, timed (a sweep)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ...io import check_output_path, write_output
from ...progress import Progress
from ...requests import SweepConfig
from .base import JobKind, Result

if TYPE_CHECKING:
    from ..jobs import JobOutcome
    from ..store import ScoreStore


class Fidelity(JobKind, name="fidelity", request_type=SweepConfig, draws_figure=True,
               description="fidelity-vs-speed sweep against a gold standard"):
    @classmethod
    def run(cls, request: SweepConfig, store: ScoreStore, key: str, report: Progress) -> Result:
        from ...evaluation.sweeps import run_sweep

        return {}, run_sweep(request, store, progress=report)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--leave-out", action="store_true",
                            help="further training: leave the group out instead (--epsilon none)")

    @classmethod
    def add_output_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                            help="write the sweep as JSON to PATH (or stdout with no PATH)")
        parser.add_argument("--plot", default=None, metavar="HTML", help="write the fidelity-vs-speed figure")

    @classmethod
    def check_outputs(cls, args: argparse.Namespace) -> None:
        super().check_outputs(args)
        if args.json and args.json != "-":
            check_output_path(args.json, "--json")

    @classmethod
    def fields_from_arguments(cls, args: argparse.Namespace, store: ScoreStore) -> dict:
        fields = super().fields_from_arguments(args, store)
        if args.leave_out:
            fields["gold"]["epsilon"] = None
        return fields

    @classmethod
    def figure(cls, result: dict) -> Any:
        from ...viz.figures import fidelity_speed_figure

        return fidelity_speed_figure(result)

    @classmethod
    def result(cls, outcome: JobOutcome, args: argparse.Namespace, store: ScoreStore) -> dict:
        sweep = super().result(outcome, args, store)
        if args.json and args.json != "-":
            write_output(args.json, (json.dumps(sweep, indent=2, default=float) + "\n").encode(), "--json")
        return sweep

    @classmethod
    def describe(cls, result: dict) -> str:
        metric = result["metric"]

        def beside(point: dict) -> str:  # the group-level LDS beside the group sizes
            sizes = point.get("group_sizes")
            group = f"  group_lds {point['group_lds']:.3f}" if "group_lds" in point else ""
            if "kept_variance" in point:  # of the method's own per-example scores
                group += f"  kept {point['kept_variance']:.3f}"
            return (f"{group}  sizes {sizes['largest']}/{sizes['median']:g}/{sizes['smallest']} "
                    f"(largest/median/smallest), {sizes['singletons']} singletons") if sizes else group

        return "\n".join(f"{point['method']:<18} {point['grouping']:<14} K={point['n_groups']:<5} "
                         f"{point['seconds']:8.3f} s  {metric} {point.get(metric, float('nan')):.3f}{beside(point)}"
                         for point in result["points"])

    @classmethod
    def print_result(cls, result: dict, args: argparse.Namespace) -> None:
        print(json.dumps(result, indent=2, default=float) if args.json == "-" else cls.describe(result))
