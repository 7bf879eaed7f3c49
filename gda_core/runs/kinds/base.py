"""The job kind: one class per kind of job, registered by its ``name`` in
:data:`gda_core.registry.JOB_KINDS`.

A kind names its request dataclass (whose ``result_kind`` is the store's kind of its runs),
says what its result depends on (:meth:`JobKind.identity`, the cache key's content), computes
it (:meth:`JobKind.run`), and is a ``gda`` sub-command: flags from the request's fields
(:mod:`gda_core.runs.arguments`), the request built from them, the result printed. The store's
kinds, the worker's dispatch and the command line all read the registry, so a new kind is one
subclass in one module (imported by :mod:`gda_core.runs.kinds`, or by whoever defines it).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ...errors import GDAError
from ...inputs.choices import load_data_choice, load_inputs, prepare_data_choice, prepare_model_choice
from ...inputs.parsers import DataOptions
from ...io import check_output_path, content_key, write_output
from ...progress import Progress
from ...registry import JOB_KINDS
from ...requests import Choices, resolve_device
from ..arguments import add_field_arguments, field_values

if TYPE_CHECKING:
    from ..jobs import JobOutcome
    from ..store import ScoreStore

#: what a job computes: its arrays (stored as checksummed files) and its JSON summary
Result = tuple[dict[str, np.ndarray], dict]
#: where the flags of the data-file options are stored in the parsed arguments
_DATA_OPTIONS = "data_options."


class JobKind:
    """One kind of job. A subclass names itself in its class statement,
    ``class Noisy(JobKind, name="noisy", request_type=NoisyConfig, description="...")``, and
    implements :meth:`run`; everything else has a default that fits most kinds."""

    #: the job's name: the key in ``JOB_KINDS`` and the ``gda`` sub-command
    name: ClassVar[str] = ""
    #: the request dataclass a job of this kind takes (as a dict of its fields)
    request_type: ClassVar[type[Choices]] = Choices
    #: one line for ``gda --help``
    description: ClassVar[str] = ""
    #: the store's kind of this job's runs: the request's ``result_kind`` unless set
    store_kind: ClassVar[str] = ""
    #: whether the sub-command takes ``--plot HTML`` (which writes :meth:`figure`)
    draws_figure: ClassVar[bool] = False

    def __init_subclass__(cls, *, name: str = "", request_type: type[Choices] | None = None, description: str = "",
                          store_kind: str = "", draws_figure: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if request_type is not None:
            cls.request_type = request_type
        if draws_figure is not None:
            cls.draws_figure = draws_figure
        if name:  # a concrete kind; a shared intermediate class names none
            cls.name, cls.description = name, description
            cls.store_kind = store_kind or cls.request_type.result_kind
            JOB_KINDS.register(name, cls)

    @classmethod
    def request(cls, fields: dict) -> Choices:
        """The validated request of a job's fields (a bad value is one :class:`GDAError` line)."""
        try:
            return cls.request_type(**fields)
        except TypeError as error:  # an unknown or missing field
            raise GDAError(f"bad {cls.name} request: {error}") from None

    @classmethod
    def identity(cls, request: Choices, store: ScoreStore) -> dict:
        """What the result depends on: the request's parameters (where it runs aside) and the
        content fingerprints of the data and of the model's weights."""
        split, model = load_inputs(request, store.root, resolve_device(request.device))
        return request.identity(split, model)

    @classmethod
    def key(cls, request: Choices, store: ScoreStore) -> tuple[str, dict]:
        """The store's content key of a request, and the parameters hashed into it."""
        params = cls.identity(request, store)
        return content_key(cls.store_kind, params), params

    @classmethod
    def run(cls, request: Choices, store: ScoreStore, key: str, report: Progress) -> Result:
        """Compute the job's arrays and summary; ``report`` may raise ``JobCancelled``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- command line
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The sub-command's flags: the request's fields, how to read a data file, and the output."""
        add_field_arguments(parser, cls.request_type)
        add_field_arguments(parser, DataOptions, prefix=_DATA_OPTIONS)
        cls.add_output_arguments(parser)

    @classmethod
    def add_output_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        if cls.draws_figure:
            parser.add_argument("--plot", default=None, metavar="HTML", help="write the figure")

    @classmethod
    def fields_from_arguments(cls, args: argparse.Namespace, store: ScoreStore) -> dict:
        """The request's fields from parsed flags: a data file is validated and stored
        normalised in the store (uploads/<sha256>.npz), a model file's path made absolute."""
        fields = field_values(args, cls.request_type)
        options = DataOptions(**field_values(args, DataOptions, prefix=_DATA_OPTIONS))
        fields["data"] = prepare_data_choice(fields["data"], options, store.root)
        fields["model"] = prepare_model_choice(fields["model"])
        return fields

    @classmethod
    def check_outputs(cls, args: argparse.Namespace) -> None:
        """Refuse output paths that cannot be written before the run, not after it (one line)."""
        if cls.draws_figure and args.plot:
            check_output_path(args.plot, "--plot")

    @classmethod
    def request_from_arguments(cls, args: argparse.Namespace, store: ScoreStore) -> Choices:
        cls.check_outputs(args)
        return cls.request(cls.fields_from_arguments(args, store))

    @classmethod
    def result(cls, outcome: JobOutcome, args: argparse.Namespace, store: ScoreStore) -> dict:
        """What the sub-command reports (and writes, e.g. a figure)."""
        result = {**outcome.summary, "cache_hit": outcome.cache_hit, "wall_seconds": round(outcome.seconds, 4),
                  "key": outcome.key}
        if cls.draws_figure and args.plot:
            write_output(args.plot, cls.figure(result).to_html(include_plotlyjs=True).encode(), "--plot")
        return result

    @classmethod
    def figure(cls, result: dict) -> Any:
        """The plotly figure of a result (kinds that draw one)."""
        raise NotImplementedError

    @classmethod
    def describe(cls, result: dict) -> str:
        """The result for a person to read (without ``--json``)."""
        return json.dumps(result, indent=2, default=float)

    @classmethod
    def print_result(cls, result: dict, args: argparse.Namespace) -> None:
        print(json.dumps(result, indent=2, default=float) if args.json else cls.describe(result))


class ScoringKind(JobKind):
    """A kind whose request scores with a method: ``--damping``, ``--last-layer``,
    ``--parameters`` and ``--measurement`` are shorthands for method options."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--damping", type=float, default=None, help="damping for curvature methods")
        parser.add_argument("--last-layer", action="store_true", help="gradients of the final layer only")
        parser.add_argument("--parameters", default=None, metavar="SUBSET",
                            help="differentiate only these parameters, the rest fixed: all (default), head, "
                                 "last-K (a text model's last K encoder layers and its head) or lora")
        parser.add_argument("--measurement", choices=("loss", "margin"), default=None,
                            help="test-side quantity (default: the method's own)")

    @classmethod
    def fields_from_arguments(cls, args: argparse.Namespace, store: ScoreStore) -> dict:
        fields = super().fields_from_arguments(args, store)
        shorthands = {"damping": args.damping, "last_layer_only": args.last_layer or None,
                      "measurement": args.measurement, "parameters": args.parameters}
        fields["method_options"].update({k: v for k, v in shorthands.items() if v is not None})
        return fields


class RetrainingKind(ScoringKind):
    """A kind that retrains its own model from the zoo architecture, so only the data's
    content joins the request in its identity (a data file with new content at the same path
    is a new run). Its result is a summary alone, ``evaluate(request, progress=report)``."""

    #: the evaluation a retraining kind runs (a ``staticmethod``)
    evaluate: ClassVar[Any]

    @classmethod
    def run(cls, request: Choices, store: ScoreStore, key: str, report: Progress) -> Result:
        return {}, cls.evaluate(request, progress=report)

    @classmethod
    def identity(cls, request: Choices, store: ScoreStore) -> dict:
        split = load_data_choice(request.data, seed=request.seed)
        return {**request.params(), "data_fingerprint": split.train.fingerprint() + split.test.fingerprint()}
