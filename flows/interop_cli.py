"""``sae export`` (a cell as a SAELens folder, or our checkpoint, with a model card) and
``sae import-sae`` (a SAELens TopK SAE as a sweep of a domain).

As in :mod:`flows.cli`, what imports torch or MLflow stays inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import SERVICE_ERRORS, ExitCodes, exit_codes


def register(app: typer.Typer) -> None:
    app.command(name="export")(export)
    app.command(name="import-sae")(import_sae)


def _bad_input() -> ExitCodes:
    from tasks.corpus.domains import UnknownDomainError
    from tasks.embed.embedders import EmbedderError
    from tasks.embed.manifest import EmbeddingStoreError
    from tasks.features.locate import FeaturesInputError
    from tasks.interop import InteropInputError

    bad = (InteropInputError, FeaturesInputError, UnknownDomainError, EmbedderError)
    return [((*SERVICE_ERRORS, *bad, EmbeddingStoreError), 2)]


def export(
    cell: Annotated[
        str, typer.Argument(metavar="CELL", help="A cell name, or a domain for its champion.")
    ],
    to: Annotated[Path, typer.Option("--to", help="The folder to write (new or empty).")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="saelens: cfg.json + sae_weights.safetensors, as SAELens's "
            "SAE.load_from_disk reads them; safetensors: our checkpoint (TopKSAE.load).",
        ),
    ] = "saelens",
    sweep: Annotated[str, typer.Option(help="The sweep id. Default: the newest.")] = "",
    force: Annotated[
        bool,
        typer.Option(help="Replace what the folder holds (by default a non-empty one is refused)."),
    ] = False,
) -> None:
    """Write a finished cell where other tools load it, with a model card (README.md).

    The card holds the cell's held-out metrics, data snapshot, embedder and training
    settings, with front matter as model hubs read it. The folder is written whole or
    not at all.
    """
    from infra.local_stack import check_mlflow
    from infra.settings import get_settings
    from tasks.interop.export import check_destination, export_cell

    with exit_codes(_bad_input):
        check_destination(to, force)
        settings = get_settings()
        check_mlflow(settings)
        done = export_cell(cell, to, fmt, sweep or None, force, settings)
    typer.echo(
        f"{done.cell} of sweep {done.sweep_id} ({done.domain}) -> {done.folder} "
        f"({done.fmt}): {', '.join(done.files)}"
    )


def import_sae(
    folder: Annotated[
        Path,
        typer.Argument(
            metavar="DIR", help="A SAELens TopK SAE folder (cfg.json + sae_weights.safetensors)."
        ),
    ],
    domain: Annotated[str, typer.Option(help="The domain whose papers it reads (cs.LG, ...).")],
    embedder: Annotated[
        str,
        typer.Option(
            help="The embedder it was trained on (minilm, st:<model>, openai:<model>). "
            "Default: the one its export recorded, else SAE_EMBEDDER."
        ),
    ] = "",
) -> None:
    """Import a SAELens TopK SAE trained on one of our embedders as a sweep of DOMAIN.

    Checks the folder (a TopK SAE whose weights have its cfg's shapes), the embedder
    (known, its vectors in the store, their dimension the SAE's d_in) and the domain's
    embedded papers before writing anything; then stores the cell with held-out metrics
    on the domain's papers and records it in MLflow as a one-cell sweep, the domain's
    newest, to search (`sae search`) and analyse (`sae features`) like ours.
    """
    from infra.local_stack import check_mlflow
    from infra.settings import get_settings
    from tasks.interop.import_sae import import_sae as run_import

    with exit_codes(_bad_input):
        settings = get_settings()
        check_mlflow(settings)
        done = run_import(folder, domain, embedder, settings)
    what = "already imported as" if done.already else "imported as"
    typer.echo(
        f"{folder} {what} {done.cell} of sweep {done.sweep_id} ({done.domain}, "
        f"{done.embedder}, snapshot {done.data_snapshot}: {done.n_papers:,} papers); "
        f"held-out nmse {done.metrics['nmse']:.4f}"
    )
    typer.echo(
        f"  search: sae search QUERY --domain {done.domain} --sweep {done.sweep_id}\n"
        f"  features: sae features {done.domain} --sweep {done.sweep_id} --cells all"
    )
