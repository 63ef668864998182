"""Which papers are embedded, by which embedder, in which part: the embeddings' layout.

    embeddings/{embedder}/part-{shard}.parquet         id, text_sha, vector (FixedSizeList f32)
    embeddings/{embedder}/_manifest/part-*.parquet     id, text_sha, part, run_id, embedded_at
    embeddings/{embedder}/_embedder.json               name, spec, dim
    embeddings/{embedder}/_snapshots/{slug}/*.parquet  a domain's data snapshots

One namespace per embedder, whatever the domains: a paper listed in three fields is
embedded once. A paper counts as embedded when the manifest holds its id with the hash
of the exact text that was embedded, so a revised abstract is embedded again and nothing
else is. The manifest is a set of parts, each written after the part it names, so it
never points at a missing file and two runs (a sweep of one field, a re-embed of
another) add to it without overwriting each other; a vector part the manifest does not
name yet (a crash in between) is adopted on the next run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl

from infra.store import Store
from tasks.corpus.storage import part_name

log = logging.getLogger(__name__)

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "text_sha": pl.String(),
    "part": pl.String(),
    "run_id": pl.String(),
    "embedded_at": pl.Datetime("us", "UTC"),
}

#: Manifest parts beyond this many are merged into one when a run starts: a listing of
#: the manifest stays a few requests, however many shards were ever embedded.
COMPACT_AT = 64


class EmbeddingStoreError(ValueError):
    pass


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def manifest_rows(ids: list[str], shas: list[str], part: str, run_id: str) -> pl.DataFrame:
    """The rows that record ``ids`` (their texts' ``shas``) as embedded in ``part`` now."""
    now = datetime.now(UTC)
    return pl.DataFrame(
        {
            "id": ids,
            "text_sha": shas,
            "part": [part] * len(ids),
            "run_id": [run_id] * len(ids),
            "embedded_at": [now] * len(ids),
        },
        schema=MANIFEST_SCHEMA,
    )


@dataclass(frozen=True)
class Namespace:
    """The folder of one embedder's vectors, for every paper of every domain."""

    store: Store
    embedder: str

    @property
    def folder(self) -> str:
        return f"embeddings/{self.embedder}"

    @property
    def manifest_dir(self) -> str:
        return f"{self.folder}/_manifest"

    def part_path(self, name: str) -> str:
        return f"{self.folder}/{name}"

    def snapshot_dir(self, slug: str) -> str:
        return f"{self.folder}/_snapshots/{slug}"

    def read_manifest(self) -> pl.DataFrame:
        # A compaction may delete a part between the listing and the read: list again.
        for attempt in range(3):
            try:
                frames = [
                    self.store.read_parquet(p).cast(MANIFEST_SCHEMA)
                    for p in self.store.list(self.manifest_dir)
                ]
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        if not frames:
            return pl.DataFrame(schema=MANIFEST_SCHEMA)
        return pl.concat(frames).select(list(MANIFEST_SCHEMA))

    def append_manifest(self, rows: pl.DataFrame) -> str | None:
        """Adds ``rows`` as one manifest part (after the vector parts they name exist)."""
        if rows.is_empty():
            return None
        rows = rows.select(list(MANIFEST_SCHEMA)).cast(MANIFEST_SCHEMA).sort("id")
        return self.store.write_parquet(f"{self.manifest_dir}/{part_name(rows, 'id')}", rows)

    def compact_manifest(self, at: int = COMPACT_AT) -> None:
        """Merges the manifest's parts into one once there are more than ``at``.

        The merged part is written before the old ones go, so a reader in between sees
        some rows twice (harmless: rows are facts, readers take each id's newest) and
        never misses one; a part another run adds meanwhile is not among those deleted.
        """
        parts = self.store.list(self.manifest_dir)
        if len(parts) <= at:
            return
        merged = pl.concat([self.store.read_parquet(p).cast(MANIFEST_SCHEMA) for p in parts])
        self.append_manifest(merged.unique(maintain_order=True))
        for p in parts:
            self.store.delete(p)
        log.info("merged %d manifest parts of %s", len(parts), self.store.uri(self.folder))

    def recorded(self) -> dict | None:
        """What ``_embedder.json`` says of the vectors (name, spec, dim, and ``source``
        ``import`` for imported ones); None before the namespace's first vector."""
        try:
            return self.store.read_json(f"{self.folder}/_embedder.json")
        except FileNotFoundError:
            return None

    def check_embedder(self, spec: str, dim: int, *, source: str | None = None) -> None:
        """Refuses to mix vectors of two dimensions under one name; records the first."""
        seen = self.recorded()
        if seen is None:
            doc = {"name": self.embedder, "spec": spec, "dim": dim}
            self.store.write_json(f"{self.folder}/_embedder.json", doc | _source(source))
            return
        if seen.get("dim") != dim:
            raise EmbeddingStoreError(
                f"{self.store.uri(self.folder)} holds {seen.get('dim')}-d vectors of "
                f"{seen.get('spec')!r}; embedder {spec!r} gives {dim}-d. Give it another name."
            )

    def imported(self) -> bool:
        """Whether ``sae import-vectors`` made this namespace (never embedded into then)."""
        return (self.recorded() or {}).get("source") == "import"

    def parts(self) -> list[str]:
        return [p.rsplit("/", 1)[1] for p in self.store.list(self.folder)]

    def write_part(self, name: str, ids: list[str], shas: list[str], vectors: np.ndarray) -> str:
        d = vectors.shape[1]
        df = pl.DataFrame(
            {
                "id": pl.Series(ids, dtype=pl.String),
                "text_sha": pl.Series(shas, dtype=pl.String),
                "vector": pl.Series(vectors.astype(np.float32, copy=False)).cast(
                    pl.Array(pl.Float32, d)
                ),
            }
        )
        return self.store.write_parquet(self.part_path(name), df)

    def read_part_keys(self, name: str) -> pl.DataFrame:
        return self.store.read_parquet(self.part_path(name), columns=["id", "text_sha"])

    def load(
        self, ids: list[str] | None = None, *, keys: pl.DataFrame | None = None
    ) -> tuple[list[str], np.ndarray]:
        """The newest vector of each embedded id (or of ``ids``), sorted by id: [N, d] f32.

        ``keys`` (id, text_sha) asks for the vectors of those exact texts instead, as a
        snapshot does, so a paper revised since still gives the vector it was frozen with.
        """
        manifest = self.read_manifest()
        if keys is not None:
            manifest = manifest.join(keys.select("id", "text_sha"), on=["id", "text_sha"])
            ids = keys["id"].to_list()
        if ids is not None:
            manifest = manifest.filter(pl.col("id").is_in(ids))
        latest = manifest.sort("embedded_at").unique("id", keep="last")
        if ids is not None and latest.height < len(set(ids)):
            missing = sorted(set(ids) - set(latest["id"].to_list()))
            raise EmbeddingStoreError(
                f"{len(missing)} id(s) have no embedding in {self.store.uri(self.folder)}, "
                f"e.g. {missing[:3]}; run `sae embed DOMAIN` for a domain that holds them"
            )
        if latest.height == 0:
            return [], np.zeros((0, 0), np.float32)
        latest = latest.sort("id").with_columns(pl.int_range(pl.len()).alias("pos"))
        # Filled one part at a time: the peak is the matrix and one part, not the parts'
        # tables joined and then copied out (4x the matrix, 17 GB at 2.7M x 384).
        x = None
        for rows, v in self.vectors_by_part(latest.select("id", "text_sha", "part", "pos")):
            if x is None:
                x = np.empty((latest.height, v.shape[1]), np.float32)
            x[rows["pos"].to_numpy()] = v
        return latest["id"].to_list(), x

    def vectors_by_part(self, latest: pl.DataFrame) -> Iterator[tuple[pl.DataFrame, np.ndarray]]:
        """Per stored part, the rows of ``latest`` (one per id: ``id``, ``text_sha``,
        ``part`` and any columns of the caller's) found in it and their vectors [r, d]
        float32, a part at a time; an error when the parts hold fewer than it names."""
        given = 0
        for (part,), wanted in latest.group_by("part"):
            rows = (
                self.store.read_parquet(self.part_path(str(part)))
                .join(wanted.drop("part"), on=["id", "text_sha"])
                .unique("id", keep="first")
            )
            given += rows.height
            if rows.height:
                yield rows.drop("vector"), rows["vector"].to_numpy().astype(np.float32, copy=False)
        if given != latest.height:
            raise EmbeddingStoreError(
                f"the parts of {self.store.uri(self.folder)} hold {given} of the "
                f"{latest.height} vectors their manifest names"
            )


def _source(source: str | None) -> dict:
    return {} if source is None else {"source": source}
