"""K-FAC and EK-FAC influence: g_t^T (C_KF + lambda I)^-1 g_G with a per-layer Kronecker inverse.

Each Linear and Conv2d layer's block of the GGN is approximated by ``S (x) A`` (in the
row-major order of the weight matrix with its bias as a last column): ``A = E[sum_t a_t
a_t^T]`` over the layer's inputs (a Conv2d's unfolded patches, summed over positions t, a 1
appended for the bias) and ``S = E[1/T sum_t g_t g_t^T]`` over its output gradients (KFC,
Grosse & Martens 2016). The output gradients back-propagate each example's output Hessian
H_out (the task's, softmax's diag(p) - p p^T) factored as B B^T: by default one seeded
Gaussian combination of B's columns per example (``ggn_samples=1``, a Monte Carlo GGN with
the GGN's expectation, as sampling labels from the softmax, the "true Fisher", is), or
``ggn_samples=None`` every column, the exact expectation at one backward per output. With
the eigendecompositions A = Q_A L_A Q_A^T and S = Q_S L_S Q_S^T the inverse of a layer's
block is ``(Q_S (x) Q_A) diag(1 / (L_S L_A^T + lambda)) (Q_S (x) Q_A)^T``. ``if-ekfac``
replaces ``L_S L_A^T`` by the GGN's own diagonal in that eigenbasis, ``E[(Q_S^T G Q_A)^2]``
over per-example gradients G (George et al. 2018); as it keeps only the eigenbases of A and
S, it fits them on ``factor_samples`` rows (256) of the curvature sample and the correction
on all of them.

Damping defaults to a tenth of each layer's mean eigenvalue (``damping_rule="layer-mean"``,
kronfluence's heuristic, one lambda per layer) or, with ``damping_rule="top"``, a tenth of the
largest eigenvalue over all layers (one lambda, as for the other solvers). A block's mean
eigenvalue sets the scale of its own curvature, where one lambda from the largest block's top
eigenvalue over-damps every other block: on a ResNet-9 over mnist "top" cost two thirds of the
LDS (0.09 against 0.26), and on digits / MLP "layer-mean" was ahead too (0.550 against 0.532).

A score is an inner product in the eigenbasis: the test gradient rotated, ``Q_S^T G Q_A`` per
layer, and divided by the damped eigenvalues, against the training side rotated. The
training side is summed at fit from the same captured layer pairs as the correction (one
pass, one more back-propagated column) for groups of fewer than 32 points on average, and
from group gradients (one backward per group) for larger ones, while all K groups fit
``cache_bytes``; otherwise group gradients are streamed at attribution against the test side
taken back to the parameters (``Q diag(1 / (values + lambda)) Q^T g_t``), not rotated one by one.

The blocks are independent layers (block-diagonal); parameters of other modules (BatchNorm's
affine weights) are left out: they drop out of both sides, so a score is an inner product
over the covered parameters, and ``method_info`` names what is covered. Factors are fitted
over the curvature sample in chunks of ``chunk_examples`` rows (at most ``grads.BACKWARD_ROWS``:
captured batches run fastest at that size) and kept in the cache folder
(``factors/``), keyed by the model's and the sample's fingerprints and the options they
depend on, so another grouping, test set or flagging run reuses them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch

from ...errors import GDAError
from ...inputs.datasets import Dataset
from ...io import content_key, default_cache_dir, file_lock, read_npz, write_npz
from ...task import Task
from ..grads import BACKWARD_GROUP_SIZE, BACKWARD_ROWS, GradientChunk, GradientEngine
from ..layers import Layer, LayerLayout, capture, find_layers, layer_gradients, objective_cotangent
from .base import View
from .influence import DEFAULT_DAMPING_FRACTION, InverseCurvatureMethod, InverseOptions

#: bumped when what the cached factors hold changes
FACTOR_FORMAT = 1
DAMPING_RULES = ("top", "layer-mean")
CURVATURE_NOTE = ("GGN: each example's output Hessian (the task's) factored and back-propagated exactly, "
                  "no sampled labels")


@dataclass
class KFACOptions(InverseOptions):
    #: keep fitted factors in the cache folder (``factors/``) for later runs on the same model and data
    cache_factors: bool = True
    #: default damping when ``damping`` is None: "layer-mean" = a tenth of each layer's mean eigenvalue
    #: (kronfluence's heuristic); "top" = a tenth of the largest eigenvalue over all layers (one lambda)
    damping_rule: str = "layer-mean"
    #: None = the exact GGN expectation (every output-Hessian column back-propagated); k = k random
    #: Gaussian combinations of the columns per example (a Monte Carlo GGN with the same expectation,
    #: as sampling labels from the softmax is): k backward passes instead of one per output
    ggn_samples: int | None = 1
    #: rows of the curvature sample the factors A and S are fitted on, a seeded subset, raised to
    #: twice the widest Linear layer's input so that A keeps full rank (None = all rows). K-FAC's
    #: eigenvalues are the factors' own: all rows by default
    factor_samples: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor_samples is not None and self.factor_samples < 1:
            raise GDAError(f"factor_samples must be >= 1 (or None for all), got {self.factor_samples}")
        if self.ggn_samples is not None and self.ggn_samples < 1:
            raise GDAError(f"ggn_samples must be >= 1 (or None for the exact GGN), got {self.ggn_samples}")
        if self.damping_rule not in DAMPING_RULES:
            raise GDAError(f"damping_rule must be one of {', '.join(DAMPING_RULES)}, got {self.damping_rule!r}")


@dataclass
class EKFACOptions(KFACOptions):
    #: EK-FAC takes only the eigenbases from A and S and refits the eigenvalues on every row of
    #: the curvature sample, so the factors need fewer rows (LDS unchanged at 256 on digits / MLP
    #: and a ResNet-9 over mnist, and the factor pass a quarter of the time there)
    factor_samples: int | None = 256


def output_hessian_factor(task: Task, outputs: torch.Tensor) -> torch.Tensor:
    """(m, n, n_outputs) columns B with B B^T = each example's output Hessian; directions
    with no curvature for any example in the batch (softmax's all-ones) are left out."""
    n, width = outputs.shape
    identity = torch.eye(width, device=outputs.device, dtype=outputs.dtype)
    columns = torch.stack([task.output_hessian_product(outputs, identity[j].expand(n, width))
                           for j in range(width)], dim=-1).double()
    values, vectors = torch.linalg.eigh(0.5 * (columns + columns.transpose(1, 2)))
    values = values.clamp_min(0)
    keep = values.amax(0) > 1e-12 * max(float(values.max()), 1e-300)
    factor = (vectors * values.sqrt()[:, None, :])[:, :, keep]
    return factor.permute(2, 0, 1).to(outputs.dtype)


class KroneckerFactors:
    """Per-layer eigendecompositions of A and S, and (EK-FAC) the corrected eigenvalues."""

    def __init__(self, layers: list[Layer], arrays: dict[str, np.ndarray]):
        self.layers = layers
        self.arrays = arrays

        def tensor(key: str) -> torch.Tensor:
            return torch.from_numpy(arrays[key])

        self.activation = [(tensor(f"{i}.a_values"), tensor(f"{i}.a_vectors")) for i in range(len(layers))]
        self.gradient = [(tensor(f"{i}.s_values"), tensor(f"{i}.s_vectors")) for i in range(len(layers))]
        self.corrected = all(f"{i}.correction" in arrays for i in range(len(layers)))
        #: (out, in) eigenvalues of each block in its Kronecker eigenbasis
        self.eigenvalues = [tensor(f"{i}.correction") if self.corrected else torch.outer(s[0], a[0])
                            for i, (a, s) in enumerate(zip(self.activation, self.gradient))]

    def largest_eigenvalue(self) -> float:
        return max(float(values.max()) for values in self.eigenvalues)

    def diagnostics(self) -> list[dict]:
        """min / median / max of each layer's spectra (A, S and the eigenvalues used)."""
        def summary(values: torch.Tensor) -> list[float]:
            flat = values.flatten()
            return [float(flat.min()), float(flat.median()), float(flat.max())]

        return [{"layer": layer.name or "(model)", "kind": layer.kind, "shape": [layer.out_dim, layer.in_dim],
                 "activation_eigenvalues": summary(a[0]), "gradient_eigenvalues": summary(s[0]),
                 "eigenvalues": summary(values)}
                for layer, a, s, values in zip(self.layers, self.activation, self.gradient, self.eigenvalues)]


@dataclass(frozen=True)
class GGNSampling:
    """How the output Hessian's factor is back-propagated: all its columns (``samples`` None,
    the exact GGN) or ``samples`` Gaussian combinations of them per example, seeded."""

    samples: int | None = None
    seed: int = 0

    def columns(self, factor: torch.Tensor, start: int) -> torch.Tensor:
        """(m, n, out) columns B -> (k, n, out) columns B z / sqrt(k), z ~ N(0, I): E[.(.)^T] = B B^T."""
        if self.samples is None:
            return factor
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + start)  # the same z in every pass
        z = torch.randn(self.samples, factor.shape[0], factor.shape[1], generator=generator, dtype=factor.dtype)
        return torch.einsum("kmn,mno->kno", z.to(factor.device), factor) / self.samples ** 0.5


def _batches(engine: GradientEngine, sample: Dataset, layers: list[Layer], chunk: int, sampling: GGNSampling):
    """The curvature sample's captured pairs, chunk by chunk (bounded memory)."""
    inputs = engine.inputs(sample)
    for start in range(0, len(inputs), chunk):
        yield capture(engine.function_module, engine.params, layers, inputs[start:start + chunk],
                      lambda outputs: sampling.columns(output_hessian_factor(sample.task, outputs), start))


def fit_kronecker_factors(engine: GradientEngine, sample: Dataset, layers: list[Layer],
                          chunk: int, sampling: GGNSampling = GGNSampling()) -> dict[str, np.ndarray]:
    """A and S of every layer over the sample, eigendecomposed (float64)."""
    activation = [torch.zeros(layer.in_dim, layer.in_dim, dtype=torch.float64) for layer in layers]
    gradient = [torch.zeros(layer.out_dim, layer.out_dim, dtype=torch.float64) for layer in layers]
    for batch in _batches(engine, sample, layers, chunk, sampling):
        for i, (a, g) in enumerate(zip(batch.activations, batch.gradients)):
            # products in the engine's dtype (a chunk's sums), accumulated in float64
            a = a.reshape(-1, a.shape[-1])
            positions = g.shape[2]
            g = g.reshape(-1, g.shape[-1])
            activation[i] += (a.T @ a).double().cpu()
            gradient[i] += (g.T @ g).double().cpu() / positions  # S averages over positions, A sums (KFC)
    arrays = {}
    for i, (a, s) in enumerate(zip(activation, gradient)):
        for name, matrix in (("a", a), ("s", s)):
            values, vectors = torch.linalg.eigh(matrix / len(sample))
            arrays[f"{i}.{name}_values"] = values.clamp_min(0).numpy()  # round-off below 0 on a PSD matrix
            arrays[f"{i}.{name}_vectors"] = vectors.numpy()
    return arrays


#: the most numbers one piece of per-example rotated gradients takes (rows x columns x out x in)
PIECE_ELEMENTS = 1 << 24


@dataclass
class TrainingSideSums:
    """The training side a capture pass sums, when asked: each group's summed objective
    gradient in the Kronecker eigenbasis, (K, covered) in :class:`KroneckerRotation`'s order,
    over the rows ``rows`` of the data (they include the curvature rows of the same pass)."""

    group_labels: np.ndarray
    n_groups: int
    rows: np.ndarray
    objective: str = "loss"
    weights: torch.Tensor | None = None


def eigenbasis_pass(engine: GradientEngine, data: Dataset, factors: KroneckerFactors, chunk: int,
                   sampling: GGNSampling = GGNSampling(), curvature_rows: np.ndarray | None = None,
                   training_side: TrainingSideSums | None = None
                   ) -> tuple[dict[str, np.ndarray] | None, torch.Tensor | None]:
    """One capture pass over rows of ``data``. EK-FAC's correction, E[(Q_S^T G Q_A)^2] per
    layer over the per-example (per output-Hessian column) gradients G of the rows
    ``curvature_rows`` (all rows when None; none: no correction, the result is None).

    With ``training_side`` the same pass also sums each group's objective gradient in the
    eigenbasis over ``training_side.rows``: one more back-propagated column for the curvature
    rows, the only one for the others, the forward, unfolding and per-example products
    shared. Returns (the correction, those sums or None)."""
    layers = factors.layers
    rows = np.arange(len(data)) if curvature_rows is None else np.asarray(curvature_rows, dtype=np.int64)
    row_sets = [(rows, True)]  # (rows, whether their output-Hessian columns feed the correction)
    sums = None
    if training_side is not None:
        if not np.isin(rows, training_side.rows).all():
            raise ValueError("the curvature rows of a pass that sums the training side must be among its rows")
        row_sets.append((np.setdiff1d(training_side.rows, rows), False))
        # one point per group, every one in this pass: each row is written once (no zeros, no sums)
        singletons = (len(training_side.rows) == training_side.n_groups
                      and np.array_equal(np.sort(training_side.group_labels[training_side.rows]),
                                         np.arange(training_side.n_groups)))
        sums = (torch.empty if singletons else torch.zeros)(
            training_side.n_groups, sum(layer.out_dim * layer.in_dim for layer in layers),
            dtype=engine.dtype, device=engine.device)
        offsets = np.cumsum([0] + [layer.out_dim * layer.in_dim for layer in layers])
        labels = torch.as_tensor(training_side.group_labels, device=engine.device)
        objective = data.task.objective(training_side.objective)
        all_labels = data.labels.to(engine.device)

        def add(block: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> None:
            block.index_copy_(0, ids, values) if singletons else block.index_add_(0, ids, values)
    corrections = [torch.zeros(layer.out_dim, layer.in_dim, dtype=torch.float64) for layer in layers]
    inputs = engine.inputs(data)
    bases = [(q_a.to(device=engine.device, dtype=engine.dtype), q_s.to(device=engine.device, dtype=engine.dtype))
             for (_, q_a), (_, q_s) in zip(factors.activation, factors.gradient)]
    for set_rows, curvature in row_sets:
        for start in range(0, len(set_rows), chunk):
            chunk_rows = torch.as_tensor(set_rows[start:start + chunk], device=engine.device)

            def cotangents(outputs, start=start, chunk_rows=chunk_rows, curvature=curvature):
                columns = []
                if curvature:  # seeded by the position in the sample, as in the factor pass
                    columns.append(sampling.columns(output_hessian_factor(data.task, outputs), start))
                if training_side is not None:
                    columns.append(objective_cotangent(outputs, objective, all_labels[chunk_rows],
                                                       None if training_side.weights is None
                                                       else training_side.weights.to(outputs)[chunk_rows]))
                return torch.cat(columns)

            batch = capture(engine.function_module, engine.params, layers, inputs[chunk_rows], cotangents)
            n_curvature = batch.gradients[0].shape[0] - (training_side is not None) if curvature else 0
            for i, (a, g) in enumerate(zip(batch.activations, batch.gradients)):
                q_a, q_s = bases[i]
                out_dim, in_dim = q_s.shape[0], q_a.shape[0]
                block = None if sums is None else sums[:, offsets[i]:offsets[i + 1]].view(-1, out_dim, in_dim)
                if a.shape[1] == 1:  # one position (Linear): rotate a and g, then (g a^T)^2 = g^2 (a^2)^T
                    rotated_a, rotated_g = a[:, 0] @ q_a, g[:, :, 0] @ q_s
                    if n_curvature:
                        corrections[i] += ((rotated_g[:n_curvature] ** 2).sum(0).T @ rotated_a ** 2).double().cpu()
                    if block is not None:
                        add(block, labels[chunk_rows], rotated_g[-1, :, :, None] * rotated_a[:, None, :])
                    continue
                # Conv2d: a piece of rows at a time
                piece = max(1, PIECE_ELEMENTS // (g.shape[0] * out_dim * in_dim))
                for p in range(0, a.shape[0], piece):
                    rotated = rotated_gradients(a[p:p + piece], g[:, p:p + piece], q_a, q_s)
                    if n_curvature:
                        corrections[i] += (rotated[:n_curvature] ** 2).sum((0, 1)).double().cpu()
                    if block is not None:
                        add(block, labels[chunk_rows[p:p + piece]], rotated[-1])
    if not len(rows):
        return None, sums
    return {f"{i}.correction": (c / len(rows)).numpy() for i, c in enumerate(corrections)}, sums


def rotated_gradients(activations: torch.Tensor, gradients: torch.Tensor, q_a: torch.Tensor, q_s: torch.Tensor,
                      rotate_patches: bool | None = None) -> torch.Tensor:
    """(m, n, out, in) per-example gradients ``Q_S^T (sum_t g_t a_t^T) Q_A`` of (n, T, in)
    patches and (m, n, T, out) output gradients: the T patches and output gradients rotated
    before the sum over positions, or the per-example gradients formed and rotated after;
    by default whichever multiplies less for these positions, widths and columns."""
    columns, positions, in_dim, out_dim = gradients.shape[0], activations.shape[1], q_a.shape[0], q_s.shape[0]
    if rotate_patches is None:
        rotate_patches = (positions * (in_dim * in_dim + columns * out_dim * out_dim)
                          < columns * out_dim * in_dim * (in_dim + out_dim))
    if rotate_patches:
        return layer_gradients((activations @ q_a)[None], gradients @ q_s)
    return q_s.T @ layer_gradients(activations[None], gradients) @ q_a


class KroneckerRotation:
    """(b, P) flat vectors -> (b, covered) coordinates in every layer's Kronecker eigenbasis,
    ``Q_S^T V Q_A`` per layer flattened and concatenated; parameters outside the layers
    drop out. The test side always goes through it; the training side too when it is kept
    in the eigenbasis, and then it pickles (Ray workers apply it to the training side)."""

    def __init__(self, layout: LayerLayout, factors: KroneckerFactors):
        self.layout = layout.portable()
        self.bases = [(q_a.clone(), q_s.clone()) for (_, q_a), (_, q_s) in zip(factors.activation, factors.gradient)]
        #: the number of coordinates
        self.dim = sum(len(q_a) * len(q_s) for q_a, q_s in self.bases)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        blocks = self.layout.split(vectors)
        return torch.cat([(q_s.to(block).T @ block @ q_a.to(block)).flatten(1)
                          for block, (q_a, q_s) in zip(blocks, self.bases)], dim=1)

    def back(self, coordinates: torch.Tensor) -> torch.Tensor:
        """(b, covered) eigenbasis coordinates -> (b, P) flat vectors, zeros on the uncovered
        parameters: the inverse of the rotation on the covered ones."""
        blocks, start = [], 0
        for q_a, q_s in self.bases:
            size = len(q_a) * len(q_s)
            block = coordinates[:, start:start + size].reshape(len(coordinates), len(q_s), len(q_a))
            blocks.append(q_s.to(block) @ block @ q_a.to(block).T)
            start += size
        return self.layout.merge(blocks)


def _cached(key: str, enabled: bool, compute: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], str]:
    """The arrays under ``key`` in the cache folder's ``factors/``, computed (once across
    processes, under a file lock) on a miss. Status: reused, computed, or off."""
    if not enabled:
        return compute(), "off"
    path = default_cache_dir() / "factors" / f"{key}.npz"
    stored = read_npz(path)
    if stored is not None:
        return stored, "reused"
    with file_lock(path.with_suffix(".lock")):
        stored = read_npz(path)  # another process may have fitted them while this one waited
        if stored is not None:
            return stored, "reused"
        arrays = compute()
        return arrays, "computed" if write_npz(path, arrays) else "computed (the cache is not writable)"


class _KroneckerInfluence(InverseCurvatureMethod):
    Options = KFACOptions
    corrected: ClassVar[bool] = False

    def _prepare(self, index: int, view: View, sample: Dataset) -> None:
        if index == 0:
            self.factors_: list[KroneckerFactors] = []
            self.layouts_: list[LayerLayout] = []
            self.layer_damping_: list[list[float]] = []
            self.rotations_: list[KroneckerRotation] = []
            #: whether a view's scores are formed in the eigenbasis (its training side summed at fit)
            self.in_eigenbasis_: list[bool] = []
            self.denominators_: list[torch.Tensor] = []
        engine = view.engine
        layers = find_layers(engine.function_module, engine.space.names)
        if not layers:
            raise GDAError(f"{self.name} factors nn.Linear and nn.Conv2d layers and this model has none (an uploaded "
                           f".pt2 program keeps none: upload a .safetensors state dict with its .json config, or use "
                           f"if-cg or if-arnoldi)")
        layout = LayerLayout(engine.space, layers)
        chunk = min(self.options.chunk_examples, BACKWARD_ROWS)
        factor_sample = sample.subset(self.curvature_rows(len(sample), self._factor_rows(layers)))
        identity = {"model": self.model.fingerprint(), "data": factor_sample.fingerprint(), "format": FACTOR_FORMAT,
                    "last_layer_only": self.options.last_layer_only, "dtype": str(engine.dtype),
                    "layers": [(layer.name, layer.in_dim, layer.out_dim) for layer in layers]}
        sampling = GGNSampling(self.options.ggn_samples, self.options.seed)
        if sampling.samples is not None:
            identity["ggn_samples"], identity["seed"] = sampling.samples, sampling.seed
        key = content_key("kfac-factors", identity)
        arrays, status = _cached(key, self.options.cache_factors,
                                 lambda: fit_kronecker_factors(engine, factor_sample, layers, chunk, sampling))
        # The training side, in the eigenbasis, is summed from captured layer pairs where that
        # is cheaper than group gradients (small groups) and fits the memory budget; EK-FAC's
        # correction pass, when it runs, carries the curvature rows' share (one more column).
        plan = self._training_side_plan(index, view, layout)
        passes: list[tuple[torch.Tensor | None, np.ndarray, int]] = []  # (sums, their rows, correction rows)
        if self.corrected:
            base = KroneckerFactors(layers, arrays)

            def correction_pass() -> dict[str, np.ndarray]:
                if plan is None:
                    return eigenbasis_pass(engine, sample, base, chunk, sampling)[0]
                rows = self.curvature_rows(len(self.train_), self.options.curvature_samples)
                side = dataclasses.replace(plan, rows=np.union1d(plan.rows, rows))
                correction, summed = eigenbasis_pass(engine, self.train_, base, chunk, sampling, rows, side)
                passes.append((summed, side.rows, len(rows)))
                return correction

            correction, status = _cached(content_key("ekfac-correction", {**identity, "data": sample.fingerprint(),
                                                                          "factors": key}),
                                         self.options.cache_factors, correction_pass)
            arrays = {**arrays, **correction}
        factors = KroneckerFactors(layers, arrays)
        rotation = KroneckerRotation(layout, factors)
        training_side = "group gradients at attribution (the test side taken back to the parameters)"
        if plan is not None:
            if not passes and len(plan.rows):
                passes.append((eigenbasis_pass(engine, self.train_, factors, chunk, sampling, np.array([], np.int64),
                                              plan)[1], plan.rows, 0))
            summed, captured, in_correction = passes[0] if passes else (None, np.array([], np.int64), 0)
            rest = np.setdiff1d(np.arange(len(self.train_)), captured)
            summed = self._add_group_gradients(view, rotation, rest, summed, plan)
            self._train_cache[index] = [GradientChunk(np.arange(self.groups_.n_groups), summed)]
            training_side = (f"in the eigenbasis, at fit: {len(captured)} rows from captured layer pairs "
                             f"({in_correction} of them in the correction pass), {len(rest)} from group gradients")
        self.factors_.append(factors)
        self.layouts_.append(layout)
        self.rotations_.append(rotation)
        self.in_eigenbasis_.append(plan is not None)
        # Default: a tenth of each layer's mean eigenvalue; or, with damping_rule="top", a tenth
        # of the approximation's top eigenvalue, as for the other solvers (here it is free: the
        # largest product of factor eigenvalues, or corrected value).
        means = [float(values.mean()) for values in factors.eigenvalues]
        if self.options.damping_rule == "layer-mean" and self.options.damping is None:
            layer_damping = [self.options.damping_scale * DEFAULT_DAMPING_FRACTION * mean for mean in means]
            self.damping_[index] = max(layer_damping)
        else:
            damping = self._resolve_damping(index, lambda: DEFAULT_DAMPING_FRACTION * factors.largest_eigenvalue())
            layer_damping = [damping] * len(layers)
        self.layer_damping_.append(layer_damping)
        self.denominators_.append(torch.cat([(values + damping).flatten()
                                             for values, damping in zip(factors.eigenvalues, layer_damping)]))
        self.solver_info_[index] = {
            "curvature": CURVATURE_NOTE if sampling.samples is None else (
                f"GGN, Monte Carlo: {sampling.samples} seeded Gaussian combination(s) of each example's output-Hessian "
                f"factor back-propagated (the exact GGN in expectation)"),
            "eigenvalue_correction": factors.corrected,
            "damping_rule": self.options.damping_rule if self.options.damping is None else "given",
            "layers": [{**info, "damping": damping}
                       for info, damping in zip(factors.diagnostics(), layer_damping)],
            "covered_parameters": layout.covered_dim,
            "total_parameters": layout.dim,
            "uncovered": layout.uncovered,
            **({"note": "parameters outside Linear/Conv2d layers (e.g. BatchNorm) are left out: scores are an "
                        "inner product over the covered parameters"} if layout.uncovered else {}),
            "curvature_samples": len(sample),
            "factor_samples": len(factor_sample),
            "factor_cache": status,
            "training_side": training_side,
        }

    def _factor_rows(self, layers: list[Layer]) -> int | None:
        """How many rows the factors are fitted on: ``factor_samples``, but at least twice the
        widest Linear input (a Conv2d's A also sums over positions, so its rank is not bound by rows)."""
        if self.options.factor_samples is None:
            return None
        widest = max([layer.in_dim for layer in layers if layer.kind == "linear"], default=0)
        return max(self.options.factor_samples, 2 * widest)

    def _training_side_plan(self, index: int, view: View, layout: LayerLayout) -> TrainingSideSums | None:
        """Which rows' objective gradients fit sums from captured layer pairs (all rows for
        groups of fewer than ``BACKWARD_GROUP_SIZE`` points on average, where one backward per
        group is no cheaper; else none, the correction pass adding its own), or None when all
        K groups' coordinates would not fit this view's share of ``cache_bytes`` (they are then
        formed from group gradients at attribution)."""
        objective, weights = self._train_objective(index, view)
        n_groups = self.groups_.n_groups
        size = n_groups * layout.covered_dim * torch.finfo(view.engine.dtype).bits // 8
        if size > self.options.cache_bytes // max(1, len(self.views_)):
            return None
        small = len(self.train_) < BACKWARD_GROUP_SIZE * n_groups
        rows = np.arange(len(self.train_)) if small else np.array([], dtype=np.int64)
        return TrainingSideSums(self.groups_.labels, n_groups, rows, objective, weights)

    def _add_group_gradients(self, view: View, rotation: KroneckerRotation, rows: np.ndarray,
                             summed: torch.Tensor | None, plan: TrainingSideSums) -> torch.Tensor:
        """``summed`` plus the rotated group gradients of the rows ``rows`` (the training side's
        share that no capture pass summed), one backward per large group."""
        if summed is None:
            summed = torch.zeros(self.groups_.n_groups, rotation.dim, dtype=view.engine.dtype,
                                 device=view.engine.device)
        if not len(rows):
            return summed
        weights = None if plan.weights is None else plan.weights[torch.as_tensor(rows)]
        for chunk in view.engine.group_gradients(self.train_.subset(rows), self.groups_.labels[rows],
                                                 self.groups_.n_groups, objective=plan.objective, weights=weights):
            ids = torch.as_tensor(chunk.group_ids, device=summed.device)
            summed.index_add_(0, ids, rotation(chunk.gradients).to(summed.dtype))
        return summed

    # Scores are inner products in the eigenbasis: the test side rotated and divided by the
    # damped eigenvalues, the training side rotated (uncovered parameters drop out of both).
    # Where the training side is kept (summed at fit), both sides are in the eigenbasis; where
    # it is streamed at attribution, the test side goes back to the parameters instead, so that
    # the many training gradients are not rotated one by one.
    def _transform_test(self, index: int, view: View, gradients: torch.Tensor) -> torch.Tensor:
        rotation = self.rotations_[index]
        rotated = rotation(gradients.double())
        scaled = rotated / self.denominators_[index].to(rotated.device)
        return (scaled if self.in_eigenbasis_[index] else rotation.back(scaled)).to(gradients.dtype)

    def _train_transform(self, index: int, view: View) -> KroneckerRotation | None:
        return self.rotations_[index] if self.in_eigenbasis_[index] else None


class InfluenceKFAC(_KroneckerInfluence):
    name = "if-kfac"
    description = "influence function, K-FAC: per-layer Kronecker-factored GGN (Linear and Conv2d layers)"


class InfluenceEKFAC(_KroneckerInfluence):
    name = "if-ekfac"
    description = "influence function, EK-FAC: K-FAC's eigenbasis with eigenvalues refitted to per-example gradients"
    Options = EKFACOptions
    corrected = True
