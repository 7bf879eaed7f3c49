"""Figure builders: what each colouring of the map encodes, and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from gda_core.errors import GDAError
from gda_core.viz.figures import GROUP_PALETTE, REVIEW_COLOURS, WEBGL_POINTS, embedding_map_figure

RNG = np.random.default_rng(0)
TRAIN_XY = RNG.normal(size=(12, 2))
LABELS = np.array([0, 1, 2] * 4)
GROUPS = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4])
GROUP_SCORES = np.array([2.0, -1.0, 0.5, -4.0, 0.0])


def _colours(colour: str):
    figure = embedding_map_figure(TRAIN_XY, LABELS, ["a", "b", "c"], GROUPS, group_scores=GROUP_SCORES,
                                  helpful=[0], harmful=[3], colour=colour)
    return figure.data[0].marker


def _drawn_colours(marker) -> list[str]:
    """The colour a stepwise palette scale gives each point (what plotly draws)."""
    values = np.asarray(marker.color, dtype=float)
    position = (values - marker.cmin) / (marker.cmax - marker.cmin)
    steps = marker.colorscale
    return [next(colour for (low, colour), (high, _) in zip(steps[::2], steps[1::2]) if low <= p <= high)
            for p in position]


def test_the_map_colours_points_by_group_by_class_or_by_their_group_score():
    assert _drawn_colours(_colours("group")) == [GROUP_PALETTE[g] for g in GROUPS]
    assert _drawn_colours(_colours("class")) == [GROUP_PALETTE[c] for c in LABELS]
    by_score = _colours("score")
    np.testing.assert_allclose(np.asarray(by_score.color), GROUP_SCORES[GROUPS])
    # symmetric around zero, so white means "no effect" and blue/red keep their meaning
    assert by_score.cmin == -4.0 and by_score.cmax == 4.0


def test_the_map_refuses_an_unknown_colouring():
    with pytest.raises(GDAError, match="colour must be one of group, class, score, self-influence, loss, review"):
        embedding_map_figure(TRAIN_XY, LABELS, ["a", "b", "c"], GROUPS, colour="rainbow")


def test_giant_groups_get_no_ring_and_hover_shows_group_sizes():
    groups = np.array([0] * 9 + [1, 2, 2])  # group 0 holds 9 of 12 points
    figure = embedding_map_figure(TRAIN_XY, LABELS, ["a", "b", "c"], groups, group_scores=np.array([5.0, 1.0, -2.0]),
                                  helpful=[0, 1], harmful=[2])
    rings = {trace.name: len(trace.x) for trace in figure.data[1:]}
    assert rings == {"most helpful groups": 1, "most harmful groups": 2}  # group 0's nine points unringed
    custom = np.asarray(figure.data[0].customdata)
    np.testing.assert_array_equal(custom[:, 2], np.bincount(groups)[groups])  # each point's group size
    assert "points)" in figure.data[0].hovertemplate


def test_the_map_colours_by_per_point_values_and_review_states():
    loss = np.linspace(0, 1, 12)
    marker = embedding_map_figure(TRAIN_XY, LABELS, ["a", "b", "c"], GROUPS, colour="loss",
                                  point_values={"loss": loss}).data[0].marker
    np.testing.assert_allclose(np.asarray(marker.color), loss)
    assert marker.colorbar.title.text == "loss"
    with pytest.raises(GDAError, match="needs one self-influence value per training point"):
        embedding_map_figure(TRAIN_XY, LABELS, ["a", "b", "c"], GROUPS, colour="self-influence")
    states = np.array(["", "flagged", "kept", "relabelled"] * 3, dtype=object)
    marker = embedding_map_figure(TRAIN_XY, LABELS, ["a", "b", "c"], GROUPS, colour="review",
                                  review_states=states).data[0].marker
    assert _drawn_colours(marker) == [REVIEW_COLOURS[s] for s in states]
    with pytest.raises(GDAError, match="unknown review state 'lost'"):
        embedding_map_figure(TRAIN_XY, LABELS, ["a", "b", "c"], GROUPS, colour="review",
                             review_states=np.array(["lost"] * 12, dtype=object))


def test_large_maps_draw_with_webgl_and_drill_members_on_top():
    many = np.random.default_rng(1).normal(size=(WEBGL_POINTS + 1, 2))
    labels = np.zeros(len(many), dtype=int)
    figure = embedding_map_figure(many, labels, ["a"], labels)
    assert figure.data[0].type == "scattergl"
    small = embedding_map_figure(TRAIN_XY, LABELS, ["a", "b", "c"], GROUPS,
                                 drill=(np.array([6, 7, 8]), np.array([0.5, -0.2, 0.1])))
    assert small.data[0].type == "scatter"
    members = next(trace for trace in small.data if trace.name == "members of the chosen group")
    np.testing.assert_allclose(members.x, TRAIN_XY[[6, 7, 8], 0])
    np.testing.assert_allclose(members.marker.color, [0.5, -0.2, 0.1])
