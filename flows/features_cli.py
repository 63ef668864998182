"""``sae features`` (the features flow) and ``sae feature`` (one card in the terminal).

As in :mod:`flows.cli`, what imports torch, Prefect's flow machinery or MLflow stays
inside the commands.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_common import SERVICE_ERRORS, ExitCodes, exit_codes, quiet_prefect_console
from flows.cli_common import setup_logging as _setup_logging
from flows.cli_params import model_command
from infra.local_stack import check_mlflow, check_prefect, prefect_for_run
from infra.settings import get_settings
from infra.store import Store
from tasks.features.params import FeaturesParams


def register(app: typer.Typer) -> None:
    model_command(app, FeaturesParams, "features")(run_features)
    app.command(name="feature")(feature)


def run_features(params: FeaturesParams) -> None:
    """Read a finished sweep's features: cards, labels with scores, families, a page.

    For the chosen cells of DOMAIN's newest finished sweep (or --sweep), encodes the
    sweep's papers once (sparse codes, stored next to the cell), labels every feature
    by the terms most distinctive of its top papers and scores each label on held-out
    papers (F1, Pearson r), groups features into families, and writes a browser page.
    Logs the scores as metrics of each cell's run and the pages on the sweep's run. A
    rerun reuses what is stored. Exits 0 when done, 1 when some cell failed (rerun),
    2 on bad input or an unreachable service.
    """
    _setup_logging(own_handler=False)
    settings = get_settings()
    with exit_codes(_exit_codes):
        check_mlflow(settings)
        check_prefect(settings)
        Store.from_settings(settings).check_writable()
        _check_inputs(params, settings)
        with prefect_for_run(settings, while_booting=_import_flow):
            from flows.features import features  # imported meanwhile

            quiet_prefect_console()
            results = features(params)
    for r in results:
        typer.echo(f"\n{r.domain}: sweep {r.sweep_id}")
        typer.echo(features_text(r))
    typer.echo("\nsae feature DOMAIN ID prints a card; the pages are on each sweep's MLflow run")


def features_text(r) -> str:
    """A domain's features (a :class:`flows.features.DomainFeatures`), a few lines a cell."""
    lines = []
    for cell, s in r.cells.items():
        lines.append(
            f"  {cell}: {s['live_features']} live features; labels scored "
            f"{s['labels_scored']}, F1 mean {s['label_f1_mean']}, F1 >= 0.8 "
            f"{s['label_f1_ge_0_8']}{_by_embedding(s)}; {s['families']} families"
            + (f" of {s['clean_features']} clean features" if "clean_features" in s else "")
        )
        lines.append(f"    page: {r.pages[cell]}")
    if r.lineage:
        lines.append(f"  against {r.lineage['previous_champion']}: {r.lineage['counts']}")
    return "\n".join(lines)


def _by_embedding(s: dict) -> str:
    """The labels' embedding scores, where the cell has them."""
    if s.get("label_embed_f1_mean") is None:
        return ""
    return (
        f" (by embedding: F1 mean {s['label_embed_f1_mean']}, "
        f"F1 >= 0.8 {s['label_embed_f1_ge_0_8']})"
    )


def _check_inputs(params: FeaturesParams, settings) -> None:
    """What the flow would refuse, refused before any server starts."""
    from infra.tracking import mlflow_client
    from tasks.features.locate import choose_cells, find_sweep, require_label_api

    if params.llm_labels:
        require_label_api(settings)
    client = mlflow_client(settings)
    for domain in params.domains:
        choose_cells(find_sweep(client, domain, params.sweep), params.cells)


def _import_flow() -> None:
    import flows.features  # noqa: F401  (overlaps the Prefect server's boot)


def _exit_codes() -> ExitCodes:
    from tasks.embed.manifest import EmbeddingStoreError
    from tasks.features.locate import FeaturesInputError
    from tasks.features.steps import FeaturesFailedError

    bad = (*SERVICE_ERRORS, FeaturesInputError, EmbeddingStoreError)
    return [(FeaturesFailedError, 1), (bad, 2)]


def feature(
    cell: Annotated[
        str, typer.Argument(metavar="CELL", help="A domain (its champion) or a cell name.")
    ],
    feature_id: Annotated[int, typer.Argument(metavar="ID", help="The latent's id.")],
    sweep: Annotated[str, typer.Option(help="The sweep id. Default: the newest.")] = "",
) -> None:
    """Print one feature's card: label and scores, top papers, neighbours, family."""
    from tasks.features.card_text import card_text
    from tasks.features.locate import FeaturesInputError
    from tasks.features.lookup import load_document

    with exit_codes([((*SERVICE_ERRORS, FeaturesInputError), 2)]):
        doc = load_document(cell, sweep or None)
        typer.echo(card_text(doc, feature_id))
