"""The ``sae`` command line.

Imports that pull in torch, Prefect, Ray or MLflow (``flows.sweep``, ``tasks.sweep.*``)
stay inside the commands that need them: on 2 busy cores ``tasks.sweep.*`` (torch) added
~10 s to the import of this module and ``flows.sweep`` ~25 s (measured), which
``sae --help``, ``sae info`` or ``sae ingest`` should not pay.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import (
    SERVICE_ERRORS,
    ExitCodes,
    exit_codes,
    parse_date,
    quiet_prefect_console,
    set_debug,
    setup_logging,
)
from flows.cli_params import model_command
from flows.features_cli import features_text
from flows.features_cli import register as register_feature_commands
from flows.interop_cli import register as register_interop_commands
from flows.search_cli import register as register_search_commands
from flows.stack_cli import register as register_stack_commands
from flows.vectors_cli import register as register_vector_commands
from infra.code_version import code_version
from infra.local_stack import StackError, check_mlflow, check_prefect, prefect_for_run
from infra.ray_runtime import RayUnavailableError, ensure_ray
from infra.settings import get_settings
from infra.store import Store, StoreError
from infra.tracking import mlflow_client
from tasks.corpus.domains import (
    DOMAIN_HELP,
    TaxonomyError,
    UnknownDomainError,
    get_domain,
    load_taxonomy,
)
from tasks.corpus.ingest import harvest as run_harvest
from tasks.corpus.ingest import ingest_source
from tasks.corpus.readers import SourceError
from tasks.corpus.storage import WatermarkError
from tasks.embed.embedders import EmbedderError
from tasks.embed.manifest import EmbeddingStoreError
from tasks.embed.run import EmbedFailedError, EmptyCorpusError, embed_domain
from tasks.layout import open_store
from tasks.reembed import LeaseError, LeaseLostError, ReembedIncompleteError, ReembedParams
from tasks.sweep.config import MatrixParams, SweepParams

app = typer.Typer(
    help="Train sparse autoencoders (TopK SAEs) on embeddings of arXiv abstracts.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _options(
    show_tracebacks: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="SAE_DEBUG",
            help="Print the traceback of an unexpected error (otherwise it goes to "
            "{SAE_HOME}/logs/sae.log); bad input is always one line.",
        ),
    ] = False,
) -> None:
    set_debug(show_tracebacks)
    # A taxonomy file that does not parse stops every command here, naming its line.
    with exit_codes([(TaxonomyError, 2)]):
        load_taxonomy()


_PACKAGES = (
    "torch",
    "triton",
    "numpy",
    "safetensors",
    "prefect",
    "ray",
    "mlflow",
    "polars",
    "s3fs",
)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@app.command()
def info() -> None:
    """Versions, device, kernel backend and the effective settings."""
    from tasks.sweep.train import compute_info  # torch: see the module's docstring

    settings = get_settings()
    rows = [("python", platform.python_version()), ("arxiv-sae", _version("arxiv-sae"))]
    rows += [(name, _version(name)) for name in _PACKAGES]
    rows += compute_info()
    rows += list(settings.effective().items())
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


@model_command(app, MatrixParams, "train")
def train(params: MatrixParams) -> None:
    """Train a pack of TopK SAEs (every k x n cell) on one embedding matrix and print metrics.

    The same training task as a sweep, without corpus, Prefect, Ray or MLflow.
    Checkpoints go to {SAE_STORE}/sae/{run_id}/{domain}_{k}_{n}_{batch}/; running the
    same command again resumes unfinished cells and skips finished ones.
    """
    # torch: see the module's docstring
    from tasks.sweep.preflight import BAD_INPUT
    from tasks.sweep.results import TRAIN_COLUMNS, results_table
    from tasks.sweep.train import matrix_pack, n_axis_spec, train_pack

    settings = get_settings()
    if not settings.store_is_local:
        raise typer.BadParameter(
            f"sae train writes to a local folder; SAE_STORE={settings.store} is remote",
            param_hint="SAE_STORE",
        )
    store = Store.from_settings(settings)

    def on_log(name: str, step: int, m: dict[str, float]) -> None:
        typer.echo(
            f"  {name:<28} step {step:>6}  "
            f"loss {m['train_loss']:.4f}  dead {m['train_dead_fraction']:.3f}"
        )

    with exit_codes([(BAD_INPUT, 2)]):
        spec = matrix_pack(params, store)
        where = store.uri(spec.folder)
        typer.echo(f"training {len(spec.cells)} cell(s) on {spec.data.id} -> {where}")
        refs = train_pack(spec, store, settings.home / "scratch", settings.torch_device(), on_log)
        nested = n_axis_spec(spec, params)
        if nested.cells:
            typer.echo(f"training {len(nested.cells)} n-axis Matryoshka cell(s)")
            refs += train_pack(
                nested, store, settings.home / "scratch", settings.torch_device(), on_log
            )
    typer.echo("")
    typer.echo(results_table([r.row() for r in refs], TRAIN_COLUMNS))


def warn_cpu_embedding(settings, store: Store, domains: list[str], spec: str) -> None:
    """All of arXiv without --limit, and nothing but this machine's CPU to embed it: say
    what that costs, then go on (the user may mean it)."""
    from tasks.census import cpu_embedding_warning
    from tasks.embed.embedders import embedder_name

    gpu = Path("/proc/driver/nvidia").exists()
    for name in domains:
        text = cpu_embedding_warning(
            store,
            get_domain(name),
            embedder_name(spec),
            cores=os.cpu_count() or 1,
            gpu=gpu,
            cluster=bool(settings.ray_address),
        )
        if text:
            typer.echo(f"warning: {text}", err=True)


@app.command()
def domains(
    embedder: Annotated[
        str, typer.Option(help="Count vectors of this embedder; default SAE_EMBEDDER.")
    ] = "",
    held: Annotated[bool, typer.Option(help="Only the domains with papers in the store.")] = False,
) -> None:
    """The domains to pick from (arXiv's archives and categories, and all), each with its
    papers and embedded papers in the store. Any two or more join with + (cs.LG+stat.ML)."""
    from tasks.census import domain_census
    from tasks.embed.embedders import embedder_name

    settings = get_settings()
    with exit_codes([((StoreError, EmbedderError), 2)]):
        name = embedder_name(embedder or settings.embedder)
        counts = domain_census(open_store(settings), name)
    typer.echo(f"{'domain':<20} {'papers':>10} {'embedded':>10}  name   ({name})")
    for c in counts:
        if held and not c.papers:
            continue
        indent = "  " if c.domain.kind == "category" and "." in c.domain.name else ""
        label = f"{indent}{c.domain.name}"
        typer.echo(f"{label:<20} {c.papers:>10,} {c.embedded:>10,}  {c.domain.title}")


def _store_and_domain(domain: str):
    settings = get_settings()
    dom = get_domain(domain)  # an unknown name is refused before the store is touched
    return settings, open_store(settings, writable=True), dom


@app.command()
def ingest(
    domain: Annotated[str, typer.Argument(help=DOMAIN_HELP)],
    source: Annotated[str, typer.Argument(help="A file or folder of arXiv metadata.")],
    format: Annotated[
        str,
        typer.Option(
            "--format", help="jsonl, kaggle, hf-parquet, atom or oai; detected when omitted."
        ),
    ] = "",
    limit: Annotated[int, typer.Option(help="Read at most this many records (0: all).")] = 0,
) -> None:
    """Validate arXiv metadata of DOMAIN into the corpus; rejected records go to quarantine.

    The corpus holds each paper once, whatever its fields: a paper already there through
    another domain counts as a duplicate. Papers of other fields are counted and skipped.

    Exits 0 when the input was read (even if records were rejected: see the quarantine),
    1 when the input itself was damaged (a truncated gzip, an API error feed; what could
    be read is kept),
    2 when it could not be read at all.
    """
    setup_logging()
    with exit_codes([((UnknownDomainError, SourceError, StoreError), 2)]):
        _, store, dom = _store_and_domain(domain)
        report = ingest_source(store, dom, source, format or None, limit or None)
    typer.echo(report.summary())
    for problem in report.input_errors:
        typer.echo(f"warning: the input itself is damaged: {problem}", err=True)
    if report.input_errors:
        raise typer.Exit(1)


@app.command()
def harvest(
    domain: Annotated[str, typer.Argument(help=DOMAIN_HELP)],
    since: Annotated[
        str, typer.Option(help="YYYY-MM-DD; default: the domain's watermark (less 2 days).")
    ] = "",
    until: Annotated[str, typer.Option(help="YYYY-MM-DD; default: today (UTC).")] = "",
    source: Annotated[str, typer.Option(help="'api' (arXiv API) or 'oai' (OAI-PMH).")] = "api",
    limit: Annotated[int, typer.Option(help="Stop after this many records (0: all).")] = 0,
) -> None:
    """Fetch new arXiv papers of DOMAIN into the corpus and move its watermark.

    At most one request every SAE_HARVEST_MIN_INTERVAL_S seconds (arXiv's terms: 3).
    """
    # httpx and arXiv's client: 1.7 s more for `sae --help` (measured on 2 busy cores).
    from tasks.corpus.harvest import HarvestConfig, HarvestError, HarvestStats

    setup_logging()
    if source not in ("api", "oai"):
        raise typer.BadParameter(f"--source takes 'api' or 'oai', got {source!r}")
    stats = HarvestStats()
    bad = (UnknownDomainError, HarvestError, StoreError, WatermarkError, ValueError)
    with exit_codes([(bad, 2)]):
        settings, store, dom = _store_and_domain(domain)
        config = HarvestConfig.from_settings(settings)
        report = run_harvest(
            store,
            dom,
            since=parse_date(since, "--since"),
            until=parse_date(until, "--until"),
            source=source,
            config=config,
            limit=limit or None,
            stats=stats,
        )
    typer.echo(report.summary())
    typer.echo(f"  {stats.requests} request(s), {stats.retries} retried")
    if report.watermark:
        typer.echo(f"  watermark: {report.watermark}")


@app.command()
def embed(
    domain: Annotated[str, typer.Argument(help=DOMAIN_HELP)],
    embedder: Annotated[
        str, typer.Option(help="minilm, st:<model> or openai:<model>; default SAE_EMBEDDER.")
    ] = "",
    limit: Annotated[int, typer.Option(help="Embed at most this many new papers (0: all).")] = 0,
) -> None:
    """Embed the papers of DOMAIN that have no embedding yet (one Ray task per shard).

    On a terminal a live line shows the papers embedded of the total, the rate and the
    time left; elsewhere a log line at most every 10 s.
    """
    setup_logging()
    bad = (UnknownDomainError, StoreError, EmptyCorpusError, EmbedderError, RayUnavailableError)
    with exit_codes([((*bad, EmbeddingStoreError, EmbedFailedError), 2)]):
        settings, store, dom = _store_and_domain(domain)
        if not limit:
            warn_cpu_embedding(settings, store, [dom.name], embedder or settings.embedder)
        report = embed_domain(
            store, dom, settings=settings, spec=embedder or None, limit=limit or None
        )
    typer.echo(
        f"{report.domain} / {report.embedder}: {report.embedded} embedded "
        f"({report.rate:.1f} abstracts/s over {report.embed_seconds:.1f} s of shards, "
        f"{report.seconds:.1f} s in all), {report.already} already embedded, "
        f"{report.remaining} left, {report.papers} papers in the corpus"
    )
    typer.echo(f"  vectors: {report.namespace}")


@model_command(app, SweepParams, "sweep")
def sweep(params: SweepParams) -> None:
    """Run the sweep flow: every k x n cell for DOMAIN, tracked in MLflow; print the results.

    Uses the corpus already ingested for DOMAIN under SAE_STORE (plus --source, if given),
    embeds what is missing, trains on a fixed data snapshot and records a parent run, a
    child run and a registered model per cell. A rerun retrains nothing; a sweep that died
    resumes its unfinished cells. Exits 0 only when every cell finished.
    """
    setup_logging(own_handler=False)
    results = _run_sweep(params)
    # torch (see its docstring), loaded by the flow by now: not before the servers start.
    from tasks.sweep.results import SWEEP_COLUMNS, results_table

    for r in results:
        typer.echo(f"\n{r.domain}: sweep {r.sweep_id}, data snapshot {r.data_snapshot}")
        typer.echo(results_table(r.cells, SWEEP_COLUMNS))
        if r.champion:
            typer.echo(f"champion: {r.champion} (alias 'champion')")
        if r.features:
            typer.echo(f"features:\n{features_text(r.features)}")
    typer.echo(f"\nMLflow: {get_settings().tracking_uri}  (sae ui prints the UI addresses)")


def _run_sweep(params):
    """Runs the flow against a Prefect server for this run. Exit codes: 1 when some cells
    or shards failed (rerun to resume), 2 on bad input or a service down."""
    from tasks.sweep.preflight import check_sweep_inputs

    settings = get_settings()
    with exit_codes(_sweep_exit_codes):
        # Fail at once on what is misconfigured, then on bad input, before any server starts.
        check_mlflow(settings)
        check_prefect(settings)
        store = open_store(settings, writable=True)
        check_sweep_inputs(params, settings, store)
        if params.limit is None and params.data_snapshot is None:
            warn_cpu_embedding(
                settings, store, params.domains, params.embedder or settings.embedder
            )
        with prefect_for_run(settings, while_booting=lambda: _warm_up(settings, params)):
            from flows.sweep import sweep  # imported by _warm_up meanwhile

            quiet_prefect_console()
            return sweep(params)


def _sweep_exit_codes() -> ExitCodes:
    # Neither imports torch: a refusal before the flow starts must not wait for it.
    from tasks.sweep.config import SweepFailedError
    from tasks.sweep.preflight import BAD_INPUT

    bad = (*BAD_INPUT, *SERVICE_ERRORS, EmbeddingStoreError)
    return [((SweepFailedError, EmbedFailedError), 1), (bad, 2)]


def _warm_up(settings, params: SweepParams) -> None:
    """While the Prefect server boots (15-20 s on 2 cores, most of it Prefect importing
    its server): import the flow (torch, MLflow, Prefect), open the MLflow store (a new
    sqlite file migrates for seconds) and start Ray (10-15 s), unless the same sweep
    finished before and a rerun most likely needs no Ray at all. One after the other:
    starting Ray in a second thread beside the imports gained nothing on 2 cores (a 1-cell
    sweep took 85 s that way, 78-84 s this way), all of it being CPU-bound."""
    import flows.sweep  # noqa: F401  (the point: its import overlaps the server's boot)
    from tasks.sweep.track import finished_before

    client = mlflow_client(settings)
    if not finished_before(client, params, code_version()):
        ensure_ray(settings)


@app.command()
def runs(
    domain: Annotated[str, typer.Option(help="Only this domain (default: all).")] = "",
    sweep_id: Annotated[str, typer.Option("--sweep", help="Only this sweep id.")] = "",
) -> None:
    """Compare the cells recorded in MLflow: one row per child run, newest sweeps included."""
    from tasks.sweep.compare import runs_table  # MLflow, torch: see the module's docstring

    with exit_codes([((StackError, LookupError), 2)]):
        client = mlflow_client(get_settings())
        typer.echo(runs_table(client, domains=domain or None, sweep_id=sweep_id or None))


@model_command(app, ReembedParams, "reembed")
def reembed(params: ReembedParams) -> None:
    """Harvest DOMAIN's new arXiv papers, embed them, then move its watermark.

    Several domains (cs.LG,cs.CV,stat.ML) are one harvest of their union, with one
    watermark: a paper listed in two is fetched and embedded once. Harvests since the
    watermark without moving it, validates into the corpus (rejected records to the
    quarantine), embeds only the papers without a vector (one Ray task per shard) and
    moves the watermark once the vectors are stored. A crash leaves the watermark as it
    was; run the command again to finish. Prints new / duplicate / rejected / embedded
    counts; the same summary goes to the Prefect UI (an artifact) and to MLflow (a run
    tagged run_kind=reembed in the domain's experiment).

    Exits 0 when done, 1 when some papers could not be embedded (rerun to finish),
    2 on bad input or an unreachable service, 3 when another re-embed of DOMAIN runs.
    """
    setup_logging(own_handler=False)
    settings = get_settings()
    with exit_codes(_reembed_exit_codes):
        # What is misconfigured fails at once, before any server starts.
        check_mlflow(settings)
        Store.from_settings(settings).check_writable()
        with prefect_for_run(settings, while_booting=_import_reembed):
            from flows.reembed import reembed as reembed_flow  # imported meanwhile

            quiet_prefect_console()
            summary = reembed_flow(params)
    typer.echo(_reembed_summary(summary))


def _import_reembed() -> None:
    # Prefect and MLflow: ~20 s on 2 busy cores (measured), overlapped with the server's boot.
    import flows.reembed  # noqa: F401


def _reembed_exit_codes() -> ExitCodes:
    # Prefect (~7 s) and httpx with arXiv's client (~1.7 s) more for `sae --help`
    # (measured on 2 busy cores); a run has them loaded by now.
    from prefect.exceptions import CancelledRun

    from tasks.corpus.harvest import HarvestError

    partial = (EmbedFailedError, ReembedIncompleteError, LeaseLostError)
    bad = (*SERVICE_ERRORS, HarvestError, WatermarkError, EmbedderError, EmbeddingStoreError)
    return [(CancelledRun, 3), (partial, 1), ((*bad, LeaseError, ValueError), 2)]


def _reembed_summary(s: dict) -> str:
    """The counts, the window, the watermark and where things are."""
    before, after = s.get("watermark_before"), s.get("watermark")
    moved = f"-> {after}" if after and after != before else "(unchanged)"
    lines = [
        f"{s['domain']} (arXiv {s['source']} {s['since']}..{s['until']}): "
        f"{s.get('new', 0)} new, {s.get('duplicate', 0)} duplicate, "
        f"{s.get('rejected', 0)} rejected, {s.get('other_domain', 0)} in other domains; "
        f"{s.get('embedded', 0)} embedded with {s['embedder']}",
        f"  watermark: {before or 'none'} {moved}",
    ]
    if s.get("quarantine_uri"):
        lines.append(f"  rejected records and reasons: {s['quarantine_uri']}")
    if s.get("namespace"):
        lines.append(f"  vectors: {s['namespace']}")
    if s.get("mlflow_run_id"):
        lines.append(f"  MLflow run: {s['mlflow_run_id']} (experiment arxiv-sae/{s['domain']})")
    if s.get("tracking_error"):
        lines.append(f"  warning: the summary was not recorded: {s['tracking_error']}")
    return "\n".join(lines)


register_feature_commands(app)
register_stack_commands(app)
register_search_commands(app)
register_interop_commands(app)
register_vector_commands(app)

if __name__ == "__main__":
    app()
