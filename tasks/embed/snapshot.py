"""A fixed set of embedded papers that a sweep trains on, and its train/eval split.

A snapshot is written once (the ids and text hashes it holds) and named by their hash,
so a sweep reads the same rows however many papers a re-embed adds meanwhile, and two
sweeps over the same data share a snapshot id (and so their cached results).

The split is a function of the id alone (5% of ids hash into eval), so a paper never
moves from eval to train as the corpus grows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from infra.store import Store
from tasks.corpus.domains import Domain
from tasks.embed.manifest import EmbeddingStoreError, Namespace

EVAL_EVERY = 20  # one id in 20 (5%) is held out


def _id_hash(ids: pl.Series) -> pl.Series:
    return pl.Series([int(hashlib.sha256(i.encode()).hexdigest()[:12], 16) for i in ids])


@dataclass(frozen=True)
class Snapshot:
    id: str
    domain: str
    embedder: str
    n_train: int
    n_eval: int
    path: str  # relative to the store root
    uri: str


def fix_snapshot(
    store: Store, domain: Domain, embedder: str, *, limit: int | None = None
) -> Snapshot:
    """Freezes what is embedded now (``limit``: a hash-random subset of that size)."""
    ns = Namespace(store, embedder, domain)
    latest = ns.read_manifest().sort("embedded_at").unique("id", keep="last")
    if latest.is_empty():
        raise EmbeddingStoreError(
            f"nothing embedded in {store.uri(ns.folder)}; run `sae embed {domain.name}` first"
        )
    rows = latest.select("id", "text_sha").with_columns(_id_hash(latest["id"]).alias("h"))
    if limit is not None:
        rows = rows.sort("h").head(limit)
    rows = rows.with_columns((pl.col("h") % EVAL_EVERY == 0).alias("eval")).drop("h").sort("id")
    digest = hashlib.sha256(
        "\n".join(f"{i}:{s}" for i, s in zip(rows["id"], rows["text_sha"], strict=True)).encode()
    ).hexdigest()[:12]
    snap_id = f"{domain.slug}-{digest}"
    rel = f"{ns.folder}/_snapshots/{snap_id}.parquet"
    if not store.exists(rel):
        store.write_parquet(rel, rows)
    n_eval = int(rows["eval"].sum())
    return Snapshot(
        snap_id, domain.name, embedder, rows.height - n_eval, n_eval, rel, store.uri(rel)
    )


def snapshot_by_id(store: Store, domain: Domain, embedder: str, snap_id: str) -> Snapshot | None:
    """An existing snapshot, to train on exactly the papers an earlier sweep used."""
    rel = f"{Namespace(store, embedder, domain).folder}/_snapshots/{snap_id}.parquet"
    try:
        rows = store.read_parquet(rel, columns=["eval"])
    except FileNotFoundError:
        return None
    n_eval = int(rows["eval"].sum())
    return Snapshot(
        snap_id, domain.name, embedder, rows.height - n_eval, n_eval, rel, store.uri(rel)
    )


def load_snapshot(
    store: Store, domain: Domain, snapshot: Snapshot
) -> tuple[np.ndarray, np.ndarray]:
    """(train [N, d], eval [M, d]) float32, rows in id order."""
    ns = Namespace(store, snapshot.embedder, domain)
    rows = store.read_parquet(snapshot.path)
    ids, x = ns.load(keys=rows)
    is_eval = dict(zip(rows["id"], rows["eval"], strict=True))
    mask = np.array([is_eval[i] for i in ids], dtype=bool)
    return x[~mask], x[mask]
