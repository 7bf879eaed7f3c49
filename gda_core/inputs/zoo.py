"""The model zoo, seeded training with checkpoints (for TracIn), and safe save/load.

Every zoo model is ``head(body(x))``: ``body`` maps inputs to the penultimate representation
(used by representation K-means) and ``head`` is the final ``nn.Linear`` (used by the
last-layer-only gradient mode). Weights are stored as safetensors beside a JSON config;
nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import GDAError, first_line
from ..io import atomic_write_bytes, file_lock, read_checked, record_checksum
from ..task import TASKS
from .datasets import FORWARD_BATCH, Dataset, image_shape_of

logger = logging.getLogger(__name__)

ARCHITECTURES = ("logreg", "mlp", "cnn", "resnet")
#: architectures that need image data (an ``image_shape``)
IMAGE_ARCHITECTURES = ("cnn", "resnet")
OPTIMIZERS = ("adam", "sgd", "lbfgs")
#: the hidden layers' nonlinearity: it changes the function, so an uploaded config names it
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
#: architectures with hidden layers, whose uploaded configs must name their activation
_ACTIVATED = ("mlp", "cnn", "resnet")
#: the zoo's own choice per architecture (the peers' ResNet-9 uses ReLU)
DEFAULT_ACTIVATIONS = {"logreg": "tanh", "mlp": "tanh", "cnn": "tanh", "resnet": "relu"}
#: refused from the config's sizes alone, before any module is built: a config with 200,000
#: layers or 10^12 weights would otherwise take minutes (or all memory) to be found wrong
MAX_LAYERS = 64
MAX_PARAMETERS = 500_000_000


@dataclass
class ModelConfig:
    """Architecture, sizes and task of a zoo model; saved as JSON beside its weights.

    A ``classification`` model has one output (logit) per class; a ``regression`` model has
    one output and ``n_classes`` 0 (logreg is then ridge regression: a linear model with L2).
    Image models (``cnn``, ``resnet``) take ``image_shape`` = (channels, height, width), the
    features being the pixels flattened channels first; ``resnet_width`` is the ResNet-9's
    first width (its stages have 1, 2, 4 and 8 times as many channels)."""

    arch: str
    n_features: int
    n_classes: int = 0
    hidden: tuple[int, ...] = (64, 64)
    image_shape: tuple[int, ...] | None = None
    cnn_channels: tuple[int, ...] = (16, 32)
    task: str = "classification"
    resnet_width: int = 8
    #: the hidden layers' nonlinearity; None is the architecture's zoo default (tanh for the
    #: mlp and cnn, relu for the resnet), but an uploaded (JSON) config must say it
    activation: str | None = None

    def __post_init__(self) -> None:
        self.n_features, self.n_classes = _whole("n_features", self.n_features), _whole("n_classes", self.n_classes)
        self.hidden = _sizes("hidden", self.hidden)
        self.resnet_width = _whole("resnet_width", self.resnet_width)
        self.cnn_channels = _sizes("cnn_channels", self.cnn_channels)
        if self.image_shape is not None:
            self.image_shape = image_shape_of(_sizes("image_shape", self.image_shape))
        if self.arch not in ARCHITECTURES:
            raise GDAError(f"unknown model {self.arch!r}; choose from: {', '.join(ARCHITECTURES)}")
        TASKS.check(self.task)
        self.activation = self.activation or DEFAULT_ACTIVATIONS.get(self.arch)
        if self.activation not in ACTIVATIONS:
            raise GDAError(f"unknown activation {self.activation!r}; choose from: {', '.join(ACTIVATIONS)}")
        if self.n_features < 1:
            raise GDAError(f"a model needs >= 1 feature, got {self.n_features}")
        if self.task == "classification" and self.n_classes < 2:
            raise GDAError(f"a classification model needs >= 2 classes, got {self.n_classes}")
        if self.task == "regression" and self.n_classes != 0:
            raise GDAError(f"a regression model has one output and no classes; drop n_classes ({self.n_classes})")
        if any(h < 1 for h in self.hidden):
            raise GDAError(f"hidden sizes must be positive, got {self.hidden}")
        if self.arch in IMAGE_ARCHITECTURES:
            if self.image_shape is None:
                raise GDAError(f"the {self.arch} model needs image data (e.g. digits, mnist); use mlp or logreg "
                               f"for tabular data")
            if math.prod(self.image_shape) != self.n_features:
                raise GDAError(f"image shape {self.image_shape} does not match {self.n_features} features")
            if len(self.cnn_channels) != 2 or min(self.cnn_channels) < 1:
                raise GDAError(f"cnn_channels must be two positive channel counts, got {self.cnn_channels}")
        if self.arch == "resnet":
            if not 1 <= self.resnet_width <= 512:
                raise GDAError(f"resnet_width must lie in 1..512, got {self.resnet_width}")
            if min(self.image_shape[1:]) < 16:  # type: ignore[index]
                # three poolings leave 2x2 maps, so BatchNorm still has several values per channel
                raise GDAError(f"the resnet pools three times, so images must be at least 16x16 pixels, "
                               f"got {self.image_shape}; use the cnn for smaller images")
        if len(self.hidden) > MAX_LAYERS:
            raise GDAError(f"{len(self.hidden)} hidden layers, over the limit of {MAX_LAYERS}")
        if self.n_parameters() > MAX_PARAMETERS:
            raise GDAError(f"the config asks for {self.n_parameters():,} parameters, over the limit of "
                           f"{MAX_PARAMETERS:,}; check its sizes")

    def n_parameters(self) -> int:
        """The parameter count of :func:`build_model`'s model, built on the meta device: from
        the sizes alone, with no memory for the weights (the layer count is bounded first)."""
        with torch.device("meta"):
            return sum(p.numel() for p in build_model(self).parameters())

    @property
    def n_outputs(self) -> int:
        return 1 if self.task == "regression" else self.n_classes

    def to_json(self) -> dict:
        payload = asdict(self)
        if self.task == "classification":
            # Left out for the default task, so classification models keep the fingerprints
            # (and cached demo models) they had before tasks were named.
            del payload["task"]
        if self.arch != "resnet":
            del payload["resnet_width"]  # the same: only a resnet's fingerprint depends on it
        return payload

    @classmethod
    def from_json(cls, payload: dict) -> "ModelConfig":
        """A config from JSON (an upload, or what :meth:`to_json` wrote). Whatever changes the
        function must be named: an mlp, cnn or resnet without ``activation`` is refused,
        never read as the zoo's default."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(payload) - known
        if unknown:
            raise GDAError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        if payload.get("arch") in _ACTIVATED and "activation" not in payload:
            raise GDAError(f"the config has no \"activation\" field; name the hidden layers' nonlinearity, "
                           f"one of: {', '.join(ACTIVATIONS)} (the zoo's mlp and cnn use tanh, its resnet relu)")
        return cls(**payload)


def _whole(name: str, value: object) -> int:
    """An integer config value; 13.5 or "13" is refused rather than rounded."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GDAError(f"model config field {name} must be a whole number, got {value!r}"[:160])
    return int(value)


def _sizes(name: str, values: object) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)):
        raise GDAError(f"model config field {name} must be a list of whole numbers, got {values!r}"[:160])
    return tuple(_whole(name, value) for value in values)


def activation_module(name: str) -> nn.Module:
    """The nn.Module of an activation name (one of :data:`ACTIVATIONS`)."""
    return ACTIVATIONS[name]()


class ZooModel(nn.Module):
    """``head(body(x))`` with the penultimate representation exposed as ``features``."""

    def __init__(self, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(inputs))

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.body(inputs)


def build_model(config: ModelConfig) -> ZooModel:
    """A freshly initialised zoo model (initialisation follows torch's global RNG)."""
    if config.arch == "logreg":
        return ZooModel(nn.Identity(), nn.Linear(config.n_features, config.n_outputs))
    if config.arch == "mlp":
        layers: list[nn.Module] = []
        width = config.n_features
        for size in config.hidden:
            layers += [nn.Linear(width, size), activation_module(config.activation)]
            width = size
        return ZooModel(nn.Sequential(*layers), nn.Linear(width, config.n_outputs))
    if config.arch == "resnet":
        return resnet9(config)
    # cnn: two 3x3 convolutions, one 2x2 pooling, one hidden dense layer.
    channels, height, width_px = config.image_shape  # type: ignore[misc]
    first, second = config.cnn_channels
    pooled = (height // 2) * (width_px // 2) * second
    hidden = config.hidden[-1] if config.hidden else 64
    body = nn.Sequential(
        nn.Unflatten(1, (channels, height, width_px)),
        nn.Conv2d(channels, first, 3, padding=1), activation_module(config.activation),
        nn.Conv2d(first, second, 3, padding=1), activation_module(config.activation),
        nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(pooled, hidden), activation_module(config.activation),
    )
    return ZooModel(body, nn.Linear(hidden, config.n_outputs))


class Residual(nn.Module):
    """``x + block(x)``."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs + self.block(inputs)


def _conv_bn(in_channels: int, out_channels: int, activation: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), activation_module(activation))


def resnet9(config: ModelConfig) -> ZooModel:
    """The CIFAR-style ResNet-9 that dattri, kronfluence and TRAK benchmark (conv-BN-ReLU
    stages of width w, 2w, 4w, 8w with max pooling and two residual blocks, global max
    pooling), with ``w = resnet_width`` and a linear head with a bias. Attribution uses it in
    eval mode, so BatchNorm applies its running statistics and every example is independent."""
    channels, height, width_px = config.image_shape  # type: ignore[misc]
    w = config.resnet_width

    def conv(in_channels: int, out_channels: int) -> nn.Sequential:
        return _conv_bn(in_channels, out_channels, config.activation)  # type: ignore[arg-type]

    body = nn.Sequential(
        nn.Unflatten(1, (channels, height, width_px)),
        conv(channels, w),
        conv(w, 2 * w), nn.MaxPool2d(2), Residual(nn.Sequential(conv(2 * w, 2 * w), conv(2 * w, 2 * w))),
        conv(2 * w, 4 * w), nn.MaxPool2d(2),
        conv(4 * w, 8 * w), nn.MaxPool2d(2), Residual(nn.Sequential(conv(8 * w, 8 * w), conv(8 * w, 8 * w))),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
    )
    return ZooModel(body, nn.Linear(8 * w, config.n_outputs))


def state_arrays(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's weights as numpy arrays: how a model travels to other processes (with its
    config), rather than as a live module."""
    return {name: tensor.detach().cpu().numpy() for name, tensor in module.state_dict().items()}


def module_from_arrays(config: ModelConfig, arrays: dict[str, np.ndarray]) -> ZooModel:
    """The zoo model of ``config`` holding the weights of :func:`state_arrays`, in eval mode."""
    module = build_model(config)
    module.load_state_dict({name: torch.from_numpy(np.array(array)) for name, array in arrays.items()})
    module.eval()
    return module


@dataclass
class TrainConfig:
    """How a model is trained. ``n_checkpoints`` snapshots (evenly spaced, the last one the
    final model) are kept with their learning rates for TracIn."""

    epochs: int = 30
    lr: float = 1e-2
    batch_size: int = 64
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    seed: int = 0
    n_checkpoints: int = 5

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise GDAError(f"unknown optimizer {self.optimizer!r}; choose from: {', '.join(OPTIMIZERS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.n_checkpoints < 1:
            raise GDAError("epochs, batch size and checkpoint count must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise GDAError("learning rate must be > 0 and weight decay >= 0")

    def to_json(self) -> dict:
        return asdict(self)


def default_train_config(arch: str, seed: int = 0) -> TrainConfig:
    """Defaults that train each zoo model well on the built-in sets in seconds.

    Logistic regression (ridge regression on a regression task) is trained to convergence
    with full-batch L-BFGS so that its influence functions are exact (the model is convex)."""
    if arch == "logreg":
        return TrainConfig(epochs=200, lr=1.0, batch_size=10**9, optimizer="lbfgs",
                           weight_decay=1e-3, seed=seed, n_checkpoints=1)
    if arch == "cnn":
        return TrainConfig(epochs=20, lr=3e-3, batch_size=64, optimizer="adam", seed=seed)
    if arch == "resnet":
        return TrainConfig(epochs=8, lr=3e-3, batch_size=64, optimizer="adam", seed=seed)
    return TrainConfig(epochs=30, lr=3e-3, batch_size=64, optimizer="adam", seed=seed)


@dataclass
class Checkpoint:
    """A snapshot of the weights during training and the learning rate in force there."""

    state: dict[str, torch.Tensor]
    lr: float
    epoch: int


@dataclass
class TrainedModel:
    """A trained model with its config, training config and checkpoints.

    ``config`` is None for an uploaded ``torch.export`` program: it can be attributed (its
    parameters work with ``functional_call``) but not rebuilt, so whatever retrains from
    scratch asks for :meth:`zoo_config` and gets a one-line reason instead."""

    module: nn.Module
    config: ModelConfig | None
    train_config: TrainConfig = field(default_factory=TrainConfig)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    #: input features an uploaded program was exported for (zoo models have them in ``config``)
    input_width: int | None = None
    #: (channels, height, width) of the images an uploaded program takes, when it was exported
    #: for image batches rather than flat features
    input_image_shape: tuple[int, int, int] | None = None
    #: sha256 of the uploaded file(s) the model came from: an exported program's graph is not
    #: in its weights, so two programs with the same weights must still differ in cache keys
    source_digest: str | None = None
    #: a Hugging Face text model's tokenizer and pad id (``huggingface.TextModel``); None otherwise
    text: Any = None

    def fingerprint(self) -> str:
        """A content hash of the final weights, the config, the training recipe, the
        checkpoints (TracIn uses them) and the uploaded file's bytes, for cache keys."""
        unbuilt = {"arch": "hugging face text model" if self.text is not None else "exported program"}
        described = {"config": self.config.to_json() if self.config is not None else unbuilt,
                     "train_config": self.train_config.to_json(), "source": self.source_digest,
                     "checkpoints": [checkpoint.lr for checkpoint in self.checkpoints]}
        digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
        states = [("final", self.module.state_dict())]
        states += [(f"checkpoint{i}", checkpoint.state) for i, checkpoint in enumerate(self.checkpoints)]
        for prefix, state in states:
            for name, tensor in sorted(state.items()):
                digest.update(f"{prefix}.{name}".encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def zoo_config(self, purpose: str) -> ModelConfig:
        """The zoo config, needed by ``purpose`` (e.g. retraining); an exported program has none."""
        if self.config is None and self.text is not None:
            raise GDAError(f"{purpose} needs to rebuild a zoo model from its config, which a Hugging Face text "
                           f"model does not have; use a method and gold standard that work on the final model")
        if self.config is None:
            raise GDAError(f"{purpose} needs to rebuild the model, which an uploaded .pt2 program cannot do; "
                           f"upload a .safetensors state dict with its .json config instead")
        return self.config

    def prepare(self, data: Dataset) -> Dataset:
        """The data as this model takes it: text tokenised by a text model's tokenizer; other
        data as it is. Text data without a text model (and the reverse) is one line."""
        if self.text is not None:
            return self.text.tokenise(data)
        if data.is_text:
            raise GDAError(f"{data.name} is text, which needs a Hugging Face text model (the built-in minilm, "
                           f"or a save_pretrained folder or its zip)")
        return data

    @property
    def n_classes(self) -> int | None:
        return None if self.config is None else self.config.n_classes

    def check_task(self, data: Dataset) -> None:
        """A one-line refusal when the model was made for another task than the data's (an
        exported program has no config: its outputs are checked by ``check_model_fits``)."""
        if self.config is not None and self.config.task != data.task.name:
            raise GDAError(f"the model is a {self.config.task} model but the data is {data.task.name} data; "
                           f"use a model made for {data.task.name}")

    def checkpoint_module(self, checkpoint: Checkpoint) -> ZooModel:
        """A copy of the model holding a checkpoint's weights."""
        module = build_model(self.zoo_config("TracIn checkpoints")).to(next(self.module.parameters()))
        module.load_state_dict(checkpoint.state)
        module.eval()
        return module

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TrainedModel":
        self.module.to(device=device, dtype=dtype)
        for checkpoint in self.checkpoints:
            checkpoint.state = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in checkpoint.state.items()}
        return self


def model_outputs(module: nn.Module, data: Dataset, batch: int = FORWARD_BATCH) -> torch.Tensor:
    """The model's outputs (logits) for every point, without gradients."""
    # In batches: one forward of 100k images would hold every activation at once.
    reference = next(module.parameters())
    with torch.no_grad():
        return torch.cat([module(data.model_inputs(reference, slice(start, start + batch)))
                          for start in range(0, len(data), batch)])


def model_score(module: nn.Module, data: Dataset) -> float:
    """The model's score on the data: accuracy for classes, R^2 for regression targets (the
    data's task names it, ``data.task.score_name``)."""
    return data.task.score(model_outputs(module, data), data.labels)


def predict(module: nn.Module, data: Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """The prediction for every point (a class, or a value) and, for classes, the model's
    probability of it."""
    predicted, confidence = data.task.predict(model_outputs(module, data).cpu())
    return predicted.numpy(), None if confidence is None else confidence.numpy()


def point_losses(module: nn.Module, data: Dataset) -> np.ndarray:
    """Each point's loss under the model (the data task's per-example training loss)."""
    outputs = model_outputs(module, data).cpu()
    return data.task.objective("loss")(outputs, data.labels.cpu()).double().numpy()


def train_model(
    config: ModelConfig,
    train: Dataset,
    train_config: TrainConfig | None = None,
    *,
    sample_weights: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[float], None] | None = None,
) -> TrainedModel:
    """Train a zoo model from a seeded initialisation.

    The loss is the data task's (optionally weighted) mean loss plus ``weight_decay / 2 *
    ||theta||^2``; the same seed gives the same initialisation and the same batch order.
    """
    if config.task != train.task.name:
        raise GDAError(f"a {config.task} model cannot be trained on {train.task.name} data")
    task = train.task
    train_config = train_config or default_train_config(config.arch)
    generator = torch.Generator().manual_seed(train_config.seed)
    torch.manual_seed(train_config.seed)
    module = build_model(config).to(device)
    features = train.features.to(device)
    labels = train.labels.to(device)
    weights = torch.ones(len(labels), device=device) if sample_weights is None else sample_weights.to(device)
    n = len(labels)

    def objective(rows: torch.Tensor | slice) -> torch.Tensor:
        return task.weighted_loss(module(features[rows]), labels[rows], weights[rows],
                                  weights[rows].sum().clamp_min(1e-12), module.parameters(),
                                  train_config.weight_decay)

    checkpoint_epochs = sorted({
        max(1, round(train_config.epochs * (i + 1) / train_config.n_checkpoints))
        for i in range(train_config.n_checkpoints)
    })
    trained = TrainedModel(module, config, train_config)

    if train_config.optimizer == "lbfgs":
        optimizer = torch.optim.LBFGS(module.parameters(), lr=train_config.lr, max_iter=20,
                                      tolerance_grad=1e-10, tolerance_change=1e-14,
                                      history_size=50, line_search_fn="strong_wolfe")
    elif train_config.optimizer == "sgd":
        optimizer = torch.optim.SGD(module.parameters(), lr=train_config.lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(module.parameters(), lr=train_config.lr)

    for epoch in range(1, train_config.epochs + 1):
        module.train()
        if train_config.optimizer == "lbfgs":
            def closure() -> torch.Tensor:
                optimizer.zero_grad()
                loss = objective(slice(None))
                loss.backward()
                return loss
            epoch_loss = float(optimizer.step(closure).detach())
        else:
            order = torch.randperm(n, generator=generator).to(device)
            total = 0.0
            for start in range(0, n, train_config.batch_size):
                rows = order[start:start + train_config.batch_size]
                optimizer.zero_grad()
                loss = objective(rows)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(rows)
            epoch_loss = total / n
        converged = bool(train_config.optimizer == "lbfgs" and trained.history
                         and abs(trained.history[-1] - epoch_loss) <= 1e-12 * max(1.0, abs(epoch_loss)))
        trained.history.append(epoch_loss)
        if converged:
            # Full-batch L-BFGS has reached the optimum: later epochs would change nothing.
            epoch = train_config.epochs
        if epoch in checkpoint_epochs:
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            trained.checkpoints.append(Checkpoint(state, train_config.lr, epoch))
        if progress is not None:
            progress(epoch / train_config.epochs)
        if converged:
            break
    module.eval()
    return trained


def save_model(trained: TrainedModel, directory: str | Path) -> Path:
    """Write ``model.safetensors`` (final weights and checkpoints) and ``config.json``.

    Both are written to temporary names and renamed, config last, so a reader never sees a
    config without its weights."""
    directory = Path(directory)
    weights, config = weights_files(trained)
    atomic_write_bytes(directory / "model.safetensors", weights)
    atomic_write_bytes(directory / "config.json", config)
    return directory


def weights_files(trained: TrainedModel) -> tuple[bytes, bytes]:
    """The safetensors bytes (final weights as ``final.*``, checkpoints as ``checkpointN.*``)
    and the JSON config of a zoo model: what :func:`save_model` writes, and a model upload."""
    from safetensors.torch import save

    config = trained.zoo_config("saving as safetensors")
    tensors = {f"final.{k}": v.detach().cpu().contiguous() for k, v in trained.module.state_dict().items()}
    for index, checkpoint in enumerate(trained.checkpoints):
        tensors.update({f"checkpoint{index}.{k}": v.detach().cpu().contiguous() for k, v in checkpoint.state.items()})
    payload = {
        "model": config.to_json(),
        "training": trained.train_config.to_json(),
        "checkpoints": [{"lr": c.lr, "epoch": c.epoch} for c in trained.checkpoints],
        "history": trained.history,
    }
    return save(tensors), json.dumps(payload, indent=2).encode()


def load_model(directory: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Load what :func:`save_model` wrote. Raises :class:`GDAError` on a missing or bad file."""
    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise GDAError(f"{directory} needs both config.json and model.safetensors")
    return _load_safetensors(weights_path.read_bytes(), config_path.read_bytes(), weights_path.name,
                             config_path.name, device)


def _load_safetensors(weights: bytes, config_text: bytes, weights_name: str, config_name: str,
                      device: torch.device | str) -> TrainedModel:
    """A zoo model from safetensors bytes and its JSON config: either :func:`save_model`'s
    ``{"model": {...}, "training": ..., "checkpoints": ...}`` with ``final.*`` tensors, or
    the bare :class:`ModelConfig` fields with a plain state dict."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        payload = json.loads(config_text)
        if not isinstance(payload, dict):
            raise TypeError("expected a JSON object")
        config = ModelConfig.from_json(payload["model"] if "model" in payload else payload)
        train_config = TrainConfig(**payload.get("training", {}))
        checkpoint_meta = [(float(meta["lr"]), int(meta["epoch"])) for meta in payload.get("checkpoints", [])]
    except GDAError as error:
        raise GDAError(f"{config_name}: {error}") from None
    except RecursionError:  # json.loads on a config nested thousands deep
        raise GDAError(f"{config_name} is not a valid model config (nested too deeply)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        reason = first_line(error)
        raise GDAError(f"{config_name} is not a valid model config ({reason[:80]})") from None
    try:
        tensors = {k: (v.float() if v.is_floating_point() else v).to(device) for k, v in load(weights).items()}
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as error:
        reason = first_line(error, default="unreadable header")
        raise GDAError(f"{weights_name} is not a valid safetensors file ({reason[:80]})") from None
    # Built on the meta device and given the file's tensors: a config asking for huge layers
    # costs nothing until it is checked against the weights actually there.
    with torch.device("meta"):
        module = build_model(config)
    final = ({k.removeprefix("final."): v for k, v in tensors.items() if k.startswith("final.")}
             if any(k.startswith("final.") for k in tensors) else tensors)
    try:
        module.load_state_dict(final, assign=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())  # torch's message spans lines and tabs
        reason = reason.removeprefix(f"Error(s) in loading state_dict for {type(module).__name__}: ")
        raise GDAError(f"weights do not fit the {config.arch} config: {reason[:160]}") from None
    module.eval()
    check_finite_weights(tensors, weights_name)
    checkpoints = []
    for index, (lr, epoch) in enumerate(checkpoint_meta):
        prefix = f"checkpoint{index}."
        state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        checkpoints.append(Checkpoint(state, lr, epoch))
    return TrainedModel(module, config, train_config, checkpoints, list(payload.get("history", [])))


def check_finite_weights(tensors: dict[str, torch.Tensor], name: str) -> None:
    """Refuse weights holding NaN or infinity: every score computed from them would be NaN."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise GDAError(f"{name} holds non-finite weights (NaN or infinite) in {key[:60]}; "
                           f"upload a model whose weights are all finite")


def model_config_for(arch: str, data: Dataset, hidden: tuple[int, ...] | None = None) -> ModelConfig:
    """The zoo config of ``arch`` sized for ``data``."""
    if data.is_text:
        raise GDAError(f"the zoo's {arch} takes numbers, and this data is text; use a Hugging Face text model "
                       f"(the built-in minilm, or a save_pretrained folder or its zip)")
    kwargs = {} if hidden is None else {"hidden": hidden}
    return ModelConfig(arch=arch, n_features=data.n_features, n_classes=data.n_classes,
                       image_shape=data.image_shape, task=data.task.name, **kwargs)


def architectures_for(data: Dataset) -> list[str]:
    """The zoo architectures that can be built for ``data`` (image models need images of a
    size they can take)."""
    fitting = []
    for arch in ARCHITECTURES:
        try:
            model_config_for(arch, data)
        except GDAError:
            continue
        fitting.append(arch)
    return fitting


def demo_model_folder(arch: str, train: Dataset, cache_dir: str | Path, *, seed: int = 0) -> Path:
    """Where the demo model of ``arch`` on ``train`` is cached: named by the data fingerprint,
    the architecture and the training config, so a change in any of them is a new model."""
    key = json.dumps([train.fingerprint(), model_config_for(arch, train).to_json(),
                      default_train_config(arch, seed=seed).to_json()], sort_keys=True)
    return Path(cache_dir) / "models" / f"{train.name}-{arch}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def demo_model_is_cached(arch: str, train: Dataset, cache_dir: str | Path, *, seed: int = 0) -> bool:
    """Whether the demo model is on disk already (loading it is then quick; else it trains)."""
    return (demo_model_folder(arch, train, cache_dir, seed=seed) / "config.json").is_file()


def demo_model(
    arch: str,
    train: Dataset,
    cache_dir: str | Path,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[float], None] | None = None,
) -> TrainedModel:
    """The built-in demo model for a data set: trained on first use, then loaded from the cache
    (:func:`demo_model_folder`)."""
    config = model_config_for(arch, train)
    train_config = default_train_config(arch, seed=seed)
    folder = demo_model_folder(arch, train, cache_dir, seed=seed)
    weights = folder / "model.safetensors"
    # One process trains, the others wait for it and load its model (the lock is beside the folder).
    with file_lock(folder.with_name(folder.name + ".lock")):
        if (folder / "config.json").is_file():
            try:
                read_checked(weights)  # the weights against model.safetensors.sha256
                return load_model(folder, device=device)
            except GDAError as error:  # a damaged cache entry is retrained, never used
                logger.warning("cached demo model %s is damaged (%s); retraining it", folder, first_line(error))
        trained = train_model(config, train, train_config, device=device, progress=progress)
        try:
            save_model(trained, folder)
            record_checksum(weights)
        except OSError as error:  # a read-only cache only costs speed
            logger.warning("cannot cache the demo model in %s (%s)", folder, error.strerror or first_line(error))
    return trained
