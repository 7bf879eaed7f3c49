"""The ``gda`` command line: the engine, headless, for big jobs.

A sub-command per job kind in ``JOB_KINDS`` (its flags, defaults and help come from its
request's fields), plus listings and the cache. Every failure the user can fix is one line on
stderr and exit code 2; nothing else exits 2. An internal failure of a job is one line too
(exit code 1), naming the log that keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from .errors import GDAError, check_choice


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus a message; we print only the message, on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise GDAError(f"{self.prog}: {message}")


def _add_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", default=None, help="cache folder (default: $GDA_CACHE_DIR or ./cache)")


def build_parser() -> argparse.ArgumentParser:
    from .runs.jobs import JOB_KINDS

    parser = _OneLineParser(prog="gda", description="Group training data attribution (GDA Explorer).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    listing = commands.add_parser("methods", help="list the attribution methods")
    listing.add_argument("--json", action="store_true")
    listing = commands.add_parser("groupings", help="list the groupings")
    listing.add_argument("--json", action="store_true")

    for job in JOB_KINDS.values():
        sub = commands.add_parser(job.name, help=job.description, description=job.description)
        job.add_arguments(sub)
        _add_cache_argument(sub)

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
        _add_cache_argument(sub)
    return parser


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
    from .runs.store import ScoreStore

    return ScoreStore()  # ``--cache`` is in GDA_CACHE_DIR by now (see main)


def _run_job(args: argparse.Namespace) -> None:
    """The sub-command of a job kind: build its request from the flags, run it in the
    foreground through the store, print its result."""
    from .runs.jobs import JOB_KINDS, run_in_foreground

    job = JOB_KINDS[args.command]
    store = _store(args)
    request = job.request_from_arguments(args, store)
    outcome = run_in_foreground(job.name, request.to_json(), store, progress=_progress_bar(sys.stderr.isatty()))
    job.print_result(job.result(outcome, args, store), args)


def _cache(args: argparse.Namespace) -> None:
    from .runs.store import store_kinds

    store = _store(args)
    if args.cache_command == "ls":
        if args.kind is not None:
            check_choice("run kind", args.kind, store_kinds())
        runs = store.runs(kind=args.kind)
        if args.json:
            print(json.dumps([{k: v for k, v in run.to_json().items() if k != "files"} for run in runs],
                             indent=2, default=str))
            return
        for run in runs:
            print(f"{run.key}  {run.kind:<7} {run.status:<9} {run.progress:4.0%}  "
                  f"{(run.seconds or 0):8.2f} s  {run.error or ''}")
    elif args.cache_command == "rm":
        # store.delete checks each key against the index before it builds a path from it, so a
        # path, '', '.' or '..' is "no such run" and removes nothing.
        missing = [key for key in args.keys if not store.delete(key)]
        if missing:
            raise GDAError(f"no such run: {', '.join(map(repr, missing))}; give run keys from `gda cache ls`")
    else:
        removed = store.prune(older_than_days=args.older_than)
        print(f"removed {len(removed)} run(s)")


def main(argv: Sequence[str] | None = None) -> int:
    from .io import CACHE_ENV
    from .registry import GROUPINGS, METHODS
    from .runs.store import RunFailed

    previous = os.environ.get(CACHE_ENV)
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "cache", None):
            # One mechanism for the cache folder: everything below (the store, the cached data
            # and demo models, worker processes) reads it through io.default_cache_dir.
            os.environ[CACHE_ENV] = args.cache
        if args.command == "methods":
            _list(METHODS, args.json)
        elif args.command == "groupings":
            _list(GROUPINGS, args.json)
        elif args.command == "cache":
            _cache(args)
        else:
            _run_job(args)
    except GDAError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:  # a bug, not the user's: one line, the traceback in the run's log
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:  # main may be called in-process (tests, scripts): leave the environment as it was
        if previous is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = previous
    return 0


if __name__ == "__main__":
    sys.exit(main())
