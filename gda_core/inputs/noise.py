"""Label noise injected on purpose, with the truth kept: to measure how well a ranking finds
wrong labels, and for the built-in noisy demo.

Two kinds of noise:

- ``uniform``: each chosen label moves to a uniformly drawn *other* class;
- ``pairs``: each chosen label moves to its class's partner, the way people confuse similar
  classes (digits: 1 <-> 7, 3 <-> 8, 4 <-> 9, 5 <-> 6, 0 <-> 2; other class sets: classes
  paired in order, 0 <-> 1, 2 <-> 3, ...; with an odd count the last class has no partner and
  keeps its labels). The chosen points are drawn among the classes that have a partner.
"""

from __future__ import annotations

import numpy as np

from ..errors import GDAError

NOISE_KINDS = ("uniform", "pairs")
#: the class pairs people confuse among handwritten digits
DIGIT_PAIRS = ((1, 7), (3, 8), (4, 9), (5, 6), (0, 2))


def class_pairs(class_names: list[str]) -> dict[int, int]:
    """Each class's partner under ``pairs`` noise (classes without one are left out)."""
    n_classes = len(class_names)
    if n_classes < 2:
        raise GDAError(f"label noise needs at least 2 classes, got {n_classes}")
    if [str(c) for c in class_names] == [str(d) for d in range(10)]:
        pairs = DIGIT_PAIRS
    else:
        pairs = tuple((c, c + 1) for c in range(0, n_classes - 1, 2))
    return {a: b for pair in pairs for a, b in (pair, pair[::-1])}


def flip_labels(labels: np.ndarray, fraction: float, n_classes: int, seed: int, *, kind: str = "uniform",
                class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A seeded ``fraction`` of all the labels changed by noise of ``kind`` (always to another
    class). Returns the new labels and the mask of flipped points."""
    if kind not in NOISE_KINDS:
        raise GDAError(f"unknown noise {kind!r}; choose from: {', '.join(NOISE_KINDS)}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n_flipped = int(round(fraction * len(labels)))
    noisy = labels.copy()
    flipped = np.zeros(len(labels), dtype=bool)
    if kind == "uniform":
        flipped[rng.choice(len(labels), n_flipped, replace=False)] = True
        noisy[flipped] = (labels[flipped] + rng.integers(1, n_classes, flipped.sum())) % n_classes
        return noisy, flipped
    partner = class_pairs(class_names if class_names is not None else [str(c) for c in range(n_classes)])
    eligible = np.flatnonzero(np.isin(labels, list(partner)))
    if n_flipped > len(eligible):
        raise GDAError(f"pairs noise can flip at most {len(eligible)} of {len(labels)} labels (the classes with a "
                       f"partner), not {n_flipped}")
    flipped[rng.choice(eligible, n_flipped, replace=False)] = True
    noisy[flipped] = [partner[int(label)] for label in labels[flipped]]
    return noisy, flipped
