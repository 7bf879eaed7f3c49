"""2-D maps of the training and test points: UMAP (or PCA as a fast stand-in) of the model's
hidden features or of the raw inputs. UMAP's numba compile costs ~35 s in every new process,
so maps are computed in job workers and kept in the store, never in a page."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import GDAError
from ..inputs.datasets import FORWARD_BATCH, Dataset, DataSplit
from ..inputs.zoo import TrainedModel

#: UMAP fits on at most this many training points (a seeded sample) and places the rest with
#: ``transform``, in chunks that report progress: a full fit on 100k points is minutes
#: with no progress to show
UMAP_FIT_POINTS = 20000
TRANSFORM_CHUNK = 10000


def embed_points(train: np.ndarray, test: np.ndarray, *, embedder: str = "umap", seed: int = 0,
                 n_neighbors: int = 15, fit_points: int = UMAP_FIT_POINTS,
                 progress: Callable[[float], None] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit a 2-D embedding on the training points and place the test points in it. Returns
    both maps and what ran (``fitted_on``: how many training points the embedding was fitted
    on; the others were placed by ``transform``)."""
    progress = progress or (lambda fraction: None)
    train = np.asarray(train, dtype=np.float32).reshape(len(train), -1)
    test = np.asarray(test, dtype=np.float32).reshape(len(test), -1)
    if embedder == "pca":
        from sklearn.decomposition import PCA

        model = PCA(n_components=2, random_state=seed).fit(train)
        progress(1.0)
        return (model.transform(train).astype(np.float32), model.transform(test).astype(np.float32),
                {"fitted_on": len(train)})
    import umap  # imported here: its numba compile is slow, and only jobs embed

    fitted = np.sort(np.random.default_rng(seed).choice(len(train), fit_points, replace=False)) \
        if len(train) > fit_points else np.arange(len(train))
    model = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(fitted) - 1), min_dist=0.1,
                      random_state=seed).fit(train[fitted])
    train_xy = np.zeros((len(train), 2), dtype=np.float32)
    train_xy[fitted] = model.embedding_
    rest = np.setdiff1d(np.arange(len(train)), fitted)
    pieces = [rest[start:start + TRANSFORM_CHUNK] for start in range(0, len(rest), TRANSFORM_CHUNK)]
    total = len(pieces) + 1
    progress(1 / total)
    for index, piece in enumerate(pieces):
        train_xy[piece] = model.transform(train[piece])
        progress((index + 2) / total)
    return train_xy, model.transform(test).astype(np.float32), {"fitted_on": len(fitted)}


def embedding_inputs(split: DataSplit, model: TrainedModel, space: str) -> tuple[np.ndarray, np.ndarray]:
    """What gets embedded: the model's hidden features (zoo models) or the raw inputs."""
    if split.train.is_text and not (space == "features" and hasattr(model.module, "features")):
        raise GDAError("a map of text is drawn from the text model's sentence embeddings (--space features)")

    def features(data: Dataset) -> np.ndarray:
        reference = next(model.module.parameters())
        with torch.no_grad():
            if space == "features" and hasattr(model.module, "features"):
                rows = [slice(start, start + FORWARD_BATCH) for start in range(0, len(data), FORWARD_BATCH)]
                return torch.cat([model.module.features(data.model_inputs(reference, part))
                                  for part in rows]).float().cpu().numpy()
            return data.features.to(reference.device).cpu().numpy()

    return features(split.train), features(split.test)
