"""Which papers are embedded, by which embedder, in which part: the embeddings' layout.

    embeddings/{embedder}/{slug}/part-{shard}.parquet   id, text_sha, vector (FixedSizeList f32)
    embeddings/{embedder}/{slug}/_manifest.parquet      id, text_sha, part, run_id, embedded_at
    embeddings/{embedder}/{slug}/_embedder.json         name, spec, dim

A paper counts as embedded when the manifest holds its id with the hash of the exact
text that was embedded, so a revised abstract is embedded again and nothing else is.
The manifest is written after the part it names, so it never points at a missing file;
a part the manifest does not name yet (a crash in between) is adopted on the next run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from infra.store import Store
from tasks.corpus.domains import Domain

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "text_sha": pl.String(),
    "part": pl.String(),
    "run_id": pl.String(),
    "embedded_at": pl.Datetime("us", "UTC"),
}


class EmbeddingStoreError(ValueError):
    pass


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Namespace:
    """The folder of one embedder's vectors for one domain."""

    store: Store
    embedder: str
    domain: Domain

    @property
    def folder(self) -> str:
        return f"embeddings/{self.embedder}/{self.domain.slug}"

    @property
    def manifest_path(self) -> str:
        return f"{self.folder}/_manifest.parquet"

    def part_path(self, name: str) -> str:
        return f"{self.folder}/{name}"

    def read_manifest(self) -> pl.DataFrame:
        try:
            return self.store.read_parquet(self.manifest_path).cast(MANIFEST_SCHEMA)
        except FileNotFoundError:
            return pl.DataFrame(schema=MANIFEST_SCHEMA)

    def write_manifest(self, manifest: pl.DataFrame) -> None:
        self.store.write_parquet(
            self.manifest_path, manifest.select(list(MANIFEST_SCHEMA)).sort("id", "embedded_at")
        )

    def check_embedder(self, spec: str, dim: int) -> None:
        """Refuses to mix vectors of two dimensions under one name; records the first."""
        rel = f"{self.folder}/_embedder.json"
        try:
            seen = self.store.read_json(rel)
        except FileNotFoundError:
            self.store.write_json(rel, {"name": self.embedder, "spec": spec, "dim": dim})
            return
        if seen.get("dim") != dim:
            raise EmbeddingStoreError(
                f"{self.store.uri(self.folder)} holds {seen.get('dim')}-d vectors of "
                f"{seen.get('spec')!r}; embedder {spec!r} gives {dim}-d. Give it another name."
            )

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
                f"e.g. {missing[:3]}; run `sae embed {self.domain.name}` first"
            )
        frames = []
        for part, keys in latest.group_by("part"):
            df = self.store.read_parquet(self.part_path(str(part[0])))
            frames.append(df.join(keys.select("id", "text_sha"), on=["id", "text_sha"]))
        if not frames:
            return [], np.zeros((0, 0), np.float32)
        table = pl.concat(frames).sort("id")
        return table["id"].to_list(), table["vector"].to_numpy().astype(np.float32, copy=False)
