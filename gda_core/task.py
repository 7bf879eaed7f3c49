"""The Task: what a model is trained for, in one object every part of the engine calls.

A task names the per-example training loss, the measurements a test point is attributed on,
the output-space curvature the Gauss-Newton matrix needs, what TRAK differentiates, and how
predictions are read and scored. Gradients, curvature, training, gold standards and noisy
labels all call it rather than writing the loss out themselves.

Two tasks are registered by name:

- ``classification`` (the default): cross-entropy on one logit per class; measurements
  ``loss``, ``margin`` and ``log-odds``; scored by accuracy.
- ``regression``: half the squared error on one output, so the output Hessian is 1 and the
  loss gradient is the residual times the output gradient; measurement ``loss``; scored by
  R^2 (the coefficient of determination).

Every objective is a quantity where *lower is better* (a loss, a negative margin, a negative
log-odds), so that a positive gradient dot product always means "helps".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch
from torch import nn

from .errors import GDAError, check_choice
from .registry import Registry

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

TASKS: Registry = Registry("task")


class Task(ABC):
    """The loss, the measurements and the output curvature of one kind of prediction.

    ``outputs`` are the model's (n, n_outputs) outputs and ``targets`` the data's labels
    (class indices, or real values); every per-example function returns shape (n,).
    """

    name: ClassVar[str] = ""
    #: measurements a user may attribute a test point's prediction on (lower is better)
    measurements: ClassVar[tuple[str, ...]] = ()
    #: the dtype targets are stored in
    target_dtype: ClassVar[torch.dtype] = torch.long
    #: what :meth:`score` reports, as shown to a person
    score_name: ClassVar[str] = ""
    #: TRAK: the objective whose gradients are projected (its model output function) and the
    #: measurement its test side uses by default
    trak_output: ClassVar[str] = ""
    trak_measurement: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            TASKS.register(cls.name, cls())

    # ------------------------------------------------------------------ losses
    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The per-example training loss."""

    def objectives(self) -> dict[str, Objective]:
        """Every objective gradients may be taken of, by name: the measurements and the
        internal ones (TRAK's output function)."""
        return {"loss": self.loss}

    def objective(self, name: str) -> Objective:
        """The per-example objective ``name``; a one-line refusal names what this task offers."""
        objectives = self.objectives()
        if name not in objectives:
            check_measurement_name(name)
            raise GDAError(f"the {name} measurement needs classes; a {self.name} task measures: "
                           f"{', '.join(self.measurements)}")
        return objectives[name]

    def measurement(self, name: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The per-example measurement ``name`` (lower is better)."""
        return self.objective(name)(outputs, targets)

    def check_measurement(self, name: str) -> str:
        """``name`` if this task measures it; a one-line refusal otherwise."""
        self.objective(name)
        return name

    def weighted_loss(self, outputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                      denominator: torch.Tensor | int, parameters, weight_decay: float) -> torch.Tensor:
        """The training objective: sum(weights x loss) / denominator + weight_decay / 2 x ||theta||^2
        (``train_model`` and the batched gold-standard trainer both minimise it)."""
        # The loss before the penalty: autograd then sums each parameter's gradients in the
        # order they always had, so scores stay bitwise the same.
        weighted = (self.loss(outputs, targets) * weights).sum()
        penalty = 0.5 * weight_decay * sum((p * p).sum() for p in parameters)
        return weighted / denominator + penalty

    # --------------------------------------------------------------- curvature
    @abstractmethod
    def output_hessian_product(self, outputs: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
        """H_out @ tangent per example, H_out the Hessian of the loss with respect to the
        outputs (what the Gauss-Newton matrix J^T H_out J needs); shapes (n, n_outputs)."""

    # -------------------------------------------------------------------- TRAK
    @abstractmethod
    def residual_weights(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """TRAK's per-example weights Q: d loss / d (model output function), so that
        Q x grad(output) is the loss gradient."""

    # ------------------------------------------------------------- predictions
    @abstractmethod
    def predict(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prediction of every point and, for classes, the model's probability of it."""

    @abstractmethod
    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """How well the outputs predict the targets, higher is better (:attr:`score_name`)."""

    # ---------------------------------------------------------------- checks
    @abstractmethod
    def check_outputs(self, n_outputs: int, targets: torch.Tensor) -> None:
        """A one-line refusal when a model with ``n_outputs`` outputs cannot predict ``targets``."""

    def require(self, required: str, purpose: str) -> None:
        """A one-line refusal when ``purpose`` needs the ``required`` task and this is another."""
        if self.name != required:
            raise GDAError(f"{purpose} needs {required} data; this data set is {self.name}")


class ClassificationTask(Task):
    """Cross-entropy over one logit per class."""

    name = "classification"
    measurements = ("loss", "margin", "log-odds")
    target_dtype = torch.long
    score_name = "accuracy"
    trak_output = "log-odds"
    trak_measurement = "log-odds"

    def loss(self, outputs, targets):
        return nn.functional.cross_entropy(outputs, targets, reduction="none")

    def objectives(self):
        return {"loss": self.loss, "margin": self.negative_margin, "log-odds": self.negative_log_odds}

    @staticmethod
    def _best_other_logit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # A comparison, not one_hot: one_hot is data-dependent and breaks under vmap.
        own = torch.arange(logits.shape[-1], device=logits.device) == labels.unsqueeze(-1)
        return logits.masked_fill(own, float("-inf"))

    def negative_margin(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Largest other logit minus the correct-class logit (lower is better)."""
        correct = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return self._best_other_logit(logits, labels).amax(dim=-1) - correct

    def negative_log_odds(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """-log(p / (1 - p)) of the correct class: TRAK's model output, negated (lower is better)."""
        correct = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return torch.logsumexp(self._best_other_logit(logits, labels), dim=-1) - correct

    def output_hessian_product(self, outputs, tangent):
        prob = torch.softmax(outputs, dim=-1)
        # Hessian of cross-entropy w.r.t. the logits is diag(p) - p p^T.
        return prob * tangent - prob * (prob * tangent).sum(-1, keepdim=True)

    def residual_weights(self, outputs, targets):
        # d cross-entropy / d (negative log-odds) = 1 - p of the correct class
        probabilities = torch.softmax(outputs, dim=1)
        correct = probabilities.gather(1, targets.to(probabilities.device)[:, None])[:, 0]
        return 1.0 - correct

    def predict(self, outputs):
        confidence, predicted = torch.softmax(outputs, dim=1).max(dim=1)
        return predicted, confidence

    def score(self, outputs, targets):
        predicted, _ = self.predict(outputs)
        return float((predicted.cpu().numpy() == targets.cpu().numpy()).mean())

    def check_outputs(self, n_outputs, targets):
        if n_outputs < 2:
            raise GDAError("the model has a single output (a regression model?); classification needs one "
                           "logit per class (>= 2)")
        largest = int(targets.max())
        if largest >= n_outputs:
            raise GDAError(f"labels go up to {largest} but the model has {n_outputs} outputs "
                           f"(classes 0..{n_outputs - 1})")


class RegressionTask(Task):
    """Half the squared error of one real output: ``(f - y)^2 / 2``."""

    name = "regression"
    measurements = ("loss",)
    target_dtype = torch.float32
    score_name = "R^2"
    #: TRAK's output function for regression is the prediction f itself; its residual weight
    #: f - y makes the weighted output gradient the loss gradient, and the kernel of output
    #: gradients is the Gauss-Newton matrix (the output Hessian is 1)
    trak_output = "output"
    trak_measurement = "loss"

    @staticmethod
    def _prediction(outputs: torch.Tensor) -> torch.Tensor:
        return outputs[..., 0]

    def loss(self, outputs, targets):
        return 0.5 * (self._prediction(outputs) - targets.to(outputs.dtype)) ** 2

    def objectives(self):
        return {"loss": self.loss, "output": lambda outputs, targets: self._prediction(outputs)}

    def output_hessian_product(self, outputs, tangent):
        return tangent

    def residual_weights(self, outputs, targets):
        return self._prediction(outputs) - targets.to(device=outputs.device, dtype=outputs.dtype)

    def predict(self, outputs):
        return self._prediction(outputs), None

    def score(self, outputs, targets):
        predicted = self._prediction(outputs).double().cpu()
        targets = targets.double().cpu()
        total = float(((targets - targets.mean()) ** 2).sum())
        residual = float(((targets - predicted) ** 2).sum())
        return 1.0 - residual / total if total > 0 else float("nan")

    def check_outputs(self, n_outputs, targets):
        if n_outputs != 1:
            raise GDAError(f"the model has {n_outputs} outputs; regression needs a model with one output")


#: every measurement name some task offers
MEASUREMENTS: tuple[str, ...] = tuple(dict.fromkeys(m for task in TASKS.values() for m in task.measurements))


def check_measurement_name(name: object) -> None:
    """A one-line error unless ``name`` is a measurement of some task."""
    check_choice("measurement", name, MEASUREMENTS)


def get_task(name: str) -> Task:
    """The task registered as ``name`` (``classification``, ``regression``)."""
    return TASKS.get_checked(name)


CLASSIFICATION: Task = TASKS["classification"]
REGRESSION: Task = TASKS["regression"]
