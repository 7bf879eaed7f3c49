"""Uploaded models: ``torch.export`` programs (loaded without unpickling) and ``.safetensors``
state dicts of zoo architectures, and the check that a model fits the data."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import math
import pickle
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import torch
from torch import nn

from ..errors import GDAError, first_line
from .datasets import Dataset
from .safety import UploadLimits, checked_zip, read_entry, read_upload, refuse_pickle
from .zoo import TrainedModel, ZooModel, _load_safetensors, check_finite_weights

#: pt2 archive entries that torch.export.load would unpickle (torch.load(weights_only=False),
#: pickle.loads): any of them makes the upload a refusal, whatever else it holds
_PT2_PICKLED_PREFIXES = ("custom_obj", "opaque_obj")
_EXPORT_LOAD_LOCK = threading.Lock()


@contextmanager
def _unpickling_refused():
    """While ``torch.export.load`` runs: every ``torch.load`` is ``weights_only=True`` and its
    raw ``pickle.loads`` paths raise. ``torch.export.load`` falls back to full unpickling for
    some entries (sample inputs, legacy files), so a crafted .pt2 could otherwise run code;
    the archive is also checked up front for a clear message (see :func:`_check_pt2_archive`)."""
    import torch.export.pt2_archive._package as package

    original_load, original_pickle_obj, original_pickle = torch.load, torch._C._pickle_load_obj, package.pickle

    def weights_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise GDAError("the .pt2 program holds pickled objects, which are never loaded; export plain tensors")

    # torch.export logs a failed load with its traceback; the user gets our one line instead.
    logger = logging.getLogger("torch.export")
    with _EXPORT_LOAD_LOCK:
        torch.load, torch._C._pickle_load_obj = weights_only_load, refuse
        package.pickle = SimpleNamespace(loads=refuse, load=refuse, dumps=original_pickle.dumps)
        logger_disabled, logger.disabled = logger.disabled, True
        try:
            yield
        finally:
            torch.load, torch._C._pickle_load_obj, package.pickle = original_load, original_pickle_obj, original_pickle
            logger.disabled = logger_disabled


def _check_pt2_archive(payload: bytes, name: str, limits: UploadLimits) -> None:
    """Refuse, with a reason, a .pt2 whose weights or constants are stored pickled."""
    archive = checked_zip(payload, name, limits)
    for entry in archive.infolist():
        base = PurePosixPath(entry.filename).name
        if base.startswith(_PT2_PICKLED_PREFIXES):
            raise GDAError(f"{name} holds pickled objects ({base}), which are never loaded; export plain tensors")
        if entry.filename.endswith(("_weights_config.json", "_constants_config.json")):
            try:
                entries = json.loads(read_entry(archive, entry, name)).get("config", {}).values()
                pickled = any(isinstance(meta, dict) and meta.get("use_pickle") for meta in entries)
            except (ValueError, AttributeError, RecursionError):
                continue  # torch.export.load says what is wrong with it
            if pickled:
                # tensor subclasses are saved pickled; weights_only loading could not read them anyway
                raise GDAError(f"{name} stores weights or constants pickled (tensor subclasses?), which are "
                               f"never loaded; export with plain tensors")


def _load_program(payload: bytes, name: str, device: torch.device | str, limits: UploadLimits) -> TrainedModel:
    """An uploaded ``torch.export`` program as a model the gradient engine can use.

    ``ExportedProgram.module()`` keeps the weights as parameters, so ``functional_call`` and
    ``vmap(grad(...))`` work on it (checked on torch 2.13). When the program has a ``body`` and
    a linear ``head`` (a zoo model exported), the unflattened submodules are wrapped as a
    :class:`ZooModel`, which adds last-layer mode and representation K-means."""
    _check_pt2_archive(payload, name, limits)
    try:
        with _unpickling_refused(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(io.BytesIO(payload))
    except GDAError:
        raise
    except pickle.UnpicklingError:
        raise GDAError(f"{name} holds pickled objects beyond plain tensors, which are never loaded "
                       f"(they could run code); export plain tensors") from None
    except Exception as error:
        reason = first_line(error, width=100)
        if reason.startswith("We ran into an error when deserializing"):  # it points at logs we silenced
            reason = "no readable exported program in the archive"
        raise GDAError(f"{name} is not a valid torch.export program ({reason})") from None
    try:
        module: nn.Module = program.module()
    except Exception as error:
        reason = first_line(error, width=100)
        raise GDAError(f"{name}: the exported program cannot be turned into a module ({reason})") from None
    image_shape = _input_image_shape(module)
    if image_shape is not None:
        module, width = ImageInputs(module, image_shape), math.prod(image_shape)
    else:
        width = _input_width(module)
        module = _as_zoo_model(program, module, width)
    if not any(True for _ in module.parameters()):
        raise GDAError(f"{name}: the exported program has no parameters to attribute to; export the nn.Module "
                       f"itself (torch.export.export(model, ...)) so its weights stay parameters")
    check_finite_weights(dict(module.state_dict()), name)
    # no .eval(): an exported program is fixed in the mode it was exported in (and refuses eval())
    return TrainedModel(module.to(device), None, input_width=width, input_image_shape=image_shape)


class ImageInputs(nn.Module):
    """An exported program that takes image batches (batch, channels, height, width), fed the
    data's flat features (pixels channels first, as :class:`Dataset` keeps them)."""

    def __init__(self, program: nn.Module, image_shape: tuple[int, int, int]):
        super().__init__()
        self.program = program
        self.image_shape = image_shape

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.program(inputs.reshape(-1, *self.image_shape))


def _as_zoo_model(program, module: nn.Module, width: int | None) -> nn.Module:
    """``ZooModel(body, head)`` from the unflattened program when that computes the same thing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unflattened = torch.export.unflatten(program)
        # logreg's body is nn.Identity, which export leaves out of the program
        body, head = getattr(unflattened, "body", nn.Identity()), unflattened.head
        weight = dict(head.named_parameters()).get("weight")
        if weight is None or weight.ndim != 2 or width is None:
            return module
        wrapped = ZooModel(body, head)
        probe = torch.randn(3, width, dtype=weight.dtype)
        with torch.no_grad():
            if torch.allclose(wrapped(probe), module(probe), atol=1e-5):
                return wrapped
    except Exception:  # any program that is not head(body(x)) stays as exported
        pass
    return module


def _input_image_shape(module: nn.Module) -> tuple[int, int, int] | None:
    """(channels, height, width) when the program was traced on a 4-d image batch of static
    image sizes; None for programs of flat features."""
    for node in module.graph.nodes:
        if node.op == "placeholder" and "val" in node.meta:
            value = node.meta["val"]
            if getattr(value, "ndim", 0) != 4:
                return None
            try:
                return tuple(int(size) for size in value.shape[1:])  # type: ignore[return-value]
            except (TypeError, ValueError, RuntimeError):  # a symbolic (dynamic) image size
                return None
    return None


def _input_width(module: nn.Module) -> int | None:
    """The input width an exported program was traced with (its 2-d placeholder), if any."""
    for node in module.graph.nodes:
        if node.op == "placeholder" and "val" in node.meta and getattr(node.meta["val"], "ndim", 0) == 2:
            try:
                return int(node.meta["val"].shape[1])
            except (TypeError, ValueError, RuntimeError):  # a symbolic (dynamic) feature dimension
                return None
    return None


def load_model_file(path: str | Path, *, device: torch.device | str = "cpu",
                    limits: UploadLimits | None = None) -> TrainedModel:
    """An uploaded model: a ``.pt2`` program, or a ``.safetensors`` state dict with its config
    in ``<name>.json`` (or ``config.json``) beside it. Pickles are refused, never opened."""
    path = Path(path)
    limits = limits or UploadLimits.from_env()
    refuse_pickle(path.name)
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        payload = read_upload(path, limits)
        model = _load_program(payload, path.name, device, limits)
        model.source_digest = hashlib.sha256(payload).hexdigest()
        return model
    if suffix == ".safetensors":
        config_path = next((p for p in (path.with_suffix(".json"), path.parent / "config.json") if p.is_file()), None)
        if config_path is None:
            raise GDAError(f"{path.name} needs its config beside it: {path.with_suffix('.json').name} "
                           f"(the zoo architecture and sizes, see ModelConfig)")
        weights, config = read_upload(path, limits), read_upload(config_path, limits)
        model = _load_safetensors(weights, config, path.name, config_path.name, device)
        model.source_digest = hashlib.sha256(weights + b"\0" + config).hexdigest()
        return model
    raise GDAError(f"unsupported model file type {suffix or path.name!r}; use a .pt2 program or a "
                   f".safetensors state dict with its .json config")


def export_program(module: nn.Module, n_features: int | tuple[int, ...]) -> bytes:
    """A model as ``torch.export`` program bytes with a dynamic batch dimension (the engine
    feeds batches of any size), the form a .pt2 upload should take. ``n_features`` is the
    width of flat inputs, or the (channels, height, width) of a model that takes images."""
    module = module.eval()
    sizes = (n_features,) if isinstance(n_features, int) else tuple(n_features)
    example = torch.zeros(2, *sizes, dtype=next(module.parameters()).dtype)
    name = next(iter(inspect.signature(module.forward).parameters))
    program = torch.export.export(module, (example,), dynamic_shapes={name: {0: torch.export.Dim("batch")}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def check_model_fits(model: TrainedModel, data: Dataset) -> None:
    """An uploaded model must be made for the data's task, take the data's features, return
    its outputs for a batch (one logit per class, or one value for regression), and be
    differentiable with ``torch.func``; one line says what does not fit."""
    from torch.func import functional_call, grad, vmap

    module = model.module
    reference = next(module.parameters())
    model.check_task(data)
    if model.text is not None or data.is_text:
        data = model.prepare(data.subset(slice(0, 3)))  # a text model takes token ids
    expected = model.config.n_features if model.config is not None else model.input_width
    if model.input_image_shape is not None and model.input_image_shape != data.image_shape:
        shown = "tabular data" if data.image_shape is None else f"images of shape {data.image_shape}"
        raise GDAError(f"the model takes images of shape {model.input_image_shape} (channels, height, width) "
                       f"but the data is {shown}")
    if expected is not None and expected != data.n_features:
        raise GDAError(f"the model takes {expected} input features but the data has {data.n_features}")
    sample = data.model_inputs(reference, slice(0, 3))
    try:
        with torch.no_grad():
            outputs = module(sample)
    except Exception as error:
        reason = first_line(error, width=100)
        raise GDAError(f"the model does not accept a batch of {len(sample)} rows of {data.n_features} features "
                       f"({reason}); export it with a dynamic batch dimension (torch.export.Dim)") from None
    if not isinstance(outputs, torch.Tensor) or outputs.shape[:1] != sample.shape[:1] or outputs.ndim != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise GDAError(f"the model must return outputs of shape (batch, outputs), got {shape}")
    task = data.task
    task.check_outputs(int(outputs.shape[1]), data.labels)
    params = {name: p.detach() for name, p in module.named_parameters()}

    def loss(p, x, y):
        return task.loss(functional_call(module, p, (x[None],)), y[None]).sum()

    try:
        labels = data.labels[:len(sample)].to(reference.device)
        gradients = vmap(grad(loss), in_dims=(None, 0, 0))(params, sample, labels)
    except Exception as error:
        reason = first_line(error, width=100)
        raise GDAError(f"the model cannot be differentiated per example with torch.func ({reason}); upload "
                       f"a .safetensors state dict of a zoo architecture instead") from None
    # A loss gradient is never exactly zero everywhere (for cross-entropy the output bias alone
    # gets softmax - onehot), unless the outputs do not depend on the parameters at all.
    if all(not bool(g.any()) for g in gradients.values()):
        raise GDAError("the model's outputs do not depend on its parameters (torch.no_grad or .detach() in "
                       "forward?), so there is nothing to attribute; export it without them, or upload a "
                       ".safetensors state dict with its .json config")
