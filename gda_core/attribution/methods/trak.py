"""TRAK: influence in a random projection of output-function gradients.

score(t, G) = phi_t^T (Phi^T Phi + lambda I)^-1 sum_{i in G} Q_i phi_i, where phi is the
projected gradient of the task's model output function and Q_i its residual weight (Park et
al., 2023): for classification f = log(p / (1 - p)) of the correct class and Q = 1 - p; for
regression f is the prediction itself and Q = f - y (so Q phi is the projected squared-error
gradient, Phi^T Phi the Gauss-Newton matrix, and the test side measures the loss). Phi^T Phi is estimated on a sample of
training points (scaled to the full set), so the group path never needs per-example
gradients of every point. ``ensemble`` > 1 averages over independently trained models.

The projection is a Kronecker (LoGra) one per Linear/Conv2d layer where the layers cover every
parameter, applied to per-layer factors without forming gradients (a dense Gaussian one
otherwise). Its dimension, unless given, is :func:`projection_dim_for` the parameter count and
the ensemble size; ``method_info`` reports it and the seed-to-seed agreement of the scores
(Spearman between two projection seeds on a subsample), which says how much of the ranking is
projection noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import GDAError
from ...inputs.datasets import Dataset
from ...inputs.zoo import TrainConfig, train_model
from ...progress import Progress, no_progress
from ..executors import Executor, Transform
from ..factored import KroneckerProjector, make_projector
from .base import View
from .influence import InverseCurvatureMethod, InverseOptions


@dataclass
class TRAKOptions(InverseOptions):
    #: None: the task's TRAK measurement (log-odds for classification, loss for regression)
    measurement: str | None = None
    #: None: :func:`projection_dim_for` the parameter count and the ensemble size
    projection_dim: int | None = None
    ensemble: int = 1
    curvature_samples: int | None = 4096
    #: ridge = damping_scale x ridge_fraction x mean eigenvalue of the kernel (if damping is None);
    #: 1.0 gave the best LDS on digits/MLP among 1e-3..30 (README)
    ridge_fraction: float = 1.0
    #: report the scores' agreement between two projection seeds (costs a second kernel)
    seed_agreement: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.projection_dim is not None and self.projection_dim < 1) or self.ensemble < 1 \
                or self.ridge_fraction <= 0:
            raise GDAError("projection_dim and ensemble must be >= 1, ridge_fraction > 0")


#: the projected dimensions summed over the ensemble members, and the floor per member
ENSEMBLE_PROJECTION_TOTAL, MIN_PROJECTION_DIM = 1024, 512
#: the seed-agreement check's subsample: test points and training points
AGREEMENT_TEST, AGREEMENT_TRAIN = 16, 1000


def projection_dim_for(n_parameters: int, ensemble: int) -> int:
    """The default projection dimension: no projection at all (the exact features) for
    models of at most 1024 parameters; else 1024 shared out over the ensemble members (the
    projection noise of independent members averages out), at least 512 each. On digits/MLP
    (26k parameters, one model) LDS was 0.182 at 512, 0.242 at 1024 and 0.246 at 2048
    (standard errors 0.01), the seed-to-seed Spearman 0.14, 0.21 and 0.25, while the kernel's
    cost (its product grows as the dimension squared, its factorisation as the cube) was
    four times larger at 2048 than at 1024."""
    per_member = max(MIN_PROJECTION_DIM, ENSEMBLE_PROJECTION_TOTAL // max(1, ensemble))
    return min(n_parameters, per_member)


def _rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the Spearman correlation between the rows of ``a`` and ``b``."""
    def ranks(x: torch.Tensor) -> torch.Tensor:
        order = x.argsort(dim=1)
        out = torch.empty_like(x, dtype=torch.float64)
        out.scatter_(1, order, torch.arange(x.shape[1], dtype=torch.float64).expand_as(x).contiguous())
        return out - out.mean(1, keepdim=True)

    ra, rb = ranks(a), ranks(b)
    values = (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-300)
    return float(values.mean())


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
            self.projectors_: list = []
            self.residual_weights_: list[torch.Tensor] = []
            self.kernel_factors_: list[torch.Tensor] = []
        requested = self.options.projection_dim
        dim = requested or projection_dim_for(view.engine.space.dim, self.options.ensemble)
        projector = make_projector(view.engine, dim, seed=self.options.seed + index)
        self.projectors_.append(projector)
        self.residual_weights_.append(train.task.residual_weights(view.engine.logits(train), train.labels))
        super()._fit_view(index, view, train)
        self.solver_info_[index]["projection"] = {
            "kind": type(projector).__name__.replace("Projector", "").lower(),
            **(projector.info() if isinstance(projector, KroneckerProjector) else {}),
            "dim": projector.dim, "parameters": view.engine.space.dim,
            "chosen": "given" if requested else f"from {view.engine.space.dim} parameters and ensemble "
                                                f"{self.options.ensemble} (projection_dim_for)"}

    def _kernel_factor(self, view: View, sample: Dataset, projector) -> tuple[torch.Tensor, float]:
        """The Cholesky factor of the projected kernel (+ ridge) and the default ridge."""
        features = view.engine.stacked(view.engine.per_example_gradients(
            sample, objective=sample.task.trak_output, projector=projector), len(sample))
        # the features' own precision for the product (float32 halves its cost), float64 from here on
        kernel = (features.T @ features).double() * (len(self.train_) / len(sample))
        dim = kernel.shape[0]
        default = self.options.ridge_fraction * float(kernel.trace()) / dim
        ridge = self.options.damping if self.options.damping is not None else self.options.damping_scale * default
        identity = torch.eye(dim, dtype=kernel.dtype, device=kernel.device)
        return torch.linalg.cholesky(kernel + ridge * identity), default

    def _prepare(self, index: int, view: View, sample: Dataset) -> None:
        factor, default = self._kernel_factor(view, sample, self.projectors_[index])
        self._resolve_damping(index, lambda: default)
        self.kernel_factors_.append(factor)

    def _train_objective(self, index: int, view: View) -> tuple[str, torch.Tensor | None]:
        return self.train_.task.trak_output, self.residual_weights_[index]

    def _train_transform(self, index: int, view: View) -> Transform:
        return self.projectors_[index].project

    def _train_projector(self, index: int, view: View):
        return self.projectors_[index]

    def attribute(self, test: Dataset, progress: Progress = no_progress,
                  executor: Executor | None = None) -> np.ndarray:
        scores = super().attribute(test, progress, executor)
        info = self.solver_info_[0]
        if self.options.seed_agreement and "seed_agreement" not in info:
            info["seed_agreement"] = self._seed_agreement(test, scores)
        return scores

    def _seed_agreement(self, test: Dataset, scores: np.ndarray) -> dict:
        """Spearman, per test point, between the first member's scores under this run's
        projection and under another seed's, on a subsample (averaged over test points)."""
        view = self.views_[0]
        rng = np.random.default_rng(self.options.seed + 1)
        n_train = len(self.train_)
        rows = np.sort(rng.choice(n_train, size=min(AGREEMENT_TRAIN, n_train), replace=False))
        tests = np.arange(min(AGREEMENT_TEST, len(test)))
        other = make_projector(view.engine, self.projectors_[0].dim, seed=self.options.seed + 7919)
        sample = self.train_.subset(self.curvature_rows(n_train, self.options.curvature_samples))

        def member_scores(projector, factor) -> torch.Tensor:
            subset = self.train_.subset(rows)
            train_side = view.engine.stacked(view.engine.per_example_gradients(
                subset, objective=subset.task.trak_output, weights=self.residual_weights_[0][rows],
                projector=projector), len(rows)).double()
            gradients = view.engine.test_gradients(test.subset(tests), measurement=self.measurement_)
            test_side = torch.cholesky_solve(projector.project(gradients).double().T, factor).T
            return test_side @ train_side.T

        first = member_scores(self.projectors_[0], self.kernel_factors_[0])
        second = member_scores(other, self._kernel_factor(view, sample, other)[0])
        return {"spearman": round(_rank_correlation(first, second), 4), "test_points": len(tests),
                "train_points": len(rows), "members": 1, "note": "first ensemble member, two projection seeds"}

    def _inverse(self, index: int, view: View, vectors: torch.Tensor) -> torch.Tensor:
        projected = self.projectors_[index].project(vectors).double()
        solved = torch.cholesky_solve(projected.T, self.kernel_factors_[index]).T
        return solved.to(vectors.dtype)
