"""The store's layout, and the move from one corpus per domain to one corpus for all.

Until 2026-12 the store kept a corpus and an embedding namespace per domain:

    corpus/{slug}/part-*.parquet, corpus/{slug}/_quarantine/part-*.parquet
    embeddings/{embedder}/{slug}/part-*.parquet, _manifest.parquet, _embedder.json
    embeddings/{embedder}/{slug}/_snapshots/{id}.parquet

Now every paper and every vector is stored once (:mod:`tasks.corpus.storage`,
:mod:`tasks.embed.manifest`). :func:`ensure_layout` moves an old store in place the
first time a command opens it: parts keep their names (corpus parts are named by time
and content, vector parts by content, so two domains' copies of one part are the same
bytes), each old manifest becomes one manifest part, snapshots keep their ids (so
finished sweeps stay finished), watermarks and locks stay where they are. Nothing is
embedded again.

Crash-safe and rerunnable: everything is copied first (a copy that exists is skipped),
then ``_layout.json`` records the copy as complete, then the old files are deleted, then
``_layout.json`` says done. A rerun after a crash at any point finishes the job.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
from pathlib import Path

from infra.store import Store, StoreError
from tasks.embed.manifest import MANIFEST_SCHEMA, EmbeddingStoreError, Namespace

log = logging.getLogger(__name__)

LAYOUT_FILE = "_layout.json"
LAYOUT_VERSION = 2

_checked: set[str] = set()


def open_store(settings, *, writable: bool = False) -> Store:
    """The settings' store, moved to the current layout if it is older. ``writable``:
    first check that it takes writes, so an unwritable store is named as that."""
    store = Store.from_settings(settings)
    if writable:
        store.check_writable()
    ensure_layout(store)
    return store


def ensure_layout(store: Store) -> None:
    """Migrates a per-domain store in place (once per store and process)."""
    if store.root in _checked:
        return
    state = _state(store)
    if state != "done":
        old = _old_files(store)
        if state is None and not any(old.values()):
            _mark_new(store)
        else:
            _move(store, old, state)
            log.info("store %s moved to one corpus and one embedding per paper", store.root)
    _checked.add(store.root)


def _move(store: Store, old: dict[str, list[str]], state: str | None) -> None:
    try:
        if state is None:
            _copy(store, old)
            _write_state(store, "copied")
        _delete(store, old)
    except FileNotFoundError:
        # Another process moved the store meanwhile: its deletes ran under this copy. Once
        # it has recorded the copy, what is left of the old files is only to delete.
        if _state(store) not in ("copied", "done"):
            raise
        _delete(store, _old_files(store))
    _write_state(store, "done")


def _write_state(store: Store, state: str) -> None:
    store.write_json(LAYOUT_FILE, {"version": LAYOUT_VERSION, "state": state})


def _mark_new(store: Store) -> None:
    """Records that a store without old files is in this layout, so later opens read
    one small file instead of listing; a read-only store (search on S3) is left as is."""
    try:
        _write_state(store, "done")
    except StoreError as exc:
        log.debug("layout marker not written (%s)", exc)


def _state(store: Store) -> str | None:
    try:
        return store.read_json(LAYOUT_FILE).get("state")
    except FileNotFoundError:
        return None


def _old_files(store: Store) -> dict[str, list[str]]:
    """The old layout's files, by kind. Folders named ``_*`` are the new layout's."""

    def old(paths: list[str], depth: int) -> list[str]:
        return [p for p in paths if not p.split("/")[depth].startswith("_")]

    return {
        "corpus": old(store.list("corpus", "*/part-*.parquet"), 1),
        "quarantine": old(store.list("corpus", "*/_quarantine/part-*.parquet"), 1),
        "vectors": old(store.list("embeddings", "*/*/part-*.parquet"), 2),
        "manifests": old(store.list("embeddings", "*/*/_manifest.parquet"), 2),
        "embedders": old(store.list("embeddings", "*/*/_embedder.json"), 2),
        "snapshots": old(store.list("embeddings", "*/*/_snapshots/*.parquet"), 2),
    }


def _new_path(kind: str, rel: str) -> str:
    parts = rel.split("/")
    if kind == "corpus":  # corpus/{slug}/part -> corpus/part
        return f"corpus/{parts[2]}"
    if kind == "quarantine":  # corpus/{slug}/_quarantine/part -> corpus/_quarantine/part
        return f"corpus/_quarantine/{parts[3]}"
    if kind == "vectors":  # embeddings/{e}/{slug}/part -> embeddings/{e}/part
        return f"embeddings/{parts[1]}/{parts[3]}"
    if kind == "snapshots":  # embeddings/{e}/{slug}/_snapshots/x -> .../_snapshots/{slug}/x
        return f"embeddings/{parts[1]}/_snapshots/{parts[2]}/{parts[4]}"
    raise ValueError(kind)


def _copy(store: Store, old: dict[str, list[str]]) -> None:
    for kind in ("corpus", "quarantine", "vectors", "snapshots"):
        for rel in old[kind]:
            new = _new_path(kind, rel)
            if not store.exists(new):
                store.write_bytes(new, store.read_bytes(rel))
    _merge_embedders(store, old["embedders"])
    by_embedder: dict[str, list[str]] = defaultdict(list)
    for rel in old["manifests"]:
        by_embedder[rel.split("/")[1]].append(rel)
    for embedder, rels in by_embedder.items():
        ns = Namespace(store, embedder)
        for rel in rels:
            # Named after its domain, so a rerun overwrites the same part instead of
            # adding a second copy of its rows.
            slug = rel.split("/")[2]
            rows = store.read_parquet(rel).cast(MANIFEST_SCHEMA).select(list(MANIFEST_SCHEMA))
            store.write_parquet(f"{ns.manifest_dir}/part-0-migrated-{slug}.parquet", rows)
    counts = {kind: len(paths) for kind, paths in old.items()}
    log.info("copied the per-domain layout's files: %s", counts)


def _merge_embedders(store: Store, rels: list[str]) -> None:
    """One ``_embedder.json`` per embedder; two domains that disagree on its dimension
    cannot share a folder, and the migration stops naming both."""
    seen: dict[str, tuple[str, dict]] = {}
    for rel in rels:
        embedder, info = rel.split("/")[1], store.read_json(rel)
        if embedder in seen and seen[embedder][1].get("dim") != info.get("dim"):
            other, first = seen[embedder]
            raise EmbeddingStoreError(
                f"{store.uri(other)} records {first.get('dim')}-d vectors and "
                f"{store.uri(rel)} {info.get('dim')}-d under one embedder name; rename one "
                "folder's embedder before the store can move to one namespace per embedder"
            )
        seen.setdefault(embedder, (rel, info))
    for embedder, (_, info) in seen.items():
        rel = f"embeddings/{embedder}/_embedder.json"
        if not store.exists(rel):
            store.write_json(rel, info)


def _delete(store: Store, old: dict[str, list[str]]) -> None:
    for paths in old.values():
        for rel in paths:
            store.delete(rel)
    if store.is_local:  # S3 has no folders; a local one left empty would look like a domain
        for top in ("corpus", "embeddings"):
            for folder, _, _ in sorted(os.walk(Path(store.root) / top), reverse=True):
                with contextlib.suppress(OSError):  # not empty: the new layout's
                    os.rmdir(folder)
