"""TRAK: influence in a random projection of output-function gradients.

score(t, G) = phi_t^T (Phi^T Phi + lambda I)^-1 sum_{i in G} Q_i phi_i, where phi is the
projected gradient of the task's model output function and Q_i its residual weight (Park et
al., 2023): for classification f = log(p / (1 - p)) of the correct class and Q = 1 - p; for
regression f is the prediction itself and Q = f - y (so Q phi is the projected squared-error
gradient, Phi^T Phi the Gauss-Newton matrix, and the test side measures the loss). Phi^T Phi is estimated on a sample of
training points (scaled to the full set), so the group path never needs per-example
gradients of every point. ``ensemble`` > 1 averages over independently trained models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import GDAError
from ...inputs.datasets import Dataset
from ...inputs.zoo import TrainConfig, train_model
from ..executors import Transform
from ..grads import RandomProjector
from .base import View
from .influence import InverseCurvatureMethod, InverseOptions


@dataclass
class TRAKOptions(InverseOptions):
    #: None: the task's TRAK measurement (log-odds for classification, loss for regression)
    measurement: str | None = None
    projection_dim: int = 512
    ensemble: int = 1
    curvature_samples: int | None = 4096
    #: ridge = damping_scale x ridge_fraction x mean eigenvalue of the kernel (if damping is None);
    #: 1.0 gave the best LDS on digits/MLP among 1e-3..30 (README)
    ridge_fraction: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.projection_dim < 1 or self.ensemble < 1 or self.ridge_fraction <= 0:
            raise GDAError("projection_dim and ensemble must be >= 1, ridge_fraction > 0")


class TRAK(InverseCurvatureMethod):
    name = "trak"
    description = "TRAK: projected output-function gradients with a ridge kernel inverse"
    Options = TRAKOptions

    def _default_measurement(self, train: Dataset) -> str:
        return train.task.trak_measurement

    def _views(self, train: Dataset) -> list[View]:
        modules = [self.model.module]
        base = self.model.train_config
        device = next(self.model.module.parameters()).device
        for member in range(1, self.options.ensemble):
            config = TrainConfig(**{**base.to_json(), "seed": base.seed + 1000 * member})
            modules.append(train_model(self.model.zoo_config("A TRAK ensemble"), train, config, device=device).module)
        return [View(self._engine(module), 1.0 / len(modules)) for module in modules]

    def _fit_view(self, index: int, view: View, train: Dataset) -> None:
        if index == 0:
            self.projectors_: list[RandomProjector] = []
            self.residual_weights_: list[torch.Tensor] = []
            self.kernel_factors_: list[torch.Tensor] = []
        self.projectors_.append(RandomProjector(
            view.engine.space.dim, min(self.options.projection_dim, view.engine.space.dim),
            seed=self.options.seed + index))
        self.residual_weights_.append(train.task.residual_weights(view.engine.logits(train), train.labels))
        super()._fit_view(index, view, train)

    def _prepare(self, index: int, view: View, sample: Dataset) -> None:
        features = view.engine.stacked(view.engine.per_example_gradients(
            sample, objective=sample.task.trak_output, projector=self.projectors_[index]), len(sample)).double()
        kernel = features.T @ features * (len(self.train_) / len(sample))
        dim = kernel.shape[0]
        ridge = self._resolve_damping(index, lambda: self.options.ridge_fraction * float(kernel.trace()) / dim)
        identity = torch.eye(dim, dtype=kernel.dtype, device=kernel.device)
        self.kernel_factors_.append(torch.linalg.cholesky(kernel + ridge * identity))

    def _train_objective(self, index: int, view: View) -> tuple[str, torch.Tensor | None]:
        return self.train_.task.trak_output, self.residual_weights_[index]

    def _train_transform(self, index: int, view: View) -> Transform:
        return self.projectors_[index].project

    def _inverse(self, index: int, view: View, vectors: torch.Tensor) -> torch.Tensor:
        projected = self.projectors_[index].project(vectors).double()
        solved = torch.cholesky_solve(projected.T, self.kernel_factors_[index]).T
        return solved.to(vectors.dtype)
