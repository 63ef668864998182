"""The ``sae`` command line."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import (
    DOMAIN_HELP,
    bug,
    debug,
    fail,
    parse_date,
    quiet_prefect_console,
    set_debug,
    setup_logging,
    validation_message,
)

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
    import torch

    from infra.settings import get_settings
    from sae.backend import choose_backend

    settings = get_settings()
    backend = choose_backend()
    rows = [("python", platform.python_version()), ("arxiv-sae", _version("arxiv-sae"))]
    rows += [(name, _version(name)) for name in _PACKAGES]
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)"
    else:
        device = f"cpu ({torch.get_num_threads()} threads)"
    rows += [
        ("device", device),
        ("kernels", f"{backend.name} ({backend.reason})"),
    ]
    rows += list(settings.effective().items())
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{option} takes comma-separated integers (16,32), got {text!r}") from None
    if not values:
        raise fail(f"{option} is empty: give one or more comma-separated integers (16,32)")
    return values


@app.command()
def train(
    data: Annotated[
        str,
        typer.Option(help="'synthetic', or an [N, d] matrix file: .npy, .pt or .safetensors"),
    ] = "synthetic",
    k: Annotated[str, typer.Option(help="Comma-separated k values.")] = "16,32",
    n: Annotated[str, typer.Option(help="Comma-separated n_latents values.")] = "3072,4608",
    epochs: Annotated[int, typer.Option()] = 10,
    batch_size: Annotated[int, typer.Option()] = 1024,
    lr: Annotated[float, typer.Option()] = 1e-3,
    limit: Annotated[int, typer.Option(help="Use at most this many rows (0: all).")] = 0,
    domain: Annotated[
        str, typer.Option(help="Label used in cell names (a known domain in any spelling).")
    ] = "synthetic",
    seed: Annotated[int, typer.Option()] = 0,
    run_id: Annotated[
        str,
        typer.Option(
            help="Output folder name; default derived from the settings, so a rerun resumes."
        ),
    ] = "",
) -> None:
    """Train a pack of TopK SAEs (every k x n cell) on one embedding matrix and print metrics.

    Checkpoints go to {SAE_STORE}/sae/{run_id}/{domain}_{k}_{n}_{batch}/; running the
    same command again resumes unfinished cells and skips finished ones.
    """
    from infra.settings import get_settings
    from sae.config import ConfigError, RunInfo, SAEConfig, TrainConfig, to_dict
    from sae.data import DataError
    from sae.trainer import PackTrainer
    from tasks.corpus.domains import canonical_name

    settings = get_settings()
    domain = canonical_name(domain)  # cs_lg and cs.LG cells: one name, csLG_{k}_{n}_{batch}
    if not settings.store_is_local:
        raise typer.BadParameter(
            f"sae train writes to a local folder; SAE_STORE={settings.store} is remote",
            param_hint="SAE_STORE",
        )
    try:
        x, data_id = _load_matrix(data, limit, seed)
        train_cfg = TrainConfig(batch_size=batch_size, lr=lr, epochs=epochs, seed=seed)
        cfgs = [
            SAEConfig(d_in=x.shape[1], n_latents=nn, k=kk)
            for kk in _ints(k, "--k")
            for nn in _ints(n, "--n")
        ]
    except (ConfigError, DataError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    key = json.dumps([data_id, to_dict(train_cfg), [to_dict(c) for c in cfgs]], sort_keys=True)
    run_id = run_id or "train-" + hashlib.sha256(key.encode()).hexdigest()[:10]
    out_dir = Path(settings.store) / "sae" / run_id
    typer.echo(
        f"training {len(cfgs)} cell(s) on {x.shape[0]} x {x.shape[1]} ({data_id}) -> {out_dir}"
    )

    def on_log(name: str, step: int, m: dict[str, float]) -> None:
        typer.echo(
            f"  {name:<28} step {step:>6}  "
            f"loss {m['train_loss']:.4f}  dead {m['dead_fraction']:.3f}"
        )

    trainer = PackTrainer(
        cfgs,
        train_cfg,
        run=RunInfo(
            domain=domain, data_snapshot=data_id, embedder="none" if data == "synthetic" else "file"
        ),
        out_dir=out_dir,
        device=settings.torch_device(),
        on_log=on_log,
    )
    try:
        results = trainer.fit(x)
    except (ConfigError, DataError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo("")
    typer.echo(results_table(results))


_COLUMNS = (  # header, width, value of a CellResult
    ("cell", 26, lambda r: r.name),
    ("k", 4, lambda r: r.sae_cfg.k),
    ("n", 6, lambda r: r.sae_cfg.n_latents),
    ("nmse", 7, lambda r: f"{r.metrics.nmse:.4f}"),
    ("log FD", 7, lambda r: f"{r.metrics.log_feature_density:.3f}"),
    ("act mean", 8, lambda r: f"{r.metrics.act_mean:.4f}"),
    ("dead", 6, lambda r: f"{r.metrics.dead_fraction:.3f}"),
    ("s", 6, lambda r: f"{r.seconds:.1f}"),
)


def results_table(results) -> str:
    """A markdown table of held-out metrics, one row per cell."""

    def row(cells):
        return (
            "| "
            + " | ".join(
                f"{c!s:<{w}}" if i == 0 else f"{c!s:>{w}}"  # names left, numbers right
                for i, (c, (_, w, _)) in enumerate(zip(cells, _COLUMNS, strict=True))
            )
            + " |"
        )

    lines = [
        row(h for h, _, _ in _COLUMNS),
        "|" + "|".join("-" * (w + 2) for _, w, _ in _COLUMNS) + "|",
    ]
    lines += [row(f(r) for _, _, f in _COLUMNS) for r in results]
    return "\n".join(lines)


def _store_and_domain(domain: str):
    from infra.settings import get_settings
    from infra.store import Store
    from tasks.corpus.domains import get_domain

    settings = get_settings()
    return settings, Store.from_settings(settings), get_domain(domain)


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
    """Validate arXiv metadata into the corpus of DOMAIN; rejected records go to quarantine.

    Exits 0 when the input was read (even if records were rejected: see the quarantine),
    1 when the input itself was damaged (a truncated gzip, an API error feed; what could
    be read is kept),
    2 when it could not be read at all.
    """
    from infra.store import StoreError
    from tasks.corpus.domains import UnknownDomainError
    from tasks.corpus.ingest import ingest_source
    from tasks.corpus.readers import SourceError

    setup_logging()
    try:
        _, store, dom = _store_and_domain(domain)
        report = ingest_source(store, dom, source, format or None, limit or None)
    except (UnknownDomainError, SourceError, StoreError) as exc:
        raise fail(exc) from exc
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
    from infra.store import StoreError
    from tasks.corpus.domains import UnknownDomainError
    from tasks.corpus.harvest import HarvestConfig, HarvestError, HarvestStats
    from tasks.corpus.ingest import harvest as run_harvest
    from tasks.corpus.storage import WatermarkError

    setup_logging()
    if source not in ("api", "oai"):
        raise typer.BadParameter(f"--source takes 'api' or 'oai', got {source!r}")
    stats = HarvestStats()
    try:
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
    except (UnknownDomainError, HarvestError, StoreError, WatermarkError, ValueError) as exc:
        raise fail(exc) from exc
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
    """Embed the papers of DOMAIN that have no embedding yet (one Ray task per shard)."""
    from tqdm import tqdm

    from infra.ray_runtime import RayUnavailableError
    from infra.store import StoreError
    from tasks.corpus.domains import UnknownDomainError
    from tasks.embed.embedders import EmbedderError
    from tasks.embed.manifest import EmbeddingStoreError
    from tasks.embed.run import EmbedFailedError, EmptyCorpusError, embed_domain

    setup_logging()
    bar = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="paper", desc="embedding", disable=None)
        bar.update(done - bar.n)

    try:
        settings, store, dom = _store_and_domain(domain)
        report = embed_domain(
            store,
            dom,
            settings=settings,
            spec=embedder or None,
            limit=limit or None,
            on_progress=on_progress,
        )
    except (
        UnknownDomainError,
        StoreError,
        EmptyCorpusError,
        EmbedderError,
        EmbeddingStoreError,
        EmbedFailedError,
        RayUnavailableError,
    ) as exc:
        raise fail(exc) from exc
    finally:
        if bar is not None:
            bar.close()
    typer.echo(
        f"{report.domain} / {report.embedder}: {report.embedded} embedded "
        f"({report.rate:.1f} abstracts/s over {report.embed_seconds:.1f} s of shards, "
        f"{report.seconds:.1f} s in all), {report.already} already embedded, "
        f"{report.remaining} left, {report.papers} papers in the corpus"
    )
    typer.echo(f"  vectors: {report.namespace}")


@app.command()
def sweep(
    domain: Annotated[
        str, typer.Argument(help=DOMAIN_HELP + " Several: comma-separated.")
    ] = "cs.LG",
    k: Annotated[str, typer.Option(help="Comma-separated k values.")] = "16,32,64,128",
    n_latents: Annotated[
        str, typer.Option("--n-latents", "--n", help="Comma-separated dictionary sizes.")
    ] = "3072,4608,6144,9216,12288",
    epochs: Annotated[int, typer.Option()] = 50,
    batch_size: Annotated[int, typer.Option()] = 1024,
    lr: Annotated[float, typer.Option()] = 1e-4,
    seed: Annotated[int, typer.Option()] = 0,
    limit: Annotated[
        int, typer.Option(help="Embed and train on at most this many papers (0: all).")
    ] = 0,
    source: Annotated[
        str, typer.Option(help="A file or folder of papers to ingest first (any ingest format).")
    ] = "",
    embedder: Annotated[str, typer.Option(help="Default: SAE_EMBEDDER.")] = "",
    data_snapshot: Annotated[
        str, typer.Option(help="Train on this existing snapshot id instead of a new one.")
    ] = "",
    gpus_per_pack: Annotated[float, typer.Option(help="Default: SAE_PACK_GPUS.")] = 0.0,
    n_packs: Annotated[int, typer.Option(help="Default: one per GPU, one on CPU.")] = 0,
    checkpoint_every_s: Annotated[
        float, typer.Option(help="Checkpoint at epoch ends at most this often (0: every one).")
    ] = 60.0,
) -> None:
    """Run the sweep flow: every k x n cell for DOMAIN, tracked in MLflow; print the results.

    Uses the corpus already ingested for DOMAIN under SAE_STORE (plus --source, if given),
    embeds what is missing, trains on a fixed data snapshot and records a parent run, a
    child run and a registered model per cell. A rerun retrains nothing; a sweep that died
    resumes its unfinished cells. Exits 0 only when every cell finished.
    """
    from pydantic import ValidationError

    from tasks.sweep.config import SweepParams

    setup_logging(own_handler=False)
    try:
        params = SweepParams(
            domains=[d.strip() for d in domain.split(",") if d.strip()],
            k=_ints(k, "--k"),
            n_latents=_ints(n_latents, "--n-latents"),
            batch_size=batch_size,
            epochs=epochs,
            lr=lr,
            seed=seed,
            limit=limit or None,
            source=source or None,
            embedder=embedder or None,
            data_snapshot=data_snapshot or None,
            gpus_per_pack=gpus_per_pack or None,
            n_packs=n_packs or None,
            checkpoint_every_s=checkpoint_every_s,
        )
    except ValidationError as exc:
        raise fail(validation_message(exc, {"domains": "DOMAIN"})) from exc
    results = _run_sweep(params)
    from flows.sweep import results_markdown

    for r in results:
        typer.echo(f"\n{r.domain}: sweep {r.sweep_id}, data snapshot {r.data_snapshot}")
        typer.echo(results_markdown(r.cells, r.champion))
        if r.champion:
            typer.echo(f"champion: {r.champion} (alias 'champion')")
    from infra.settings import get_settings

    typer.echo(f"\nMLflow: {get_settings().tracking_uri}  (sae ui prints the UI addresses)")


def _run_sweep(params):
    """Runs the flow against a Prefect server for this run; exit codes for the failures."""
    from infra.local_stack import check_mlflow, check_prefect, prefect_for_run
    from infra.settings import get_settings
    from infra.store import Store
    from tasks.sweep.preflight import check_sweep_inputs

    settings = get_settings()
    try:
        # Fail at once on what is misconfigured, then on bad input, before any server starts.
        check_mlflow(settings)
        check_prefect(settings)
        store = Store.from_settings(settings)
        store.check_writable()
        check_sweep_inputs(params, settings, store)
        with prefect_for_run(settings, while_booting=lambda: _warm_up(settings)):
            from flows.sweep import sweep

            quiet_prefect_console()
            return sweep(params)
    except typer.Exit:
        raise
    except Exception as exc:
        code = _sweep_exit_code(exc)
        if code is None:
            if debug():
                raise
            raise bug(exc) from exc
        raise fail(exc, code) from exc


def _sweep_exit_code(exc: Exception) -> int | None:
    """1: some cells or shards failed (rerun to resume); 2: bad input or a service down."""
    from flows.sweep import SweepFailedError
    from infra.local_stack import StackError
    from infra.ray_runtime import RayUnavailableError
    from infra.store import StoreError
    from infra.tracking import TrackingUnavailableError
    from sae.config import ConfigError
    from tasks.corpus.readers import SourceError
    from tasks.embed.embedders import EmbedderError
    from tasks.embed.manifest import EmbeddingStoreError
    from tasks.embed.run import EmbedFailedError, EmptyCorpusError
    from tasks.sweep.config import SweepInputError

    if isinstance(exc, SweepFailedError | EmbedFailedError):
        return 1
    bad_input = (
        StackError, StoreError, TrackingUnavailableError, RayUnavailableError, ConfigError,
        SweepInputError, EmptyCorpusError, EmbeddingStoreError, SourceError, EmbedderError,
    )  # fmt: skip
    return 2 if isinstance(exc, bad_input) else None


def _warm_up(settings) -> None:
    """While the Prefect server boots: import the flow (torch, MLflow, Prefect take
    seconds) and open the MLflow store (a new sqlite file migrates for seconds)."""
    import flows.sweep  # noqa: F401
    from infra.tracking import mlflow_client

    mlflow_client(settings).search_experiments(max_results=1)


@app.command()
def runs(
    domain: Annotated[str, typer.Option(help="Only this domain (default: all).")] = "",
    sweep_id: Annotated[str, typer.Option("--sweep", help="Only this sweep id.")] = "",
) -> None:
    """Compare the cells recorded in MLflow: one row per child run, newest sweeps included."""
    from infra.local_stack import StackError
    from infra.settings import get_settings
    from infra.tracking import mlflow_client
    from tasks.sweep.compare import runs_table

    try:
        client = mlflow_client(get_settings())
        typer.echo(runs_table(client, domains=domain or None, sweep_id=sweep_id or None))
    except (StackError, LookupError) as exc:
        raise fail(exc) from exc


def _load_matrix(data: str, limit: int, seed: int):
    import numpy as np
    import torch

    if data == "synthetic":
        from sae.synthetic import sparse_dictionary_data

        rows = limit or 20000
        return sparse_dictionary_data(
            rows, 384, n_atoms=512, active=6, seed=seed
        ), f"synthetic-{rows}x384-s{seed}"
    path = Path(data)
    if not path.is_file():
        raise OSError(f"--data {data}: no such file")
    if path.suffix == ".npy":
        x = torch.from_numpy(np.load(path, mmap_mode="r")[: limit or None].copy())
    elif path.suffix == ".pt":
        x = torch.load(path, map_location="cpu", weights_only=True)[: limit or None]
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if len(tensors) != 1:
            raise OSError(f"--data {data}: expected one tensor, found {sorted(tensors)}")
        x = next(iter(tensors.values()))[: limit or None]
    else:
        raise OSError(
            f"--data {data}: unsupported file type {path.suffix!r} (use .npy, .pt or .safetensors)"
        )
    stat = path.stat()
    return x, f"{path.name}-{stat.st_size}-{int(stat.st_mtime)}-{x.shape[0]}"


from flows.reembed_cli import register as register_reembed  # noqa: E402
from flows.stack_cli import register  # noqa: E402

register(app)
register_reembed(app)

if __name__ == "__main__":
    app()
