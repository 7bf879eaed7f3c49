"""Ground truths to measure attribution against.

All three train many copies of one zoo model at once: the copies' parameters are stacked and
``torch.func.vmap`` runs one batched step for all of them, each copy with its own weights on
the training examples, all under one seed's mini-batch order. That is what makes the runs
*paired*: a copy differs from the baseline copy only in the weights of one group.

- :func:`further_training` (FiMO gold standard): from the final weights, T more steps with
  group G re-weighted by 1 + epsilon (or left out), minus the same seed's unchanged run,
  divided by the weight change, averaged over seeds, recorded at several horizons.
- :func:`leave_group_out`: the same from a fresh initialisation, trained with the model's own
  recipe, each group removed in turn (small models).
- :func:`lds_ensemble` / :func:`lds`: models trained on random subsets (a fraction alpha of
  the groups); the linear datamodeling score of a score matrix against them.
- :func:`point_lds_ensemble` / :func:`point_lds`: the point-level yardstick, one ensemble on
  random subsets of training *points* for every grouping and K; group scores are spread over
  their members in equal shares (:func:`point_scores`) and scored with :func:`lds`.

Every gold score follows the project's sign convention: positive means up-weighting the group
lowers the test point's loss (or raises its margin).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from ..attribution.executors import Executor, LocalExecutor
from ..attribution.grouping import Groups
from ..errors import GDAError
from ..inputs.datasets import Dataset
from ..inputs.huggingface import DEMO_RECIPE
from ..inputs.zoo import ModelConfig, TrainConfig, TrainedModel, build_model, module_from_arrays, state_arrays
from ..progress import Progress, both, no_progress
from ..requests import GoldConfig, Recipe
from ..task import Task
from .statistics import spearman, standard_error


class ResultCache(Protocol):
    """Where computed gold standards are kept (the run store): ``compute(report)`` runs only
    on a miss, and returns ``(arrays, summary)``; ``root`` is its folder."""

    root: Path

    def get_or_compute(self, kind: str, params: dict, compute: Callable[[Progress], tuple[dict, dict]]
                       ) -> tuple[dict[str, np.ndarray], dict, bool]: ...


class BatchedTrainer:
    """Trains ``M`` copies of a zoo model at once, each with its own example weights."""

    def __init__(self, model: TrainedModel, recipe: Recipe, *, copies_per_chunk: int = 128):
        self.model, self.recipe = model, recipe
        self.copies_per_chunk = max(1, copies_per_chunk)
        module = model.module
        reference = next(module.parameters())
        self.device, self.dtype = reference.device, reference.dtype
        # A private copy: its train/eval mode is switched here, never the caller's module's.
        self._module = copy.deepcopy(module).eval()
        #: BatchNorm trains as train_model trains it: batch statistics in the steps, each
        #: copy's own running statistics (its buffers, updated in place) when measured
        self.batch_norm = any(isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) for layer in module.modules())

    def _batch_gradients(self, task: Task) -> Callable:
        """Per-copy gradients of the task's weighted, regularised batch loss (each copy's
        BatchNorm buffers updated in place)."""
        module, recipe = self._module, self.recipe

        def batch_loss(params, buffers, weights, denominator, inputs, labels):
            return task.weighted_loss(functional_call(module, (params, buffers), (inputs,)), labels, weights,
                                      denominator, params.values(), recipe.weight_decay)

        return vmap(grad(batch_loss), in_dims=(0, 0, 0, 0, None, None))

    def initial_state(self, seed: int | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The model's final parameters and buffers (``seed=None``) or a fresh seeded
        initialisation's. Buffers (BatchNorm's running statistics) only for BatchNorm models."""
        if seed is None:
            module = self.model.module
        else:
            torch.manual_seed(seed)
            config = self.model.zoo_config("Retraining from scratch (LDS, leave-group-out)")
            module = build_model(config).to(device=self.device, dtype=self.dtype)
        params = {n: p.detach().clone() for n, p in module.named_parameters()}
        buffers = {n: b.detach().clone() for n, b in module.named_buffers()} if self.batch_norm else {}
        return params, buffers

    def _reference(self) -> torch.Tensor:
        """A tensor of the copies' device and dtype, which real-valued inputs are cast to."""
        return torch.empty(0, device=self.device, dtype=self.dtype)

    def measure(self, params: dict[str, torch.Tensor], test: Dataset, measurement: str,
                buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(M, n_test) measurements (lower is better) of every copy on the test points."""
        objective = test.task.objective(measurement)
        inputs, labels = test.model_inputs(self._reference()), test.labels.to(self.device)
        with torch.no_grad():
            return vmap(lambda p, b: objective(functional_call(self._module, (p, b), (inputs,)), labels))(
                params, buffers or {})

    def run(self, weights: torch.Tensor, train: Dataset, test: Dataset, *, seed: int, init_seed: int | None,
            record_steps: list[int], measurement: str = "loss", progress: Progress = no_progress) -> torch.Tensor:
        """Train one copy per row of ``weights`` (M, N); return measurements (len(record_steps), M, n_test).

        ``init_seed=None`` starts from the model's final weights. The batch order comes from
        ``seed`` alone, so every copy (and every chunk of copies) sees the same batches."""
        if weights.shape[1] != len(train):
            raise GDAError(f"weights must have one column per training point ({len(train)})")
        self.model.check_task(train)
        gradients_of = self._batch_gradients(train.task)
        record_steps = sorted(set(int(s) for s in record_steps))
        if not record_steps or record_steps[0] < 0:
            raise GDAError("record_steps must be non-negative step counts")
        inputs, labels = train.model_inputs(self._reference()), train.labels.to(self.device)
        weights = weights.to(self.device, self.dtype)
        n_copies, total_steps = weights.shape[0], record_steps[-1]
        out = torch.empty(len(record_steps), n_copies, len(test), dtype=self.dtype, device=self.device)
        start_params, start_buffers = self.initial_state(init_seed)
        # A left-out example (weight 0) must not enter a copy's BatchNorm statistics either, so
        # such copies train one at a time on their own examples of each batch.
        per_copy = self.batch_norm and bool((weights == 0).any())
        chunk_size = 1 if per_copy else self.copies_per_chunk
        work = total_steps * n_copies
        steps_per_epoch = math.ceil(len(train) / self.recipe.batch_size)
        done = 0
        for first in range(0, n_copies, chunk_size):
            chunk = weights[first:first + chunk_size]
            copies = len(chunk)

            def stacked(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
                return {n: t.unsqueeze(0).repeat(copies, *([1] * t.ndim)) for n, t in tensors.items()}

            params, buffers = stacked(start_params), stacked(start_buffers)
            state = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in params.items()}
            generator = torch.Generator().manual_seed(seed)
            record_index = 0
            if record_steps[0] == 0:
                out[0, first:first + copies] = self.measure(params, test, measurement, buffers)
                record_index = 1
            for step in range(1, total_steps + 1):
                # Epochs of shuffled batches, the last one possibly short, as train_model does.
                within_epoch = (step - 1) % steps_per_epoch
                if within_epoch == 0:
                    order = torch.randperm(len(train), generator=generator).to(self.device)
                rows = order[within_epoch * self.recipe.batch_size:(within_epoch + 1) * self.recipe.batch_size]
                batch_weights = chunk[:, rows]
                denominator = (batch_weights.sum(dim=1).clamp_min(1e-12) if self.recipe.normalize == "weights"
                               else torch.full((copies,), float(len(rows)), device=self.device, dtype=self.dtype))
                if per_copy:
                    kept = batch_weights[0] != 0
                    rows, batch_weights = rows[kept], batch_weights[:, kept]
                if len(rows) > (1 if self.batch_norm else 0):  # BatchNorm needs two rows
                    self._module.train(self.batch_norm)
                    gradients = gradients_of(params, buffers, batch_weights, denominator, inputs[rows], labels[rows])
                    self._module.eval()
                    self._update(params, gradients, state, step)
                if record_index < len(record_steps) and step == record_steps[record_index]:
                    out[record_index, first:first + copies] = self.measure(params, test, measurement, buffers)
                    record_index += 1
                done += copies
                if step % 20 == 0 or step == total_steps:
                    progress("training copies", done / max(work, 1))
        return out

    def _update(self, params, gradients, state, step: int) -> None:
        recipe = self.recipe
        with torch.no_grad():
            for name, value in params.items():
                gradient = gradients[name]
                first_moment, second_moment = state[name]
                if recipe.optimizer == "sgd":
                    if recipe.momentum:
                        first_moment.mul_(recipe.momentum).add_(gradient)
                        gradient = first_moment
                    value.sub_(recipe.lr * gradient)
                else:  # Adam, as torch.optim.Adam with its default betas and eps
                    first_moment.mul_(0.9).add_(gradient, alpha=0.1)
                    second_moment.mul_(0.999).addcmul_(gradient, gradient, value=0.001)
                    corrected_first = first_moment / (1 - 0.9 ** step)
                    corrected_second = second_moment / (1 - 0.999 ** step)
                    value.sub_(recipe.lr * corrected_first / (corrected_second.sqrt() + 1e-8))


@dataclass
class CopyRuns:
    """What every block of trained copies shares: an executor runs the blocks (items
    ``(first, stop, seed, init_seed)``) with :func:`train_copies`. It pickles (for Ray
    workers) as the model's config plus numpy weights and CPU data, never a live module."""

    model: TrainedModel
    recipe: Recipe
    train: Dataset
    test: Dataset
    record_steps: list[int]
    measurement: str
    copies_per_chunk: int
    #: ``weights(first, stop)`` -> (copies, N) example weights of copies first..stop - 1
    weights: Callable[[int, int], torch.Tensor]

    def check_portable(self) -> None:
        """Workers rebuild the model from its zoo config: an uploaded program has none."""
        self.model.zoo_config("the ray executor")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["model"] = (self.model.zoo_config("the ray executor").to_json(), self.model.train_config.to_json(),
                          state_arrays(self.model.module))
        state["train"], state["test"] = self.train.to("cpu"), self.test.to("cpu")
        return state

    def __setstate__(self, state: dict) -> None:
        config, train_config, arrays = state["model"]
        config = ModelConfig.from_json(config)
        model = TrainedModel(module_from_arrays(config, arrays), config, TrainConfig(**train_config))
        self.__dict__.update(state, model=model)


def train_copies(runs: CopyRuns, item: tuple[int, int, int, int | None],
                 progress: Callable[[float], None]) -> np.ndarray:
    """Measurements (len(record_steps), copies, n_test) of one block of copies."""
    first, stop, seed, init_seed = item
    trainer = BatchedTrainer(runs.model, runs.recipe, copies_per_chunk=runs.copies_per_chunk)
    measured = trainer.run(runs.weights(first, stop), runs.train, runs.test, seed=seed, init_seed=init_seed,
                           record_steps=runs.record_steps, measurement=runs.measurement,
                           progress=lambda phase, fraction: progress(fraction))
    return measured.double().cpu().numpy()


def _paired_weights(group_labels: np.ndarray, weight_change: float, first: int, stop: int) -> torch.Tensor:
    """The unchanged baseline copy, then groups first..stop - 1 each re-weighted by 1 + change."""
    membership = torch.as_tensor(group_labels[None, :] == np.arange(first, stop)[:, None], dtype=torch.float32)
    return torch.cat([torch.ones(1, len(group_labels)), 1.0 + weight_change * membership])


def _subset_weights(example_masks: np.ndarray, first: int, stop: int) -> torch.Tensor:
    return torch.as_tensor(example_masks[first:stop], dtype=torch.float32)


# --------------------------------------------------------------------------- gold standards
@dataclass
class GoldStandard:
    """Gold scores per horizon: ``scores[h]`` is (n_test, K), the mean over seeds;
    ``standard_error[h]`` its seed-to-seed standard error; ``differences`` the raw per-seed
    measurement changes (seeds, horizons, n_test, K) of the changed runs minus the baseline."""

    kind: str
    horizons: list[float]
    scores: np.ndarray
    standard_error: np.ndarray
    differences: np.ndarray
    weight_change: float
    measurement: str
    params: dict

    def at(self, horizon: float) -> np.ndarray:
        if horizon not in self.horizons:
            raise GDAError(f"horizon {horizon} was not recorded; recorded: {self.horizons}")
        return self.scores[self.horizons.index(horizon)]


def _paired_gold(kind: str, model: TrainedModel, train: Dataset, test: Dataset, groups: Groups, *,
                 recipe: Recipe, weight_change: float, horizons: list[float], seeds: int, seed: int,
                 init_from_scratch: bool, measurement: str, copies_per_chunk: int,
                 progress: Progress, executor: Executor | None) -> GoldStandard:
    if seeds < 1:
        raise GDAError(f"seeds must be >= 1, got {seeds}")
    if not horizons or min(horizons) <= 0:
        raise GDAError("horizons must be positive numbers of epochs")
    if len(groups.labels) != len(train):
        raise GDAError(f"grouping covers {len(groups.labels)} points but the training set has {len(train)}")
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    record_steps = [max(1, round(h * steps_per_epoch)) for h in horizons]
    # Copy 0 of every block is the unchanged baseline, so each comparison stays within one
    # batched computation; the changed copies follow. Blocks are independent: an executor
    # may run them anywhere.
    weights = functools.partial(_paired_weights, groups.labels, weight_change)
    runs = CopyRuns(model, recipe, train, test, record_steps, measurement, copies_per_chunk, weights)
    per_chunk = max(1, copies_per_chunk - 1)
    items = [(first, min(first + per_chunk, groups.n_groups), seed + run, seed + run if init_from_scratch else None)
             for run in range(seeds) for first in range(0, groups.n_groups, per_chunk)]
    blocks = (executor or LocalExecutor()).map(train_copies, runs, items, [stop - first for first, stop, *_ in items],
                                                 lambda fraction: progress(kind, fraction))
    differences = np.empty((seeds, len(horizons), len(test), groups.n_groups))
    for (first, stop, run_seed, _), measured in zip(items, blocks):
        # (horizons, copies, n_test) -> changed minus baseline, as (horizons, n_test, groups)
        differences[run_seed - seed, :, :, first:stop] = (measured[:, 1:] - measured[:, :1]).transpose(0, 2, 1)
    # Positive = up-weighting lowers the (lower-is-better) measurement.
    per_seed = -differences / weight_change if weight_change != 0 else np.zeros_like(differences)
    scores = per_seed.mean(axis=0)
    standard_error = (per_seed.std(axis=0, ddof=1) / np.sqrt(seeds)) if seeds > 1 else np.full_like(scores, np.nan)
    params = {"recipe": dataclasses.asdict(recipe), "weight_change": weight_change, "horizons": list(horizons),
              "seeds": seeds, "seed": seed, "measurement": measurement}
    return GoldStandard(kind, list(horizons), scores, standard_error, differences, weight_change, measurement, params)


def further_training(model: TrainedModel, train: Dataset, test: Dataset, groups: Groups, *,
                     epochs: list[float] | tuple[float, ...] = (1.0,), epsilon: float | None = 1.0,
                     seeds: int = 5, seed: int = 0, recipe: Recipe | None = None,
                     measurement: str = "loss", copies_per_chunk: int = 128,
                     progress: Progress = no_progress, executor: Executor | None = None) -> GoldStandard:
    """The FiMO gold standard: sensitivity of each test measurement to re-weighting each group
    during further training from the final weights. ``epsilon=None`` leaves the group out
    (weight change -1). ``epochs`` are the horizons recorded along one run. ``executor`` runs
    the blocks of copies (default: this process)."""
    recipe = recipe or Recipe()
    weight_change = -1.0 if epsilon is None else float(epsilon)
    return _paired_gold("further-training", model, train, test, groups, recipe=recipe,
                        weight_change=weight_change, horizons=sorted(epochs), seeds=seeds, seed=seed,
                        init_from_scratch=False, measurement=measurement,
                        copies_per_chunk=copies_per_chunk, progress=progress, executor=executor)


def leave_group_out(model: TrainedModel, train: Dataset, test: Dataset, groups: Groups, *,
                    epochs: float | None = None, seeds: int = 1, seed: int = 0,
                    recipe: Recipe | None = None, measurement: str = "loss",
                    copies_per_chunk: int = 128, progress: Progress = no_progress,
                    executor: Executor | None = None) -> GoldStandard:
    """Retrain from scratch with each group removed (same seeds as the full run)."""
    recipe = recipe or dataclasses.replace(Recipe.of_model(model), normalize="batch")
    if epochs is None:
        epochs = float(model.train_config.epochs) if model.train_config.optimizer != "lbfgs" else 100.0
    return _paired_gold("leave-group-out", model, train, test, groups, recipe=recipe, weight_change=-1.0,
                        horizons=[float(epochs)], seeds=seeds, seed=seed, init_from_scratch=True,
                        measurement=measurement, copies_per_chunk=copies_per_chunk, progress=progress,
                        executor=executor)


# ---------------------------------------------------------------------------------- LDS
@dataclass
class LDSEnsemble:
    """Models trained on random subsets of groups: ``masks`` (M, K) says which groups each
    subset keeps, ``outputs`` (M, n_test) the measurement (lower is better) of its model."""

    masks: np.ndarray
    outputs: np.ndarray
    alpha: float
    params: dict


def retraining_epochs(model: TrainedModel) -> float:
    """Epochs of a from-scratch retraining: the model's own (100 for L-BFGS models, which the
    batched Adam recipe needs to reach their optimum)."""
    return float(model.train_config.epochs) if model.train_config.optimizer != "lbfgs" else 100.0


def lds_ensemble(model: TrainedModel, train: Dataset, test: Dataset, groups: Groups, *,
                 n_subsets: int = 50, alpha: float = 0.5, epochs: float | None = None, seeds: int = 1,
                 seed: int = 0, recipe: Recipe | None = None, measurement: str = "loss",
                 copies_per_chunk: int = 64, progress: Progress = no_progress,
                 executor: Executor | None = None) -> LDSEnsemble:
    """Train ``n_subsets`` models from scratch, each on a random ``alpha`` fraction of the groups."""
    if n_subsets < 2:
        raise GDAError(f"LDS needs at least 2 subsets, got {n_subsets}")
    if not 0 < alpha < 1:
        raise GDAError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    if len(groups.labels) != len(train):
        raise GDAError(f"grouping covers {len(groups.labels)} points but the training set has {len(train)}")
    rng = np.random.default_rng(seed)
    keep = max(1, round(alpha * groups.n_groups))
    masks = np.zeros((n_subsets, groups.n_groups), dtype=bool)
    for row in masks:
        row[rng.choice(groups.n_groups, size=keep, replace=False)] = True
    if model.text is not None:
        return _text_lds_ensemble(model, train, test, masks, groups, alpha=alpha, epochs=epochs, seeds=seeds,
                                  seed=seed, recipe=recipe, measurement=measurement, progress=progress,
                                  executor=executor)
    recipe = recipe or Recipe.of_model(model)
    epochs = retraining_epochs(model) if epochs is None else epochs
    steps = max(1, round(epochs * math.ceil(len(train) / recipe.batch_size)))
    # One item per seed and block of copies (the blocks the trainer would make itself).
    weights = functools.partial(_subset_weights, masks[:, groups.labels])
    runs = CopyRuns(model, recipe, train, test, [steps], measurement, copies_per_chunk, weights)
    block = max(1, copies_per_chunk)
    items = [(first, min(first + block, n_subsets), seed + run, seed + run)
             for run in range(seeds) for first in range(0, n_subsets, block)]
    measured = (executor or LocalExecutor()).map(train_copies, runs, items, [stop - first for first, stop, *_ in items],
                                                   lambda fraction: progress("lds ensemble", fraction))
    outputs = np.zeros((n_subsets, len(test)))
    for (first, stop, _, _), block_outputs in zip(items, measured):
        outputs[first:stop] += block_outputs[0] / seeds
    params = {"n_subsets": n_subsets, "alpha": alpha, "epochs": epochs, "seeds": seeds, "seed": seed,
              "recipe": dataclasses.asdict(recipe), "measurement": measurement}
    return LDSEnsemble(masks, outputs, alpha, params)


def _text_lds_ensemble(model: TrainedModel, train: Dataset, test: Dataset, masks: np.ndarray, groups: Groups, *,
                       alpha: float, epochs: float | None, seeds: int, seed: int, recipe: Recipe | None,
                       measurement: str, progress: Progress, executor: Executor | None) -> LDSEnsemble:
    """:func:`lds_ensemble` for a Hugging Face text model that says how it is retrained
    (``model.text.retraining``, the built-in demo): each subset's model is its fine-tuned part
    (the last encoder layer and the head) trained again with its own recipe from the
    pretrained encoder and a fresh classifier, on the frozen layers' output computed once."""
    retraining = model.text.retraining
    if retraining is None:
        raise GDAError("LDS retrains the model on subsets, and an uploaded text model does not say how it was "
                       "fine-tuned (from which encoder, with which recipe); it works for the built-in minilm "
                       "demo; use the further-training gold standard here")
    if recipe is not None:
        raise GDAError("a text model's LDS retrains with the model's own fine-tuning recipe; drop the recipe")
    if executor is not None and not isinstance(executor, LocalExecutor):
        raise GDAError("a text model's LDS retrains in this process; the ray executor is for zoo models")
    outputs = retraining.subset_outputs(model.module, train, test, masks[:, groups.labels], seeds=seeds, seed=seed,
                                        epochs=epochs, measurement=measurement,
                                        progress=lambda fraction: progress("lds ensemble", fraction))
    params = {"n_subsets": len(masks), "alpha": alpha, "epochs": DEMO_RECIPE["epochs"] if epochs is None else epochs,
              "seeds": seeds, "seed": seed, "recipe": {**DEMO_RECIPE, "start": "the pretrained encoder, a fresh head"},
              "measurement": measurement}
    return LDSEnsemble(masks, outputs, alpha, params)


def lds(scores: np.ndarray, ensemble: LDSEnsemble) -> dict:
    """Spearman, per test point, between each subset's predicted output (the sum of its groups'
    scores) and its observed output (negated measurement, so "helps" is higher); averaged."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (ensemble.outputs.shape[1], ensemble.masks.shape[1]):
        raise GDAError(f"scores of shape {scores.shape} do not match the ensemble "
                       f"({ensemble.outputs.shape[1]} test points, {ensemble.masks.shape[1]} groups)")
    predicted = ensemble.masks.astype(np.float64) @ scores.T      # (M, n_test)
    observed = -ensemble.outputs                                  # (M, n_test)
    per_test = spearman(predicted, observed, axis=0)
    valid = per_test[np.isfinite(per_test)]
    return {"lds": float(valid.mean()) if len(valid) else float("nan"), "lds_se": standard_error(valid),
            "per_test": per_test}


def point_scores(scores: np.ndarray, groups: Groups) -> np.ndarray:
    """(n_test, N) per-point scores implied by (n_test, K) group scores: the equal share.

    For gradient-linear methods a group's score is the sum of its members' scores,
    ``S_G = sum_{i in G} s_i``. Knowing only that sum, the estimate of each member's score is
    the equal share ``s_i = S_G / |G|``: exact when the members contribute equally, and the
    least-squares estimate of the members' scores given only their sum when they are
    exchangeable. Per-example scores (every ``|G| = 1``) are returned unchanged."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != groups.n_groups:
        raise GDAError(f"scores of shape {scores.shape} do not have one column per group ({groups.n_groups})")
    sizes = np.bincount(groups.labels, minlength=groups.n_groups)
    return scores[:, groups.labels] / sizes[groups.labels]


def point_lds(scores: np.ndarray, groups: Groups, ensemble: LDSEnsemble) -> dict:
    """The point-level LDS of group scores: :func:`lds` of their equal shares
    (:func:`point_scores`) against an ensemble trained on random subsets of *points*
    (:func:`point_lds_ensemble`), so every grouping and K is measured on one scale.

    A subset's predicted effect is ``sum_{i in subset} s_i = sum_G S_G |G ∩ subset| / |G|``.
    Per-example scores give exactly the per-example LDS on the same subsets."""
    if ensemble.masks.shape[1] != len(groups.labels):
        raise GDAError(f"the point-level ensemble has {ensemble.masks.shape[1]} columns, not one per training "
                       f"point ({len(groups.labels)}): it must be trained on subsets of points")
    return lds(point_scores(scores, groups), ensemble)


def kept_variance(per_example_scores: np.ndarray, groups: Groups) -> np.ndarray:
    """Per test point, the share of the per-example scores that a grouping's equal shares keep:
    ``sum_G |G| m_G^2 / sum_i s_i^2``, with ``m_G`` the mean score of G's members (the equal
    share of the group sum).

    It measures agreement with the per-example run, with no gold standard: on subsets that keep
    each point independently, the equal shares' predicted effect ``sum_i m_G(i) z_i`` and the
    per-example one ``sum_i s_i z_i`` have Pearson correlation exactly ``sqrt(kept)`` (their
    covariance and the equal shares' variance are both ``Var(z) sum_G |G| m_G^2``). It is not
    fidelity to the gold: the largest scores dominate it, so a grouping that isolates the
    highest-scoring points keeps more of it without a higher LDS. 1 when every group's members
    score alike, and for the per-example partition."""
    scores = np.asarray(per_example_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(groups.labels):
        raise GDAError(f"per-example scores of shape {scores.shape} do not have one column per training point "
                       f"({len(groups.labels)})")
    shares = point_scores(scores @ groups.membership_matrix().T.astype(np.float64), groups)
    total = (scores ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (shares ** 2).sum(1) / total, np.nan)


def point_lds_ensemble(model: TrainedModel, train: Dataset, test: Dataset, **options) -> LDSEnsemble:
    """The point-level gold standard: :func:`lds_ensemble` on subsets of training *points*
    (each model keeps a random ``alpha`` fraction of the points), the same for every grouping."""
    return lds_ensemble(model, train, test, per_point_groups(len(train)), **options)


def per_point_groups(n_points: int) -> Groups:
    """The partition into singletons (labels 0..N-1, as the per-example grouping makes it)."""
    return Groups(np.arange(n_points), n_points, "per-example")


def damping_for_horizon(lr: float, steps: int) -> float:
    """In the unified view damping is the inverse amount of further training: 1 / (lr x T)."""
    if lr <= 0 or steps < 1:
        raise GDAError("need lr > 0 and steps >= 1")
    return 1.0 / (lr * steps)



# ------------------------------------------------------------------------- gold caching
def compute_gold(config: GoldConfig, model: TrainedModel, train: Dataset, test: Dataset, groups: Groups,
                 cache: ResultCache, progress: Progress, executor: Executor | None = None) -> GoldStandard | LDSEnsemble:
    """The gold standard for these groups, from ``cache`` when it was computed before;
    ``executor`` trains its blocks of model copies (default: this process)."""
    params = {"gold": dataclasses.asdict(config), "model": model.fingerprint(), "train": train.fingerprint(),
              "test": test.fingerprint(),
              "groups": hashlib.sha256(np.ascontiguousarray(groups.labels).tobytes()).hexdigest()}
    if config.kind == "lds":
        def compute_lds(report: Progress) -> tuple[dict, dict]:
            ensemble = lds_ensemble(model, train, test, groups, n_subsets=config.n_subsets, alpha=config.alpha,
                                    seeds=config.seeds, measurement=config.measurement,
                                    progress=both(progress, report), executor=executor)
            return {"masks": ensemble.masks, "outputs": ensemble.outputs}, ensemble.params

        arrays, summary, _ = cache.get_or_compute("lds", params, compute_lds)
        return LDSEnsemble(arrays["masks"].astype(bool), arrays["outputs"], config.alpha, summary)

    def compute(report: Progress) -> tuple[dict, dict]:
        if config.kind == "further-training":
            gold = further_training(model, train, test, groups, epochs=list(config.epochs), epsilon=config.epsilon,
                                    seeds=config.seeds, recipe=config.recipe(), measurement=config.measurement,
                                    progress=both(progress, report), executor=executor)
        else:
            gold = leave_group_out(model, train, test, groups, seeds=config.seeds,
                                   measurement=config.measurement, progress=both(progress, report),
                                   executor=executor)
        arrays = {"scores": gold.scores, "standard_error": gold.standard_error, "differences": gold.differences}
        return arrays, {**gold.params, "horizons": gold.horizons, "weight_change": gold.weight_change}

    arrays, summary, _ = cache.get_or_compute("gold", params, compute)
    return GoldStandard(config.kind, [float(h) for h in summary["horizons"]], arrays["scores"],
                        arrays["standard_error"], arrays["differences"], float(summary["weight_change"]),
                        config.measurement, summary)


def compute_point_lds(config: GoldConfig, model: TrainedModel, train: Dataset, test: Dataset, cache: ResultCache,
                      progress: Progress, executor: Executor | None = None) -> LDSEnsemble:
    """The point-level LDS gold standard (:func:`point_lds_ensemble`) for an LDS ``config``:
    computed once per model, data, seeds, subset count and fraction, and kept in ``cache``
    under the same key as the per-example grouping's group-level ensemble (they are the same
    models), so every grouping and K of a sweep, and later sweeps, share it."""
    if config.kind != "lds":
        raise GDAError(f"the point-level yardstick is an LDS gold standard, not {config.kind!r}")
    return compute_gold(config, model, train, test, per_point_groups(len(train)), cache, progress, executor)
