"""What a run will cost before it starts: gradient passes timed on a small sample.

Per-example gradients of a conv net cost far more than those of a small MLP, and a user
should see that before pressing a button: the estimate times one per-example gradient pass
over a few training points (full model and, where the model has one, last layer only) and
scales it to the data. It is a measurement on this machine, not a formula, so it holds for
whatever model was uploaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..inputs.datasets import Dataset
from .grads import DEFAULT_CHUNK_EXAMPLES, GradientEngine, chunk_rows, has_last_layer

MB = 2**20
BYTES_PER_VALUE = 4  # float32 gradients


@dataclass(frozen=True)
class GradientCost:
    """One gradient mode's measured cost: ``seconds_per_example`` of a per-example gradient
    over ``n_parameters`` differentiated parameters, taken on ``sample_size`` points."""

    mode: str
    n_parameters: int
    seconds_per_example: float
    sample_size: int
    #: rows of per-example gradients a pass holds at once on this device (its chunk)
    rows_per_chunk: int = DEFAULT_CHUNK_EXAMPLES

    def seconds(self, n_examples: int) -> float:
        """Estimated seconds of one per-example gradient pass over ``n_examples`` points."""
        return self.seconds_per_example * n_examples

    def vectors_mb(self, n_vectors: int) -> float:
        """Memory of ``n_vectors`` gradients held at once (float32)."""
        return n_vectors * self.n_parameters * BYTES_PER_VALUE / MB


def estimate_gradient_costs(module: nn.Module, train: Dataset, *, sample_size: int = 32) -> list[GradientCost]:
    """Time per-example gradients of the full model and, when it has a linear head on a
    representation, of the last layer only, on the first ``sample_size`` training points
    (after a warm-up pass, which pays one-off costs a real run pays once too)."""
    sample = train.subset(np.arange(min(sample_size, len(train))))
    modes = [("full model", False)] + ([("last layer", True)] if has_last_layer(module) else [])
    costs = []
    for mode, last_layer_only in modes:
        engine = GradientEngine(module, last_layer_only=last_layer_only, chunk_examples=len(sample))
        engine.stacked(engine.per_example_gradients(sample.subset(np.arange(min(2, len(sample))))),
                       min(2, len(sample)))
        start = time.perf_counter()
        gradients = engine.stacked(engine.per_example_gradients(sample), len(sample))
        if gradients.is_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        rows = chunk_rows(DEFAULT_CHUNK_EXAMPLES, engine.space.dim, gradients)
        costs.append(GradientCost(mode, engine.space.dim, elapsed / len(sample), len(sample), rows))
    return costs


def cost_rows(costs: list[GradientCost], n_train: int, n_test: int, n_groups: int | None) -> list[dict]:
    """A table of the estimate, one row per mode: the gradient pass over the training and
    test points, the memory of one chunk of the pass, and of the N (per-example) or K
    (grouped) training gradients a method works with."""
    rows = []
    for cost in costs:
        row = {"gradients of": cost.mode, "parameters": cost.n_parameters,
               "gradient pass, s (est.)": round(cost.seconds(n_train + n_test), 1),
               "chunk of the pass, MB": round(cost.vectors_mb(min(cost.rows_per_chunk, n_train)), 1),
               f"{n_train} per-example gradients, MB": round(cost.vectors_mb(n_train), 1)}
        if n_groups is not None:
            row[f"{n_groups} group gradients, MB"] = round(cost.vectors_mb(n_groups), 1)
        rows.append(row)
    return rows


#: a per-example gradient pass estimated to take longer than this gets a word of advice
SLOW_PASS_SECONDS = 60.0


def cost_advice(costs: list[GradientCost], n_train: int, n_test: int) -> str | None:
    """A line of advice when per-example gradients of the full model would be slow: what
    last-layer mode costs instead, and that grouping shrinks what the method works with."""
    full = costs[0]
    seconds = full.seconds(n_train + n_test)
    if seconds < SLOW_PASS_SECONDS:
        return None
    advice = (f"Per-example gradients of the full model take about {seconds:.0f} s for one pass here "
              f"({full.vectors_mb(n_train):.0f} MB for all {n_train}).")
    last = next((cost for cost in costs if cost.mode == "last layer"), None)
    if last is not None:
        advice += f" Last-layer mode (an advanced option) takes about {last.seconds(n_train + n_test):.0f} s."
    return advice + " A grouped run (e.g. grad-kmeans) keeps K group gradients instead of N."
