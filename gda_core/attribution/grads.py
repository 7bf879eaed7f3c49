"""Gradients: one code path for per-example, group and test-side gradients.

A group's gradient is the gradient of its summed (optionally weighted) loss. Small groups are
padded to a common size and ``torch.func.vmap`` runs one batched backward over many groups
at once; per-example gradients are the same call with one point per group, so there is no
second code path. Groups of ``BACKWARD_GROUP_SIZE`` points or more instead get one ordinary
batched backward each (on a ResNet-9 over mnist at K = N/100 that is 2.2x faster than vmap,
whose per-slot batching of convolutions pays for padding and lost fusion). Groups are sorted
by size before packing so padding stays small, and each chunk holds at most
``chunk_examples`` (padded) examples, which bounds memory.

Every gradient is of an objective of the data's task (:mod:`gda_core.task`), a quantity
where *lower is better* (the loss, the negative margin, the negative log-odds), so that a
positive dot product always means "helps".
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..errors import GDAError
from ..inputs.datasets import FORWARD_BATCH, Dataset
from ..task import Objective

#: groups at least this large get one ordinary batched backward each instead of a vmap slot
BACKWARD_GROUP_SIZE = 32
#: an ordinary backward takes at most this many rows (a larger group is summed over pieces;
#: EK-FAC's capture passes take chunks of this size): larger batches run slower on a CPU
#: (ResNet-9, one thread: a backward over 4000 mnist digits 2.1 s in pieces of 128, 3.0 s in
#: pieces of 1024; EK-FAC's fit and scores on 1000 digits 3.2 s against 5.5 s)
BACKWARD_ROWS = 128
#: an ordinary backward's rows are padded (with zero-weight rows) to a multiple of this: the
#: CPU kernels are specialised per batch shape on first use, which cost a fresh process about
#: 1 s for the 180 distinct group sizes of a K-means grouping of 18000 points (MLP, one thread)
BACKWARD_BUCKET = 32
#: a chunk of per-example gradients holds at most this many bytes, so a large parameter subset
#: (a transformer layer has millions) puts fewer than ``chunk_examples`` rows in one chunk. On
#: CUDA large chunks keep the device busy; on a CPU chunks near the last-level cache run
#: fastest. One thread, per-example gradients: ResNet-9 (104k parameters) over 2000 digits
#: 1.6 s at 80 rows a chunk (32 MiB), 4.4 s at 1024; the 26k-parameter MLP over 18000 points
#: 0.65 s at 320 rows, 1.75 s at 1024; MiniLM's last layer (1.9 M) over 400 sentences 3.7 s at
#: 4 rows, 6.4 s at 128.
CHUNK_BYTES = 2**30
CPU_CHUNK_BYTES = 2**25
#: rows of per-example gradients at once unless a method's ``chunk_examples`` says otherwise
DEFAULT_CHUNK_EXAMPLES = 1024
#: the frozen prefix's outputs an engine keeps in memory (one entry per data set), at most
PREFIX_CACHE_BYTES = 2**31


def chunk_rows(limit: int, n_parameters: int, reference: torch.Tensor) -> int:
    """Rows of per-example gradients held at once: ``limit``, fewer where that many gradients of
    ``n_parameters`` values like ``reference`` would pass the chunk budget of its device."""
    budget = CHUNK_BYTES if reference.device.type == "cuda" else CPU_CHUNK_BYTES
    return max(1, min(limit, budget // (n_parameters * reference.element_size())))


@dataclass
class ParameterSpace:
    """The differentiated parameters, their order in flat vectors, and their per-layer blocks."""

    names: list[str]
    shapes: list[torch.Size]

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(shape)) if len(shape) else 1 for shape in self.shapes]

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def flatten(self, tensors: dict[str, torch.Tensor], batch_dims: int = 1) -> torch.Tensor:
        """Concatenate named tensors (each with ``batch_dims`` leading dims) into (..., P)."""
        parts = [tensors[name].reshape(*tensors[name].shape[:batch_dims], -1) for name in self.names]
        return torch.cat(parts, dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split (..., P) into named tensors of the parameter shapes (leading dims kept)."""
        lead = flat.shape[:-1]
        pieces = torch.split(flat, self.sizes, dim=-1)
        return {name: piece.reshape(*lead, *shape) for name, piece, shape in zip(self.names, pieces, self.shapes)}

    def layer_slices(self) -> list[slice]:
        """Column ranges of the flat vector, one per module (a weight and its bias together)."""
        slices: list[slice] = []
        start = 0
        current_owner = None
        for name, size in zip(self.names, self.sizes):
            owner = name.rsplit(".", 1)[0] if "." in name else name
            if owner != current_owner:
                slices.append(slice(start, start + size))
                current_owner = owner
            else:
                slices[-1] = slice(slices[-1].start, start + size)
            start += size
        return slices


@dataclass
class GradientChunk:
    """Gradients of some groups: ``gradients[j]`` belongs to group ``group_ids[j]``."""

    group_ids: np.ndarray
    gradients: torch.Tensor


def group_members(labels: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Row indices of each group, in group order."""
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    boundaries = np.searchsorted(labels[order], np.arange(n_groups + 1))
    return [order[boundaries[k]:boundaries[k + 1]] for k in range(n_groups)]


class RandomProjector:
    """A seeded Gaussian projection from P to ``dim`` dimensions (inner products kept in
    expectation). The matrix is generated block by block from the seed, so it never has to be
    stored for large models; blocks are cached while they fit in ``cache_bytes``."""

    block_columns = 32768

    def __init__(self, input_dim: int, dim: int, seed: int = 0, cache_bytes: int = 512 * 2**20):
        if dim < 1:
            raise GDAError(f"projection dimension must be >= 1, got {dim}")
        self.input_dim, self.dim, self.seed = input_dim, dim, seed
        self._cache: dict[int, torch.Tensor] | None = {} if input_dim * dim * 4 <= cache_bytes else None

    def _block(self, index: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index].to(device=device, dtype=dtype)
        start = index * self.block_columns
        width = min(self.block_columns, self.input_dim - start)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        block = torch.randn(width, self.dim, generator=generator) / np.sqrt(self.dim)
        if self._cache is not None:
            self._cache[index] = block
        return block.to(device=device, dtype=dtype)

    def __getstate__(self) -> dict:
        # Sent to Ray workers as its seed, not its cached blocks (which regenerate identically).
        return {**self.__dict__, "_cache": None if self._cache is None else {}}

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """(b, P) -> (b, dim)."""
        if vectors.shape[-1] != self.input_dim:
            raise GDAError(f"projector expects {self.input_dim} columns, got {vectors.shape[-1]}")
        out = torch.zeros(*vectors.shape[:-1], self.dim, device=vectors.device, dtype=vectors.dtype)
        for index, start in enumerate(range(0, self.input_dim, self.block_columns)):
            block = self._block(index, vectors.device, vectors.dtype)
            out += vectors[..., start:start + block.shape[0]] @ block
        return out


def has_last_layer(module: nn.Module) -> bool:
    """Whether last-layer mode works: a ``features`` map and a linear ``head`` on top of it
    (zoo models; an uploaded program may have a ``head`` without ``features``)."""
    return hasattr(module, "head") and hasattr(module, "features")


#: the parameter subsets gradients may be restricted to (``last-K`` for any K >= 1)
PARAMETER_SUBSETS = ("all", "head", "last-K", "lora")


def parameter_subset(module: nn.Module, spec: str) -> list[str]:
    """The names of the parameters a subset ``spec`` differentiates, the rest held fixed:
    ``all``; ``head`` (the final linear layer of a zoo model; for a text model everything
    after the encoder); ``last-K`` (a text model's last K encoder layers and its head);
    ``lora`` (a text model's LoRA adapters and its head). One line for a subset the model
    does not have."""
    if not isinstance(spec, str):
        raise GDAError(f"the parameter subset must be a name, got {spec!r}"[:120])
    if hasattr(module, "parameter_subset"):
        return module.parameter_subset(spec)
    names = [name for name, _ in module.named_parameters()]
    if spec == "all":
        return names
    if spec == "head" and hasattr(module, "head"):
        return [name for name in names if name.startswith("head.")]
    raise GDAError(f"parameter subset {spec!r} needs a Hugging Face text model; this model takes all or head"[:200]
                   if spec.startswith(("last-", "lora")) else
                   f"unknown parameter subset {spec!r}; choose from: {', '.join(PARAMETER_SUBSETS)}"[:200])


class _HeadOnly(nn.Module):
    """A model's ``head`` alone, its parameters named as in the model (``head.*``); its
    input is already the representation (``features`` is the identity)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def features(self, representation: torch.Tensor) -> torch.Tensor:
        return representation

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


def _prefix_cache(module: nn.Module) -> dict[tuple, torch.Tensor]:
    """The frozen prefix outputs kept for ``module``, shared by every engine (and grouping)
    on it, dropped with the module."""
    cache = _PREFIX_OUTPUTS.get(module)
    if cache is None:
        cache = _PREFIX_OUTPUTS[module] = {}
    return cache


#: per module: (what the prefix holds, its parameters' versions, the data) -> the prefix's output
_PREFIX_OUTPUTS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()


def frozen_split(module: nn.Module, names: list[str]
                 ) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module, str] | None:
    """Where differentiating only ``names`` lets the model be cut in two: ``(prefix, suffix,
    what the prefix holds)`` with ``suffix(prefix(x))`` the model's output, the prefix holding
    no chosen parameter (so it runs once per data set, without gradients) and the suffix
    naming its parameters as the model does. A model says where it splits with a
    ``frozen_split(names)`` method (the Hugging Face text wrapper: before the first chosen
    encoder layer); a model with ``features`` and ``head`` splits before the head when only
    head parameters are chosen. None: no split (everything runs for every gradient)."""
    if hasattr(module, "frozen_split"):
        return module.frozen_split(names)
    if has_last_layer(module):
        head = {f"head.{name}" for name, _ in module.head.named_parameters()}
        if set(names) <= head:
            return module.features, _HeadOnly(module.head), "the features (everything before the head)"
    return None


def count_parameters(module: nn.Module, last_layer_only: bool = False, parameters: str = "all") -> int:
    """How many parameters attribution differentiates: the head's in last-layer mode, else
    those of the subset."""
    if last_layer_only and hasattr(module, "head"):
        return sum(p.numel() for p in module.head.parameters())
    chosen = set(parameter_subset(module, parameters))
    return sum(p.numel() for name, p in module.named_parameters() if name in chosen)


class GradientEngine:
    """Per-example, group and test gradients of one model, full or last-layer only, over all
    its parameters or a subset of them.

    With ``parameters`` (see :func:`parameter_subset`) only the chosen parameters are
    differentiated (``functional_call`` over them, the others held fixed as the module has
    them): the same code path, a smaller gradient. Everything before the first chosen
    parameter is a frozen prefix (:func:`frozen_split`; in last-layer mode, the model's
    ``features``): :meth:`inputs` runs it once per data set, in chunks and without gradients,
    and keeps its output in memory with the module (``PREFIX_CACHE_BYTES``; every engine on
    the same module with the same cut shares it, and a change to the prefix's weights is a
    miss), so every gradient pass (per-example, grouped, test side, curvature, factored) and
    the groupings' features (:meth:`representation`) run only the suffix,
    :attr:`function_module`. ``frozen_prefix=False`` runs the whole model for every gradient
    instead (the same scores, slower).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        last_layer_only: bool = False,
        chunk_examples: int = DEFAULT_CHUNK_EXAMPLES,
        parameters: str = "all",
        frozen_prefix: bool = True,
    ):
        if chunk_examples < 1:
            raise GDAError("chunk_examples must be >= 1")
        self.module = module
        self.last_layer_only = last_layer_only
        self.parameters = parameters
        #: the frozen part run once per data set (None: the whole model runs for each gradient)
        self.prefix: Callable[[torch.Tensor], torch.Tensor] | None = None
        if last_layer_only:
            if parameters != "all":
                raise GDAError(f"last-layer mode already restricts gradients to the head; drop --parameters "
                               f"{parameters} or last-layer mode")
            if not has_last_layer(module):
                raise GDAError("last-layer mode needs a model with `features` and a linear `head`")
            self.function_module: nn.Module = module.head
            chosen = [name for name, _ in module.head.named_parameters()]
            self.prefix, frozen = module.features, "the features (last-layer mode)"
        else:
            self.function_module = module
            chosen = parameter_subset(module, parameters)
            split = frozen_split(module, chosen) if frozen_prefix else None
            frozen = None
            if split is not None:
                self.prefix, self.function_module, frozen = split
        #: what runs once per data set, in words, for method_info
        self.prefix_description = (f"{frozen}: run once per data set, cached in memory" if self.prefix is not None
                                   else "none: the whole model runs for every gradient"
                                   + ("" if frozen_prefix else " (frozen_prefix off)"))
        named = dict(self.function_module.named_parameters())
        self.params = {name: named[name].detach() for name in chosen}
        if not self.params:
            raise GDAError(f"the parameter subset {parameters!r} of this model is empty")
        self.space = ParameterSpace(list(self.params), [p.shape for p in self.params.values()])
        reference = next(iter(self.params.values()))
        self.device, self.dtype = reference.device, reference.dtype
        #: the caller's bound on rows at once (what a remote worker's engine is built with)
        self.chunk_limit = chunk_examples
        #: rows per chunk of per-example gradients: ``chunk_examples``, fewer where that many
        #: would pass the device's chunk budget
        self.chunk_examples = chunk_rows(chunk_examples, self.space.dim, reference)

    # ------------------------------------------------------------------ inputs
    def inputs(self, data: Dataset) -> torch.Tensor:
        """What the differentiated function takes: raw features (token ids stay integers), or
        the frozen prefix's output (computed once per data set, in chunks, without gradients,
        and kept in memory while it fits ``PREFIX_CACHE_BYTES``)."""
        reference = next(iter(self.params.values()))
        if self.prefix is None:
            return data.model_inputs(reference)
        source = data.features.detach().cpu().contiguous()
        # The cut (what the prefix holds), the state of the module's weights (an in-place
        # change bumps a tensor's version) and the data name an entry.
        versions = tuple((id(p), p._version) for p in self.module.parameters())
        key = (self.prefix_description, str(reference.device), versions, tuple(source.shape), str(source.dtype),
               hashlib.blake2b(source.numpy().tobytes()).hexdigest())
        cache = _prefix_cache(self.module)
        if key in cache:
            return cache[key]
        features = data.model_inputs(reference)
        with torch.no_grad():
            out = torch.cat([self.prefix(features[start:start + FORWARD_BATCH])
                             for start in range(0, len(features), FORWARD_BATCH)])
        size = out.element_size() * out.numel()
        while cache and size + sum(t.element_size() * t.numel() for t in cache.values()) > PREFIX_CACHE_BYTES:
            cache.pop(next(iter(cache)))  # the oldest goes first
        if size <= PREFIX_CACHE_BYTES:
            cache[key] = out
        return out

    def representation(self, data: Dataset) -> torch.Tensor:
        """(N, d): the input of the model's ``head`` (its penultimate representation, a text
        model's pooled sentence embedding), through the frozen prefix where the engine has
        one (its cached output, then the suffix's ``features``), else the model's
        ``features`` in batches. What representation and gradient K-means cluster."""
        if not has_last_layer(self.module):
            raise GDAError("this model has no penultimate representation (`features` and a linear `head`)")
        if self.last_layer_only:
            return self.inputs(data)  # the prefix is the model's features
        if self.prefix is not None and hasattr(self.function_module, "features"):
            inputs, run = self.inputs(data), self.function_module.features
        else:
            inputs, run = data.model_inputs(next(iter(self.params.values()))), self.module.features
        with torch.no_grad():
            return torch.cat([run(inputs[start:start + FORWARD_BATCH])
                              for start in range(0, len(inputs), FORWARD_BATCH)])

    def logits(self, data: Dataset) -> torch.Tensor:
        with torch.no_grad():
            return functional_call(self.function_module, self.params, (self.inputs(data),))

    # --------------------------------------------------------------- gradients
    def _batched_grad(self, objective: Objective) -> Callable:
        def summed_objective(params, inputs, labels, weights):
            logits = functional_call(self.function_module, params, (inputs,))
            return (objective(logits, labels) * weights).sum()

        return vmap(grad(summed_objective), in_dims=(None, 0, 0, 0))

    def _backward_grad(self, objective: Objective) -> Callable:
        """The gradient of one group's summed objective by one ordinary backward (rows: (1, m))."""
        def group_gradient(params, inputs, labels, weights):
            leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
            with torch.enable_grad():
                logits = functional_call(self.function_module, leaves, (inputs[0],))
                total = (objective(logits, labels[0]) * weights[0]).sum()
                grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
            return {name: (torch.zeros_like(leaves[name]) if g is None else g)[None]
                    for name, g in zip(leaves, grads)}

        return group_gradient

    def group_gradients(
        self,
        data: Dataset,
        group_labels: np.ndarray,
        n_groups: int,
        *,
        objective: str = "loss",
        weights: torch.Tensor | None = None,
        projector: RandomProjector | None = None,
        inputs: torch.Tensor | None = None,
    ) -> Iterator[GradientChunk]:
        """Yield the gradient of each group's summed objective, chunk by chunk.

        ``weights`` (one per example) scale each example's objective (e.g. TRAK's residual
        weights). ``inputs`` may pass precomputed :meth:`inputs` to skip recomputing them.
        """
        group_labels = np.asarray(group_labels, dtype=np.int64)
        if group_labels.shape != (len(data),):
            raise GDAError(f"need one group label per example: {len(data)} examples, {group_labels.shape} labels")
        task_objective = data.task.objective(objective)
        batched_grad, backward_grad = self._batched_grad(task_objective), self._backward_grad(task_objective)
        inputs = self.inputs(data) if inputs is None else inputs
        labels = data.labels.to(self.device)
        weights = (torch.ones(len(data), device=self.device, dtype=self.dtype) if weights is None
                   else weights.to(device=self.device, dtype=self.dtype))
        # Pad slot n repeats the last row with zero weight (the inputs are not copied: a frozen
        # prefix's output can be large).
        last = len(data) - 1
        weights_padded = torch.cat([weights, torch.zeros_like(weights[:1])])
        members = group_members(group_labels, n_groups)
        sizes = np.array([len(m) for m in members])
        by_size = np.argsort(-sizes, kind="stable")

        def run(rows: torch.Tensor) -> torch.Tensor:
            # One group of many points: an ordinary backward; many small groups: one vmap.
            gradient = backward_grad if rows.shape == (1, rows.shape[1]) and rows.shape[1] >= BACKWARD_GROUP_SIZE \
                else batched_grad
            real = rows.clamp_max(last)
            grads = gradient(self.params, inputs[real], labels[real], weights_padded[rows])
            flat = self.space.flatten(grads)
            return flat if projector is None else projector.project(flat)

        # an ordinary backward holds activations, not per-example gradients: only the caller's bound applies
        piece_rows = min(self.chunk_limit, BACKWARD_ROWS)

        def backward_rows(member_rows: np.ndarray) -> torch.Tensor:
            # (1, width) rows padded with zero-weight slots up to a multiple of BACKWARD_BUCKET,
            # so that the backwards of groups of many sizes share a few batch shapes
            width = min(piece_rows, -(-len(member_rows) // BACKWARD_BUCKET) * BACKWARD_BUCKET)
            rows = np.full((1, width), len(data), dtype=np.int64)  # every caller passes <= piece_rows rows
            rows[0, :len(member_rows)] = member_rows
            return torch.as_tensor(rows, device=self.device)

        position = 0
        while position < len(by_size):
            largest = max(int(sizes[by_size[position]]), 1)
            if largest > piece_rows:
                # One large group, summed over pieces that each fit the budget.
                group = by_size[position]
                total = None
                for start in range(0, largest, piece_rows):
                    part = run(backward_rows(members[group][start:start + piece_rows]))
                    total = part if total is None else total + part
                yield GradientChunk(np.array([group]), total)
                position += 1
                continue
            if largest >= BACKWARD_GROUP_SIZE:  # a large group: one ordinary backward
                yield GradientChunk(by_size[position:position + 1], run(backward_rows(members[by_size[position]])))
                position += 1
                continue
            # Small groups share a vmap.
            count = max(1, self.chunk_examples // largest)
            chosen = by_size[position:position + count]
            rows = np.full((len(chosen), largest), len(data), dtype=np.int64)
            for slot, group in enumerate(chosen):
                rows[slot, :sizes[group]] = members[group]
            yield GradientChunk(chosen, run(torch.as_tensor(rows, device=self.device)))
            position += count

    def per_example_gradients(
        self, data: Dataset, *, objective: str = "loss", weights: torch.Tensor | None = None,
        projector: RandomProjector | None = None,
    ) -> Iterator[GradientChunk]:
        """Per-example gradients: the group path with one point per group."""
        return self.group_gradients(data, np.arange(len(data)), len(data), objective=objective,
                                    weights=weights, projector=projector)

    def stacked(self, chunks: Iterator[GradientChunk], n_groups: int) -> torch.Tensor:
        """Collect chunks into one (K, dim) matrix in group order (use when it fits memory)."""
        out = None
        for chunk in chunks:
            if out is None:
                out = torch.zeros(n_groups, chunk.gradients.shape[1], device=self.device, dtype=self.dtype)
            out[torch.as_tensor(chunk.group_ids, device=self.device)] = chunk.gradients
        assert out is not None
        return out

    def test_gradients(self, test: Dataset, *, measurement: str = "loss",
                       projector: RandomProjector | None = None) -> torch.Tensor:
        """(n_test, P) gradients of each test point's measurement (lower is better)."""
        return self.stacked(self.per_example_gradients(test, objective=measurement, projector=projector), len(test))
