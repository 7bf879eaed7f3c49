"""The `gda` command line: JSON output, listings, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gda_core.cli import main


def test_attribute_prints_json_and_writes_scores(tmp_path, capsys):
    code = main(["attribute", "--data", "wine", "--model", "logreg", "--method", "grad-dot",
                 "--grouping", "grad-kmeans", "--groups", "15", "--test-size", "20",
                 "--cache", str(tmp_path), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("method", "grouping", "n_groups", "n_train", "n_test", "seconds", "scores_path"):
        assert key in summary
    assert (summary["method"], summary["grouping"], summary["n_groups"]) == ("grad-dot", "grad-kmeans", 15)
    assert summary["n_test"] == 20 and summary["n_train"] == 142
    scores = np.load(summary["scores_path"])
    assert scores.shape == (20, 15) and np.isfinite(scores).all()
    groups = np.load(summary["groups_path"])
    assert groups.shape == (142,) and set(groups) == set(range(15))


def test_out_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "scores.npy"
    out.write_bytes(b"keep me")
    args = ["attribute", "--data", "wine", "--model", "logreg", "--grouping", "random", "--groups", "5",
            "--cache", str(tmp_path), "--out", str(out)]
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(args + ["--overwrite"]) == 0
    assert np.load(out).shape == (36, 5)


@pytest.mark.parametrize("where", ["folder", "below a file", "fidelity json below a file"])
def test_unwritable_outputs_fail_with_one_line_before_the_run(tmp_path, capsys, where):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    if where.startswith("fidelity"):
        args = ["fidelity", "--data", "wine", "--model", "logreg", "--json", str(tmp_path / "file" / "s.json")]
    else:
        out = tmp_path / "folder" if where == "folder" else tmp_path / "file" / "scores.npy"
        args = ["attribute", "--data", "wine", "--model", "logreg", "--grouping", "random", "--groups", "5",
                "--out", str(out), "--overwrite"]
    assert main(args + ["--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert ("is a folder" if where == "folder" else "is a file, not a folder") in err
    assert not (tmp_path / "cache" / "arrays").exists()  # refused before anything was computed


def test_cache_flag_holds_the_cached_data_too(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GDA_CACHE_DIR", raising=False)
    assert main(["attribute", "--data", "wine", "--model", "logreg", "--grouping", "random", "--groups", "5",
                 "--cache", str(tmp_path / "chosen")]) == 0
    assert (tmp_path / "chosen" / "data" / "wine.npz").is_file()
    assert not (tmp_path / "cache").exists()  # nothing under the working directory's default
    assert "GDA_CACHE_DIR" not in os.environ  # main leaves the environment as it was


@pytest.mark.parametrize("gold", ["lds", "further-training"])
def test_fidelity_with_one_seed_warns_nothing(tmp_path, capsys, gold):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy "mean of empty slice" (or any) warning fails the run
        assert main(["fidelity", "--data", "wine", "--model", "logreg", "--methods", "grad-dot", "--groupings",
                     "random", "--groups", "5", "--no-per-example", "--test-size", "10", "--seeds", "1",
                     "--subsets", "8", "--gold", gold, "--cache", str(tmp_path), "--json"]) == 0
    (point,) = json.loads(capsys.readouterr().out)["points"]
    assert point["method"] == "grad-dot" and point["n_groups"] == 5


def test_fidelity_lines_put_the_group_level_lds_beside_the_group_sizes():
    import gda_core.runs.kinds  # noqa: F401  (registers the kinds)
    from gda_core.registry import JOB_KINDS

    point = {"method": "grad-dot", "grouping": "grad-kmeans", "n_groups": 150, "seconds": 0.5, "point_lds": 0.41,
             "group_lds": 0.64, "group_sizes": {"largest": 1028, "median": 1.0, "smallest": 1, "singletons": 101}}
    line = JOB_KINDS["fidelity"].describe({"metric": "point_lds", "points": [point]})
    assert "point_lds 0.410" in line
    assert line.endswith("group_lds 0.640  sizes 1028/1/1 (largest/median/smallest), 101 singletons")
    kept = JOB_KINDS["fidelity"].describe({"metric": "point_lds", "points": [{**point, "kept_variance": 0.2}]})
    assert "group_lds 0.640  kept 0.200  sizes 1028/1/1" in kept
    old = {k: v for k, v in point.items() if k not in ("point_lds", "group_lds", "group_sizes")}
    assert JOB_KINDS["fidelity"].describe({"metric": "lds", "points": [{**old, "lds": 0.5}]}).endswith("lds 0.500")


def test_method_options_pass_through(tmp_path, capsys):
    code = main(["attribute", "--data", "wine", "--model", "logreg", "--method", "if-cg", "--grouping",
                 "per-class", "--cache", str(tmp_path), "--damping", "0.01", "--option", "max_iterations=7",
                 "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_groups"] == 3
    assert summary["method_info"]["options"]["max_iterations"] == 7
    assert summary["method_info"]["damping"] == [0.01]


@pytest.mark.parametrize("args,message", [
    (["attribute", "--method", "nope", "--groups", "3"], "unknown method 'nope'"),
    (["attribute", "--data", "cifar10", "--groups", "3"], "unknown data set 'cifar10'"),
    (["attribute", "--data", "wine", "--groups", "0"], "number of groups must be >= 1"),
    (["attribute", "--data", "wine", "--model", "logreg", "--groups", "500"], "between 1 and the training set size 142"),
    (["attribute", "--data", "wine"], "needs a number of groups"),
    (["attribute", "--groups", "x"], "invalid int value"),
    (["attribute", "--data", "wine", "--groups", "3", "--option", "nonsense=1"], "has no option nonsense"),
    (["attribute", "--data", "wine", "--model", "cnn", "--groups", "3"], "needs image data"),
    (["frobnicate"], "invalid choice"),
    # data-file options on a built-in set would be ignored: refused instead
    (["attribute", "--data", "wine", "--groups", "3", "--task", "regression"],
     "--task only applies to a data file; the built-in data set 'wine' is read as it is"),
    (["attribute", "--data", "wine", "--groups", "3", "--label-column", "y", "--image-size", "8"],
     "--label-column, --image-size only apply to a data file"),
    (["cache", "ls", "--kind", "bogus"], "unknown run kind 'bogus'; choose from: scores"),
    (["attribute", "--data", "wine", "--groups", "3", "--seed", "-1"], "seed must be a whole number from 0 to"),
    (["attribute", "--data", "wine", "--groups", "3", "--seed", "1234567890123456789012"], "seed must be"),
    (["attribute", "--data", "wine", "--groups", "3", "--out", "/proc/gda-scores.npy"],
     "cannot write --out /proc/gda-scores.npy"),
    (["fidelity", "--data", "wine", "--model", "logreg", "--json", "/proc/gda-sweep.json"],
     "cannot write --json /proc/gda-sweep.json"),
    (["attribute", "--data", "wine", "--groups", "3", "--method", "if-cg", "--option", "max_iterations=abc"],
     "option max_iterations of method 'if-cg' must be int, got 'abc'"),
    (["attribute", "--data", "wine", "--groups", "3", "--method", "if-cg", "--option", "damping=x"],
     "option damping of method 'if-cg' must be float or null, got 'x'"),
    (["attribute", "--data", "wine", "--groups", "3", "--method", "if-cg", "--option", "damping=NaN"],
     "option damping of method 'if-cg' must be a finite number, got nan"),
    (["attribute", "--data", "wine", "--groups", "3", "--method", "if-cg", "--option", "damping=" + "[" * 50_000],
     "option damping of method 'if-cg' must be float or null, got '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[...\n"),
])
def test_bad_arguments_fail_with_one_line(tmp_path, capsys, args, message):
    assert main(args + ["--cache", str(tmp_path)] if args[0] in ("attribute", "fidelity", "cache") else args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_the_model_score_is_of_the_whole_test_split_whatever_is_scored(tmp_path, capsys):
    scores = []
    for size in ("5", "none"):
        assert main(["attribute", "--data", "diabetes", "--model", "logreg", "--grouping", "random", "--groups", "4",
                     "--test-size", size, "--cache", str(tmp_path), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        scores.append((summary["n_test"], summary["model_test_score"], summary["model_score_name"]))
    assert scores[0][0] == 5 and scores[1][0] > 5
    assert scores[0][1:] == scores[1][1:] and scores[0][2] == "R^2"


def test_methods_listing_through_the_console_script():
    listing = subprocess.run([sys.executable, "-m", "gda_core.cli", "methods", "--json"],
                             capture_output=True, text=True, check=True)
    methods = json.loads(listing.stdout)
    assert {"grad-dot", "if-cg", "trak", "datainf", "tracin"} <= set(methods)
