"""Figure builders: what each colouring of the map encodes, and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from gda_core.errors import GDAError
from gda_core.viz.figures import GROUP_PALETTE, embedding_map_figure

RNG = np.random.default_rng(0)
TRAIN_XY = RNG.normal(size=(12, 2))
LABELS = np.array([0, 1, 2] * 4)
GROUPS = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4])
GROUP_SCORES = np.array([2.0, -1.0, 0.5, -4.0, 0.0])


def _colours(colour: str):
    figure = embedding_map_figure(TRAIN_XY, LABELS, ["a", "b", "c"], GROUPS, group_scores=GROUP_SCORES,
                                  helpful=[0], harmful=[3], colour=colour)
    return figure.data[0].marker


def test_the_map_colours_points_by_group_by_class_or_by_their_group_score():
    assert list(_colours("group").color) == [GROUP_PALETTE[g] for g in GROUPS]
    assert list(_colours("class").color) == [GROUP_PALETTE[c] for c in LABELS]
    by_score = _colours("score")
    np.testing.assert_allclose(np.asarray(by_score.color), GROUP_SCORES[GROUPS])
    # symmetric around zero, so white means "no effect" and blue/red keep their meaning
    assert by_score.cmin == -4.0 and by_score.cmax == 4.0


def test_the_map_refuses_an_unknown_colouring():
    with pytest.raises(GDAError, match="colour must be one of group, class, score"):
        embedding_map_figure(TRAIN_XY, LABELS, ["a", "b", "c"], GROUPS, colour="rainbow")
