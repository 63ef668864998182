"""What every ``sae`` command shares: logging, the error exit, argument parsing."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime

import typer

from infra.local_stack import StackError
from infra.ray_runtime import RayUnavailableError
from infra.settings import get_settings
from infra.store import StoreError
from infra.tracking import TrackingUnavailableError

#: A service that cannot be reached or refuses the run's requests: exit 2, as bad input.
SERVICE_ERRORS = (StackError, StoreError, TrackingUnavailableError, RayUnavailableError)

ExitCodes = Iterable[tuple[type[Exception] | tuple[type[Exception], ...], int]]


def setup_logging(own_handler: bool = True) -> None:
    """INFO from our packages; ``own_handler=False`` when Prefect's console handler shows them."""
    names = ("tasks", "infra", "flows")
    for name in names:
        logging.getLogger(name).setLevel(logging.INFO)
    if not own_handler:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in names:
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)


def quiet_prefect_console() -> None:
    """Without --debug, Prefect's console shows a failed task or flow run as its one-line
    message, not its traceback (the run's log on the Prefect server keeps it)."""
    # Prefect: ~7 s more for `sae --help` (measured on 2 busy cores); a run has it loaded.
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # else Prefect would add its console handler later, unwrapped
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(handler, PrefectConsoleHandler) and formatter is not None:
            inner = formatter.inner if isinstance(formatter, _NoTraceback) else formatter
            handler.setFormatter(inner if debug() else _NoTraceback(inner))


class _NoTraceback(logging.Formatter):
    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        # The record goes on to other handlers (a log file): hide its traceback only here.
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def set_debug(on: bool) -> None:
    """``sae --debug``; in the environment so that every command (and ``python -m``
    entry points started from it) sees the same switch as ``SAE_DEBUG=1``."""
    if on:
        os.environ["SAE_DEBUG"] = "1"


def debug() -> bool:
    return os.environ.get("SAE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def bug(exc: BaseException) -> typer.Exit:
    """An error no check foresaw, i.e. a bug: one line on stderr, the traceback appended
    to ``{SAE_HOME}/logs/sae.log``; ``raise bug(exc)`` exits 1. Callers re-raise instead
    when ``debug()``, so that the traceback is printed."""
    text = "".join(traceback.format_exception(exc))
    where = "the log file"
    try:
        path = get_settings().home / "logs" / "sae.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{datetime.now(UTC).isoformat()} sae {' '.join(sys.argv[1:])}\n{text}\n")
        where = str(path)
    except (OSError, ValueError):  # no writable home, or settings that do not parse
        pass
    typer.echo(
        f"error: unexpected {type(exc).__name__}: {exc} (a bug: the traceback is in {where}; "
        "`sae --debug ...` or SAE_DEBUG=1 prints it)",
        err=True,
    )
    return typer.Exit(1)


@contextlib.contextmanager
def exit_codes(codes: ExitCodes | Callable[[], ExitCodes]) -> Iterator[None]:
    """A command's failures as exit codes: the first (exception types, code) of ``codes()``
    that matches prints one ``error:`` line and exits with that code; anything else is a
    bug (:func:`bug`), or its traceback with ``--debug``. ``codes`` may be a function,
    called on a failure only, where the modules that define the exceptions take seconds
    to import."""
    try:
        yield
    except (typer.Exit, typer.BadParameter):  # typer's own exits
        raise
    except Exception as exc:
        for types, code in codes() if callable(codes) else codes:
            if isinstance(exc, types):
                raise fail(exc, code) from exc
        if debug():
            raise
        raise bug(exc) from exc


def fail(message: object, code: int = 2) -> typer.Exit:
    """Print ``error: ...`` on stderr; ``raise fail(...)`` exits with ``code``."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def parse_date(value: str, option: str) -> date | None:
    """``YYYY-MM-DD`` or empty (None); anything else is a usage error (exit 2)."""
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{option} takes YYYY-MM-DD, got {value!r}") from None


def validation_message(exc, options: dict[str, str] | None = None) -> str:
    """A pydantic ValidationError as one line naming the command-line option of each bad
    field (``--batch-size``, or what ``options`` maps the field to)."""
    options = options or {}

    def where(loc: tuple) -> str:
        if not loc:
            return "parameters"
        field = str(loc[0])
        return options.get(field, "--" + field.replace("_", "-")) + "".join(
            f"[{p}]" for p in loc[1:]
        )

    return "; ".join(
        f"{where(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
    )
