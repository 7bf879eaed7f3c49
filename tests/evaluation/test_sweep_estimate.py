"""The Fidelity page's time estimate of a sweep comes from its sizes, and matches the one
measurement it is calibrated on (the old small sweep: 6.4 min on 2 threads)."""

from __future__ import annotations

import dataclasses

import pytest

from gda_core.evaluation.sweeps import estimate_sweep_seconds, format_duration
from gda_core.inputs.zoo import ModelConfig, TrainedModel, build_model, default_train_config
from gda_core.requests import GoldConfig, SweepConfig

OLD_SMALL_SWEEP = SweepConfig(data="digits", model="mlp", methods=("grad-dot", "if-arnoldi"),
                              groupings=("random", "grad-kmeans"), group_counts=(15, 60), per_example=True,
                              test_size=50, gold=GoldConfig(kind="lds", n_subsets=20))


@pytest.fixture(scope="module")
def digits_mlp() -> TrainedModel:
    config = ModelConfig("mlp", 64, 10)
    return TrainedModel(build_model(config), config, default_train_config("mlp"))


def test_the_estimate_matches_the_measured_sweep(digits_mlp):
    seconds = estimate_sweep_seconds(OLD_SMALL_SWEEP, digits_mlp, 1437, threads=2)
    assert 6 * 60 <= seconds <= 7 * 60 and format_duration(seconds) == "6 min"


def test_the_estimate_follows_the_sizes(digits_mlp):
    base = estimate_sweep_seconds(OLD_SMALL_SWEEP, digits_mlp, 1437, threads=2)
    more_subsets = dataclasses.replace(OLD_SMALL_SWEEP, gold=GoldConfig(kind="lds", n_subsets=40))
    fewer_cells = dataclasses.replace(OLD_SMALL_SWEEP, group_counts=(15,))  # 3 cells, not 5
    assert estimate_sweep_seconds(more_subsets, digits_mlp, 1437, threads=2) == pytest.approx(2 * base)
    assert estimate_sweep_seconds(fewer_cells, digits_mlp, 1437, threads=2) == pytest.approx(0.6 * base)
    assert estimate_sweep_seconds(OLD_SMALL_SWEEP, digits_mlp, 1437, threads=4) == pytest.approx(base / 2)
    assert estimate_sweep_seconds(OLD_SMALL_SWEEP, digits_mlp, 2874, threads=2) == pytest.approx(2 * base)


def test_durations_read_as_people_say_them():
    assert [format_duration(s) for s in (0.2, 40, 400, 9000)] == ["1 s", "40 s", "7 min", "2.5 h"]


def test_the_point_level_ensemble_is_counted_once(digits_mlp):
    base = estimate_sweep_seconds(OLD_SMALL_SWEEP, digits_mlp, 1437, threads=2)
    # Without the per-example cell the point-level LDS ensemble still trains: still 5 ensembles.
    no_per_example = dataclasses.replace(OLD_SMALL_SWEEP, per_example=False)
    assert estimate_sweep_seconds(no_per_example, digits_mlp, 1437, threads=2) == pytest.approx(base)
    further = GoldConfig(kind="further-training", epochs=(1.0,))
    assert (estimate_sweep_seconds(dataclasses.replace(OLD_SMALL_SWEEP, per_example=False, gold=further),
                                   digits_mlp, 1437, threads=2)
            < estimate_sweep_seconds(dataclasses.replace(OLD_SMALL_SWEEP, gold=further), digits_mlp, 1437, threads=2))
