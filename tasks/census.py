"""How many papers, and how many embedded, each known domain holds in the store."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from infra.store import Store
from tasks.corpus.domains import Domain, known_domains
from tasks.corpus.storage import newest_versions
from tasks.embed.manifest import Namespace


@dataclass(frozen=True)
class DomainCount:
    domain: Domain
    papers: int
    embedded: int


def domain_census(store: Store, embedder: str) -> list[DomainCount]:
    """Every known domain (taxonomy order, then ``all``) with its papers and the papers
    that have a vector of ``embedder``. One pass over the corpus's ids and categories."""
    keys = _with_embedded(store, embedder)
    listed = keys.explode("categories").rename({"categories": "category"})
    by_category = {
        row["category"]: row
        for row in listed.group_by("category")
        .agg(pl.len().alias("papers"), pl.col("embedded").sum())
        .iter_rows(named=True)
    }
    out = []
    for domain in known_domains():
        if domain.kind == "all":
            out.append(DomainCount(domain, keys.height, int(keys["embedded"].sum())))
        elif domain.kind == "category":
            row = by_category.get(domain.name, {"papers": 0, "embedded": 0})
            out.append(DomainCount(domain, int(row["papers"]), int(row["embedded"])))
        else:  # an archive: a paper in two of its categories counts once
            mine = listed.filter(
                (pl.col("category") == domain.name)
                | pl.col("category").str.starts_with(domain.name + ".")
            ).unique("id")
            out.append(DomainCount(domain, mine.height, int(mine["embedded"].sum())))
    return out


#: Papers a second one CPU core embeds with the bundled MiniLM (about 15/s measured on
#: 2 AVX2 cores, README "Embedding"); what the estimate of a CPU run is made from.
CPU_PAPERS_PER_CORE_S = 7.5


def _with_embedded(store: Store, embedder: str) -> pl.DataFrame:
    """[id, categories, embedded]: every paper once, and whether it has a vector."""
    keys = newest_versions(store).select("id", "categories")
    done = Namespace(store, embedder).read_manifest().select("id").unique()
    return keys.with_columns(pl.col("id").is_in(done["id"].implode()).alias("embedded"))


def cpu_embedding_warning(
    store: Store, domain: Domain, embedder: str, *, cores: int, gpu: bool, cluster: bool
) -> str | None:
    """For ``all`` on a machine with neither a GPU nor a cluster to embed on: how many
    papers are waiting, and how long this machine's cores would take. Not a refusal."""
    if domain.kind != "all" or gpu or cluster:
        return None
    keys = _with_embedded(store, embedder)  # all of arXiv: every paper, no view to take
    papers, waiting = keys.height, keys.height - int(keys["embedded"].sum())
    if waiting <= 0:
        return None
    hours = waiting / (CPU_PAPERS_PER_CORE_S * cores) / 3600
    return (
        f"all of arXiv: {papers:,} papers in the corpus, {waiting:,} without a "
        f"vector; embedding them on this machine's {cores} CPU cores takes about "
        f"{hours:,.1f} h (about {CPU_PAPERS_PER_CORE_S * cores:.0f} papers/s). Pass --limit "
        "N for a trial run, or point RAY_ADDRESS at a cluster with GPUs"
    )
