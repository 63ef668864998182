"""``sae search`` (one query in the terminal) and ``sae serve`` (the search page).

As in :mod:`flows.cli`, what imports torch, FastAPI or MLflow stays inside the commands.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated

import typer

from flows.cli_common import SERVICE_ERRORS, exit_codes, fail
from flows.cli_common import setup_logging as _setup_logging

DOMAIN_HELP = "The domain to search: any that a sweep ran on (cs.LG, astro-ph, gr-qc, ...)."
MODEL_HELP = "champion, or a cell name of the sweep (csLG_64_3072_256)."
SWEEP_HELP = "The sweep id. Default: the domain's newest finished sweep."


def register(app: typer.Typer) -> None:
    app.command()(search)
    app.command()(serve)


def _bad_input():
    from tasks.embed.embedders import EmbedderError
    from tasks.search.engine import SearchInputError

    return [((*SERVICE_ERRORS, SearchInputError, EmbedderError), 2)]


def parse_boost(values: list[str]) -> dict[int, float]:
    """``ID=w`` pairs as {id: w}; a bare ``ID`` means the strength a page's "add" gives."""
    from tasks.search.engine import ADD_STRENGTH

    out: dict[int, float] = {}
    for value in values:
        fid, sep, w = value.partition("=")
        try:
            out[int(fid)] = float(w) if sep else ADD_STRENGTH
        except ValueError:
            raise typer.BadParameter(
                f"--boost takes ID=STRENGTH (e.g. 2805=8), got {value!r}"
            ) from None
    return out


def search(
    query: Annotated[str, typer.Argument(metavar="QUERY", help="What to look for, in words.")],
    domain: Annotated[str, typer.Option(help=DOMAIN_HELP)] = "cs.LG",
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "champion",
    sweep: Annotated[str, typer.Option(help=SWEEP_HELP)] = "",
    boost: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ID=W",
            help="Set feature ID to strength W (1: its typical activation; a bare ID: 3). "
            "Repeatable.",
        ),
    ] = None,
    suppress: Annotated[
        list[int] | None, typer.Option(metavar="ID", help="Remove feature ID. Repeatable.")
    ] = None,
    top: Annotated[int, typer.Option(help="How many papers.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Search a sweep's papers with a query, steered by its SAE features.

    The query is embedded with the sweep's embedder and encoded by the model; --boost
    and --suppress set features' strengths, and the search uses the query's embedding
    plus the change those edits make to its reconstruction (unedited, the results are
    exactly those of the embedding). Prints the query's features and the papers, each
    with the features it shares with the query.
    """
    strengths = parse_boost(boost or [])
    for fid in suppress or []:
        strengths[fid] = 0.0
    with exit_codes(_bad_input):
        from tasks.search.load import open_engine

        engine = open_engine(domain, model, sweep or None)
        result = engine.search(query, strengths, top)
    if as_json:
        typer.echo(json.dumps(result.as_dict(engine), indent=1))
        return
    typer.echo(search_text(engine, result))


def search_text(engine, result) -> str:
    """A result (a :class:`tasks.search.engine.SearchResult`) as the terminal shows it."""

    def name(fid: int, terms: int = 3) -> str:
        label = ", ".join(engine.label(fid)[:terms])
        return f"#{fid} {label}" if label else f"#{fid}"

    lines = [f"{engine.domain} · {engine.cell} · sweep {engine.sweep_id} · {result.query!r}"]
    feats = [
        f"{name(f.id)} {f.strength:.2f}{' (set)' if f.edited else ''}" for f in result.features[:12]
    ]
    more = len(result.features) - len(feats)
    lines.append("features: " + "; ".join(feats) + (f"; and {more} more" if more > 0 else ""))
    if engine.document is None:
        lines.append(
            f"(no labels: run `sae features {engine.domain} --sweep {engine.sweep_id} "
            f"--cells {engine.cell}` for them)"
        )
    lines.append("")
    for rank, hit in enumerate(result.hits, 1):
        lines.append(f"{rank:>3}. {hit.score:.3f}  {hit.title}")
        drivers = "; ".join(name(d, 2) for d in hit.drivers)
        lines.append(f"     https://arxiv.org/abs/{hit.id}   {drivers}")
    return "\n".join(lines)


def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on; 127.0.0.1 keeps it to this machine.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    domain: Annotated[
        list[str] | None,
        typer.Option(help="Domains to serve (default: every domain with sweeps). Repeatable."),
    ] = None,
) -> None:
    """Serve the steerable search page: a query box, the query's features with a slider
    each, families to add from, and papers that follow the sliders.

    Models load on first use (seconds; the first query also loads the embedder).
    """
    _setup_logging()
    import uvicorn

    from infra.settings import get_settings
    from tasks.corpus.domains import canonical_names
    from tasks.search.app import create_app
    from tasks.search.load import open_engine, sweep_models, swept_domains

    settings = get_settings()
    try:
        domains = canonical_names(domain) if domain else swept_domains(settings)
    except ValueError as exc:
        raise fail(exc) from None
    if not _loopback(host):
        typer.echo(f"note: listening on {host}: anyone who can reach it can search", err=True)
    app = create_app(
        lambda d, m, s: open_engine(d, m, s, settings),
        domains,
        lambda d: sweep_models(d, settings),
    )
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"search page: http://{shown}:{port}/  (Ctrl-C stops it)")
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc}") from exc


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
