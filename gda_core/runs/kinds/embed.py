"""``embed``: a 2-D map (UMAP or PCA) of the training and test points of a data set and model."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from ...inputs.choices import load_inputs
from ...progress import Progress
from ...requests import EmbeddingRequest, resolve_device
from .base import JobKind, Result

if TYPE_CHECKING:
    from ..jobs import JobOutcome
    from ..store import ScoreStore


class Embed(JobKind, name="embed", request_type=EmbeddingRequest,
            description="map the training and test points to 2-D (UMAP or PCA)"):
    @classmethod
    def run(cls, request: EmbeddingRequest, store: ScoreStore, key: str, report: Progress) -> Result:
        from ...viz.embeddings import embed_points, embedding_inputs

        started = time.perf_counter()
        report("load", 0.0)
        split, model = load_inputs(request, store.root, resolve_device(request.device), report)
        train, test = embedding_inputs(split, model, request.space)
        report(f"embed ({request.embedder})", 0.1)
        train_xy, test_xy, info = embed_points(
            train, test, embedder=request.embedder, seed=request.seed, n_neighbors=request.n_neighbors,
            progress=lambda f: report(f"embed ({request.embedder})", 0.1 + 0.9 * f))
        summary = {"embedder": request.embedder, "space": request.space, "n_train": len(train_xy),
                   "n_test": len(test_xy), "seconds": round(time.perf_counter() - started, 3), **info}
        return {"train": train_xy, "test": test_xy}, summary

    @classmethod
    def result(cls, outcome: JobOutcome, args: argparse.Namespace, store: ScoreStore) -> dict:
        return {**super().result(outcome, args, store), "train_path": str(store.file_path(outcome.key, "train")),
                "test_path": str(store.file_path(outcome.key, "test"))}

    @classmethod
    def describe(cls, result: dict) -> str:
        return (f"{result['embedder']} map of {result['n_train']} training and {result['n_test']} test points "
                f"({result['space']}) in {result['seconds']:.2f} s -> {result['train_path']}")
