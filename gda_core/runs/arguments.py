"""Command-line flags from a dataclass's fields: one flag per field, with the field's default
and help, so the command line never restates them.

A field's ``metadata`` may hold ``help``, ``flag`` (the flag when it is not ``--field-name``;
None keeps the field off the command line), ``metavar`` and ``choices`` (names listed in the
help: the request checks the value itself, in one line). A subclass that only changes a
field's default keeps its base class's metadata. Values convert by the field's type: ints,
floats and strings as typed; ``bool`` is a switch (``--name`` when the default is False,
``--no-name`` when it is True); a tuple is a comma-separated list (``none``: an empty one); a
dict is ``KEY=VALUE``, repeated; ``none`` sets an optional field to None; a nested dataclass
adds its own fields' flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Callable, Mapping

#: the text that stands for None (an optional field) or for an empty list (a tuple field)
NONE = "none"


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The type inside ``X | None`` (and whether None was allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return (inner[0] if len(inner) == 1 else str), len(inner) < len(typing.get_args(annotation))
    return annotation, False


def _metadata(cls: type, name: str) -> Mapping[str, Any]:
    """A field's metadata, inherited from the base class that documented it."""
    for klass in cls.__mro__:
        found = getattr(klass, "__dataclass_fields__", {}).get(name)
        if found is not None and found.metadata:
            return found.metadata
    return {}


def _named(convert: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    convert.__name__ = name  # argparse names the type in "invalid <name> value"
    return convert


def _scalar(kind: type, optional: bool) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return None if optional and text.strip().lower() == NONE else kind(text)

    return _named(convert, kind.__name__)


def _list_of(kind: type) -> Callable[[str], tuple]:
    def convert(text: str) -> tuple:
        if text.strip().lower() == NONE:
            return ()
        try:
            return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, "
                                             f"got {text!r}") from None

    return convert


def option_value(text: str) -> Any:
    """A ``KEY=VALUE`` value: JSON where it parses (numbers, true, null), else the text."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # nested thousands deep: the option's type check refuses it
        return text


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), option_value(value.strip())


def _shown(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or NONE
    return str(value)


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def add_field_arguments(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "") -> None:
    """A flag for each field of the dataclass ``cls``; each stores under ``prefix + name``."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        metadata = _metadata(cls, field.name)
        flag = metadata.get("flag", "--" + field.name.replace("_", "-"))
        kind, optional = _unwrap(hints[field.name])
        dest = prefix + field.name
        if flag is None or not field.init:
            continue
        if dataclasses.is_dataclass(kind):
            add_field_arguments(parser, kind, prefix=dest + ".")
            continue
        default = _default(field)
        text = metadata.get("help", field.name.replace("_", " "))
        if metadata.get("choices") is not None:
            text += f"; choose from: {', '.join(metadata['choices'])}"
        options: dict[str, Any] = {"dest": dest, "default": default}
        if kind is bool:
            if default:
                flag = metadata.get("flag", "--no-" + field.name.replace("_", "-"))
                text = f"turn off (on by default): {text}"
            options["action"] = "store_false" if default else "store_true"
        else:
            text += f" (default: {_shown(default)})"
            origin = typing.get_origin(kind) or kind
            options["metavar"] = metadata.get("metavar", flag.lstrip("-").upper().replace("-", "_"))
            if origin is tuple:
                options["type"] = _list_of(typing.get_args(kind)[0] if typing.get_args(kind) else str)
            elif origin is dict:
                options.update(action="append", type=_key_value, default=None,
                               metavar=metadata.get("metavar", "KEY=VALUE"))
            else:
                options["type"] = _scalar(kind, optional)
        parser.add_argument(flag, help=text.replace("%", "%%"), **options)


def field_values(args: argparse.Namespace, cls: type, *, prefix: str = "") -> dict[str, Any]:
    """The values of the flags :func:`add_field_arguments` added for ``cls``, by field name (a
    nested dataclass as a dict of its own); fields without a flag are left out."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        kind, _ = _unwrap(hints[field.name])
        dest = prefix + field.name
        if dataclasses.is_dataclass(kind):
            values[field.name] = field_values(args, kind, prefix=dest + ".")
        elif hasattr(args, dest):
            value = getattr(args, dest)
            origin = typing.get_origin(kind) or kind
            values[field.name] = {**_default(field), **dict(value or ())} if origin is dict else value
    return values
