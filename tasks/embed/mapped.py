"""A data snapshot's vectors as one .npy file in a local folder, memory-mapped: what a
pack and a cell's features read past the vector budget (the store's parquet parts cannot
be mapped).

    {folder}/{embedder}/{snapshot id}/rows.npy   [N, d] float32, the snapshot's rows in id order

Train and eval are views of it (:class:`sae.data.MappedRows`), with the same rows in the
same order as :func:`tasks.embed.snapshot.load_snapshot`. The file is written one vector
part at a time, so the peak is one part's vectors (plus the snapshot's and the manifest's
keys: ids and hashes, N-bound but ~100 bytes a paper). A snapshot id names its contents,
so a file once written is reused by every pack and every features run of every sweep on
that machine; it appears by one rename of its folder, never half-written, and goes when
:data:`KEEP_MAPPED` newer ones have been used.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from infra.store import Store
from sae.data import MappedRows
from tasks.embed.manifest import Namespace
from tasks.embed.snapshot import Snapshot, snapshot_parts, vector_dim

ROWS_FILE = "rows.npy"
#: Snapshots of one embedder kept mapped on a machine: the newest sweep's and the one
#: before (its packs or features may still read it); at 2.7M x 384 each is 4 GB.
KEEP_MAPPED = 2


def snapshot_bytes(store: Store, snapshot: Snapshot) -> int:
    """Bytes of the snapshot's vectors as float32 (train and eval)."""
    dim = vector_dim(Namespace(store, snapshot.embedder))
    return (snapshot.n_train + snapshot.n_eval) * dim * 4


def mapped_rows(store: Store, snapshot: Snapshot, folder: Path) -> np.ndarray:
    """[N, d] float32 memmap (read-only) of ``snapshot``'s rows, its ids sorted, written
    under ``folder`` first if it is not there yet. Past :data:`KEEP_MAPPED` snapshots of
    the embedder on this machine, the least recently used go."""
    final = Path(folder) / _safe(snapshot.embedder) / snapshot.id
    for attempt in range(2):
        if not (final / ROWS_FILE).is_file():
            _write_once(store, snapshot, final)
        try:
            x = np.load(final / ROWS_FILE, mmap_mode="r")
            break
        except FileNotFoundError:  # pruned by another process between the two lines
            if attempt:
                raise
    os.utime(final)
    _prune(final)
    return x


def _write_once(store: Store, snapshot: Snapshot, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{snapshot.id}-", dir=final.parent))
    try:
        _write(store, snapshot, tmp / ROWS_FILE)
        if final.is_dir() and not (final / ROWS_FILE).is_file():
            shutil.rmtree(final)  # the files of an earlier layout (train.npy, eval.npy)
        os.replace(tmp, final)  # another pack that got there first wins: same content
    except OSError:
        if not (final / ROWS_FILE).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(final: Path) -> None:
    """Deletes the embedder's mapped snapshots but the :data:`KEEP_MAPPED` most recently
    used (``final`` among them). A process that has one mapped keeps reading it: Linux
    frees an unlinked file's pages once the last map of it goes."""
    others = [p for p in final.parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    others.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in [p for p in others if p != final][KEEP_MAPPED - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def mapped_snapshot(
    store: Store, snapshot: Snapshot, folder: Path
) -> tuple[MappedRows, MappedRows]:
    """(train [N, d], eval [M, d]) views of :func:`mapped_rows`, each in id order."""
    x = mapped_rows(store, snapshot, folder)
    # The snapshot's rows are sorted by id; so is the file.
    is_eval = store.read_parquet(snapshot.path, ["id", "eval"]).sort("id")["eval"].to_numpy()
    return MappedRows(x, np.flatnonzero(~is_eval)), MappedRows(x, np.flatnonzero(is_eval))


def _write(store: Store, snapshot: Snapshot, path: Path) -> None:
    dim = vector_dim(Namespace(store, snapshot.embedder))
    n = snapshot.n_train + snapshot.n_eval
    out = np.lib.format.open_memmap(path, "w+", np.float32, (n, dim))
    for rows, x in snapshot_parts(store, snapshot):
        out[rows["pos"].to_numpy()] = x
    out.flush()
    del out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
