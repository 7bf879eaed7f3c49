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
    from .inputs.datasets import BUILTIN_DATASETS
    from .inputs.zoo import ARCHITECTURES
    from .registry import EXECUTORS, GROUPINGS, METHODS
    from .requests import DEVICES, GOLDS, SIGNALS

    parser = _OneLineParser(prog="gda", description="Group training data attribution (GDA Explorer).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    listing = commands.add_parser("methods", help="list the attribution methods")
    listing.add_argument("--json", action="store_true")
    listing = commands.add_parser("groupings", help="list the groupings")
    listing.add_argument("--json", action="store_true")

    def scoring_arguments(sub: argparse.ArgumentParser, method: str, grouping: str) -> None:
        """Data, model, method (with its options) and grouping: shared by every scoring command."""
        _input_arguments(sub, BUILTIN_DATASETS, ARCHITECTURES)
        sub.add_argument("--method", default=method, help=f"one of: {', '.join(METHODS)}")
        sub.add_argument("--grouping", default=grouping, help=f"one of: {', '.join(GROUPINGS)}")
        sub.add_argument("--groups", type=int, default=None, help="number of groups K")
        sub.add_argument("--device", default="auto", choices=DEVICES)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--measurement", choices=("loss", "margin"), default=None,
                         help="test-side quantity (default: the method's own)")
        sub.add_argument("--damping", type=float, default=None, help="damping for curvature methods")
        sub.add_argument("--last-layer", action="store_true", help="gradients of the final layer only")
        sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="any other method option, e.g. --option max_iterations=200")
        sub.add_argument("--cache", default=None, help="cache folder (default: $GDA_CACHE_DIR or ./cache)")

    attribute = commands.add_parser("attribute", help="score training groups for test points")
    scoring_arguments(attribute, "grad-dot", "grad-kmeans")
    attribute.add_argument("--test-size", type=int, default=200, help="first N test points (default 200)")
    _add_executor_arguments(attribute, EXECUTORS)
    attribute.add_argument("--out", default=None, help="write the scores here (.npy); refuses to overwrite")
    attribute.add_argument("--overwrite", action="store_true", help="allow --out to replace a file")
    attribute.add_argument("--json", action="store_true", help="print one JSON object")

    sweep = commands.add_parser("fidelity", help="fidelity-vs-speed sweep against a gold standard")
    _input_arguments(sweep, BUILTIN_DATASETS, ARCHITECTURES)
    sweep.add_argument("--methods", default="grad-dot,if-arnoldi", help="comma-separated methods")
    sweep.add_argument("--groupings", default="random,grad-kmeans", help="comma-separated groupings")
    sweep.add_argument("--groups", default="15,150", help="comma-separated group counts K")
    sweep.add_argument("--no-per-example", action="store_true", help="skip the K = N per-example point")
    sweep.add_argument("--gold", default="lds", choices=GOLDS)
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

    flag = commands.add_parser("flag", help="rank the demo model's training points, most suspicious label first")
    noisy = commands.add_parser("noisy", help="flip labels, retrain, and measure how many flips flagging finds")
    prune = commands.add_parser("prune", help="remove the lowest-value groups, retrain, report test accuracy")
    for sub in (flag, noisy):
        scoring_arguments(sub, "if-cg", "per-example")
        sub.add_argument("--signal", default="self-influence", choices=SIGNALS,
                         help="self-influence, or influence on a held-out validation loss")
        sub.add_argument("--refine", type=float, default=0.3, metavar="FRACTION",
                         help="grouped runs: re-score per example the top groups covering this fraction")
    flag.add_argument("--top", type=int, default=20, help="flagged points printed (default 20)")
    noisy.add_argument("--flip", type=float, default=0.1, help="fraction of training labels flipped (default 0.1)")
    noisy.add_argument("--folds", type=int, default=3, help="Confident Learning's cross-validation folds")
    noisy.add_argument("--baselines", default="loss,confident-learning", help="comma-separated, or 'none'")
    scoring_arguments(prune, "if-cg", "grad-kmeans")
    prune.add_argument("--fractions", default="0.1,0.2,0.3,0.5", help="fractions of training points removed")
    prune.add_argument("--seeds", type=int, default=3, help="retraining seeds averaged (default 3)")
    prune.add_argument("--flip", type=float, default=0.0, help="flip this fraction of labels first (default 0)")
    for sub in (noisy, prune):
        sub.add_argument("--validation", type=float, default=0.1, metavar="FRACTION",
                         help="held-out stratified part of the training split (default 0.1)")
        sub.add_argument("--plot", default=None, metavar="HTML", help="write the figure")
    for sub in (flag, noisy, prune):
        sub.add_argument("--json", action="store_true", help="print one JSON object")

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


def _input_arguments(parser: argparse.ArgumentParser, datasets, architectures) -> None:
    """--data and --model (a name or a file) and how to read a data file."""
    parser.add_argument("--data", default="digits", metavar="NAME|PATH",
                        help=f"built-in data set ({', '.join(datasets)}) or a .csv, .npz or .zip of image folders")
    parser.add_argument("--model", default="mlp", metavar="NAME|PATH",
                        help=f"zoo model ({', '.join(architectures)}) or a .pt2 program or a .safetensors "
                             f"state dict with its .json config beside it")
    parser.add_argument("--label-column", default="label", help="CSV data: the label column (default: label)")
    parser.add_argument("--split-column", default=None, help="CSV data: a column of train/test per row")
    parser.add_argument("--test-file", default=None, metavar="CSV", help="CSV data: a separate test file")
    parser.add_argument("--image-size", type=int, default=28, help="image zip: resize images to N x N (default 28)")


def _inputs(args: argparse.Namespace) -> tuple[str, str]:
    """The --data and --model choices as jobs take them: data files are validated and stored
    normalised in the cache (uploads/<sha256>.npz), model files made absolute."""
    from .inputs.choices import prepare_data_choice, prepare_model_choice
    from .inputs.parsers import DataOptions

    options = DataOptions(label_column=args.label_column, split_column=args.split_column,
                          test_path=args.test_file, image_size=args.image_size)
    return prepare_data_choice(args.data, options, _store(args).root), prepare_model_choice(args.model)


def _split_list(text: str, kind: type = str) -> list:
    try:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise GDAError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None


def _fidelity(args: argparse.Namespace) -> dict:
    from .io import atomic_write_bytes
    from .requests import GoldConfig, SweepConfig

    gold = GoldConfig(kind=args.gold, n_subsets=args.subsets, alpha=args.alpha, epochs=_split_list(args.epochs, float),
                      seeds=args.seeds, epsilon=None if args.leave_out else args.epsilon, lr=args.lr,
                      optimizer=args.optimizer, batch_size=args.batch_size)
    data, model = _inputs(args)
    config = SweepConfig(data=data, model=model, methods=_split_list(args.methods),
                         groupings=_split_list(args.groupings), group_counts=_split_list(args.groups, int),
                         per_example=not args.no_per_example, test_size=args.test_size, seed=args.seed,
                         device=args.device, gold=gold, horizon_matched=args.horizon_matched,
                         executor=args.executor, ray_address=args.ray_address)
    from .runs.jobs import run_in_foreground

    outcome = run_in_foreground("fidelity", dataclasses.asdict(config), _store(args),
                                progress=_progress_bar(sys.stderr.isatty()))
    sweep = {**outcome.summary, "cache_hit": outcome.cache_hit}
    if args.plot:
        from .viz.figures import fidelity_speed_figure

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
    from .io import default_cache_dir
    from .runs.store import ScoreStore

    return ScoreStore(Path(args.cache) if args.cache else default_cache_dir())


def _method_options(args: argparse.Namespace) -> dict:
    options = _parse_options(args.option)
    if args.damping is not None:
        options["damping"] = args.damping
    if args.last_layer:
        options["last_layer_only"] = True
    if args.measurement is not None:
        options["measurement"] = args.measurement
    return options


def _scoring_fields(args: argparse.Namespace) -> dict:
    data, model = _inputs(args)
    return dict(data=data, model=model, method=args.method, grouping=args.grouping, n_groups=args.groups,
                seed=args.seed, device=args.device, method_options=_method_options(args))


def _noisy_job(kind: str, request, args: argparse.Namespace) -> dict:
    """Run a flag / noisy / prune job through the store; write its figure if asked."""
    from .io import atomic_write_bytes
    from .runs.jobs import run_in_foreground

    outcome = run_in_foreground(kind, request.to_json(), _store(args), progress=_progress_bar(sys.stderr.isatty()))
    result = {**outcome.summary, "cache_hit": outcome.cache_hit, "wall_seconds": round(outcome.seconds, 4),
              "key": outcome.key}
    if kind == "flag":
        result["flagged"] = outcome.arrays["order"][:args.top].tolist()
    if getattr(args, "plot", None):
        from .viz.figures import noisy_detection_figure, pruning_figure

        figure = (noisy_detection_figure if kind == "noisy" else pruning_figure)(result)
        atomic_write_bytes(args.plot, figure.to_html(include_plotlyjs=True).encode())
    return result


def _noisy_command(args: argparse.Namespace) -> dict:
    from .requests import FlagRequest, NoisyConfig, PruneConfig

    if args.command == "flag":
        request = FlagRequest(**_scoring_fields(args), signal=args.signal, refine_fraction=args.refine)
    elif args.command == "noisy":
        baselines = [] if args.baselines.strip() == "none" else _split_list(args.baselines)
        request = NoisyConfig(**_scoring_fields(args), signal=args.signal, refine_fraction=args.refine, flip=args.flip,
                              validation_fraction=args.validation, baselines=tuple(baselines), cl_folds=args.folds)
    else:
        request = PruneConfig(**_scoring_fields(args), fractions=tuple(_split_list(args.fractions, float)),
                              seeds=args.seeds, validation_fraction=args.validation, flip=args.flip)
    return _noisy_job(args.command, request, args)


def _print_noisy(command: str, result: dict) -> None:
    """The human-readable line(s) of a flag / noisy / prune result."""
    if command == "flag":
        print(f"{result['config']['method']} / {result['config']['grouping']} K={result['n_groups']}: "
              f"{result['n_train']} points ranked in {result['seconds']:.2f} s; most suspicious first: "
              f"{' '.join(map(str, result['flagged']))}")
    elif command == "noisy":
        for ranking in result["rankings"].values():
            print(f"{ranking['label']:<58} AUC {ranking['auc']:.3f}  found at 20%: "
                  f"{ranking['recall_at']['0.2']:.1%}  {ranking['seconds']:7.2f} s")
    else:
        print(f"removed   lowest-value   random      (full data: {result['full_accuracy']['mean']:.1%})")
        for fraction, value, random in zip(result["fractions"], result["accuracy"], result["random_accuracy"]):
            print(f"{fraction:>6.0%}   {value['mean']:>10.1%}   {random['mean']:>8.1%}")


def _attribute(args: argparse.Namespace) -> dict:
    from .io import atomic_save_npy
    from .requests import AttributionRequest
    from .runs.jobs import run_in_foreground

    options = _method_options(args)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise GDAError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    data, model = _inputs(args)
    request = AttributionRequest(
        data=data, model=model, method=args.method, grouping=args.grouping,
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
    from .registry import GROUPINGS, METHODS

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
        elif args.command in ("flag", "noisy", "prune"):
            result = _noisy_command(args)
            if args.json:
                print(json.dumps(result, indent=2, default=float))
            else:
                _print_noisy(args.command, result)
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
