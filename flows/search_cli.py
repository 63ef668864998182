"""``sae search`` (one query in the terminal) and ``sae serve`` (the search page).

As in :mod:`flows.cli`, what imports torch, FastAPI or MLflow stays inside the commands;
``sae search`` imports torch only when no running ``sae serve`` answers for it
(:mod:`tasks.search.remote`), and MLflow only for a sweep the store has no index of.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Annotated

import typer

from flows.cli_common import SERVICE_ERRORS, exit_codes, fail
from flows.cli_common import setup_logging as _setup_logging
from tasks.search.limits import ADD_STRENGTH, MAX_STRENGTH, STRENGTH_UNIT

DOMAIN_HELP = "The domain to search: any that a sweep ran on (cs.LG, astro-ph, gr-qc, ...)."
MODEL_HELP = "champion, or a cell name of the sweep (csLG_64_3072_256)."
SWEEP_HELP = "The sweep id. Default: the domain's newest finished sweep."


def register(app: typer.Typer) -> None:
    app.command()(search)
    app.command()(serve)


def _bad_input():
    from tasks.embed.embedders import EmbedderError
    from tasks.search.limits import SearchInputError

    return [((*SERVICE_ERRORS, SearchInputError, EmbedderError), 2)]


def parse_boost(values: list[str]) -> dict[int, float]:
    """``ID=w`` pairs as {id: w}; a bare ``ID`` means the strength a page's "add" gives."""
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
            help=f"Set feature ID to strength W, 0 to {MAX_STRENGTH:g} ({STRENGTH_UNIT}; "
            f"a bare ID: {ADD_STRENGTH:g}). Repeatable.",
        ),
    ] = None,
    suppress: Annotated[
        list[int] | None,
        typer.Option(
            metavar="ID",
            help="Set feature ID to 0: the search turns away from it (its papers leave the "
            "top results). Repeatable.",
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="How many papers.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process", help="Search in this process even when a `sae serve` is running."
        ),
    ] = False,
) -> None:
    """Search a sweep's papers with a query, steered by its SAE features.

    The query is embedded with the sweep's embedder and encoded by the model; --boost
    and --suppress set features' strengths, and the search moves the query's embedding
    along those features' decoder directions: toward a raised one, away from a removed
    one (unedited, the results are exactly those of the embedding). Prints the query's
    features and the papers, each with the features it shares with the query. A running
    `sae serve` of the same data answers it when there is one (the same output, without
    loading the model here).
    """
    strengths = parse_boost(boost or [])
    for fid in suppress or []:
        strengths[fid] = 0.0
    with exit_codes(_bad_input):
        body = {"query": query, "domain": domain, "model": model, "sweep": sweep or None}
        body |= {"strengths": {str(f): w for f, w in strengths.items()}, "top": top}
        answer = None if in_process else _ask_server(body)
        if answer is None:
            from tasks.search.load import open_engine

            engine = open_engine(domain, model, sweep or None)
            result = engine.search(query, strengths, top)
            answer = result.as_dict(engine)
    typer.echo(json.dumps(answer, indent=1) if as_json else search_text(answer))


def _ask_server(body: dict) -> dict | None:
    """The answer of a running `sae serve` (its timings left out), or None."""
    from infra.settings import get_settings
    from tasks.corpus.domains import UnknownDomainError, get_domain
    from tasks.search import remote

    settings = get_settings()
    try:
        domain = get_domain(body["domain"]).name
    except UnknownDomainError:
        return None  # said by the search in this process, as ever
    server = remote.find(settings, domain)
    answer = remote.ask(server, body | {"domain": domain}) if server else None
    if answer is not None:
        answer.pop("load_ms", None)
        answer.pop("search_ms", None)
    return answer


def search_text(answer: dict) -> str:
    """A search's answer (:meth:`tasks.search.engine.SearchResult.as_dict`) as the
    terminal shows it."""

    def name(fid: int, label: list[str], terms: int = 3) -> str:
        shown = ", ".join(label[:terms])
        return f"#{fid} {shown}" if shown else f"#{fid}"

    domain, cell, sweep = answer["domain"], answer["cell"], answer["sweep"]
    lines = [f"{domain} · {cell} · sweep {sweep} · {answer['query']!r}"]
    feats = [
        f"{name(f['id'], f['label'])} {f['strength']:.2f}{' (set)' if f['edited'] else ''}"
        for f in answer["features"][:12]
    ]
    more = len(answer["features"]) - len(feats)
    lines.append("features: " + "; ".join(feats) + (f"; and {more} more" if more > 0 else ""))
    if not answer["has_labels"]:
        lines.append(
            f"(no labels: run `sae features {domain} --sweep {sweep} --cells {cell}` for them)"
        )
    lines.append("")
    for rank, hit in enumerate(answer["hits"], 1):
        lines.append(f"{rank:>3}. {hit['score']:.3f}  {hit['title']}")
        drivers = "; ".join(
            name(d, label, 2) for d, label in zip(hit["drivers"], hit["driver_labels"], strict=True)
        )
        lines.append(f"     https://arxiv.org/abs/{hit['id']}   {drivers}")
    return "\n".join(lines)


def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on; 127.0.0.1 keeps it to this machine.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free one).")] = 8765,
    domain: Annotated[
        list[str] | None,
        typer.Option(help="Domains to serve (default: every domain with sweeps). Repeatable."),
    ] = None,
    preload: Annotated[
        bool,
        typer.Option(
            help="Build each domain's champion at start, in the background (the server "
            "answers meanwhile; the page says what is still loading)."
        ),
    ] = False,
) -> None:
    """Serve the steerable search page: a query box, the query's features with a slider
    each, families to add from, and papers that follow the sliders.

    Models and the query embedder load on first use (seconds), or at start with
    --preload. While it runs, `sae search` asks it instead of loading them.
    """
    _setup_logging()
    import uvicorn

    from infra.settings import get_settings
    from tasks.corpus.domains import canonical_names
    from tasks.search.app import create_app
    from tasks.search.load import open_engine, sweep_models, swept_domains
    from tasks.search.remote import connect_url, recorded

    settings = get_settings()
    try:
        domains = canonical_names(domain) if domain else swept_domains(settings)
    except ValueError as exc:
        raise fail(exc) from None
    if not _loopback(host):
        typer.echo(f"note: listening on {host}: anyone who can reach it can search", err=True)
    app = create_app(
        lambda d, m, s: open_engine(d, m, s, settings, load_embedder=True),
        domains,
        lambda d: sweep_models(d, settings),
    )
    try:
        # Bound here, not by uvicorn: the port (0: any free one) is known before it is
        # recorded for `sae search`.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc}") from exc
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"search page: http://{shown}:{port}/  (Ctrl-C stops it)")
    if preload:
        app.state.engines.preload(domains)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    with recorded(settings, connect_url(host, port), domains):
        server.run(sockets=[sock])


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
