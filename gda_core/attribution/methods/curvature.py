"""Curvature of the mean training loss as a batched matrix-vector product.

The Gauss-Newton matrix (GGN, positive semi-definite: the safe default) or the Hessian, of
the data task's mean loss over a sample of training rows, at the model's current weights. The
GGN is J^T H_out J with H_out the task's output Hessian (softmax's diag(p) - p p^T for
cross-entropy, 1 for squared error).
Products are batched over vectors and chunked over rows, so memory stays bounded; the full
P x P matrix is only built on request, for small models.

Two paths give the same GGN product. The reference is ``vmap`` over a ``jvp`` and a ``vjp``
of the model (one forward each, per product). Where every parameter sits in a Linear or
Conv2d layer (a :class:`FactoredEngine` that passes its check) and the factors fit
:data:`FACTORED_GGN_BYTES`, the GGN is built from per-layer factors captured once: each
row's layer inputs ``a`` and the output gradients ``D_c`` of every output coordinate c, so
that ``(J v)_c = sum_l sum_t D_ctl . (V_l a_tl)`` and ``J^T u = sum_c u_c D_c a^T`` per layer:
two matrix products per layer and no forward pass. :attr:`CurvatureOperator.path` says which.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, jvp, vjp, vmap

from ...errors import GDAError
from ...inputs.datasets import Dataset
from ..factored import FactoredEngine
from ..grads import GradientEngine
from ..layers import LayerLayout, capture

CURVATURES = ("ggn", "hessian")


#: the largest parameter count whose full curvature matrix is built (12000^2 doubles: 1.1 GB)
MAX_EXACT_DIM = 12000
#: the most memory the factored GGN's per-row factors may take (else the vmap path runs)
FACTORED_GGN_BYTES = 256 * 2**20
#: the most elements of one factored product's intermediates
FACTORED_CHUNK_ELEMENTS = 2**24


def check_exact_dim(dim: int) -> None:
    """Refuse a full P x P curvature matrix above :data:`MAX_EXACT_DIM` parameters."""
    if dim > MAX_EXACT_DIM:
        raise GDAError(f"the exact inverse needs a {dim} x {dim} matrix; use if-cg, if-arnoldi "
                       f"or last-layer mode for models above {MAX_EXACT_DIM} parameters")


class CurvatureOperator:
    """``matvec(V)`` = V @ C for C the GGN or Hessian of the mean training loss (C symmetric)."""

    max_exact_dim = MAX_EXACT_DIM

    def __init__(self, engine: GradientEngine, data: Dataset, rows, *, kind: str = "ggn",
                 row_chunk: int = 1024, vector_chunk: int = 64):
        if kind not in CURVATURES:
            raise GDAError(f"curvature must be one of {', '.join(CURVATURES)}, got {kind!r}")
        rows = torch.as_tensor(rows, device=engine.device)
        self.engine, self.kind, self.task = engine, kind, data.task
        self.inputs = engine.inputs(data)[rows]
        self.labels = data.labels.to(engine.device)[rows]
        self.row_chunk, self.vector_chunk = row_chunk, vector_chunk
        self.dim = engine.space.dim
        self.n_rows = len(rows)
        self._factors: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        reason = self._factored_refusal(data, rows)
        if reason is None:
            self._capture_factors()
        #: which product path runs, in words
        self.path = ("factored (per-layer inputs x per-output gradients, captured once)" if reason is None
                     else f"vmap ({reason})")

    # --------------------------------------------------------------- factored GGN
    def _factored_refusal(self, data: Dataset, rows: torch.Tensor) -> str | None:
        """Why the factored GGN cannot run here (None: it can)."""
        engine = self.engine
        if self.kind != "ggn":
            return "the Hessian has second-derivative terms the factors do not give"
        if not isinstance(engine, FactoredEngine) or not engine.factored:
            return "the engine has no factored path" if not isinstance(engine, FactoredEngine) else engine.path
        if not engine.check(data.subset(rows[:2].cpu().numpy())):
            return engine.path if not engine.factored else "the factored gradients failed their check"
        if engine.has_layer_norms:
            return "LayerNorm's parameters (the factored GGN covers Linear/Conv2d layers only)"
        probe = capture(engine.function_module, engine.params, engine.layers, self.inputs[:1],
                        lambda out: torch.zeros_like(out)[None])
        n_outputs = probe.outputs.shape[-1]
        per_row = sum(a.shape[1] * (layer.in_dim + n_outputs * layer.out_dim)
                      for layer, a in zip(engine.layers, probe.activations))
        size = per_row * self.n_rows * torch.finfo(engine.dtype).bits // 8
        if size > FACTORED_GGN_BYTES:
            return f"its factors would take {size / 2**20:.0f} MB (> {FACTORED_GGN_BYTES / 2**20:.0f} MB)"
        return None

    def _capture_factors(self) -> None:
        """Per layer: the rows' inputs a (n, T, in) and output gradients D (C, n, T, out) of
        each output coordinate; and the rows' outputs."""
        engine = self.engine
        self.layout = LayerLayout(engine.space, engine.layers)
        pieces, outputs = [], []
        with torch.no_grad():
            for start in range(0, self.n_rows, self.row_chunk):
                inputs = self.inputs[start:start + self.row_chunk]

                def unit_cotangents(out):
                    eye = torch.eye(out.shape[-1], device=out.device, dtype=out.dtype)
                    return eye[:, None, :].expand(-1, len(out), -1)

                batch = capture(engine.function_module, engine.params, engine.layers, inputs, unit_cotangents)
                pieces.append(list(zip(batch.activations, batch.gradients)))
                outputs.append(batch.outputs)
        self._factors = [(torch.cat([p[i][0] for p in pieces]), torch.cat([p[i][1] for p in pieces], dim=1))
                         for i in range(len(engine.layers))]
        self._outputs = torch.cat(outputs)

    def _factored_product(self, rows: slice | torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Sum over these rows of C_i v for each row v of ``vectors``, from the factors."""
        assert self._factors is not None
        blocks = self.layout.split(vectors)
        factors = [(a[rows], d[:, rows]) for a, d in self._factors]
        tangent = None  # (b, n, C): J v
        for block, (a, d) in zip(blocks, factors):
            part = torch.einsum("bnto,cnto->bnc", torch.einsum("boi,nti->bnto", block, a), d)
            tangent = part if tangent is None else tangent + part
        assert tangent is not None
        output_product = self.task.output_hessian_product(self._outputs[rows], tangent)
        return self.layout.merge([torch.einsum("bnto,nti->boi", torch.einsum("bnc,cnto->bnto", output_product, d), a)
                                  for a, d in factors])

    def _product(self, inputs: torch.Tensor, labels: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Sum over these rows of C_i v, for each row v of ``vectors``."""
        engine = self.engine
        space, params, module, task = engine.space, engine.params, engine.function_module, self.task

        def logits_of(p):
            return functional_call(module, p, (inputs,))

        if self.kind == "ggn":
            def single(flat_vector):
                logits, tangent = jvp(logits_of, (params,), (space.unflatten(flat_vector),))
                output_product = task.output_hessian_product(logits, tangent)
                _, pullback = vjp(logits_of, params)
                return space.flatten(pullback(output_product)[0], batch_dims=0)
        else:
            def summed_loss(p):
                return task.loss(logits_of(p), labels).sum()

            def single(flat_vector):
                _, product = jvp(grad(summed_loss), (params,), (space.unflatten(flat_vector),))
                return space.flatten(product, batch_dims=0)

        return vmap(single)(vectors)

    def matvec(self, vectors: torch.Tensor) -> torch.Tensor:
        """(b, P) -> (b, P): each row multiplied by the mean curvature over the sample."""
        vectors = vectors.to(device=self.engine.device, dtype=self.engine.dtype)
        out = torch.zeros_like(vectors)
        row_chunk = self.row_chunk if self._factors is None else self._factored_row_chunk(min(len(vectors),
                                                                                             self.vector_chunk))
        for start in range(0, self.n_rows, row_chunk):
            inputs = self.inputs[start:start + row_chunk]
            labels = self.labels[start:start + row_chunk]
            for v_start in range(0, len(vectors), self.vector_chunk):
                block = vectors[v_start:v_start + self.vector_chunk]
                out[v_start:v_start + len(block)] += (
                    self._product(inputs, labels, block) if self._factors is None
                    else self._factored_product(slice(start, start + row_chunk), block))
        return out / self.n_rows

    def _factored_row_chunk(self, n_vectors: int) -> int:
        """Rows per factored product: its (vectors, rows, positions, out) intermediates below
        FACTORED_CHUNK_ELEMENTS (one chunk for a small sample and one vector)."""
        assert self._factors is not None
        widest = max(d.shape[2] * d.shape[3] for _, d in self._factors)
        return max(1, FACTORED_CHUNK_ELEMENTS // (max(1, n_vectors) * widest))

    def matvec_rows(self, vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The same product over a subset of the sample's rows (for stochastic solvers)."""
        vectors = vectors.to(device=self.engine.device, dtype=self.engine.dtype)
        out = torch.zeros_like(vectors)
        for v_start in range(0, len(vectors), self.vector_chunk):
            block = vectors[v_start:v_start + self.vector_chunk]
            out[v_start:v_start + len(block)] = (
                self._product(self.inputs[rows], self.labels[rows], block) if self._factors is None
                else self._factored_product(rows, block))
        return out / len(rows)

    def matrix(self) -> torch.Tensor:
        """The full symmetric P x P matrix (small models only)."""
        check_exact_dim(self.dim)
        identity = torch.eye(self.dim, device=self.engine.device, dtype=self.engine.dtype)
        columns = torch.cat([self.matvec(identity[s:s + 512]) for s in range(0, self.dim, 512)])
        return 0.5 * (columns + columns.T)

    def largest_eigenvalue(self, iterations: int = 30, seed: int = 0) -> float:
        """Power iteration estimate of the top eigenvalue (in magnitude), computed once."""
        memo = getattr(self, "_top_eigenvalue", {})
        if (iterations, seed) not in memo:
            memo[(iterations, seed)] = self._power_iteration(iterations, seed)
            self._top_eigenvalue = memo
        return memo[(iterations, seed)]

    def _power_iteration(self, iterations: int, seed: int) -> float:
        generator = torch.Generator().manual_seed(seed)
        vector = torch.randn(1, self.dim, generator=generator).to(device=self.engine.device, dtype=self.engine.dtype)
        vector /= vector.norm()
        value = 0.0
        for _ in range(iterations):
            product = self.matvec(vector)
            value = float((product * vector).sum())
            norm = product.norm()
            if norm == 0:
                return 0.0
            vector = product / norm
        return abs(value)

