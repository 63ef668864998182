"""`sae` commands whose options are generated from a parameter model.

A setting is declared once, as a field of a pydantic model (name, type, default, help);
the command's options come from the fields, as EleutherAI/sparsify builds its command
line from its config dataclass. Lists are comma-separated (``--k 16,32``), ``None``
defaults are options left out, a ``Literal`` is a choice, and a field may name its
positional argument (``json_schema_extra={"argument": "DOMAIN"}``) or extra flags
(``{"flags": ["--n"]}``).
"""

from __future__ import annotations

import datetime
import enum
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from flows.cli_common import fail, validation_message

M = TypeVar("M", bound=BaseModel)


def model_command(
    app: typer.Typer, model: type[M], name: str
) -> Callable[[Callable[[M], None]], Callable[[M], None]]:
    """Register ``run(params)`` as command ``name``, its options made from ``model``."""

    def register(run: Callable[[M], None]) -> Callable[[M], None]:
        fields = dict(model.model_fields)
        arguments = {n: _extra(f).get("argument") for n, f in fields.items()}
        order = sorted(fields, key=lambda n: arguments[n] is None)  # arguments first

        def command(**values: Any) -> None:
            given = {n: _parse(fields[n], v, _flag(n, arguments[n])) for n, v in values.items()}
            try:
                params = model(**given)
            except ValidationError as exc:
                names = {n: arguments[n] or _flag(n, None) for n in fields}
                raise fail(validation_message(exc, names)) from exc
            run(params)

        command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [_parameter(n, fields[n], arguments[n]) for n in order]
        )
        command.__doc__ = run.__doc__
        command.__name__ = name
        app.command(name=name)(command)
        return run

    return register


def _extra(field: FieldInfo) -> dict:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def _flag(name: str, argument: str | None) -> str:
    return argument or "--" + name.replace("_", "-")


def _parameter(name: str, field: FieldInfo, argument: str | None) -> inspect.Parameter:
    kind, optional = _kind(field.annotation)
    default = inspect.Parameter.empty if field.is_required() else field.default
    help = field.description or ""
    if kind is list:
        cli_type: Any = str
        help = f"{help} Comma-separated."
        if default is not None and default is not inspect.Parameter.empty:
            default = ",".join(map(str, default))
    elif kind is datetime.date:
        cli_type = str
        help = f"{help} YYYY-MM-DD."
    elif argument is not None:
        cli_type = str  # the model checks it: an argument may be spelled many ways
    elif typing.get_origin(kind) is typing.Literal:
        choices = [str(c) for c in typing.get_args(kind)]
        cli_type = enum.StrEnum(name, {c: c for c in choices})  # typer shows the choices
        default = None if default is None else cli_type(default)
    else:
        cli_type = kind
    if optional:
        cli_type = cli_type | None
    if argument is not None:
        info: Any = typer.Argument(help=help, metavar=argument, show_default=True)
    else:
        flags = [_flag(name, None), *_extra(field).get("flags", [])]
        info = typer.Option(*flags, help=help)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[cli_type, info],
    )


def _kind(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed); ``list[int]`` gives ``list``."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and (
        type(None) in args
    )
    if optional:
        (annotation,) = [a for a in args if a is not type(None)]
    if typing.get_origin(annotation) is list:
        return list, optional
    return annotation, optional


def _parse(field: FieldInfo, value: Any, flag: str) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    kind = _kind(field.annotation)[0]
    if value is not None and kind is datetime.date:
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            raise fail(f"{flag} takes YYYY-MM-DD, got {value!r}") from None
    if value is None or kind is not list:
        return value
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise fail(f"{flag} is empty: give one or more comma-separated values")
    list_type = next(
        (a for a in typing.get_args(field.annotation) if typing.get_origin(a) is list),
        field.annotation,
    )  # list[int] | None: the list[int]
    (item_type,) = typing.get_args(list_type) or (str,)
    if item_type is int:
        try:
            return [int(v) for v in items]
        except ValueError:
            raise fail(f"{flag} takes comma-separated integers (16,32), got {value!r}") from None
    return items
