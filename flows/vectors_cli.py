"""``sae import-vectors``: embeddings made elsewhere, into the store."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_common import exit_codes, setup_logging

EMBEDDER_HELP = (
    "The embedder that made the vectors (minilm, st:<model>, openai:<model>): their "
    "namespace, and what search embeds queries with."
)


def register(app: typer.Typer) -> None:
    app.command(name="import-vectors")(import_vectors_command)


def import_vectors_command(
    domain: Annotated[str, typer.Argument(help="The domain whose papers the vectors are.")],
    file: Annotated[str, typer.Argument(help="A parquet file (id, vector) or an .npy matrix.")],
    embedder: Annotated[str, typer.Option(help=EMBEDDER_HELP)],
    ids: Annotated[
        str, typer.Option(help="With an .npy matrix: its ids, one a line (or a parquet id).")
    ] = "",
) -> None:
    """Import vectors computed elsewhere (the paper's own, a paid API's) for DOMAIN's papers.

    The papers must be in the corpus. Rows with an unknown id, a vector of another length,
    NaN or zeros, or an id given twice are kept aside with their reason; the rest land
    where embedded vectors do, so `sae sweep DOMAIN --embedder SAME` trains on them.
    Exits 2 when the file cannot be imported at all (unreadable, another dimension than
    the vectors already stored under that embedder).
    """
    from infra.settings import get_settings
    from infra.store import StoreError
    from tasks.corpus.domains import UnknownDomainError, get_domain
    from tasks.embed.embedders import EmbedderError
    from tasks.embed.import_vectors import ImportVectorsError, import_vectors
    from tasks.embed.manifest import EmbeddingStoreError
    from tasks.layout import open_store

    setup_logging()
    bad = (UnknownDomainError, EmbedderError, ImportVectorsError, EmbeddingStoreError, StoreError)
    with exit_codes([(bad, 2)]):
        dom = get_domain(domain)
        store = open_store(get_settings(), writable=True)
        report = import_vectors(store, dom, file, embedder, ids_file=ids or None)
    typer.echo(report.summary())
