"""A fixed set of embedded papers that a sweep trains on, and its train/eval split.

A snapshot is a domain's view at a moment: its ids and text hashes, over the embedder's
shared vectors (``embeddings/{embedder}/_snapshots/{slug}/{id}.parquet``). It is written
once and named by its content's hash, so a sweep reads the same rows however many papers
a re-embed adds meanwhile, and two sweeps over the same data share a snapshot id (and so
their cached results). Which rows train and their order: :mod:`tasks.embed.rows`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

from infra.store import Store
from tasks.corpus.domains import Domain
from tasks.corpus.storage import read_papers
from tasks.embed.manifest import EmbeddingStoreError, Namespace
from tasks.embed.rows import snapshot_rows


@dataclass(frozen=True)
class Snapshot:
    id: str
    domain: str
    embedder: str
    n_train: int
    n_eval: int
    path: str  # relative to the store root
    uri: str

    @property
    def data_key(self) -> str:
        """What the rows' vectors are: the id names the papers and texts only, so two
        embedders' vectors of the same papers share it."""
        return f"{self.embedder}/{self.id}"


def embedded_in(store: Store, domain: Domain, embedder: str) -> pl.DataFrame:
    """[id, text_sha]: the newest vector of each of the domain's embedded papers."""
    latest = (
        Namespace(store, embedder).read_manifest().sort("embedded_at").unique("id", keep="last")
    )
    ids = read_papers(store, domain, columns=["id"])
    return latest.join(ids, on="id", how="semi").select("id", "text_sha")


def fix_snapshot(
    store: Store, domain: Domain, embedder: str, *, limit: int | None = None
) -> Snapshot:
    """Freezes what of ``domain`` is embedded now (``limit``: a hash-random subset)."""
    ns = Namespace(store, embedder)
    latest = embedded_in(store, domain, embedder)
    if latest.is_empty():
        raise EmbeddingStoreError(
            f"none of {domain.name}'s papers is embedded in {store.uri(ns.folder)}; "
            f"run `sae embed {domain.name}` first"
        )
    rows = snapshot_rows(latest, limit)
    digest = hashlib.sha256(
        "\n".join(f"{i}:{s}" for i, s in zip(rows["id"], rows["text_sha"], strict=True)).encode()
    ).hexdigest()[:12]
    snap_id = f"{domain.slug}-{digest}"
    rel = f"{ns.snapshot_dir(domain.slug)}/{snap_id}.parquet"
    if not store.exists(rel):
        store.write_parquet(rel, rows)
    n_eval = int(rows["eval"].sum())
    return Snapshot(
        snap_id, domain.name, embedder, rows.height - n_eval, n_eval, rel, store.uri(rel)
    )


def snapshot_by_id(store: Store, domain: Domain, embedder: str, snap_id: str) -> Snapshot | None:
    """An existing snapshot, to train on exactly the papers an earlier sweep used."""
    rel = f"{Namespace(store, embedder).snapshot_dir(domain.slug)}/{snap_id}.parquet"
    try:
        return snapshot_at(store, rel, domain.name, embedder)
    except FileNotFoundError:
        return None


def snapshot_at(store: Store, rel: str, domain: str, embedder: str) -> Snapshot:
    """The snapshot stored at ``rel`` (its id is the file's name); FileNotFoundError when
    none is."""
    rows = store.read_parquet(rel, columns=["eval"])
    n_eval = int(rows["eval"].sum())
    snap_id = rel.rsplit("/", 1)[-1].removesuffix(".parquet")
    return Snapshot(snap_id, domain, embedder, rows.height - n_eval, n_eval, rel, store.uri(rel))


def load_snapshot(store: Store, snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray]:
    """(train [N, d], eval [M, d]) float32, rows in id order, filled a vector part at a
    time: the peak is the matrices and one part."""
    train = held = None
    for rows, x in snapshot_parts(store, snapshot):
        if train is None:  # the first part: its width is the vectors'
            train = np.empty((snapshot.n_train, x.shape[1]), np.float32)
            held = np.empty((snapshot.n_eval, x.shape[1]), np.float32)
        is_eval, at = rows["eval"].to_numpy(), rows["split_pos"].to_numpy()
        train[at[~is_eval]] = x[~is_eval]
        held[at[is_eval]] = x[is_eval]
    if train is None:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return train, held


def vector_dim(ns: Namespace) -> int:
    dim = (ns.recorded() or {}).get("dim")
    if not dim:
        raise EmbeddingStoreError(
            f"{ns.store.uri(ns.folder)} records no vector dimension (_embedder.json); "
            "embed or import vectors first"
        )
    return int(dim)


def snapshot_parts(store: Store, snapshot: Snapshot) -> Iterator[tuple[pl.DataFrame, np.ndarray]]:
    """The snapshot's vectors a stored part at a time: (rows [id, eval, pos, split_pos],
    vectors [r, d] float32), ``pos`` a row's place among all the snapshot's ids sorted,
    ``split_pos`` its place in its split (train or eval), sorted by id likewise. Every
    row comes once; a paper revised since gives the vector it was frozen with."""
    ns = Namespace(store, snapshot.embedder)
    keys = (
        store.read_parquet(snapshot.path)
        .select("id", "text_sha", "eval")
        .sort("id")
        .with_columns(
            pl.int_range(pl.len()).alias("pos"),
            pl.int_range(pl.len()).over("eval").alias("split_pos"),
        )
    )
    latest = (
        ns.read_manifest()
        .join(keys.select("id", "text_sha"), on=["id", "text_sha"])
        .sort("embedded_at")
        .unique("id", keep="last")
        .select("id", "part")
    )
    if latest.height < keys.height:
        missing = keys.join(latest, on="id", how="anti")["id"].head(3).to_list()
        raise EmbeddingStoreError(
            f"{keys.height - latest.height} id(s) of snapshot {snapshot.id} have no embedding "
            f"in {store.uri(ns.folder)}, e.g. {missing}"
        )
    yield from ns.vectors_by_part(keys.join(latest, on="id"))
