"""The job-kind registry: the store's kinds, the CLI's sub-commands and the worker's dispatch
all come from it; a new kind is one class; internal failures keep their traceback in a log."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import numpy as np
import pytest
import torch

from gda_core.cli import build_parser, main
from gda_core.errors import GDAError
from gda_core.inputs.parsers import DataOptions
from gda_core.registry import JOB_KINDS
from gda_core.requests import Choices, NoisyConfig, documented
from gda_core.runs import jobs
from gda_core.runs import store as store_module
from gda_core.runs.kinds import JobKind
from gda_core.runs.store import INTERNAL_KINDS, RunFailed, ScoreStore


@dataclasses.dataclass
class ToyRequest(Choices):
    """A request only this test knows."""

    result_kind = "toy"

    size: int = documented(3, help="how many values")
    fail: str = documented("", help="raise this kind of error: '', 'user' or 'bug'")


@pytest.fixture()
def toy_kind():
    """A kind defined here, with no change anywhere else; unregistered afterwards."""

    class Toy(JobKind, name="toy", request_type=ToyRequest, description="count to --size"):
        @classmethod
        def run(cls, request, store, key, report):
            report("count", 0.5)
            if request.fail == "user":
                raise GDAError("the toy refuses, in one line")
            if request.fail == "bug":
                raise ZeroDivisionError("division by zero\nsecond line of a message")
            return {"values": np.arange(request.size)}, {"size": request.size}

        @classmethod
        def describe(cls, result):
            return f"counted to {result['size']}"

    yield Toy
    del JOB_KINDS["toy"]


@pytest.fixture()
def store(tmp_path):
    return ScoreStore(tmp_path)


def _subcommands() -> dict:
    return build_parser()._subparsers._group_actions[0].choices


def test_every_kind_has_a_store_kind_and_a_subcommand():
    assert set(JOB_KINDS) == {"attribute", "fidelity", "embed", "flag", "members", "noisy", "point-stats", "prune"}
    for job in JOB_KINDS.values():
        assert job.store_kind in store_module.KINDS
    assert set(INTERNAL_KINDS) <= set(store_module.KINDS)
    assert set(JOB_KINDS) <= set(_subcommands())


@pytest.mark.parametrize("call", [lambda store: jobs.run_in_foreground("nope", {}, store),
                                  lambda store: jobs.JobManager(store).submit("nope", {}),
                                  lambda store: jobs.job_key("nope", {}, store)])
def test_an_unknown_kind_is_one_line(store, call):
    with pytest.raises(GDAError, match=r"unknown job kind 'nope'; choose from: attribute, ") as caught:
        call(store)
    assert "\n" not in str(caught.value)


def test_a_bad_request_field_is_one_line(store):
    with pytest.raises(GDAError, match="bad noisy request") as caught:
        jobs.job_key("noisy", {"nonsense": 1}, store)
    assert "\n" not in str(caught.value)


def test_a_new_kind_is_one_class(toy_kind, store, tmp_path, capsys):
    assert JOB_KINDS["toy"] is toy_kind and "toy" in store_module.KINDS and "toy" in _subcommands()
    request = ToyRequest(data="wine", model="logreg", size=4).to_json()
    first = jobs.run_in_foreground("toy", request, store)
    assert not first.cache_hit and first.summary == {"size": 4}
    np.testing.assert_array_equal(first.arrays["values"], np.arange(4))
    assert jobs.run_in_foreground("toy", request, store).cache_hit
    assert [run.kind for run in store.runs()] == ["toy"]
    # ... and it is a sub-command, its flags from the request's fields
    assert main(["toy", "--data", "wine", "--model", "logreg", "--size", "4", "--cache", str(tmp_path),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cache_hit"] and result["key"] == first.key
    assert main(["toy", "--data", "wine", "--model", "logreg", "--size", "2", "--cache", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "counted to 2\n"


def test_an_internal_failure_keeps_its_traceback_in_a_log(toy_kind, store, tmp_path, capsys):
    request = ToyRequest(data="wine", model="logreg", fail="bug").to_json()
    with pytest.raises(RunFailed) as caught:
        jobs.run_in_foreground("toy", request, store)
    key = jobs.job_key("toy", request, store)[0]
    run = store.get(key)
    assert run.status == "failed" and "\n" not in run.error and str(caught.value) == run.error
    assert run.error.startswith("ZeroDivisionError: division by zero (traceback in ")
    assert run.log == str(store.log_path(key)) and run.log in run.error
    log = store.log_path(key).read_text()
    assert "Traceback (most recent call last)" in log and "raise ZeroDivisionError" in log
    # the CLI: one line naming the log, exit code 1 (2 is for the user's errors)
    assert main(["toy", "--data", "wine", "--model", "logreg", "--fail", "bug", "--cache", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ZeroDivisionError") and run.log in err


def test_a_user_error_is_one_line_without_a_log(toy_kind, store, tmp_path, capsys):
    request = ToyRequest(data="wine", model="logreg", fail="user").to_json()
    with pytest.raises(GDAError, match="the toy refuses"):
        jobs.run_in_foreground("toy", request, store)
    run = store.get(jobs.job_key("toy", request, store)[0])
    assert run.status == "failed" and run.error == "the toy refuses, in one line" and run.log is None
    assert not store.log_path(run.key).exists()
    assert main(["toy", "--data", "wine", "--model", "logreg", "--fail", "user", "--cache", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: the toy refuses, in one line\n"


@pytest.mark.parametrize("fail,logged", [("bug", True), ("user", False)])
def test_the_worker_records_failures_the_same_way(toy_kind, store, fail, logged):
    request = ToyRequest(data="wine", model="logreg", fail=fail).to_json()
    key, params = jobs.job_key("toy", request, store)
    assert store.claim(key, "toy", params)
    threads = torch.get_num_threads()
    try:
        jobs._worker(str(store.root), "toy", request, key)  # the spawned process's entry point, here
    finally:
        torch.set_num_threads(threads)
    run = store.get(key)
    assert run.status == "failed" and "\n" not in run.error
    assert (run.log is not None) == logged == store.log_path(key).exists()
    if logged:
        assert "ZeroDivisionError" in store.log_path(key).read_text()


def test_an_old_index_gains_the_log_column(tmp_path):
    with sqlite3.connect(tmp_path / "index.sqlite") as connection:
        connection.execute("CREATE TABLE runs (key TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL,"
                           " params TEXT NOT NULL, phase TEXT DEFAULT '', progress REAL DEFAULT 0, eta REAL,"
                           " created REAL NOT NULL, started REAL, updated REAL, finished REAL, seconds REAL,"
                           " error TEXT, files TEXT DEFAULT '{}', summary TEXT DEFAULT '{}',"
                           " version TEXT NOT NULL, worker_pid INTEGER, cancel_requested INTEGER DEFAULT 0)")
        connection.execute("INSERT INTO runs (key, kind, status, params, created, version, error)"
                           " VALUES ('old', 'scores', 'failed', '{}', 0, '0', 'boom')")
    store = ScoreStore(tmp_path)
    assert store.get("old").error == "boom" and store.get("old").log is None
    ScoreStore(tmp_path)  # opening it again adds nothing


def _parsed_fields(kind: str, argv: list[str], tmp_path) -> dict:
    args = build_parser().parse_args([kind, *argv, "--cache", str(tmp_path)])
    return JOB_KINDS[kind].fields_from_arguments(args, ScoreStore(tmp_path))


@pytest.mark.parametrize("kind", ["attribute", "fidelity", "embed", "flag", "noisy", "prune"])
def test_command_line_defaults_are_the_request_defaults(kind, tmp_path):
    fields = _parsed_fields(kind, [], tmp_path)
    defaults = {field.name: field.default_factory() if field.default_factory is not dataclasses.MISSING
                else field.default for field in dataclasses.fields(JOB_KINDS[kind].request_type)}
    for name, value in fields.items():
        default = defaults[name]
        assert value == (dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default), name


def test_gda_noisy_without_flags_is_the_default_config(tmp_path):
    assert NoisyConfig(**_parsed_fields("noisy", [], tmp_path)) == NoisyConfig()


def test_flags_convert_by_field_type(tmp_path):
    fields = _parsed_fields("noisy", ["--baselines", "none", "--flip", "0.2", "--folds", "4", "--groups", "7",
                                      "--option", "max_iterations=9", "--damping", "0.1", "--last-layer"], tmp_path)
    assert fields["baselines"] == () and fields["flip"] == 0.2 and fields["cl_folds"] == 4 and fields["n_groups"] == 7
    assert fields["method_options"] == {"max_iterations": 9, "damping": 0.1, "last_layer_only": True}
    sweep = _parsed_fields("fidelity", ["--no-per-example", "--epochs", "1,10", "--leave-out", "--groups", "5,50"],
                           tmp_path)
    assert sweep["per_example"] is False and sweep["group_counts"] == (5, 50)
    assert sweep["gold"]["epochs"] == (1.0, 10.0) and sweep["gold"]["epsilon"] is None


def test_every_data_option_is_a_flag():
    """A field added to DataOptions (e.g. a task) becomes a flag of every job sub-command by itself."""
    commands = _subcommands()
    for kind in JOB_KINDS:
        dests = {action.dest for action in commands[kind]._actions}
        assert {f"data_options.{field.name}" for field in dataclasses.fields(DataOptions)} <= dests
