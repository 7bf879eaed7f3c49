"""The Ray executor: the same scores as the local one, retried shards, progress, clean shutdown.

One local Ray (2 CPUs, 127.0.0.1, no dashboard, its own short temp dir) serves the module and
is stopped at its end; the finaliser checks that no raylet of that temp dir is left running.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gda_core.attribution.executors import BuiltinSource, RayExecutor, check_reachable, make_executor, shard_ranges
from gda_core.attribution.grouping import make_grouping
from gda_core.attribution.methods import make_method
from gda_core.attribution.methods.first_order import GradDot
from gda_core.cli import main as cli_main
from gda_core.errors import GDAError
from gda_core.evaluation.gold import further_training, lds_ensemble, leave_group_out
from gda_core.inputs.datasets import load_builtin
from gda_core.inputs.zoo import TrainConfig, model_config_for, train_model
from gda_core.registry import METHODS
from gda_core.requests import AttributionRequest, SweepConfig
from gda_core.runs.jobs import job_key, run_in_foreground
from gda_core.runs.store import ScoreStore

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")

FAST_OPTIONS = {
    "if-cg": {"max_iterations": 50, "damping": 1e-2},
    "if-lissa": {"depth": 20, "damping": 1e-2},
    "if-arnoldi": {"rank": 8},
    "if-exact": {"damping": 1e-2},
    "trak": {"projection_dim": 32},
}
RANDOM_GROUPS = {"grouping": "random", "n_groups": 5}


def _raylets(temp_dir: str) -> list[int]:
    """Process ids of raylets started under ``temp_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "raylet" in command and temp_dir in command:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for this module, stopped (and checked stopped) at its end."""
    saved = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE",)}
    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token auth on a private local cluster
    # Ray's socket paths must stay short, so not pytest's deep tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="gdaray", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
             _node_ip_address="127.0.0.1", logging_level="warning")
    assert _raylets(temp_dir), "the raylet check below would not see this Ray's raylet"
    yield temp_dir
    ray.shutdown()
    deadline = time.time() + 15
    while _raylets(temp_dir) and time.time() < deadline:
        time.sleep(0.2)
    left = _raylets(temp_dir)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"raylet processes left running after ray.shutdown(): {left}"


@pytest.fixture(scope="module")
def setting(digits):
    """300 digits training points in 12 random groups, 10 test points, a small MLP with checkpoints."""
    rows = np.sort(np.random.default_rng(0).choice(len(digits.train), 300, replace=False))
    train, test = digits.train.subset(rows), digits.test.subset(slice(0, 10))
    model = train_model(model_config_for("mlp", train, hidden=(16,)), train,
                        TrainConfig(epochs=3, lr=3e-3, batch_size=32, seed=0, n_checkpoints=2))
    return model, train, test, make_grouping("random", 12, seed=0).fit(train)


def _assert_same_scores(local: np.ndarray, sharded: np.ndarray) -> None:
    assert local.shape == sharded.shape
    np.testing.assert_allclose(sharded, local, rtol=1e-4, atol=1e-5 * max(1e-12, float(np.abs(local).max())))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_scores_the_same_on_ray(ray_cluster, setting, name):
    model, train, test, groups = setting
    method = make_method(name, model, **FAST_OPTIONS.get(name, {})).fit(train, groups)
    local = method.attribute(test)
    fractions = []
    sharded = method.attribute(test, progress=lambda phase, f: fractions.append(f),
                               executor=RayExecutor(shards_per_cpu=2))
    _assert_same_scores(local, sharded)
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_gold_standards_train_their_blocks_of_copies_on_ray(ray_cluster, setting):
    model, train, test, groups = setting
    executor = RayExecutor()
    for gold in (
        lambda **kw: further_training(model, train, test, groups, epochs=[0.5, 1.0], seeds=2, copies_per_chunk=5, **kw),
        lambda **kw: leave_group_out(model, train, test, groups, epochs=1, copies_per_chunk=5, **kw),
    ):
        local, sharded = gold(), gold(executor=executor)
        assert local.horizons == sharded.horizons
        _assert_same_scores(local.scores, sharded.scores)
    fractions = []
    local = lds_ensemble(model, train, test, groups, n_subsets=6, epochs=1, copies_per_chunk=4)
    sharded = lds_ensemble(model, train, test, groups, n_subsets=6, epochs=1, copies_per_chunk=4, executor=executor,
                           progress=lambda phase, f: fractions.append(f))
    np.testing.assert_array_equal(local.masks, sharded.masks)
    _assert_same_scores(local.outputs, sharded.outputs)
    assert fractions[-1] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def regression_setting():
    """diabetes: 150 training points in 10 random groups, 6 test points, a small regression MLP."""
    split = load_builtin("diabetes", seed=0)
    train, test = split.train.subset(slice(0, 150)), split.test.subset(slice(0, 6))
    model = train_model(model_config_for("mlp", train, hidden=(8,)), train,
                        TrainConfig(epochs=3, lr=1e-2, batch_size=32, seed=0, n_checkpoints=2))
    return model, train, test, make_grouping("random", 10, seed=0).fit(train)


@pytest.mark.parametrize("name", ["grad-dot", "tracin", "if-cg", "trak", "datainf"])
def test_regression_scores_the_same_on_ray(ray_cluster, regression_setting, name):
    model, train, test, groups = regression_setting
    method = make_method(name, model, **FAST_OPTIONS.get(name, {})).fit(train, groups)
    _assert_same_scores(method.attribute(test), method.attribute(test, executor=RayExecutor(shards_per_cpu=2)))
    # workers may load the built-in regression set by name
    executor = RayExecutor(builtin=BuiltinSource("diabetes", seed=0))
    _assert_same_scores(method.attribute(test), method.attribute(test, executor=executor))


def test_regression_gold_standard_trains_on_ray(ray_cluster, regression_setting):
    model, train, test, groups = regression_setting
    local = further_training(model, train, test, groups, epochs=[1.0], seeds=2, copies_per_chunk=5)
    sharded = further_training(model, train, test, groups, epochs=[1.0], seeds=2, copies_per_chunk=5,
                               executor=RayExecutor())
    _assert_same_scores(local.scores, sharded.scores)


def test_an_uploaded_program_is_a_one_line_refusal_on_ray(ray_cluster, setting, tmp_path):
    """Workers rebuild the model from its zoo config, which an exported program lacks: the
    attribution and the gold standards say so in one line before anything is sent."""
    from gda_core.inputs.programs import export_program, load_model_file

    model, train, test, groups = setting
    path = tmp_path / "mlp.pt2"
    path.write_bytes(export_program(model.module, train.n_features))
    program = load_model_file(path)
    method = make_method("grad-dot", program).fit(train, groups)
    message = r"^the ray executor needs to rebuild the model, which an uploaded \.pt2 program cannot do"
    with pytest.raises(GDAError, match=message):
        method.attribute(test, executor=RayExecutor())
    with pytest.raises(GDAError, match=message):
        further_training(program, train, test, groups, epochs=[1.0], seeds=1, copies_per_chunk=5,
                         executor=RayExecutor())


def test_workers_load_a_builtin_by_name_and_last_layer_mode(ray_cluster, setting):
    model, train, test, groups = setting
    method = make_method("grad-dot", model, last_layer_only=True).fit(train, groups)
    executor = RayExecutor(builtin=BuiltinSource("digits", seed=0))
    _assert_same_scores(method.attribute(test), method.attribute(test, executor=executor))
    # Only the rows and group labels travel, not the features.
    assert executor.broadcast_bytes["training_data"] == 2 * len(train) * 8


def test_a_worker_whose_builtin_differs_from_the_drivers_is_a_one_line_error(ray_cluster, setting):
    model, train, test, _ = setting
    # Rows no worker has loaded yet (workers keep the data set they checked last).
    train = train.subset(slice(0, 200))
    method = make_method("grad-dot", model).fit(train, make_grouping("random", 6, seed=0).fit(train))
    with pytest.raises(GDAError, match="differs from the driver's|lacks rows") as caught:
        method.attribute(test, executor=RayExecutor(builtin=BuiltinSource("digits", seed=1)))
    assert "\n" not in str(caught.value)


class _CrashOnce:
    """A train transform that kills its worker process the first time any worker runs it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, gradients: torch.Tensor) -> torch.Tensor:
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return gradients


class _CrashingGradDot(GradDot):
    name = ""  # not registered
    marker = ""

    def _train_transform(self, index, view):
        return _CrashOnce(self.marker)


def test_a_killed_shard_is_retried_and_the_result_is_unchanged(ray_cluster, setting, tmp_path):
    model, train, test, groups = setting
    # Workers cannot import this test module: send its classes by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    method = _CrashingGradDot(model).fit(train, groups)
    method.marker = str(tmp_path / "crashed")
    sharded = method.attribute(test, executor=RayExecutor(shards_per_cpu=2, max_retries=2))
    assert Path(method.marker).exists()
    local = make_method("grad-dot", model).fit(train, groups).attribute(test)
    _assert_same_scores(local, sharded)


def test_a_ray_request_has_the_local_key_and_reports_progress(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("GDA_CACHE_DIR", str(tmp_path))
    store = ScoreStore(tmp_path)
    request = AttributionRequest(data="wine", model="logreg", method="grad-dot", grouping="random", n_groups=10,
                                 test_size=20)
    reports = []
    sharded = run_in_foreground("attribute", {**request.to_json(), "executor": "ray"}, store,
                                progress=lambda phase, f: reports.append((phase, f)))
    assert not sharded.cache_hit and ("attribute", 1.0) in reports
    assert store.get(sharded.key).progress == pytest.approx(1.0)
    local = run_in_foreground("attribute", request.to_json(), store)
    assert local.cache_hit and local.key == sharded.key
    assert ray.is_initialized()  # a Ray the executor did not start is left running


def test_shard_ranges_are_contiguous_whole_groups_of_about_equal_size():
    sizes = np.array([5, 1, 1, 1, 1, 1, 5, 2, 3])
    ranges = shard_ranges(sizes, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(sizes)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert [int(sizes[a:b].sum()) for a, b in ranges] == [7, 8, 5]
    assert shard_ranges(np.ones(5, dtype=int), 100) == [(k, k + 1) for k in range(5)]


def test_without_ray_asking_for_it_is_one_line_saying_how_to_install(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "ray" else real_find_spec(name, *args))
    with pytest.raises(GDAError, match=r"pip install 'gda-explorer\[ray\]'"):
        AttributionRequest(executor="ray", **RANDOM_GROUPS)
    assert cli_main(["attribute", "--executor", "ray", "--grouping", "random", "--groups", "5"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install" in error
    assert make_executor("local").reuses_train_side  # the local executor needs nothing


def test_an_address_nothing_listens_at_fails_in_seconds():
    with socket.socket() as probe:  # a free port, closed again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.time()
    with pytest.raises(GDAError, match="no Ray cluster answers at"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.time() - started < 10
    check_reachable("auto")  # left to Ray


def test_executor_settings_are_validated_and_leave_the_cache_key_alone(setting, tmp_path):
    with pytest.raises(GDAError, match="--ray-address needs --executor ray"):
        AttributionRequest(ray_address="auto", **RANDOM_GROUPS)
    with pytest.raises(GDAError, match="unknown executor"):
        AttributionRequest(executor="dask", **RANDOM_GROUPS)
    model, train, test, _ = setting
    from gda_core.inputs.datasets import DataSplit

    split = DataSplit(train, test)
    assert (AttributionRequest(executor="ray", ray_address="auto", **RANDOM_GROUPS).key(split, model)
            == AttributionRequest(**RANDOM_GROUPS).key(split, model))
    store = ScoreStore(tmp_path)
    sweep = SweepConfig(methods=("grad-dot",), group_counts=(15,))
    assert (job_key("fidelity", dataclasses.asdict(dataclasses.replace(sweep, executor="ray")), store)
            == job_key("fidelity", dataclasses.asdict(sweep), store))
