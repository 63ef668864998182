"""What the end-to-end tests that run a real sweep share: a local Ray whose workers
report to the session's Prefect server, and a store of cs.LG papers embedded once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from infra.settings import get_settings
from infra.store import Store
from tasks.corpus.domains import get_domain
from tests.environ import environ


@contextlib.contextmanager
def ray_reporting_to(prefect_api: str) -> Iterator[None]:
    import ray

    from infra.ray_runtime import ensure_ray

    with environ(PREFECT_API_URL=prefect_api):
        ensure_ray(get_settings())
        yield
        ray.shutdown()


def embedded_cs_lg(base: Path, arxiv_data: Path, papers: int) -> Path:
    """A store under ``base`` with the sample's first ``papers`` cs.LG papers ingested and
    embedded; returns its root, for each test to copy."""
    from infra.settings import Settings
    from tasks.corpus.ingest import ingest_source
    from tasks.embed.run import embed_domain

    store = Store(str(base / "store"))
    cs = get_domain("cs.LG")
    ingest_source(store, cs, arxiv_data / "cs_lg.jsonl.gz", limit=papers)
    embed_domain(store, cs, settings=Settings(home=base / "home", store=store.root))
    return base / "store"
