"""Per-layer capture: the inputs and output gradients of every Linear and Conv2d layer (and,
when asked, LayerNorm), per example.

For one example, a Linear or Conv2d layer's weight gradient (the bias as one more input
column that is always 1) is a sum over output positions t of ``g_t a_t^T``: ``a_t`` the
layer's input at t (for a Conv2d the unfolded patch, im2col, as in KFC, Grosse & Martens
2016) and ``g_t`` the gradient with respect to the layer's output there. K-FAC's factors are
covariances of ``a`` and ``g``; factored gradient products (LoGra) use the same pairs.

:func:`capture` runs one forward with hooks and one backward per output-space cotangent,
and returns every example's pairs at once: the examples of a batch are independent (zoo
models are used in eval mode, so BatchNorm applies its running statistics).
:class:`LayerLayout` maps flat parameter vectors (a :class:`ParameterSpace`'s order) to one
``(out, in)`` matrix per layer and back; the parameters of other modules (BatchNorm's
affine weights) are not covered, and it names them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from ..errors import GDAError
from .grads import ParameterSpace

#: module types whose gradients factor as sums of ``g a^T``
LAYER_TYPES = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class Layer:
    """One Linear or Conv2d layer of the differentiated module."""

    name: str  # module path inside the differentiated module ('' for the module itself)
    kind: str  # "linear" or "conv2d"
    weight: str  # its parameter names in the ParameterSpace
    bias: str | None
    in_dim: int  # input columns, the bias column included
    out_dim: int
    module: nn.Module = field(compare=False, repr=False)


def find_layers(module: nn.Module, parameter_names: list[str], *, layer_norms: bool = False) -> list[Layer]:
    """The Linear and Conv2d layers of ``module`` whose weights are differentiated, in
    module order; a one-line refusal for a convolution that cannot be unfolded. With
    ``layer_norms``, also its LayerNorms over one trailing dimension whose weight is
    differentiated (kind ``layernorm``, after the other layers): their per-example gradient
    is elementwise, ``sum_t d_t * xhat_t`` for the weight and ``sum_t d_t`` for the bias
    (``xhat`` the normalised input), not a sum of outer products."""
    names = set(parameter_names)
    layers, norms = [], []
    for path, child in module.named_modules():
        prefix = f"{path}." if path else ""
        if (layer_norms and isinstance(child, nn.LayerNorm) and child.weight is not None
                and len(child.normalized_shape) == 1 and prefix + "weight" in names):
            bias = prefix + "bias" if child.bias is not None and prefix + "bias" in names else None
            width = child.normalized_shape[0]
            norms.append(Layer(path, "layernorm", prefix + "weight", bias, width, width, child))
            continue
        if not isinstance(child, LAYER_TYPES):
            continue
        if prefix + "weight" not in names:
            continue
        bias = prefix + "bias" if child.bias is not None and prefix + "bias" in names else None
        if isinstance(child, nn.Conv2d):
            named_padding = isinstance(child.padding, str) and child.padding != "valid"
            if child.groups != 1 or child.padding_mode != "zeros" or named_padding:
                raise GDAError(f"layer {path or 'the model'}: only ungrouped, zero-padded convolutions with numeric "
                               f"padding can be unfolded (groups={child.groups}, padding={child.padding!r})")
            width = child.in_channels * child.kernel_size[0] * child.kernel_size[1]
            kind, out = "conv2d", child.out_channels
        else:
            kind, width, out = "linear", child.in_features, child.out_features
        layers.append(Layer(path, kind, prefix + "weight", bias, width + (bias is not None), out, child))
    return layers + norms


def _activations(layer: Layer, inputs: torch.Tensor) -> torch.Tensor:
    """(n, T, in_dim): a layer's input at each of its T output positions, with the bias column."""
    if layer.kind == "layernorm":  # the normalised input (the weight multiplies it elementwise)
        norm = layer.module
        return nn.functional.layer_norm(inputs, norm.normalized_shape, None, None, norm.eps).reshape(
            len(inputs), -1, layer.in_dim)
    if layer.kind == "conv2d":
        conv = layer.module
        padding = 0 if conv.padding == "valid" else conv.padding
        patches = nn.functional.unfold(inputs, conv.kernel_size, dilation=conv.dilation, padding=padding,
                                       stride=conv.stride).transpose(1, 2)
    else:
        patches = inputs.reshape(len(inputs), -1, inputs.shape[-1])
    if layer.bias is not None:
        patches = torch.cat([patches, patches.new_ones(*patches.shape[:2], 1)], dim=-1)
    return patches


def _output_gradients(layer: Layer, gradients: torch.Tensor) -> torch.Tensor:
    """(n, T, out_dim) from the gradient with respect to the layer's output."""
    if layer.kind == "conv2d":
        return gradients.flatten(2).transpose(1, 2)
    return gradients.reshape(len(gradients), -1, gradients.shape[-1])


@dataclass
class LayerBatch:
    """The captured pairs of one batch: ``activations[l]`` is (n, T, in_dim) and
    ``gradients[l]`` (m, n, T, out_dim), one slice per cotangent; ``outputs`` (n, n_outputs)."""

    outputs: torch.Tensor
    activations: list[torch.Tensor]
    gradients: list[torch.Tensor]


def capture(module: nn.Module, params: dict[str, torch.Tensor], layers: list[Layer], inputs: torch.Tensor,
            cotangents: Callable[[torch.Tensor], torch.Tensor]) -> LayerBatch:
    """Each layer's inputs and output gradients for a batch. ``cotangents(outputs)`` gives the
    (m, n, n_outputs) output-space vectors that are back-propagated (e.g. the loss gradient
    d loss / d outputs, m = 1, or the columns of a factor of the output Hessian)."""
    records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook_for(layer: Layer):
        def hook(_module, args, output):
            if layer.name in records:
                raise GDAError(f"layer {layer.name or 'the model'} runs more than once per forward; "
                               f"its per-layer factors are not defined")
            records[layer.name] = (args[0].detach(), output)
        return hook

    handles = [layer.module.register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        with torch.enable_grad():
            live = {name: value.detach().requires_grad_(True) for name, value in params.items()}
            outputs = functional_call(module, live, (inputs,))
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer.name for layer in layers if layer.name not in records]
    if missing:
        raise GDAError(f"layers {', '.join(missing)} did not run in the forward pass; per-layer factors need them")
    vectors = cotangents(outputs.detach())
    layer_outputs = [records[layer.name][1] for layer in layers]
    per_vector = []
    for index, vector in enumerate(vectors):
        grads = torch.autograd.grad(outputs, layer_outputs, grad_outputs=vector,
                                    retain_graph=index + 1 < len(vectors), allow_unused=True)
        per_vector.append([torch.zeros_like(out) if g is None else g for g, out in zip(grads, layer_outputs)])
    activations = [_activations(layer, records[layer.name][0]) for layer in layers]
    gradients = [torch.stack([_output_gradients(layer, grads[i]) for grads in per_vector])
                 for i, layer in enumerate(layers)]
    return LayerBatch(outputs.detach(), activations, gradients)


def objective_cotangent(outputs: torch.Tensor, objective: Callable, labels: torch.Tensor,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """(1, n, n_outputs): each example's d objective / d outputs (times its weight), the
    cotangent whose captured pairs are the per-example objective gradients."""
    with torch.enable_grad():
        live = outputs.detach().requires_grad_(True)
        values = objective(live, labels)
        if weights is not None:
            values = values * weights
        return torch.autograd.grad(values.sum(), live)[0][None]


def layer_gradients(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Per-example weight gradients ``sum_t g_t a_t^T``: (..., T, in) and (..., T, out) ->
    (..., out, in), the columns being the weight's (row-major) and then the bias."""
    return torch.einsum("...ti,...to->...oi", activations, gradients)


class LayerLayout:
    """Where each layer's weight and bias sit in a flat parameter vector."""

    def __init__(self, space: ParameterSpace, layers: list[Layer]):
        offsets, start = {}, 0
        for name, size in zip(space.names, space.sizes):
            offsets[name] = slice(start, start + size)
            start += size
        self.layers, self.offsets, self.dim = layers, offsets, space.dim
        covered = {name for layer in layers for name in (layer.weight, layer.bias) if name is not None}
        #: parameters of other modules (BatchNorm's affine weights), which no layer covers
        self.uncovered = [name for name in space.names if name not in covered]
        self.covered_dim = sum(offsets[name].stop - offsets[name].start for name in covered)

    def portable(self) -> "LayerLayout":
        """A copy without the layers' modules, to pickle (what :meth:`split` and :meth:`merge` need)."""
        copy = LayerLayout.__new__(LayerLayout)
        copy.__dict__.update(self.__dict__)
        copy.layers = [dataclasses.replace(layer, module=None) for layer in self.layers]
        return copy

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(b, P) -> one (b, out, in_dim) matrix per layer (the bias as the last column)."""
        if any(layer.kind == "layernorm" for layer in self.layers):
            raise GDAError("a LayerNorm's parameters are no (out, in) matrix; split covers Linear/Conv2d layers")
        blocks = []
        for layer in self.layers:
            weight = flat[:, self.offsets[layer.weight]].reshape(len(flat), layer.out_dim, -1)
            if layer.bias is not None:
                weight = torch.cat([weight, flat[:, self.offsets[layer.bias], None]], dim=2)
            blocks.append(weight)
        return blocks

    def merge(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`split`; uncovered parameters get zeros."""
        flat = blocks[0].new_zeros(len(blocks[0]), self.dim)
        for layer, block in zip(self.layers, blocks):
            if layer.bias is not None:
                flat[:, self.offsets[layer.bias]] = block[:, :, -1]
                block = block[:, :, :-1]
            flat[:, self.offsets[layer.weight]] = block.reshape(len(block), -1)
        return flat
