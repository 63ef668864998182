"""Vectors someone else computed, brought into the store as if embedded here.

``sae import-vectors DOMAIN FILE --embedder SPEC``: FILE is a parquet file with ``id`` and
``vector`` (a list of floats), or an ``.npy`` matrix [N, d] with its ids beside it (a text
file, one id a line, or a parquet file with an ``id`` column). The rows land in the
embedder's namespace as parts and manifest rows like any shard's, with the text hash of
each paper's current text, so snapshots, sweeps, features and search take them as they
are. The papers must be in the corpus, as papers of DOMAIN.

Read in batches (``BATCH`` rows: the matrix is memory-mapped, the parquet file read a row
group at a time), each batch written as one vector part, then one manifest part that
commits it: a crash leaves no row that names a missing vector, and a rerun skips what a
finished batch imported. Rows that cannot be taken are kept with their reason in
``embeddings/{embedder}/_quarantine/``: an id that is no paper of DOMAIN, a vector of
another length than the file's, a non-finite or zero vector, an id the file gives twice.

A namespace made by an import is never embedded into (``_embedder.json`` says
``"source": "import"``): its vectors came from elsewhere, and a paper without one stays
out of the snapshots until its vector is imported too. Search embeds the query with the
SPEC given here, so it must be the embedder that made the vectors.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from infra.store import Store
from tasks.corpus.domains import Domain
from tasks.corpus.records import QUARANTINE_SCHEMA
from tasks.corpus.storage import in_domain, newest_versions, papers_by_id, write_quarantine
from tasks.corpus.text import normalise_id
from tasks.embed.manifest import EmbeddingStoreError, Namespace, manifest_rows
from tasks.embed.run import paper_texts, vector_part_name

log = logging.getLogger(__name__)

#: Rows per batch (one vector part and one manifest part each): 64k x 1536 floats is
#: 400 MB, the most a batch holds at once.
BATCH = 65_536


class ImportVectorsError(ValueError):
    """The file as a whole cannot be imported; the message names what and why."""


@dataclass
class ImportReport:
    domain: str
    embedder: str
    namespace: str
    dim: int = 0
    read: int = 0
    imported: int = 0
    already: int = 0  # the same text's vector was there (a rerun)
    rejected: int = 0
    parts: int = 0
    quarantine_uri: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = (
            f"{self.domain} / {self.embedder}: {self.imported} imported, {self.already} "
            f"already there, {self.rejected} rejected (of {self.read} read; {self.dim}-d)"
        )
        for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]):
            text += f"\n  {n} {reason}"
        if self.quarantine_uri:
            text += f"\n  rejected rows and reasons: {self.quarantine_uri}"
        return text + f"\n  vectors: {self.namespace}"


def import_vectors(
    store: Store,
    domain: Domain,
    source: str | Path,
    spec: str,
    *,
    ids_file: str | Path | None = None,
    batch: int = BATCH,
) -> ImportReport:
    """Imports ``source`` into ``spec``'s namespace; ImportVectorsError for a file that
    cannot be read, EmbeddingStoreError for one of another dimension than the namespace's."""
    from tasks.embed.embedders import embedder_name

    name = embedder_name(spec)
    ns = Namespace(store, name)
    source, ids_file = Path(source), None if ids_file is None else Path(ids_file)
    # Which of two vectors given for one id is the paper's cannot be told: both go.
    repeated = _repeated_ids(source, ids_file)
    batches = _batches(source, ids_file, batch)
    keys = in_domain(newest_versions(store), domain).select("id")
    done = ns.read_manifest().select("id", "text_sha").unique()
    report = ImportReport(domain.name, name, store.uri(ns.folder))
    run_id = f"import-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    dim: int | None = (ns.recorded() or {}).get("dim")
    for start, ids, vectors in batches:
        if dim is None:
            dim = _first_dim(vectors)
        if dim is not None:
            _check_dim(ns, dim, vectors)
        report.read += len(ids)
        good, bad = _check_rows(ids, vectors, dim, start, repeated, keys, domain)
        # Each batch's rejects are kept before its rows go in: a crash loses neither.
        _quarantine(store, ns, bad, str(source), report)
        if good:
            _write(store, ns, spec, good, dim, done, run_id, report)
    report.dim = dim or 0
    return report


def _batches(source: Path, ids_file: Path | None, batch: int) -> Iterator[tuple[int, list, list]]:
    """(first row, ids, vectors) per batch; vectors as lists or rows of a matrix."""
    if not source.is_file():
        raise ImportVectorsError(f"{source} is not a file")
    if source.suffix == ".parquet":
        yield from _parquet_batches(source, batch)
    elif source.suffix == ".npy":
        if ids_file is None:
            raise ImportVectorsError(f"{source} is a matrix: name its ids with --ids FILE")
        yield from _npy_batches(source, _read_ids(ids_file), batch)
    else:
        raise ImportVectorsError(
            f"{source}: a parquet file (id, vector) or an .npy matrix with --ids is needed"
        )


def _repeated_ids(source: Path, ids_file: Path | None) -> set[str]:
    """The ids the file gives more than once (a first pass over the ids alone)."""
    if source.suffix == ".parquet" and source.is_file():
        try:
            ids = pl.read_parquet(source, columns=["id"])["id"].cast(pl.String)
        except Exception:
            return set()  # the batches say what is wrong with the file
    elif ids_file is not None and ids_file.is_file():
        ids = pl.Series("id", _read_ids(ids_file), dtype=pl.String)
    else:
        return set()
    counts = ids.drop_nulls().value_counts()
    return set(counts.filter(pl.col("count") > 1)["id"].to_list())


def _parquet_batches(source: Path, batch: int) -> Iterator[tuple[int, list, list]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(source)
    except Exception as exc:
        raise ImportVectorsError(f"{source} is not a readable parquet file: {exc}") from exc
    missing = {"id", "vector"} - set(pf.schema_arrow.names)
    if missing:
        raise ImportVectorsError(
            f"{source} has no column {', '.join(sorted(missing))} (it has "
            f"{', '.join(pf.schema_arrow.names)}); it needs id and vector"
        )
    start = 0
    for rb in pf.iter_batches(batch_size=batch, columns=["id", "vector"]):
        ids = [None if i is None else str(i) for i in rb.column("id").to_pylist()]
        yield start, ids, rb.column("vector").to_pylist()
        start += len(ids)


def _npy_batches(source: Path, ids: list[str], batch: int) -> Iterator[tuple[int, list, list]]:
    try:
        matrix = np.load(source, mmap_mode="r")
    except Exception as exc:
        raise ImportVectorsError(f"{source} is not a readable .npy file: {exc}") from exc
    if matrix.ndim != 2:
        raise ImportVectorsError(f"{source} holds a {matrix.ndim}-d array, not a matrix [N, d]")
    if matrix.shape[0] != len(ids):
        raise ImportVectorsError(
            f"{source} has {matrix.shape[0]} rows but its ids file {len(ids)} ids"
        )
    for start in range(0, len(ids), batch):
        rows = np.asarray(matrix[start : start + batch], dtype=np.float32)
        yield start, ids[start : start + batch], list(rows)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise ImportVectorsError(f"ids file {path} is not a file")
    if path.suffix == ".parquet":
        return pl.read_parquet(path, columns=["id"])["id"].cast(pl.String).to_list()
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _first_dim(vectors: list) -> int | None:
    return next((len(v) for v in vectors if v is not None and len(v) > 0), None)


def _check_dim(ns: Namespace, dim: int, vectors: list) -> None:
    """The file's vectors (the most common length among the first batch's) against the
    namespace's dimension: another one is refused whole, naming both."""
    lengths = [len(v) for v in vectors if v is not None]
    if not lengths:
        return
    common = max(set(lengths), key=lengths.count)
    if common != dim:
        raise EmbeddingStoreError(
            f"the vectors are {common}-d, but {ns.store.uri(ns.folder)} holds {dim}-d "
            f"vectors of {ns.embedder}: import them under the embedder that made them"
        )


def _check_rows(ids, vectors, dim, start, repeated, keys, domain) -> tuple[list, list]:
    """(good rows (id, vector), rejected rows) of one batch."""
    known = set(keys.join(pl.DataFrame({"id": [i for i in ids if i]}), on="id", how="semi")["id"])
    good, bad = [], []
    for row, (raw_id, vector) in enumerate(zip(ids, vectors, strict=True), start + 1):
        reason, arxiv_id = _row_problem(raw_id, vector, dim, known, domain)
        if reason is None and raw_id in repeated:
            reason = "id given more than once in the file"
        if reason is None:
            good.append((arxiv_id, np.asarray(vector, dtype=np.float32)))
        else:
            bad.append({"id": arxiv_id or raw_id, "reason": reason, "location": f"row {row}",
                        "raw": _preview(vector)})  # fmt: skip
    return good, bad


def _row_problem(raw_id, vector, dim, known, domain) -> tuple[str | None, str | None]:
    if not raw_id:
        return "id missing", None
    try:
        arxiv_id = normalise_id(raw_id)
    except ValueError as exc:
        return f"id {exc}", None
    if vector is None or len(vector) != dim:
        n = 0 if vector is None else len(vector)
        return f"vector has {n} values, the file's others {dim}", arxiv_id
    values = np.asarray(vector, dtype=np.float64)
    if not np.isfinite(values).all():
        return "vector holds NaN or infinity", arxiv_id
    if not values.any():
        return "vector is all zeros", arxiv_id
    if arxiv_id not in known:
        return f"not a paper of {domain.name} in the corpus (ingest it first)", arxiv_id
    return None, arxiv_id


def _write(store, ns, spec, good, dim, done, run_id, report) -> None:
    ids = [i for i, _ in good]
    texts = paper_texts(papers_by_id(store, ids, columns=["id", "title", "abstract"]))
    sha = dict(zip(texts["id"], texts["text_sha"], strict=True))
    fresh = pl.DataFrame({"id": ids, "text_sha": [sha[i] for i in ids]}).join(
        done, on=["id", "text_sha"], how="anti"
    )
    report.already += len(ids) - fresh.height
    if fresh.is_empty():
        return
    keep = set(fresh["id"])
    rows = [(i, v) for i, v in good if i in keep]
    shas = [sha[i] for i, _ in rows]
    part = vector_part_name(ns.embedder, [i for i, _ in rows], shas)
    ns.check_embedder(spec, dim, source="import")  # the dimension was checked above
    ns.write_part(part, [i for i, _ in rows], shas, np.stack([v for _, v in rows]))
    # The manifest part commits the batch: written only once its vectors are.
    ns.append_manifest(manifest_rows([i for i, _ in rows], shas, part, run_id))
    report.imported += len(rows)
    report.parts += 1


def _quarantine(store: Store, ns: Namespace, rows: list[dict], source: str, report) -> None:
    report.rejected += len(rows)
    for row in rows:
        kind = _reason_kind(row["reason"])
        report.reasons[kind] = report.reasons.get(kind, 0) + 1
    folder = f"{ns.folder}/_quarantine"
    df = pl.DataFrame([{**r, "source": source} for r in rows], schema=QUARANTINE_SCHEMA)
    if write_quarantine(store, df, folder):
        report.quarantine_uri = store.uri(folder)


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0] if reason.startswith("not a paper") else reason.split(",")[0]


def _preview(vector) -> str:
    if vector is None:
        return ""
    values = list(vector[:8])
    return (
        "[" + ", ".join(f"{float(v):.4g}" for v in values) + (", ...]" if len(vector) > 8 else "]")
    )
