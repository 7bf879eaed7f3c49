"""Flagging: training points ranked most suspicious (likely mislabeled) first.

Flagging ranks training points by one of two signals, both from the shared method protocol:

- ``self-influence``: a group's score on its own summed loss (``method.self_influence()``),
  large for points the model bends to fit, such as mislabeled ones;
- ``validation``: a group's score on the summed loss of a held-out validation set
  (``method.attribute_total(validation)``); a negative score means removing the group would
  lower the validation loss, so the most negative groups are flagged first;
- ``neighbours`` (from the final model alone, no attribution method): the share of a point's
  nearest training neighbours whose label differs from its own, ties broken by its loss. The
  neighbours are taken in the model's layer inputs: each Linear and Conv2d layer's input
  activation (convolutions' averaged over positions, texts' over tokens), each L2-normalised
  (and, above ``NEIGHBOUR_DIM`` columns, randomly projected down to it), concatenated, and
  compared by cosine. These activations are the label-free factor of a layer's per-example
  gradient (the gradient is the output gradient times the input), so this is a vote among the
  points the gradient-similarity kernel would call alike, before the label enters it.

Grouped flagging is a coarse-to-fine search: every point inherits the score of its group's
mean gradient, the best-scoring groups covering ``refine_fraction`` of the training set are
re-scored per example (the fitted method is re-pointed at the finer grouping, so curvature
and damping are not recomputed), and those points lead the ranking.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..attribution.grouping import make_grouping, refine_groups
from ..attribution.methods import AttributionMethod, make_method
from ..errors import GDAError
from ..inputs.choices import load_inputs
from ..inputs.datasets import FORWARD_BATCH, Dataset
from ..inputs.zoo import TrainedModel, point_losses
from ..io import default_cache_dir
from ..progress import Progress, no_progress
from ..requests import FlagRequest, resolve_device


@dataclass
class Flags:
    """Training points ranked most suspicious first.

    ``scores[i]`` is the score point i was ranked by: its own for points scored per example
    (``refined``), its group's for the rest (only comparable within those two sets)."""

    order: np.ndarray
    scores: np.ndarray
    refined: np.ndarray
    group_labels: np.ndarray
    timings: dict[str, float]
    #: CPU seconds of this process (all threads): steadier than wall time on a shared machine
    cpu_seconds: float = float("nan")

    @property
    def n_groups(self) -> int:
        return int(self.group_labels.max()) + 1

    def summary(self) -> dict:
        return {"n_train": len(self.order), "n_refined": int(self.refined.sum()),
                "timings": {k: round(v, 4) for k, v in self.timings.items()},
                "seconds": round(sum(self.timings.values()), 4), "cpu_seconds": round(self.cpu_seconds, 4)}


def suspicion(method: AttributionMethod, signal: str, validation: Dataset | None,
              progress: Progress = no_progress) -> np.ndarray:
    """Per-group suspicion of the method's current grouping, for its mean member gradient:
    higher = inspect first. Self-influence is quadratic in the gradient (divide by size^2),
    validation influence linear (divide by size); a point's own score when groups are single."""
    sizes = method.groups_.sizes.astype(np.float64)
    if signal == "self-influence":
        return method.self_influence(progress) / sizes ** 2
    if validation is None:
        raise GDAError("the validation signal needs a validation set")
    return -method.attribute_total(validation, progress) / sizes


#: how many nearest training neighbours vote in the ``neighbours`` signal
NEIGHBOURS = 25
#: the columns each layer's activations are projected down to, above this many
NEIGHBOUR_DIM = 256
#: signals computed from the final model alone: no attribution method, grouping or refinement
MODEL_ONLY_SIGNALS = frozenset({"neighbours"})


def flag_label(request: FlagRequest, n_groups: int) -> str:
    """How a flag run reads to a person: its signal, and the method and grouping when it uses them."""
    if request.signal in MODEL_ONLY_SIGNALS:
        return f"{request.signal} (final model)"
    return f"{request.method} / {request.grouping} (K={n_groups}), {request.signal}"


def flag_summary_label(summary: dict) -> str:
    """A finished flag run's label, from its summary (runs cached before labels were stored
    all ran a method, the only signals then)."""
    config = summary["config"]
    return summary.get("label") or (f"{config['method']} / {config['grouping']} (K={summary['n_groups']}), "
                                    f"{config['signal']}")


def layer_inputs(module: torch.nn.Module, data: Dataset, *, dim: int = NEIGHBOUR_DIM, seed: int = 0) -> torch.Tensor:
    """(n, d): every Linear and Conv2d layer's input for each point, averaged over positions
    (a convolution's pixels, a text model's tokens), L2-normalised per layer, projected to at
    most ``dim`` columns per layer (a seeded Gaussian projection, which keeps cosines on
    average), and concatenated."""
    reference = next(module.parameters())
    captured: list[torch.Tensor] = []

    def hook(_module, args, _output):
        value = args[0].detach()
        if isinstance(_module, torch.nn.Conv2d):
            value = value.flatten(2).mean(2)
        elif value.ndim > 2:
            value = value.flatten(1, -2).mean(1)
        captured.append(value.float())

    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    if not layers:
        raise GDAError("the neighbours signal needs a model with Linear or Conv2d layers")
    handles = [layer.register_forward_hook(hook) for layer in layers]
    chunks = []
    try:
        with torch.no_grad():
            for start in range(0, len(data), FORWARD_BATCH):
                captured.clear()
                module(data.model_inputs(reference, slice(start, start + FORWARD_BATCH)))
                chunks.append([value.cpu() for value in captured])
    finally:
        for handle in handles:
            handle.remove()
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for index in range(len(chunks[0])):
        values = torch.nn.functional.normalize(torch.cat([chunk[index] for chunk in chunks]), dim=1)
        if values.shape[1] > dim:
            projection = torch.randn(values.shape[1], dim, generator=generator) / dim ** 0.5
            values = torch.nn.functional.normalize(values @ projection, dim=1)
        parts.append(values)
    return torch.cat(parts, dim=1)


def neighbour_disagreement(features: torch.Tensor, labels: np.ndarray, k: int = NEIGHBOURS,
                           chunk: int = 2048, progress: Progress = no_progress) -> np.ndarray:
    """For each point, the share of its ``k`` nearest other points (cosine of ``features``)
    whose label differs from its own. Chunked: memory is ``chunk`` x n, not n x n."""
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    k = min(k, len(unit) - 1)
    if k < 1:
        raise GDAError("the neighbours signal needs at least 2 training points")
    shares = torch.empty(len(unit))
    for start in range(0, len(unit), chunk):
        rows = torch.arange(start, min(start + chunk, len(unit)))
        similarity = unit[rows] @ unit.T
        similarity[torch.arange(len(rows)), rows] = -float("inf")  # not its own neighbour
        nearest = similarity.topk(k, dim=1).indices
        shares[rows] = (labels_t[nearest] != labels_t[rows, None]).float().mean(1)
        progress("neighbours", float(rows[-1] + 1) / len(unit))
    return shares.double().numpy()


def neighbour_suspicion(model: TrainedModel, train: Dataset, progress: Progress = no_progress) -> np.ndarray:
    """The ``neighbours`` signal: neighbour disagreement plus a tie-breaking share of the loss
    (below one vote's weight, 1 / k)."""
    disagreement = neighbour_disagreement(layer_inputs(model.module, train), train.labels.cpu().numpy(),
                                          progress=progress)
    losses = point_losses(model.module, train)
    tie_break = losses / (losses.max() + 1e-12) / (2 * NEIGHBOURS)
    return disagreement + tie_break


def flag_training_points(model: TrainedModel, train: Dataset, validation: Dataset | None, request: FlagRequest,
                         progress: Progress = no_progress) -> Flags:
    """Rank ``train`` most suspicious first with ``request``'s method, grouping and signal."""
    timings: dict[str, float] = {}
    cpu_started = time.process_time()
    if request.signal in MODEL_ONLY_SIGNALS:
        started = time.perf_counter()
        progress("neighbours", 0.0)
        scores = neighbour_suspicion(model, train, progress)
        timings["neighbours"] = time.perf_counter() - started
        return Flags(np.argsort(-scores, kind="stable"), scores, np.ones(len(train), dtype=bool),
                     np.arange(len(train)), timings, time.process_time() - cpu_started)
    started = time.perf_counter()
    progress("grouping", 0.0)
    method = make_method(request.method, model, **request.method_options)
    groups = make_grouping(request.grouping, request.n_groups, seed=request.seed,
                           **request.grouping_options).fit(train, model.module, engine=method.engine())
    timings["grouping"] = time.perf_counter() - started

    started = time.perf_counter()
    method.fit(train, groups, progress=progress)
    timings["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    coarse = suspicion(method, request.signal, validation,
                       lambda phase, f: progress(f"{phase} ({groups.n_groups} groups)", f))
    timings["coarse"] = time.perf_counter() - started
    scores = coarse[groups.labels]
    refined = np.zeros(len(train), dtype=bool)
    order = np.argsort(-scores, kind="stable")
    if groups.n_groups < len(train) and request.refine_fraction > 0:
        # Coarse to fine: the best groups until they cover refine_fraction of the points.
        started = time.perf_counter()
        group_order = np.argsort(-coarse, kind="stable")
        covered = np.cumsum(groups.sizes[group_order])
        n_chosen = int(np.searchsorted(covered, request.refine_fraction * len(train))) + 1
        fine_groups, refined_points = refine_groups(groups.labels, group_order[:n_chosen])
        fine = suspicion(method.with_groups(fine_groups), request.signal, validation,
                         lambda phase, f: progress(f"{phase} (refining {len(refined_points)} points)", f))
        scores[refined_points] = fine[:len(refined_points)]
        refined[refined_points] = True
        rest = np.flatnonzero(~refined)
        order = np.concatenate([refined_points[np.argsort(-scores[refined_points], kind="stable")],
                                rest[np.argsort(-scores[rest], kind="stable")]])
        timings["refine"] = time.perf_counter() - started
    return Flags(order, scores, refined, groups.labels, timings, time.process_time() - cpu_started)


def run_flagging(request: FlagRequest, *, cache_dir: str | Path | None = None,
                 progress: Progress | None = None) -> tuple[Flags, Dataset, dict]:
    """Flag the training points of a data set's demo model (what the review page shows);
    returns the flags, the training set and a JSON-ready summary. The demo model trained on
    the whole training split, so the test split serves as the ``validation`` signal's set."""
    progress = progress or no_progress
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    device = resolve_device(request.device)
    split, model = load_inputs(request, cache_dir, device, progress)
    split.train.require_classes("flagging for label review", "a reviewer keeps or relabels points into classes")
    flags = flag_training_points(model, split.train.to(device), split.test.to(device), request, progress)
    summary = {**flags.summary(), "config": request.to_json(), "data": request.data, "model": request.model,
               "n_groups": flags.n_groups, "label": flag_label(request, flags.n_groups), "class_names": list(split.train.class_names)}
    return flags, split.train, summary
