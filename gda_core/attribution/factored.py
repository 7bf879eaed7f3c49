"""Per-example gradient products without per-example gradients, for Linear and Conv2d layers.

A Linear or Conv2d layer's per-example weight gradient (its bias as one more input column) is
``G_i = sum_p d_ip a_ip^T``: ``a_ip`` the layer's input at output position p (a Conv2d's
unfolded patch) and ``d_ip`` the gradient with respect to the layer's output there
(:mod:`gda_core.attribution.layers` captures both for a whole batch with one forward and one
backward). Hence, per layer,

- inner products factor: ``G_t . G_i = sum_{p,q} (d_tp . d_iq)(a_tp . a_iq)``, for a Linear
  layer (one position) ``(d_t . d_i)(a_t . a_i)``: Grad-Dot, Grad-Cos and TracIn never form a
  P-dimensional gradient;
- projections factor (LoGra, Choe et al. 2024): with ``P = P_out (x) P_in``,
  ``P vec(G_i) = vec(sum_p (P_out^T d_ip)(P_in^T a_ip)^T)``: TRAK's features cost
  ``out k_out + in k_in`` per position instead of ``P k``;
- where a P-dimensional gradient is needed it is ``sum_p d_ip a_ip^T``, one batched product,
  instead of a ``vmap`` over per-example backward passes.

For a convolution the factored inner product costs ``T^2 (in + out)`` per pair against
``in x out`` for materialising, so each layer takes the cheaper of the two.

:class:`FactoredEngine` is a :class:`GradientEngine` whose per-example passes (every group a
single point) go this way when the model allows it (a LayerNorm's elementwise gradient rides
along as a dense factor, :func:`_elementwise_factor`), and otherwise through the parent's
``vmap`` path, which stays the reference: models with BatchNorm or Dropout in train mode,
parameters outside Linear/Conv2d/LayerNorm layers (BatchNorm's affine weights, an exported
``.pt2`` program, which keeps no layer modules) or a layer that runs twice per forward fall back, and
:attr:`FactoredEngine.path` says which path ran and why. Before its first use the factored
path is checked against ordinary backward passes on two examples; a mismatch also falls back. Grouped passes
keep the group-sum path (a group's gradient is a sum of outer products, not one).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..errors import GDAError
from ..inputs.datasets import Dataset
from .grads import GradientChunk, GradientEngine, RandomProjector
from .layers import Layer, LayerLayout, capture, find_layers, layer_gradients, objective_cotangent

#: relative error above which the two-example check against vmap rejects the factored path
CHECK_TOLERANCE = 1e-4

#: (a, d) per layer: (n, T, in_dim) activations (bias column included) and (n, T, out) output gradients
Factors = list[tuple[torch.Tensor, torch.Tensor]]

_TRAIN_MODE_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _elementwise_factor(layer: Layer, normalised: torch.Tensor, gradients: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """A LayerNorm's per-example gradient as a one-position factor pair ``(g, 1)``: ``g`` the
    weight's gradient ``sum_t d_t * xhat_t`` then the bias's ``sum_t d_t`` (n, 1, k or 2k),
    and a unit output gradient (n, 1, 1), so that every product of factor pairs
    (:func:`factor_dot`, :func:`factor_sq_norms`) gives ``g_t . g_i`` for it."""
    parts = [(gradients * normalised).sum(1)]
    if layer.bias is not None:
        parts.append(gradients.sum(1))
    gradient = torch.cat(parts, dim=1)[:, None, :]
    return gradient, gradient.new_ones(len(gradient), 1, 1)


def _materialise_cheaper(layer_t: int, other_t: int, in_dim: int, out_dim: int) -> bool:
    """Whether forming a layer's per-example gradients beats the position-pair products."""
    return layer_t * other_t * (in_dim + out_dim) > in_dim * out_dim


def factor_dot(test: Factors, train: Factors) -> torch.Tensor:
    """(n_test, n_train) gradient inner products summed over the layers, from the factors."""
    total = None
    for (a_t, d_t), (a_i, d_i) in zip(test, train):
        if a_t.shape[1] == 1 and a_i.shape[1] == 1:
            block = (d_t[:, 0] @ d_i[:, 0].T) * (a_t[:, 0] @ a_i[:, 0].T)
        elif _materialise_cheaper(a_t.shape[1], a_i.shape[1], a_t.shape[2], d_t.shape[2]):
            block = layer_gradients(a_t, d_t).flatten(1) @ layer_gradients(a_i, d_i).flatten(1).T
        else:
            n_t, t_t, n_i, t_i = a_t.shape[0], a_t.shape[1], a_i.shape[0], a_i.shape[1]
            dd = (d_t.reshape(n_t * t_t, -1) @ d_i.reshape(n_i * t_i, -1).T).reshape(n_t, t_t, n_i, t_i)
            aa = (a_t.reshape(n_t * t_t, -1) @ a_i.reshape(n_i * t_i, -1).T).reshape(n_t, t_t, n_i, t_i)
            block = (dd * aa).sum((1, 3))
        total = block if total is None else total + block
    assert total is not None
    return total


def factor_sq_norms(factors: Factors) -> torch.Tensor:
    """(n,) squared norms of the per-example gradients, from the factors."""
    total = None
    for a, d in factors:
        if a.shape[1] == 1:
            value = (d[:, 0] ** 2).sum(1) * (a[:, 0] ** 2).sum(1)
        elif _materialise_cheaper(a.shape[1], a.shape[1], a.shape[2], d.shape[2]):
            value = (layer_gradients(a, d) ** 2).sum((1, 2))
        else:
            value = ((d @ d.transpose(1, 2)) * (a @ a.transpose(1, 2))).sum((1, 2))
        total = value if total is None else total + value
    assert total is not None
    return total


class KroneckerProjector:
    """A seeded random projection with one Kronecker factor pair per layer (LoGra): layer l's
    block ``G`` (out x in, the bias as the last column) maps to ``P_out^T G P_in``, with
    Gaussian ``P_out`` (out x k_out) and ``P_in`` (in x k_in) scaled so that inner products
    are kept in expectation; a factor whose k equals its side is the identity (exact). The
    output dimension, ``sum_l k_out k_in``, is shared out in proportion to the layers' sizes
    and may differ slightly from the one asked for (:attr:`dim` is the actual one). Parameters
    outside the layers (a LayerNorm's or BatchNorm's affine weights, usually few) get a dense
    Gaussian projection of their own, its share of ``dim`` in proportion to their count too
    (exact when that share covers them); :meth:`project_factors` takes them from LayerNorms'
    factors, and for parameters no factor covers only :meth:`project` of flat vectors applies."""

    def __init__(self, engine: GradientEngine, layers: list[Layer], dim: int, seed: int = 0):
        if dim < 1:
            raise GDAError(f"projection dimension must be >= 1, got {dim}")
        layers = [layer for layer in layers if layer.kind != "layernorm"]  # elementwise: projected densely
        layout = LayerLayout(engine.space, layers)
        self.input_dim, self.seed = layout.dim, seed
        rest = [layout.offsets[name] for name in layout.uncovered]
        #: the columns of the parameters outside the layers, and their dense projection
        #: (None: copied exactly)
        self.rest_columns = torch.cat([torch.arange(r.start, r.stop) for r in rest]) if rest else None
        n_rest = 0 if self.rest_columns is None else len(self.rest_columns)
        total = sum(layer.out_dim * layer.in_dim for layer in layers) + n_rest
        rest_share = max(1, round(dim * n_rest / total)) if n_rest else 0
        self.rest = RandomProjector(n_rest, rest_share, seed=seed * 1_000_003 + len(layers)) \
            if 0 < rest_share < n_rest else None
        self.rest_dim = min(rest_share, n_rest)
        #: per layer: weight columns, bias column (or None), out, in, k_out, k_in
        self.blocks: list[tuple[slice, slice | None, int, int, int, int]] = []
        for layer in layers:
            size = layer.out_dim * layer.in_dim
            share = max(1, round(dim * size / total))
            if share >= size:
                k_out, k_in = layer.out_dim, layer.in_dim
            else:
                k_out = min(layer.out_dim, max(1, round(math.sqrt(share * layer.out_dim / layer.in_dim))))
                k_in = min(layer.in_dim, max(1, math.ceil(share / k_out)))
            bias = layout.offsets[layer.bias] if layer.bias is not None else None
            self.blocks.append((layout.offsets[layer.weight], bias, layer.out_dim, layer.in_dim, k_out, k_in))
        self.dim = sum(k_out * k_in for *_, k_out, k_in in self.blocks) + self.rest_dim
        self._factors: dict[tuple, list[tuple[torch.Tensor | None, ...]]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_factors": {}}  # regenerated from the seed

    def factors(self, device: torch.device, dtype: torch.dtype) -> list[tuple[torch.Tensor | None, ...]]:
        """(P_out, P_in) per layer, None for an identity factor."""
        key = (str(device), dtype)
        if key not in self._factors:
            made = []
            for index, (_, _, out, width, k_out, k_in) in enumerate(self.blocks):
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
                p_out = None if k_out == out else torch.randn(out, k_out, generator=generator) / math.sqrt(k_out)
                p_in = None if k_in == width else torch.randn(width, k_in, generator=generator) / math.sqrt(k_in)
                made.append(tuple(None if p is None else p.to(device=device, dtype=dtype) for p in (p_out, p_in)))
            self._factors[key] = made
        return self._factors[key]

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """(b, P) -> (b, dim) for any flat vectors (test gradients, curvature products)."""
        if vectors.shape[-1] != self.input_dim:
            raise GDAError(f"projector expects {self.input_dim} columns, got {vectors.shape[-1]}")
        parts = []
        pairs = self.factors(vectors.device, vectors.dtype)
        for (weight, bias, out, _, _, _), (p_out, p_in) in zip(self.blocks, pairs):
            block = vectors[:, weight].reshape(len(vectors), out, -1)
            if bias is not None:
                block = torch.cat([block, vectors[:, bias, None]], dim=2)
            if p_out is not None:
                block = p_out.T @ block
            if p_in is not None:
                block = block @ p_in
            parts.append(block.flatten(1))
        if self.rest_columns is not None:
            rest = vectors[:, self.rest_columns.to(vectors.device)]
            parts.append(rest if self.rest is None else self.rest.project(rest))
        return torch.cat(parts, dim=1)

    def info(self) -> dict:
        """What the projection covers, for ``method_info``."""
        rest = 0 if self.rest_columns is None else len(self.rest_columns)
        return {"layers": len(self.blocks), "dense_parameters": rest, "dense_dim": self.rest_dim}

    def project_factors(self, factors: Factors) -> torch.Tensor:
        """(n, dim) projections of per-example gradients given as layer factors: one pair per
        layer, then any LayerNorms' (:func:`_elementwise_factor`), whose gradients are the
        parameters outside the layers, in their order, projected densely."""
        reference = factors[0][0]
        pairs = self.factors(reference.device, reference.dtype)
        rest = [a[:, 0] for a, _ in factors[len(pairs):]]
        n_rest = 0 if self.rest_columns is None else len(self.rest_columns)
        if sum(part.shape[1] for part in rest) != n_rest:
            raise GDAError("layer factors do not cover the parameters outside the layers; project flat gradients")
        parts = []
        for (a, d), (p_out, p_in) in zip(factors, pairs):
            d = d if p_out is None else d @ p_out
            a = a if p_in is None else a @ p_in
            parts.append(torch.einsum("nto,nti->noi", d, a).flatten(1))
        if rest:
            rest_part = torch.cat(rest, dim=1)
            parts.append(rest_part if self.rest is None else self.rest.project(rest_part))
        return torch.cat(parts, dim=1)


class FactoredEngine(GradientEngine):
    """A :class:`GradientEngine` whose per-example passes use per-layer factors where the
    model allows it (see the module docstring); :attr:`path` says which path runs and why."""

    def __init__(self, module: nn.Module, **options):
        super().__init__(module, **options)
        self.layers: list[Layer] = []
        #: the Linear/Conv2d layers among the parameters, even where they do not cover all
        #: (a Kronecker projection takes them, the rest projected densely)
        self.projection_layers: list[Layer] = []
        self._checked = False
        self._reason = self._refusal()

    # ---------------------------------------------------------------- the plan
    def _refusal(self) -> str | None:
        """Why the factored path cannot run on this model (None: it can, pending the check)."""
        in_train_mode = [name or "the model" for name, child in self.function_module.named_modules()
                         if isinstance(child, _TRAIN_MODE_TYPES) and child.training]
        if in_train_mode:
            return f"{in_train_mode[0]} is in train mode (its output depends on the whole batch or on chance)"
        try:
            layers = find_layers(self.function_module, self.space.names, layer_norms=True)
        except GDAError as error:
            return str(error)
        self.projection_layers = [layer for layer in layers if layer.kind != "layernorm"]
        if not self.projection_layers:
            return "no nn.Linear or nn.Conv2d layer (an exported .pt2 program keeps none)"
        uncovered = LayerLayout(self.space, layers).uncovered
        if uncovered:
            return f"parameters outside Linear/Conv2d/LayerNorm layers: {', '.join(uncovered[:3])}"
        self.layers = layers
        self.layout = LayerLayout(self.space, layers)
        return None

    @property
    def has_layer_norms(self) -> bool:
        """Whether some factors are LayerNorms' (elementwise, :func:`_elementwise_factor`)."""
        return any(layer.kind == "layernorm" for layer in self.layers)

    @property
    def factored(self) -> bool:
        """Whether per-example passes take the factored path (so far: the check may still refuse)."""
        return self._reason is None

    @property
    def path(self) -> str:
        """Which per-example gradient path runs, in words."""
        if self._reason is None:
            state = "checked against autograd on 2 examples" if self._checked else "not yet checked"
            return f"factored (per-layer activations x output gradients; {state})"
        return f"vmap ({self._reason})"

    def check(self, data: Dataset, objective: str = "loss") -> bool:
        """Compare the factored per-example gradients of the first two examples with ordinary
        backward passes; on a mismatch (e.g. a layer's weight also used outside it) fall back for good."""
        if self._reason is not None or self._checked:
            return self._reason is None
        sample = data.subset(slice(0, min(2, len(data))))
        # The reference: one ordinary backward per example (the parent's group backward).
        backward = self._backward_grad(sample.task.objective(objective))
        inputs, labels = self.inputs(sample), sample.labels.to(self.device)
        ones = torch.ones(1, 1, device=self.device, dtype=self.dtype)
        reference = torch.cat([self.space.flatten(backward(self.params, inputs[None, row:row + 1],
                                                           labels[None, row:row + 1], ones))
                               for row in range(len(sample))])
        try:
            factored = torch.cat([self._materialise(f) for _, f in self.factor_chunks(sample, objective=objective)])
        except GDAError as error:
            self._reason = f"capture failed: {error}"
            return False
        error = float((factored - reference).norm() / reference.norm().clamp_min(1e-30))
        if not math.isfinite(error) or error > CHECK_TOLERANCE:
            self._reason = f"the factored gradients differ from autograd's by {error:.2g} (relative) on 2 examples"
            return False
        self._checked = True
        return True

    # -------------------------------------------------------------- factors
    def factor_chunks(self, data: Dataset, *, objective: str = "loss", weights: torch.Tensor | None = None,
                      inputs: torch.Tensor | None = None) -> Iterator[tuple[np.ndarray, Factors]]:
        """(rows, factors) of every example's objective gradient, ``chunk_examples`` at a time."""
        if self._reason is not None:
            raise GDAError(f"the factored path is not available: {self._reason}")
        task_objective = data.task.objective(objective)
        inputs = self.inputs(data) if inputs is None else inputs
        labels = data.labels.to(self.device)
        weights = None if weights is None else weights.to(device=self.device, dtype=self.dtype)
        for start in range(0, len(inputs), self.chunk_examples):
            rows = slice(start, start + self.chunk_examples)
            chunk_labels = labels[rows]
            chunk_weights = None if weights is None else weights[rows]

            def cotangents(outputs, chunk_labels=chunk_labels, chunk_weights=chunk_weights):
                return objective_cotangent(outputs, task_objective, chunk_labels, chunk_weights)

            batch = capture(self.function_module, self.params, self.layers, inputs[rows], cotangents)
            yield (np.arange(start, start + len(batch.outputs)),
                   [_elementwise_factor(layer, a, g[0]) if layer.kind == "layernorm" else (a, g[0])
                    for layer, a, g in zip(self.layers, batch.activations, batch.gradients)])

    def gradients_of(self, factors: Factors) -> torch.Tensor:
        """(n, P) per-example gradients from their factors."""
        return self._materialise(factors)

    def _materialise(self, factors: Factors) -> torch.Tensor:
        """(n, P) per-example gradients, each layer written straight into its columns."""
        n = len(factors[0][0])
        flat = factors[0][0].new_empty(n, self.space.dim)
        for layer, (a, d) in zip(self.layers, factors):
            if layer.kind == "layernorm":  # a is the gradient itself (d is 1)
                flat[:, self.layout.offsets[layer.weight]] = a[:, 0, :layer.in_dim]
                if layer.bias is not None:
                    flat[:, self.layout.offsets[layer.bias]] = a[:, 0, layer.in_dim:]
                continue
            width = layer.in_dim - (layer.bias is not None)
            weight = flat[:, self.layout.offsets[layer.weight]].view(n, layer.out_dim, width)
            if a.shape[1] == 1:
                torch.mul(d[:, 0, :, None], a[:, 0, None, :width], out=weight)
                bias = d[:, 0]
            else:
                full = layer_gradients(a, d)
                weight.copy_(full[:, :, :width])
                bias = full[:, :, -1]
            if layer.bias is not None:
                flat[:, self.layout.offsets[layer.bias]] = bias
        return flat

    # ------------------------------------------------------------ gradients
    def group_gradients(self, data: Dataset, group_labels: np.ndarray, n_groups: int, *, objective: str = "loss",
                        weights: torch.Tensor | None = None, projector=None,
                        inputs: torch.Tensor | None = None) -> Iterator[GradientChunk]:
        """The parent's contract; per-example groupings (every group one point) take the
        factored path when it is available and passes its check."""
        group_labels = np.asarray(group_labels, dtype=np.int64)
        singletons = (n_groups == len(data) and group_labels.shape == (len(data),)
                      and np.array_equal(np.sort(group_labels), np.arange(n_groups)))
        if not singletons or not self.check(data, objective):
            yield from super().group_gradients(data, group_labels, n_groups, objective=objective, weights=weights,
                                               projector=projector, inputs=inputs)
            return
        for rows, factors in self.factor_chunks(data, objective=objective, weights=weights, inputs=inputs):
            if isinstance(projector, KroneckerProjector):
                gradients = projector.project_factors(factors)
            else:
                gradients = self._materialise(factors)
                if projector is not None:
                    gradients = projector.project(gradients)
            yield GradientChunk(group_labels[rows], gradients)


def make_projector(engine: GradientEngine, dim: int, seed: int) -> KroneckerProjector | RandomProjector:
    """A Kronecker (LoGra) projection of the engine's Linear/Conv2d layers (any other
    parameters projected densely beside them), else, with no such layer, a dense Gaussian
    one; both keep inner products in expectation."""
    if isinstance(engine, FactoredEngine) and engine.projection_layers:
        return KroneckerProjector(engine, engine.projection_layers, dim, seed=seed)
    return RandomProjector(engine.space.dim, min(dim, engine.space.dim), seed=seed)


_WARM: dict[str, float] = {}


def warm_up() -> float:
    """Pay the one-off per-process costs of the gradient paths (torch.func's first vmap, grad
    and jvp traces, autograd's and the layer capture's first calls) on a tiny model, once per
    process: the seconds spent the first time, 0.0 after. Job workers call it before timing
    a run, so ``timings`` show it apart from the method's own time."""
    if "seconds" in _WARM:
        return 0.0
    import time

    from torch.func import functional_call, grad, jvp, vmap

    started = time.perf_counter()
    module = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).eval()
    params = {name: p.detach() for name, p in module.named_parameters()}
    inputs, labels = torch.randn(3, 4), torch.tensor([0, 1, 0])

    def loss(p, x, y):
        return nn.functional.cross_entropy(functional_call(module, p, (x[None],)), y[None])

    vmap(grad(loss), in_dims=(None, 0, 0))(params, inputs, labels)
    tangents = {name: torch.ones_like(value) for name, value in params.items()}
    jvp(lambda p: functional_call(module, p, (inputs,)), (params,), (tangents,))
    layers = find_layers(module, list(params))
    capture(module, params, layers, inputs, lambda outputs: torch.ones_like(outputs)[None])
    _WARM["seconds"] = time.perf_counter() - started
    return _WARM["seconds"]
