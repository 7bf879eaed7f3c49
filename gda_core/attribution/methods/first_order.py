"""First-order methods: Grad-Dot, Grad-Cos and TracIn. They match short further training."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import GDAError
from ...inputs.datasets import Dataset
from ..executors import Transform
from .base import AttributionMethod, MethodOptions, View


class GradDot(AttributionMethod):
    """g_t . g_G: the first-order change of the test loss under one step on the group."""

    name = "grad-dot"
    description = "gradient dot product (first-order, final model)"
    factored_product = "dot"


class GradCos(AttributionMethod):
    """Grad-Dot between unit-normalised gradients, so large-gradient groups do not dominate."""

    name = "grad-cos"
    description = "gradient cosine similarity (final model)"
    gradient_linear = False
    factored_product = "cosine"

    @staticmethod
    def _unit_rows(matrix: torch.Tensor) -> torch.Tensor:
        return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-30)

    def _transform_test(self, index: int, view: View, gradients: torch.Tensor) -> torch.Tensor:
        return self._unit_rows(gradients)

    def _train_transform(self, index: int, view: View) -> Transform:
        return self._unit_rows


@dataclass
class TracInOptions(MethodOptions):
    #: "all" sums lr_c * Grad-Dot over the saved checkpoints; "final" is Grad-Dot itself
    checkpoints: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.checkpoints not in ("all", "final"):
            raise GDAError(f"checkpoints must be 'all' or 'final', got {self.checkpoints!r}")


class TracIn(AttributionMethod):
    """sum_c lr_c (g_t^c . g_G^c) over training checkpoints (TracInCP)."""

    name = "tracin"
    description = "TracIn: learning-rate weighted Grad-Dot summed over checkpoints"
    Options = TracInOptions
    factored_product = "dot"

    def check_model(self) -> None:
        super().check_model()
        # Summing over no checkpoints would silently be Grad-Dot while saying "all": refused.
        if self.options.checkpoints == "all" and not self.model.checkpoints:
            raise GDAError("TracIn needs training checkpoints, which this model does not carry (an uploaded .pt2 "
                           "program or bare state dict); use --option checkpoints=final (Grad-Dot on the final "
                           "model), or upload the config.json that save_model writes, with its checkpoints")

    def _views(self, train: Dataset) -> list[View]:
        if self.options.checkpoints == "final":
            return [View(self._engine(self.model.module), 1.0)]
        return [View(self._engine(self.model.checkpoint_module(c)), c.lr) for c in self.model.checkpoints]
