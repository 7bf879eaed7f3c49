"""Statistics every evaluation shares: standard errors, rank correlations, and the two
fidelity measures (agreement between score matrices, and the linear datamodeling score)."""

from __future__ import annotations

import numpy as np

from ..errors import GDAError


def standard_error(values: np.ndarray) -> float:
    """The standard error of the mean of the finite values; NaN with fewer than two (one value
    says nothing about its spread)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def mean_and_error(values: np.ndarray, digits: int = 4) -> dict:
    """``{"mean", "se", "values"}`` of repeated measurements (e.g. over seeds), rounded."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(values.mean()), digits), "se": round(standard_error(values), digits),
            "values": values.round(digits).tolist()}


def pearson(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Pearson correlation of ``a`` and ``b`` along ``axis`` (NaN where either is constant)."""
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=axis) / denominator, np.nan)


def spearman(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Spearman rank correlation of ``a`` and ``b`` along ``axis`` (ties get mean ranks)."""
    from scipy.stats import rankdata

    return pearson(rankdata(a, axis=axis), rankdata(b, axis=axis), axis)


def fidelity(scores: np.ndarray, gold: np.ndarray, *, top_k: int = 10) -> dict[str, float]:
    """Per-test-point agreement between two (n_test, K) score matrices, averaged, with the
    standard error over test points: cosine, Spearman, and overlap of the top-k most
    helpful groups (the fraction of the gold top-k that the scores also put in their top-k)."""
    scores, gold = np.asarray(scores, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if scores.shape != gold.shape or scores.ndim != 2:
        raise GDAError(f"score matrices must have the same (n_test, K) shape, got {scores.shape} and {gold.shape}")
    norms = np.linalg.norm(scores, axis=1) * np.linalg.norm(gold, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, (scores * gold).sum(1) / norms, np.nan)
    ranks = spearman(scores, gold, axis=1)
    k = max(1, min(top_k, scores.shape[1]))
    top_scores = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_gold = np.argsort(-gold, axis=1, kind="stable")[:, :k]
    overlap = np.array([len(np.intersect1d(a, b)) / k for a, b in zip(top_scores, top_gold)])
    return {
        "cosine": float(np.nanmean(cosine)), "cosine_se": standard_error(cosine),
        "spearman": float(np.nanmean(ranks)), "spearman_se": standard_error(ranks),
        f"top{k}_overlap": float(overlap.mean()), f"top{k}_overlap_se": standard_error(overlap),
    }

