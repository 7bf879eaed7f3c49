"""2-D maps of the training and test points: UMAP (or PCA as a fast stand-in) of the model's
hidden features or of the raw inputs. UMAP's numba compile costs ~35 s in every new process,
so maps are computed in job workers and kept in the store, never in a page."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import GDAError
from ..inputs.datasets import TEXT_BATCH, Dataset, DataSplit
from ..inputs.zoo import TrainedModel


def embed_points(train: np.ndarray, test: np.ndarray, *, embedder: str = "umap", seed: int = 0,
                 n_neighbors: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Fit a 2-D embedding on the training points and place the test points in it."""
    train = np.asarray(train, dtype=np.float32).reshape(len(train), -1)
    test = np.asarray(test, dtype=np.float32).reshape(len(test), -1)
    if embedder == "pca":
        from sklearn.decomposition import PCA

        model = PCA(n_components=2, random_state=seed).fit(train)
    else:
        import umap  # imported here: its numba compile is slow, and only jobs embed

        model = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(train) - 1), min_dist=0.1,
                          random_state=seed).fit(train)
    return (model.transform(train) if embedder == "pca" else model.embedding_).astype(np.float32), \
        model.transform(test).astype(np.float32)


def embedding_inputs(split: DataSplit, model: TrainedModel, space: str) -> tuple[np.ndarray, np.ndarray]:
    """What gets embedded: the model's hidden features (zoo models) or the raw inputs."""
    if split.train.is_text and not (space == "features" and hasattr(model.module, "features")):
        raise GDAError("a map of text is drawn from the text model's sentence embeddings (--space features)")

    def features(data: Dataset) -> np.ndarray:
        reference = next(model.module.parameters())
        batch = TEXT_BATCH if data.is_text else max(1, len(data))
        with torch.no_grad():
            if space == "features" and hasattr(model.module, "features"):
                return torch.cat([model.module.features(data.model_inputs(reference, slice(start, start + batch)))
                                  for start in range(0, len(data), batch)]).float().cpu().numpy()
            return data.features.to(reference.device).cpu().numpy()

    return features(split.train), features(split.test)
