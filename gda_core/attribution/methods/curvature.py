"""Curvature of the mean training loss as a batched matrix-vector product.

The Gauss-Newton matrix (GGN, positive semi-definite: the safe default) or the Hessian, of
the data task's mean loss over a sample of training rows, at the model's current weights. The
GGN is J^T H_out J with H_out the task's output Hessian (softmax's diag(p) - p p^T for
cross-entropy, 1 for squared error).
Products are batched over vectors with ``vmap`` and chunked over rows, so memory stays
bounded; the full P x P matrix is only built on request, for small models.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, jvp, vjp, vmap

from ...errors import GDAError
from ...inputs.datasets import Dataset
from ..grads import GradientEngine

CURVATURES = ("ggn", "hessian")


#: the largest parameter count whose full curvature matrix is built (12000^2 doubles: 1.1 GB)
MAX_EXACT_DIM = 12000


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
        for start in range(0, self.n_rows, self.row_chunk):
            inputs = self.inputs[start:start + self.row_chunk]
            labels = self.labels[start:start + self.row_chunk]
            for v_start in range(0, len(vectors), self.vector_chunk):
                block = vectors[v_start:v_start + self.vector_chunk]
                out[v_start:v_start + len(block)] += self._product(inputs, labels, block)
        return out / self.n_rows

    def matvec_rows(self, vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The same product over a subset of the sample's rows (for stochastic solvers)."""
        vectors = vectors.to(device=self.engine.device, dtype=self.engine.dtype)
        out = torch.zeros_like(vectors)
        for v_start in range(0, len(vectors), self.vector_chunk):
            block = vectors[v_start:v_start + self.vector_chunk]
            out[v_start:v_start + len(block)] = self._product(self.inputs[rows], self.labels[rows], block)
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
