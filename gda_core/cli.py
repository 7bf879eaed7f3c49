"""The ``gda`` command line: the engine, headless, for big jobs.

Every failure the user can fix is one line on stderr and exit code 2; nothing else exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

from .errors import GDAError


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus a message; we print only the message, on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise GDAError(f"{self.prog}: {message}")


def _option_value(text: str):
    """``--option key=value`` values: JSON where it parses (numbers, true, null), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_options(pairs: Sequence[str]) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise GDAError(f"--option expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.strip().replace("-", "_")] = _option_value(value.strip())
    return options


def _add_executor_arguments(parser: argparse.ArgumentParser, executors: dict) -> None:
    parser.add_argument("--executor", default="local", choices=list(executors),
                        help="where the training side runs: local (this process) or ray (shards on a Ray cluster)")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="Ray cluster to use with --executor ray ('auto': the one `ray start` made on this "
                             "machine); default: a local Ray started for the run")


def build_parser() -> argparse.ArgumentParser:
    from .data import BUILTIN_DATASETS
    from .engine import DEVICES
    from .executors import EXECUTORS
    from .grouping import GROUPINGS
    from .methods import METHODS
    from .models import ARCHITECTURES

    parser = _OneLineParser(prog="gda", description="Group training data attribution (GDA Explorer).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    listing = commands.add_parser("methods", help="list the attribution methods")
    listing.add_argument("--json", action="store_true")
    listing = commands.add_parser("groupings", help="list the groupings")
    listing.add_argument("--json", action="store_true")

    attribute = commands.add_parser("attribute", help="score training groups for test points")
    attribute.add_argument("--data", default="digits", help=f"built-in data set: {', '.join(BUILTIN_DATASETS)}")
    attribute.add_argument("--model", default="mlp", help=f"zoo model: {', '.join(ARCHITECTURES)}")
    attribute.add_argument("--method", default="grad-dot", help=f"one of: {', '.join(METHODS)}")
    attribute.add_argument("--grouping", default="grad-kmeans", help=f"one of: {', '.join(GROUPINGS)}")
    attribute.add_argument("--groups", type=int, default=None, help="number of groups K")
    attribute.add_argument("--test-size", type=int, default=200, help="first N test points (default 200)")
    attribute.add_argument("--device", default="auto", choices=DEVICES)
    attribute.add_argument("--seed", type=int, default=0)
    _add_executor_arguments(attribute, EXECUTORS)
    attribute.add_argument("--measurement", choices=("loss", "margin"), default=None,
                           help="test-side quantity (default: the method's own)")
    attribute.add_argument("--damping", type=float, default=None, help="damping for curvature methods")
    attribute.add_argument("--last-layer", action="store_true", help="gradients of the final layer only")
    attribute.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                           help="any other method option, e.g. --option max_iterations=200")
    attribute.add_argument("--cache", default=None, help="cache folder (default: $GDA_CACHE_DIR or ./cache)")
    attribute.add_argument("--out", default=None, help="write the scores here (.npy); refuses to overwrite")
    attribute.add_argument("--overwrite", action="store_true", help="allow --out to replace a file")
    attribute.add_argument("--json", action="store_true", help="print one JSON object")

    sweep = commands.add_parser("fidelity", help="fidelity-vs-speed sweep against a gold standard")
    sweep.add_argument("--data", default="digits")
    sweep.add_argument("--model", default="mlp")
    sweep.add_argument("--methods", default="grad-dot,if-arnoldi", help="comma-separated methods")
    sweep.add_argument("--groupings", default="random,grad-kmeans", help="comma-separated groupings")
    sweep.add_argument("--groups", default="15,150", help="comma-separated group counts K")
    sweep.add_argument("--no-per-example", action="store_true", help="skip the K = N per-example point")
    sweep.add_argument("--gold", default="lds", choices=("lds", "further-training", "leave-group-out"))
    sweep.add_argument("--test-size", type=int, default=100)
    sweep.add_argument("--subsets", type=int, default=50, help="LDS: number of subset models")
    sweep.add_argument("--alpha", type=float, default=0.5, help="LDS: fraction of groups kept per subset")
    sweep.add_argument("--epochs", default="1", help="further training: horizons in epochs, comma-separated")
    sweep.add_argument("--seeds", type=int, default=1, help="seeds averaged in the gold standard")
    sweep.add_argument("--epsilon", type=float, default=1.0, help="further training: up-weighting (1 + epsilon)")
    sweep.add_argument("--leave-out", action="store_true", help="further training: leave the group out instead")
    sweep.add_argument("--lr", type=float, default=0.01, help="further training learning rate")
    sweep.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    sweep.add_argument("--batch-size", type=int, default=64)
    sweep.add_argument("--horizon-matched", action="store_true",
                       help="also run influence methods with damping 1/(lr x T) for each horizon T")
    sweep.add_argument("--device", default="auto", choices=DEVICES)
    _add_executor_arguments(sweep, EXECUTORS)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--cache", default=None)
    sweep.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                       help="write the sweep as JSON to PATH (or stdout with no PATH)")
    sweep.add_argument("--plot", default=None, metavar="HTML", help="write the fidelity-vs-speed figure")

    cache = commands.add_parser("cache", help="list, remove or prune stored runs")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, parser_class=_OneLineParser)
    listing = cache_commands.add_parser("ls", help="list runs")
    listing.add_argument("--kind", default=None)
    listing.add_argument("--json", action="store_true")
    removing = cache_commands.add_parser("rm", help="remove runs by key")
    removing.add_argument("keys", nargs="+")
    pruning = cache_commands.add_parser("prune", help="remove failed/cancelled runs (and old ones)")
    pruning.add_argument("--older-than", type=float, default=None, metavar="DAYS")
    for sub in (listing, removing, pruning):
        sub.add_argument("--cache", default=None)
    return parser


def _split_list(text: str, kind: type = str) -> list:
    try:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise GDAError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None


def _fidelity(args: argparse.Namespace) -> dict:
    from .evaluate import GoldConfig, SweepConfig
    from .io import atomic_write_bytes

    gold = GoldConfig(kind=args.gold, n_subsets=args.subsets, alpha=args.alpha, epochs=_split_list(args.epochs, float),
                      seeds=args.seeds, epsilon=None if args.leave_out else args.epsilon, lr=args.lr,
                      optimizer=args.optimizer, batch_size=args.batch_size)
    config = SweepConfig(data=args.data, model=args.model, methods=_split_list(args.methods),
                         groupings=_split_list(args.groupings), group_counts=_split_list(args.groups, int),
                         per_example=not args.no_per_example, test_size=args.test_size, seed=args.seed,
                         device=args.device, gold=gold, horizon_matched=args.horizon_matched,
                         executor=args.executor, ray_address=args.ray_address)
    from .jobs import run_in_foreground

    outcome = run_in_foreground("fidelity", dataclasses.asdict(config), _store(args),
                                progress=_progress_bar(sys.stderr.isatty()))
    sweep = {**outcome.summary, "cache_hit": outcome.cache_hit}
    if args.plot:
        from .viz import fidelity_speed_figure

        atomic_write_bytes(args.plot, fidelity_speed_figure(sweep).to_html(include_plotlyjs=True).encode())
    if args.json and args.json != "-":
        atomic_write_bytes(args.json, (json.dumps(sweep, indent=2, default=float) + "\n").encode())
    return sweep


def _list(registry: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({name: cls.description for name, cls in registry.items()}, indent=2))
    else:
        width = max(len(name) for name in registry)
        for name, cls in registry.items():
            print(f"{name:<{width}}  {cls.description}")


def _progress_bar(enabled: bool):
    """A tqdm bar per phase on stderr (fractions in, a bar out)."""
    if not enabled:
        return None
    from tqdm import tqdm

    state: dict = {"phase": None, "bar": None}

    def update(phase: str, fraction: float) -> None:
        if phase != state["phase"]:
            if state["bar"] is not None:
                state["bar"].close()
            state["phase"] = phase
            state["bar"] = tqdm(total=100, desc=phase, unit="%", file=sys.stderr, leave=False)
        bar = state["bar"]
        bar.update(max(0, round(100 * fraction) - bar.n))

    return update


def _store(args: argparse.Namespace):
    from .engine import default_cache_dir
    from .store import ScoreStore

    return ScoreStore(Path(args.cache) if args.cache else default_cache_dir())


def _attribute(args: argparse.Namespace) -> dict:
    from .engine import AttributionRequest
    from .io import atomic_save_npy
    from .jobs import run_in_foreground

    options = _parse_options(args.option)
    if args.damping is not None:
        options["damping"] = args.damping
    if args.last_layer:
        options["last_layer_only"] = True
    if args.measurement is not None:
        options["measurement"] = args.measurement
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise GDAError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    request = AttributionRequest(
        data=args.data, model=args.model, method=args.method, grouping=args.grouping,
        n_groups=args.groups, test_size=args.test_size, seed=args.seed, device=args.device,
        method_options=options, executor=args.executor, ray_address=args.ray_address,
    )
    store = _store(args)
    outcome = run_in_foreground("attribute", request.to_json(), store, progress=_progress_bar(sys.stderr.isatty()))
    summary = dict(outcome.summary)
    scores_path = store.file_path(outcome.key, "scores")
    if out is not None:
        atomic_save_npy(out, outcome.arrays["scores"])
        scores_path = out
    summary.update(cache_hit=outcome.cache_hit, wall_seconds=round(outcome.seconds, 4), key=outcome.key,
                   scores_path=str(scores_path), groups_path=str(store.file_path(outcome.key, "groups")),
                   scores_shape=list(outcome.arrays["scores"].shape))
    return summary


def _cache(args: argparse.Namespace) -> None:
    store = _store(args)
    if args.cache_command == "ls":
        runs = store.runs(kind=args.kind)
        if args.json:
            print(json.dumps([{k: v for k, v in run.to_json().items() if k != "files"} for run in runs],
                             indent=2, default=str))
            return
        for run in runs:
            print(f"{run.key}  {run.kind:<7} {run.status:<9} {run.progress:4.0%}  "
                  f"{(run.seconds or 0):8.2f} s  {run.error or ''}")
    elif args.cache_command == "rm":
        missing = [key for key in args.keys if not store.delete(key)]
        if missing:
            raise GDAError(f"no such run: {', '.join(missing)}")
    else:
        removed = store.prune(older_than_days=args.older_than)
        print(f"removed {len(removed)} run(s)")


def main(argv: Sequence[str] | None = None) -> int:
    from .grouping import GROUPINGS
    from .methods import METHODS

    try:
        args = build_parser().parse_args(argv)
        if args.command == "methods":
            _list(METHODS, args.json)
        elif args.command == "groupings":
            _list(GROUPINGS, args.json)
        elif args.command == "cache":
            _cache(args)
        elif args.command == "fidelity":
            sweep = _fidelity(args)
            if args.json == "-":
                print(json.dumps(sweep, indent=2, default=float))
            else:
                metric = sweep["metric"]
                for point in sweep["points"]:
                    print(f"{point['method']:<18} {point['grouping']:<14} K={point['n_groups']:<5} "
                          f"{point['seconds']:8.3f} s  {metric} {point.get(metric, float('nan')):.3f}")
        elif args.command == "attribute":
            summary = _attribute(args)
            if args.json:
                print(json.dumps(summary, indent=2))
            else:
                print(f"{summary['method']} / {summary['grouping']} K={summary['n_groups']}: "
                      f"{summary['n_test']} x {summary['n_groups']} scores in {summary['seconds']:.2f} s "
                      f"-> {summary['scores_path']}")
    except GDAError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
