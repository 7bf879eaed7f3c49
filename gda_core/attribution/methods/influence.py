"""Influence functions: g_t^T (C + lambda I)^-1 g_G with four solvers for the inverse.

C is the GGN (default) or Hessian of the mean training loss over a curvature sample. The
inverse is applied to the test side (n_test vectors), so its cost does not grow with the
number of groups. ``lambda`` defaults to the mean squared per-example gradient entry (times
``damping_scale``); in the unified view it acts as 1 / (learning rate x further-training
steps), so a larger damping follows shorter further training.

Solvers: ``if-exact`` (eigendecomposition of the full matrix, small models), ``if-cg``
(batched conjugate gradient), ``if-lissa`` (stochastic Neumann series) and ``if-arnoldi``
(Lanczos top eigenpairs, with the rest of the spectrum treated as zero curvature, i.e.
scaled by 1 / lambda). Each records ``solver_info_`` so an unconverged solve is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ...errors import GDAError
from ...inputs.datasets import Dataset
from .base import AttributionMethod, MethodOptions, View
from .curvature import CURVATURES, CurvatureOperator, check_exact_dim


@dataclass
class InverseOptions(MethodOptions):
    #: damping lambda; None = damping_scale x the method's data-driven default
    damping: float | None = None
    damping_scale: float = 1.0
    #: training rows the curvature is estimated on (None = all)
    curvature_samples: int | None = 2000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.damping is not None and self.damping <= 0:
            raise GDAError(f"damping must be > 0, got {self.damping}")
        if self.damping_scale <= 0:
            raise GDAError(f"damping_scale must be > 0, got {self.damping_scale}")
        if self.curvature_samples is not None and self.curvature_samples < 1:
            raise GDAError(f"curvature_samples must be >= 1, got {self.curvature_samples}")


DEFAULT_DAMPING_FRACTION = 0.1


class InverseCurvatureMethod(AttributionMethod):
    """Methods whose test side is an approximate inverse curvature applied to g_t."""

    Options = InverseOptions

    def _fit_view(self, index: int, view: View, train: Dataset) -> None:
        if index == 0:
            self.damping_: list[float] = []
            self.solver_info_: list[dict] = []
        self.damping_.append(float("nan"))
        self.solver_info_.append({})
        sample = train.subset(self.curvature_rows(len(train), self.options.curvature_samples))
        self._prepare(index, view, sample)

    def _resolve_damping(self, index: int, default: Callable[[], float]) -> float:
        """The damping for one view (:meth:`_damping_value`), recorded in ``damping_``."""
        self.damping_[index] = self._damping_value(default)
        return self.damping_[index]

    def _damping_value(self, default: Callable[[], float]) -> float:
        """The user's damping, or ``damping_scale`` x the method's default."""
        if self.options.damping is not None:
            return float(self.options.damping)
        return float(self.options.damping_scale * default())

    def _transform_test(self, index: int, view: View, gradients: torch.Tensor) -> torch.Tensor:
        return self._inverse(index, view, gradients)

    def _prepare(self, index: int, view: View, sample: Dataset) -> None:
        raise NotImplementedError

    def _inverse(self, index: int, view: View, vectors: torch.Tensor) -> torch.Tensor:
        """Rows of ``vectors`` multiplied by (C + lambda I)^-1."""
        raise NotImplementedError


@dataclass
class InfluenceOptions(InverseOptions):
    curvature: str = "ggn"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.curvature not in CURVATURES:
            raise GDAError(f"curvature must be one of {', '.join(CURVATURES)}, got {self.curvature!r}")


class _Influence(InverseCurvatureMethod):
    Options = InfluenceOptions

    def _prepare(self, index: int, view: View, sample: Dataset) -> None:
        if index == 0:
            self.operators_: list[CurvatureOperator] = []
        operator = CurvatureOperator(view.engine, sample, np.arange(len(sample)), kind=self.options.curvature)
        self.operators_.append(operator)
        # Default: a tenth of the top curvature eigenvalue. The mean squared gradient entry
        # (a common suggestion) is 100-1000x too small on well-fit models, whose
        # per-example gradients nearly vanish; see the README for the LDS measurements.
        self._resolve_damping(index, lambda: DEFAULT_DAMPING_FRACTION * self._top_eigenvalue(operator))
        self._prepare_solver(index, operator)
        self.solver_info_[index]["curvature_product"] = operator.path

    def _top_eigenvalue(self, operator: CurvatureOperator) -> float:
        """The top curvature eigenvalue the default damping is a fraction of."""
        return operator.largest_eigenvalue(seed=self.options.seed)

    def _prepare_solver(self, index: int, operator: CurvatureOperator) -> None:
        """Solver state that does not depend on the vectors (factorisations, bases)."""


class InfluenceExact(_Influence):
    name = "if-exact"
    description = "influence function, exact inverse by eigendecomposition (small models)"

    @classmethod
    def check_size(cls, options: InfluenceOptions, n_parameters: int) -> None:
        check_exact_dim(n_parameters)  # before the curvature work that would refuse it later

    def _prepare_solver(self, index: int, operator: CurvatureOperator) -> None:
        if index == 0:
            self.eigen_: list[tuple[torch.Tensor, torch.Tensor]] = []
        values, vectors = torch.linalg.eigh(operator.matrix().double())
        if float(values.min()) + self.damping_[index] <= 0:
            raise GDAError(
                f"curvature + damping is not positive definite (smallest eigenvalue "
                f"{float(values.min()):.3g}); raise the damping or use curvature='ggn'"
            )
        self.eigen_.append((values, vectors))
        self.solver_info_[index] = {"min_eigenvalue": float(values.min()), "max_eigenvalue": float(values.max())}

    def _inverse(self, index, view, vectors):
        values, basis = self.eigen_[index]
        coordinates = vectors.double() @ basis
        return ((coordinates / (values + self.damping_[index])) @ basis.T).to(vectors.dtype)


@dataclass
class CGOptions(InfluenceOptions):
    max_iterations: int = 100
    tolerance: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_iterations < 1 or self.tolerance <= 0:
            raise GDAError("max_iterations must be >= 1 and tolerance > 0")


class InfluenceCG(_Influence):
    name = "if-cg"
    description = "influence function, batched conjugate gradient"
    Options = CGOptions

    def _inverse(self, index, view, vectors):
        operator, damping = self.operators_[index], self.damping_[index]
        solution = torch.zeros_like(vectors)
        residual = vectors.clone()
        direction = residual.clone()
        residual_sq = (residual * residual).sum(1)
        target = (self.options.tolerance ** 2) * (vectors * vectors).sum(1)
        iterations = 0
        for iterations in range(1, self.options.max_iterations + 1):
            active = residual_sq > target
            if not bool(active.any()):
                iterations -= 1
                break
            product = operator.matvec(direction) + damping * direction
            curvature = (direction * product).sum(1)
            step = torch.where(active, residual_sq / curvature.clamp_min(1e-300), torch.zeros_like(curvature))
            solution += step[:, None] * direction
            residual -= step[:, None] * product
            new_residual_sq = (residual * residual).sum(1)
            ratio = torch.where(active, new_residual_sq / residual_sq.clamp_min(1e-300), torch.zeros_like(curvature))
            direction = residual + ratio[:, None] * direction
            residual_sq = new_residual_sq
        relative = (residual_sq / (vectors * vectors).sum(1).clamp_min(1e-300)).sqrt()
        self.solver_info_[index].update({
            "iterations": iterations,
            "max_relative_residual": float(relative.max()) if len(relative) else 0.0,
            "converged": bool((relative <= self.options.tolerance).all()),
        })
        return solution


@dataclass
class LiSSAOptions(InfluenceOptions):
    #: the most recursion steps; fewer run once the convergence check passes
    depth: int = 300
    batch_size: int | None = 256
    #: must exceed the top eigenvalue of C + lambda I; None = 1.2 x a power-iteration estimate
    scale: float | None = None
    #: stop once the series' truncation bound rho^(j+1) (rho = 1 - lambda / s, the slowest
    #: eigendirection's contraction) is below it, or the tail the relative steps imply is
    tolerance: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise GDAError("depth and batch_size must be >= 1")
        if self.scale is not None and self.scale <= 0:
            raise GDAError("scale must be > 0")
        if not 0 < self.tolerance < 1:
            raise GDAError(f"tolerance must lie in (0, 1), got {self.tolerance}")


class InfluenceLiSSA(_Influence):
    """x_{j+1} = v + (I - (C_batch + lambda I) / s) x_j; (C + lambda I)^-1 v ~ x_J / s.

    All test vectors go through each step together (one batched curvature product). The
    partial sums converge geometrically: in the eigendirection of C + lambda I with the
    smallest eigenvalue (at least lambda) the truncated series misses a fraction
    rho^(J+1), rho = 1 - lambda / s, of the full one, and less in every other, so the
    recursion stops once rho^(J+1) <= ``tolerance`` (the expected operator's bound; the
    batches' sampling noise is not truncation and does not shrink with depth) or once the
    remaining steps' geometric tail, (largest relative step) x rho / (1 - rho), is below it;
    ``solver_info`` records the steps run and the last relative step."""

    name = "if-lissa"
    description = "influence function, LiSSA stochastic Neumann series"
    Options = LiSSAOptions

    def _prepare_solver(self, index, operator):
        if index == 0:
            self.scale_: list[float] = []
        scale = self.options.scale
        if scale is None:
            scale = 1.2 * (operator.largest_eigenvalue(seed=self.options.seed) + self.damping_[index])
        self.scale_.append(float(scale))

    def _inverse(self, index, view, vectors):
        operator, damping, scale = self.operators_[index], self.damping_[index], self.scale_[index]
        generator = torch.Generator().manual_seed(self.options.seed)
        batch = self.options.batch_size
        contraction = 1 - damping / scale
        tolerance = self.options.tolerance
        estimate = vectors.clone()
        steps, relative_step, stopped = 0, float("nan"), "depth"
        for steps in range(1, self.options.depth + 1):
            if batch is None or batch >= operator.n_rows:
                product = operator.matvec(estimate)
            else:
                rows = torch.randperm(operator.n_rows, generator=generator)[:batch].to(operator.engine.device)
                product = operator.matvec_rows(estimate, rows)
            update = vectors - (product + damping * estimate) / scale
            estimate = estimate + update
            relative_step = float((update.norm(dim=1) / estimate.norm(dim=1).clamp_min(1e-300)).max()) \
                if len(vectors) else 0.0
            if contraction ** (steps + 1) <= tolerance:
                stopped = "truncation bound"
                break
            if relative_step * contraction / (1 - contraction) <= tolerance:
                stopped = "relative step"  # the geometric tail of the remaining steps is below it
                break
        self.solver_info_[index].update({"depth": self.options.depth, "steps": steps, "stopped_by": stopped,
                                         "scale": scale, "contraction": contraction,
                                         "truncation_bound": contraction ** (steps + 1),
                                         "last_relative_step": relative_step, "tolerance": tolerance})
        return estimate / scale


@dataclass
class ArnoldiOptions(InfluenceOptions):
    #: the most top eigenpairs kept
    rank: int = 64
    #: the most Lanczos iterations (None = min(P, 2 x rank))
    iterations: int | None = None
    #: eigenpairs below this fraction of the damping are treated as flat (0 = keep ``rank``):
    #: they change the inverse by less than keep_above / (1 + keep_above) in their direction
    keep_above: float = 0.25
    #: Lanczos stops once every kept Ritz pair's residual is below this fraction of the damping
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1 or (self.iterations is not None and self.iterations < 1):
            raise GDAError("rank and iterations must be >= 1")
        if self.keep_above < 0 or self.tolerance <= 0:
            raise GDAError(f"keep_above must be >= 0 and tolerance > 0, got {self.keep_above} and {self.tolerance}")


#: Lanczos steps between convergence checks
CONVERGENCE_CHECK_EVERY = 8


def _tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    """Lanczos's symmetric tridiagonal matrix (float64)."""
    matrix = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        matrix += torch.diag(off, 1) + torch.diag(off, -1)
    return matrix


class InfluenceArnoldi(_Influence):
    """Top eigenpairs of C by Lanczos with full re-orthogonalisation (Arnoldi for a symmetric
    matrix). Directions outside them are treated as flat (curvature 0), so they are scaled by
    1 / lambda: the amount further training would move them, in the unified view. The default
    damping's top eigenvalue is Lanczos's own (no separate power iteration)."""

    name = "if-arnoldi"
    description = "influence function, Arnoldi/Lanczos top eigenpairs (+ 1/damping on the rest)"
    Options = ArnoldiOptions
    factored_product = "dot+low-rank"

    def _top_eigenvalue(self, operator: CurvatureOperator) -> float:
        self._lanczos_ = self._lanczos(operator)
        return self._lanczos_[3]["top_eigenvalue"]

    def _prepare_solver(self, index, operator):
        if index == 0:
            self.eigen_: list[tuple[torch.Tensor, torch.Tensor]] = []
        values, ritz, basis, info = getattr(self, "_lanczos_", None) or self._lanczos(operator)
        self._lanczos_ = None
        keep = self._kept(values, self.damping_[index])
        self.eigen_.append((values[keep], ritz[:, keep].T.to(basis.dtype) @ basis))
        self.solver_info_[index] = {**info, "rank": int(len(keep)), "keep_above": self.options.keep_above}

    def _kept(self, values: torch.Tensor, damping: float) -> torch.Tensor:
        """Indices of the Ritz values kept: the largest in magnitude, at most ``rank``, none
        below ``keep_above`` x the damping."""
        order = torch.argsort(values.abs(), descending=True)[:self.options.rank]
        return order[values[order].abs() >= self.options.keep_above * damping]

    def _lanczos(self, operator: CurvatureOperator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Lanczos with full re-orthogonalisation: the Ritz values (float64), their
        coordinates in the Krylov basis, the basis (steps x P, in the products' precision:
        re-orthogonalised twice in the engine's dtype) and what ran.

        Every few steps the Ritz pairs that would be kept are checked: once each one's
        residual ``beta |s_last|`` (a bound on its eigenvalue's error) is below ``tolerance``
        x the damping, and more Ritz values than those have been found, further steps would
        not change the inverse by more than that, so the iteration stops."""
        dim = operator.dim
        steps = min(dim, self.options.iterations or 2 * self.options.rank)
        generator = torch.Generator().manual_seed(self.options.seed)
        dtype, device = operator.engine.dtype, operator.engine.device
        basis = torch.zeros(steps, dim, dtype=dtype, device=device)
        alphas, betas = [], []
        stopped = "iterations"
        vector = torch.randn(dim, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
        vector /= vector.norm()
        for step in range(steps):
            basis[step] = vector
            product = operator.matvec(vector[None])[0]
            alpha = float(product @ vector)
            product -= basis[:step + 1].T @ (basis[:step + 1] @ product)  # full re-orthogonalisation
            product -= basis[:step + 1].T @ (basis[:step + 1] @ product)
            alphas.append(alpha)
            beta = float(product.norm())
            if beta < 1e-10 * max(1.0, abs(alpha)):
                stopped = "invariant subspace"
                break
            betas.append(beta)
            if step + 1 == steps:
                break
            if (step + 1) % CONVERGENCE_CHECK_EVERY == 0 and self._converged(alphas, betas):
                stopped = "converged"
                break
            vector = product / beta
        size = len(alphas)
        values, ritz, damping, kept, residuals = self._ritz(alphas, betas[:size - 1],
                                                            betas[size - 1] if len(betas) >= size else 0.0)
        info = {"lanczos_steps": size, "stopped_by": stopped, "top_eigenvalue": float(values.abs().max()),
                "max_residual_over_damping": float(residuals[kept].max()) / damping if len(kept) else 0.0}
        return values, ritz.to(device=device), basis[:size], info

    def _ritz(self, alphas: list[float], betas: list[float], last_beta: float):
        """The Ritz values and coordinates of Lanczos's tridiagonal matrix, the damping its top
        value implies, the indices of the pairs kept, and each pair's residual bound."""
        values, ritz = torch.linalg.eigh(_tridiagonal(alphas, betas))
        damping = self._damping_value(lambda: DEFAULT_DAMPING_FRACTION * float(values.abs().max()))
        return values, ritz, damping, self._kept(values, damping), last_beta * ritz[-1].abs()

    def _converged(self, alphas: list[float], betas: list[float]) -> bool:
        """Whether the Ritz pairs that would be kept after these steps have converged."""
        if self.options.keep_above == 0:
            return False  # keep ``rank`` pairs: run every iteration, as asked
        values, _, damping, kept, residuals = self._ritz(alphas, betas[:-1], betas[-1])
        if len(kept) >= len(values) - CONVERGENCE_CHECK_EVERY:
            return False  # the pairs not yet found may lie above the threshold too
        return bool((residuals[kept] <= self.options.tolerance * damping).all())

    def _low_rank_parts(self, index, view):
        # (C + lambda I)^-1 g = g / lambda + sum_k (1 / (v_k + lambda) - 1 / lambda) (u_k . g) u_k
        values, basis = self.eigen_[index]
        damping = self.damping_[index]
        gain = 1.0 / (values.to(basis.device) + damping) - 1.0 / damping
        return 1.0 / damping, basis, gain.to(basis.dtype)

    def _inverse(self, index, view, vectors):
        scale, basis, gain = self._low_rank_parts(index, view)
        basis, gain = basis.to(vectors.dtype), gain.to(vectors.dtype)
        return vectors * scale + ((vectors @ basis.T) * gain) @ basis
