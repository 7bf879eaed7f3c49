"""Label noise of both kinds, the final-model neighbours signal against brute force, bulk
relabelling with one undo, the score of a review on the noisy demo, and the cleaned data export."""

from __future__ import annotations

import csv
import io
import sqlite3

import numpy as np
import pytest
import torch

from gda_core.errors import GDAError
from gda_core.evaluation.flagging import layer_inputs, neighbour_disagreement
from gda_core.evaluation.noisy import run_noisy
from gda_core.inputs.choices import raw_data
from gda_core.inputs.datasets import NOISY_DEMOS, load_builtin
from gda_core.inputs.noise import class_pairs, flip_labels
from gda_core.inputs.parsers import parse_csv, parse_npz
from gda_core.requests import NoisyConfig
from gda_core.runs.review import ReviewSession
from gda_core.runs.store import ScoreStore


# --------------------------------------------------------------------------------- noise
def test_pairs_noise_moves_labels_to_their_partner_only():
    digits = [str(d) for d in range(10)]
    labels = np.repeat(np.arange(10), 40)
    noisy, flipped = flip_labels(labels, 0.2, 10, seed=5, kind="pairs", class_names=digits)
    assert flipped.sum() == 80
    partner = class_pairs(digits)
    assert partner[1] == 7 and partner[7] == 1 and partner[3] == 8
    assert all(noisy[i] == partner[labels[i]] for i in np.flatnonzero(flipped))
    assert (noisy[~flipped] == labels[~flipped]).all()
    assert (flip_labels(labels, 0.2, 10, seed=5, kind="pairs", class_names=digits)[0] == noisy).all()


def test_pairs_noise_on_an_odd_class_count_leaves_the_last_class_alone():
    labels = np.repeat(np.arange(3), 10)
    noisy, flipped = flip_labels(labels, 0.5, 3, seed=0, kind="pairs", class_names=["a", "b", "c"])
    assert not flipped[labels == 2].any() and set(noisy[flipped]) <= {0, 1}
    with pytest.raises(GDAError, match="can flip at most 20 of 30"):
        flip_labels(labels, 0.9, 3, seed=0, kind="pairs", class_names=["a", "b", "c"])
    with pytest.raises(GDAError, match="unknown noise"):
        flip_labels(labels, 0.1, 3, seed=0, kind="adversarial")


# ---------------------------------------------------------------------------- neighbours
def test_neighbour_disagreement_equals_brute_force():
    rng = np.random.default_rng(0)
    features = torch.as_tensor(rng.normal(size=(60, 5)), dtype=torch.float32)
    labels = rng.integers(0, 3, 60)
    reported = []
    shares = neighbour_disagreement(features, labels, k=7, chunk=16,  # chunks smaller than n
                                    progress=lambda phase, f: reported.append(f))
    assert reported == [16 / 60, 32 / 60, 48 / 60, 1.0]
    unit = features / features.norm(dim=1, keepdim=True)
    similarity = (unit @ unit.T).numpy()
    np.fill_diagonal(similarity, -np.inf)
    expected = [(labels[np.argsort(-row)[:7]] != labels[i]).mean() for i, row in enumerate(similarity)]
    np.testing.assert_allclose(shares, expected)


def test_layer_inputs_are_each_layers_normalised_input(zoo, small_digits):
    train, _ = small_digits
    module = zoo["mlp"].module
    features = layer_inputs(module, train, dim=1000)
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert features.shape == (len(train), sum(m.in_features for m in linears))
    first = torch.nn.functional.normalize(train.features, dim=1)
    torch.testing.assert_close(features[:, :train.n_features], first, rtol=1e-5, atol=1e-6)
    projected = layer_inputs(module, train, dim=8)  # every layer projected down to 8 columns
    assert projected.shape == (len(train), 8 * len(linears))


def test_the_neighbours_signal_finds_flips_of_both_kinds():
    """digits / MLP, 10% flipped, seed 0 (the defaults were picked on seeds 101-103): measured
    0.992 of the flips at 20% inspected for both (the loss ranking 0.946 and 0.900)."""
    for noise in ("uniform", "pairs"):
        result = run_noisy(NoisyConfig(noise=noise, baselines=("loss", "confident-learning-final")))
        rankings = result["rankings"]
        assert result["noise"] == noise and rankings["influence"]["label"] == "neighbours (final model)"
        assert rankings["influence"]["recall_at"]["0.2"] >= 0.95
        assert rankings["influence"]["recall_at"]["0.2"] > rankings["loss"]["recall_at"]["0.2"]
        assert set(rankings) == {"influence", "loss", "confident-learning-final", "random"}


# -------------------------------------------------------------------------------- review
def _review(store: ScoreStore, labels=None) -> ReviewSession:
    labels = np.arange(12) % 3 if labels is None else labels
    return ReviewSession.create(store, "bulk-review", flagged=np.array([5, 2, 9, 4]), labels=labels,
                                class_names=["a", "b", "c"], source_rows=np.arange(12))


def test_bulk_relabel_is_undone_in_one_step(tmp_path):
    session = _review(ScoreStore(tmp_path))
    session.keep(4)
    predicted = np.array([0] * 12)
    confidence = np.full(12, 0.95)
    confidence[9] = 0.5
    proposal = session.bulk_relabel_proposal(predicted, confidence, 0.9)
    assert proposal == {5: 0, 2: 0}  # 9 is not confident enough, 4 is decided; a 0-label needs no change
    session.relabel_many(proposal)
    assert {i: d.new_label for i, d in session.decisions().items() if d.action == "relabel"} == {5: 0, 2: 0}
    session.undo()  # the whole bulk action
    assert {i: d.action for i, d in session.decisions().items()} == {4: "keep"}
    session.undo()
    assert not session.decisions()
    with pytest.raises(GDAError, match="not in this review"):
        session.relabel_many({7: 0})


def test_a_store_made_before_bulk_actions_is_upgraded(tmp_path):
    store = ScoreStore(tmp_path)
    with store.connection() as connection:  # the table as an earlier release made it
        connection.executescript("CREATE TABLE review_decisions (session TEXT NOT NULL, seq INTEGER NOT NULL, "
                                 "action TEXT NOT NULL, item INTEGER, new_label INTEGER, target INTEGER, "
                                 "created REAL NOT NULL, PRIMARY KEY (session, seq));")
    session = _review(store)
    session.keep(5)
    session.undo()
    session.relabel_many({2: 1, 9: 2})
    assert len(session.decisions()) == 2
    with sqlite3.connect(store.index_path) as connection:
        assert "batch" in {row[1] for row in connection.execute("PRAGMA table_info(review_decisions)")}


def test_review_score_counts_each_kind_of_decision(tmp_path):
    given = np.arange(12) % 3
    truth = given.copy()
    truth[[5, 2]] = [0, 1]  # 5 and 2 carry wrong labels (given 2 and 2)
    session = _review(ScoreStore(tmp_path), labels=given)
    session.relabel(5, 0)  # fixed
    session.relabel(2, 0)  # a wrong label moved to another wrong class
    session.keep(9)  # right label kept
    session.relabel(4, 2)  # a right label broken
    score = session.score(truth)
    assert score["wrong_labels"] == 2 and score["wrong_among_flagged"] == 2
    assert (score["fixed"], score["relabelled to another wrong class"], score["kept a right label"],
            score["relabelled a right label"]) == (1, 1, 1, 1)
    assert score["right_decisions"] == 2 and score["accuracy"] == 0.5 and score["share_of_wrong_labels_fixed"] == 0.5


def test_the_noisy_demo_keeps_its_truth_and_exports_cleaned_data(tmp_path):
    split = load_builtin("digits-noisy")
    train, demo = split.train, NOISY_DEMOS["digits-noisy"]
    wrong = np.flatnonzero(train.labels.numpy() != train.true_labels)
    assert len(wrong) == round(demo.rate * len(train)) and split.test.true_labels is None
    assert (load_builtin("digits").train.labels.numpy() == train.true_labels).all()  # flips on the same split

    session = ReviewSession.create(ScoreStore(tmp_path), "demo", flagged=wrong[:5], labels=train.labels.numpy(),
                                   class_names=train.class_names, source_rows=train.indices)
    session.relabel_many({int(i): int(train.true_labels[i]) for i in wrong[:3]})
    assert session.score(train.true_labels)["fixed"] == 3
    raw = raw_data("digits-noisy")
    cleaned = parse_npz(session.cleaned_npz(raw))
    fixed_rows = train.indices[wrong[:3]]
    np.testing.assert_array_equal(cleaned.labels[fixed_rows], train.true_labels[wrong[:3]])
    still_wrong = train.indices[wrong[3:]]
    np.testing.assert_array_equal(cleaned.labels[still_wrong], train.labels.numpy()[wrong[3:]])
    np.testing.assert_allclose(cleaned.features, raw.features)
    assert cleaned.image_shape == (1, 8, 8)
    back = parse_csv(session.cleaned_csv(raw).encode())
    np.testing.assert_allclose(back.features, raw.features)
    assert [back.class_names[c] for c in back.labels] == [cleaned.class_names[c] for c in cleaned.labels]


def test_cleaned_csv_of_data_with_a_test_part_keeps_the_split(tmp_path):
    rows = "x0,x1,label\n" + "".join(f"{i},{i % 4},{'ab'[i % 2]}\n" for i in range(12))
    test_rows = "x0,x1,label\n" + "".join(f"{i},{i},{'ab'[i % 2]}\n" for i in range(4))
    raw = parse_csv(rows.encode(), test_payload=test_rows.encode())
    session = ReviewSession.create(ScoreStore(tmp_path), "csv", flagged=np.array([3]), labels=raw.labels,
                                   class_names=raw.class_names, source_rows=np.arange(12))
    session.relabel(3, 0)
    table = list(csv.DictReader(io.StringIO(session.cleaned_csv(raw))))
    assert [r["split"] for r in table] == ["train"] * 12 + ["test"] * 4
    assert table[3]["label"] == "a" and table[1]["label"] == "b"
    back = parse_csv(session.cleaned_csv(raw).encode(), split_column="split")
    assert len(back.labels) == 12 and len(back.test_labels) == 4
