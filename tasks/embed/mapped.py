"""A data snapshot's train and eval matrices as .npy files in a local folder, memory-mapped:
what a pack reads past its vector budget (the store's parquet parts cannot be mapped).

    {folder}/{embedder}/{snapshot id}/train.npy   [N, d] float32, rows in id order
    {folder}/{embedder}/{snapshot id}/eval.npy    [M, d] float32, rows in id order

The same rows in the same order as :func:`tasks.embed.snapshot.load_snapshot`, written one
vector part at a time, so the peak is one part's vectors (plus the snapshot's and the
manifest's keys: ids and hashes, N-bound but ~100 bytes a paper). A snapshot id names its
contents, so files once written are reused by every pack of every sweep on that machine;
they appear by one rename of their folder, never half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from infra.store import Store
from tasks.embed.manifest import EmbeddingStoreError, Namespace
from tasks.embed.snapshot import Snapshot


def snapshot_bytes(store: Store, snapshot: Snapshot) -> int:
    """Bytes of the snapshot's vectors as float32 (train and eval)."""
    return (snapshot.n_train + snapshot.n_eval) * _dim(Namespace(store, snapshot.embedder)) * 4


def _dim(ns: Namespace) -> int:
    dim = (ns.recorded() or {}).get("dim")
    if not dim:
        raise EmbeddingStoreError(
            f"{ns.store.uri(ns.folder)} records no vector dimension (_embedder.json); "
            "embed or import vectors first"
        )
    return int(dim)


def mapped_snapshot(
    store: Store, snapshot: Snapshot, folder: Path
) -> tuple[np.ndarray, np.ndarray]:
    """(train [N, d], eval [M, d]) float32 memmaps (read-only) of ``snapshot``, written
    under ``folder`` first if they are not there yet."""
    final = Path(folder) / _safe(snapshot.embedder) / snapshot.id
    if not (final / "train.npy").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{snapshot.id}-", dir=final.parent))
        try:
            _write(store, snapshot, tmp)
            os.replace(tmp, final)  # another pack that got there first wins: same content
        except OSError:
            if not (final / "train.npy").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return (
        np.load(final / "train.npy", mmap_mode="r"),
        np.load(final / "eval.npy", mmap_mode="r"),
    )


def _write(store: Store, snapshot: Snapshot, out: Path) -> None:
    ns = Namespace(store, snapshot.embedder)
    keys = store.read_parquet(snapshot.path).select("id", "text_sha", "eval").sort("id")
    # Each row's place in its split's matrix: the id order load_snapshot gives.
    keys = keys.with_columns(pl.int_range(pl.len()).over("eval").alias("pos"))
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
    wanted = keys.join(latest, on="id")
    dim = _dim(ns)
    n_eval = int(keys["eval"].sum())
    train = np.lib.format.open_memmap(
        out / "train.npy", "w+", np.float32, (keys.height - n_eval, dim)
    )
    held = np.lib.format.open_memmap(out / "eval.npy", "w+", np.float32, (n_eval, dim))
    written = 0
    for (part,), rows in wanted.group_by("part"):
        vectors = (
            store.read_parquet(ns.part_path(str(part)))
            .join(rows, on=["id", "text_sha"])
            .unique("id", keep="first")
        )
        x = vectors["vector"].to_numpy().astype(np.float32, copy=False)
        is_eval = vectors["eval"].to_numpy()
        pos = vectors["pos"].to_numpy()
        train[pos[~is_eval]] = x[~is_eval]
        held[pos[is_eval]] = x[is_eval]
        written += vectors.height
    if written != keys.height:
        raise EmbeddingStoreError(
            f"the parts of {store.uri(ns.folder)} hold {written} of snapshot {snapshot.id}'s "
            f"{keys.height} vectors, though the manifest names them all"
        )
    train.flush()
    held.flush()
    del train, held


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
