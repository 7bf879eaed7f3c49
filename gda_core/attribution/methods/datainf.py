"""DataInf: a closed-form inverse of the per-layer damped empirical Fisher.

Per layer l, (F_l + lambda_l I)^-1 ~ 1/(n lambda_l) sum_i (I - g_il g_il^T / (lambda_l + |g_il|^2))
(Kwon et al., 2024): each rank-one term is inverted exactly and the inverses averaged. The
per-example gradients of the curvature sample are the only training-side pass.
"""

from __future__ import annotations

import torch

from ...inputs.datasets import Dataset
from .base import View
from .influence import InverseCurvatureMethod


class DataInf(InverseCurvatureMethod):
    name = "datainf"
    description = "DataInf: closed-form rank-one inverse of the per-layer Fisher"

    def _prepare(self, index: int, view: View, sample: Dataset) -> None:
        if index == 0:
            self.sample_gradients_: list[torch.Tensor] = []
            self.layer_damping_: list[list[float]] = []
        gradients = view.engine.stacked(view.engine.per_example_gradients(sample), len(sample))
        layers = view.engine.space.layer_slices()
        if self.options.damping is not None:
            per_layer = [float(self.options.damping)] * len(layers)
        else:
            # DataInf's default: 0.1 x the mean squared gradient entry of each layer.
            per_layer = [self.options.damping_scale * 0.1 * float((gradients[:, block] ** 2).mean())
                         for block in layers]
        self.damping_[index] = float(sum(per_layer) / len(per_layer))
        self.sample_gradients_.append(gradients)
        self.layer_damping_.append(per_layer)

    def _inverse(self, index: int, view: View, vectors: torch.Tensor) -> torch.Tensor:
        gradients = self.sample_gradients_[index]
        out = torch.empty_like(vectors)
        for block, damping in zip(view.engine.space.layer_slices(), self.layer_damping_[index]):
            layer_gradients = gradients[:, block]
            coefficients = (vectors[:, block] @ layer_gradients.T) / (damping + (layer_gradients ** 2).sum(1))
            out[:, block] = (vectors[:, block] - coefficients @ layer_gradients / len(gradients)) / damping
        return out
