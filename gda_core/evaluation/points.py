"""Per training point: loss, prediction, confidence and self-influence, the columns the map's
colourings and the selection table show."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..attribution.grouping import Groups
from ..attribution.methods import make_method
from ..inputs.choices import load_inputs
from ..inputs.zoo import point_losses, predict
from ..io import default_cache_dir
from ..progress import Progress, no_progress
from ..requests import PointStatsRequest, resolve_device


def point_statistics(request: PointStatsRequest, *, cache_dir: str | Path | None = None,
                     progress: Progress = no_progress) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays ``loss``, ``predicted``, ``confidence`` (NaN for regression) and
    ``self_influence`` (the method's score of each point on its own loss, per example: large
    for points the model bends to fit), and a summary with the timings."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    device = resolve_device(request.device)
    split, model = load_inputs(request, cache_dir, device, progress)
    train = split.train.to(device)
    started = time.perf_counter()
    predicted, confidence = predict(model.module, train)
    arrays = {"loss": point_losses(model.module, train), "predicted": predicted,
              "confidence": np.full(len(train), np.nan) if confidence is None else confidence}
    timings = {"forward": time.perf_counter() - started}
    started = time.perf_counter()
    method = make_method(request.method, model, **request.method_options)
    singletons = Groups(np.arange(len(train)), len(train), "per-example")
    method.fit(train, singletons, progress=progress)
    arrays["self_influence"] = method.self_influence(progress)
    timings["self_influence"] = time.perf_counter() - started
    summary = {"method": request.method, "n_train": len(train), "data": request.data, "model": request.model,
               "timings": {k: round(v, 4) for k, v in timings.items()},
               "seconds": round(sum(timings.values()), 4)}
    return arrays, summary
