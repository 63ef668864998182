"""What every ``sae`` command shares: logging, the error exit, argument parsing."""

from __future__ import annotations

import logging

import typer

DOMAIN_HELP = "cs.LG or astro-ph, in any spelling (cs_lg, csLG, astro_ph, astroPH...)."


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


def fail(message: object, code: int = 2) -> typer.Exit:
    """Print ``error: ...`` on stderr; ``raise fail(...)`` exits with ``code``."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def parse_date(value: str, option: str):
    """``YYYY-MM-DD`` or empty (None); anything else is a usage error (exit 2)."""
    from datetime import date

    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{option} takes YYYY-MM-DD, got {value!r}") from None
