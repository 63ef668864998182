"""Embed the papers of a domain that are not embedded yet: one Ray task per shard.

A paper is embedded once per embedder, whatever domain asked for it: a sweep of cs.CV
after one of cs.LG embeds only the cs.CV papers that have no vector yet. The driver plans
shards and writes the manifest; each task embeds its shard and writes one part
atomically, then returns its name. The manifest gains the shard's ids only after the
part is durably written, so a crash loses at most the shards in flight, and their parts
(if written) are adopted by the next run.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import polars as pl

from infra.progress import StageProgress
from infra.retries import WORKER_RETRIES
from infra.store import Store
from tasks.corpus.domains import Domain
from tasks.corpus.storage import CORPUS_DIR, read_papers
from tasks.embed.manifest import MANIFEST_SCHEMA, Namespace, manifest_rows, text_sha

log = logging.getLogger(__name__)


class EmptyCorpusError(ValueError):
    pass


class EmbedFailedError(RuntimeError):
    pass


@dataclass(frozen=True)
class Shard:
    name: str  # the part's file name, derived from its content
    ids: list[str]
    shas: list[str]
    texts: list[str]


@dataclass
class EmbedReport:
    domain: str
    embedder: str
    namespace: str
    papers: int  # in the corpus
    already: int  # embedded before this run (same text)
    adopted: int  # found in parts a crashed run wrote but never recorded
    embedded: int  # by this run
    remaining: int  # still not embedded (--limit)
    shards: int
    seconds: float  # the whole run
    embed_seconds: float  # from the first shard submitted to the last one back (no Ray start)
    run_id: str
    nodes: int = 0  # Ray nodes that embedded this run's shards

    @property
    def rate(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"rate": round(self.rate, 2)}


def paper_texts(papers: pl.DataFrame) -> pl.DataFrame:
    """[id, text, text_sha]: the text each paper is embedded as, and its hash."""
    from tasks.embed.embedders import paper_text

    texts = [paper_text(t, a) for t, a in zip(papers["title"], papers["abstract"], strict=True)]
    return pl.DataFrame(
        {"id": papers["id"], "text": texts, "text_sha": [text_sha(t) for t in texts]}
    )


def pending_papers(texts: pl.DataFrame, manifest: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``texts`` whose exact text is not in the manifest, by id."""
    done = manifest.select("id", "text_sha").unique()
    return texts.join(done, on=["id", "text_sha"], how="anti").sort("id")


def vector_part_name(embedder: str, ids: list[str], shas: list[str]) -> str:
    """A part of vectors is named by what it holds: the same texts, the same name."""
    key = hashlib.sha256(
        "\n".join([embedder, *(f"{i}:{s}" for i, s in zip(ids, shas, strict=True))]).encode()
    ).hexdigest()[:16]
    return f"part-{key}.parquet"


def plan_shards(pending: pl.DataFrame, shard_size: int, embedder: str) -> list[Shard]:
    shards = []
    for start in range(0, pending.height, shard_size):
        chunk = pending.slice(start, shard_size)
        ids, shas = chunk["id"].to_list(), chunk["text_sha"].to_list()
        name = vector_part_name(embedder, ids, shas)
        shards.append(Shard(name, ids, shas, chunk["text"].to_list()))
    return shards


def adopt_orphans(ns: Namespace, manifest: pl.DataFrame, run_id: str) -> pl.DataFrame:
    """Rows for parts that exist but that the manifest does not name (a crash in between)."""
    named = set(manifest["part"].to_list())
    rows = []
    for part in ns.parts():
        if part not in named:
            keys = ns.read_part_keys(part)
            rows.append(
                manifest_rows(keys["id"].to_list(), keys["text_sha"].to_list(), part, run_id)
            )
    return pl.concat(rows) if rows else pl.DataFrame(schema=MANIFEST_SCHEMA)


# Worker side. One embedder per worker process, loaded on its first shard.
_EMBEDDERS: dict[tuple[str, str, str], object] = {}


def embed_shard(
    store_root: str,
    storage_options: dict,
    namespace: str,
    spec: str,
    device: str,
    shard: Shard,
    backend: str = "auto",
    cache_dir: str | None = None,
) -> dict:
    """Embeds one shard and writes its part; returns a small summary, never vectors.

    ``backend`` (``SAE_EMBED_BACKEND``) applies to the bundled MiniLM; the ONNX file it may
    need is exported once per machine into ``cache_dir`` (the driver's ``SAE_CACHE_DIR``).
    """
    from tasks.embed.embedders import make_embedder

    options: dict = {}
    if device == "cpu" and not spec.startswith("openai:"):
        # Ray sets OMP_NUM_THREADS=1 in tasks; the shard owns the CPUs it asked for.
        options["threads"] = _assigned_cpus()
    if spec.strip().lower() == "minilm":
        options |= {"backend": backend, "cache_dir": cache_dir}
    key = (spec, device, backend)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = make_embedder(spec, device=device, **options)
    embedder = _EMBEDDERS[key]
    if embedder.name != namespace:
        raise EmbedFailedError(f"embedder {spec!r} is named {embedder.name!r}, not {namespace!r}")
    start = time.perf_counter()
    vectors = embedder.embed(shard.texts)
    seconds = time.perf_counter() - start
    ns = Namespace(Store(store_root, storage_options), namespace)
    ns.write_part(shard.name, shard.ids, shard.shas, vectors)
    return {
        "node": _node_id(),
        "part": shard.name,
        "n": len(shard.ids),
        "dim": embedder.dim,
        "seconds": seconds,
        "backend": getattr(embedder, "backend", None),
    }


def _assigned_cpus() -> int | None:
    try:
        return max(1, int(_ray_context().get_assigned_resources()["CPU"]))
    except Exception:  # outside a Ray task (a notebook, a test): the embedder's own default
        return None


def _node_id() -> str | None:
    try:
        return _ray_context().get_node_id()
    except Exception:  # outside a Ray task, as _assigned_cpus
        return None


def _ray_context():
    """This task's Ray context; refused outside Ray, where asking Ray for one would start
    a local Ray."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("not in a Ray task")
    return ray.get_runtime_context()


def _resources(cluster: dict[str, float], gpus: float) -> dict:
    from infra.ray_runtime import cpus_per_node

    if cluster.get("GPU", 0) > 0:
        return {"num_gpus": gpus, "num_cpus": 1}
    return {"num_gpus": 0, "num_cpus": cpus_per_node()}


def embed_domain(
    store: Store,
    domain: Domain,
    *,
    settings,
    spec: str | None = None,
    limit: int | None = None,
    up_to: int | None = None,
    run_id: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> EmbedReport:
    """Embeds what is missing for ``domain`` with ``spec`` (default: the settings').

    ``limit``: embed at most this many papers in this run. ``up_to``: stop once this many
    of the domain's papers are embedded (a rerun then embeds nothing).
    """
    import ray

    from infra.ray_runtime import ensure_ray
    from tasks.embed.embedders import embedder_name

    spec = spec or settings.embedder
    run_id = run_id or f"embed-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    name = embedder_name(spec)
    ns = Namespace(store, name)
    t0 = time.perf_counter()

    papers = read_papers(store, domain, columns=["id", "title", "abstract"])
    if papers.is_empty():
        raise EmptyCorpusError(
            f"no papers of {domain.name} under {store.uri(CORPUS_DIR)}; run `sae ingest "
            f"{domain.name} SOURCE` or `sae harvest {domain.name}` first"
        )
    texts = paper_texts(papers)
    ns.compact_manifest()
    manifest = ns.read_manifest()
    already = texts.height - pending_papers(texts, manifest).height
    adopted = adopt_orphans(ns, manifest, run_id).join(
        texts.select("id", "text_sha"), on=["id", "text_sha"], how="semi"
    )
    if adopted.height:
        log.info("adopting %d embeddings from parts a previous run did not record", adopted.height)
        ns.append_manifest(adopted)
        manifest = pl.concat([manifest, adopted])
    pending = pending_papers(texts, manifest)
    total_pending = pending.height
    if total_pending and ns.imported():
        # Vectors from elsewhere: ours would not be the same space, whatever the name.
        log.warning(
            "%d paper(s) of %s have no vector in %s, whose vectors were imported; "
            "`sae import-vectors` theirs to include them",
            total_pending,
            domain.name,
            store.uri(ns.folder),
        )
        pending = pending.head(0)
    if limit is not None:
        pending = pending.head(limit)
    if up_to is not None:
        pending = pending.head(max(0, up_to - (texts.height - total_pending)))
    shards = plan_shards(pending, settings.embed_shard_size, name)
    log.info(
        "%s %s: %d papers, %d pending, %d shard(s)",
        name,
        domain.name,
        papers.height,
        total_pending,
        len(shards),
    )

    embedded = 0
    embed_seconds = 0.0
    nodes: set[str] = set()
    failures: list[str] = []
    if shards:
        store.check_writable()
        cluster = ensure_ray(settings)
        opts = _resources(cluster, settings.embed_gpus)
        # With a GPU share, the node that runs the shard resolves the device (as a pack
        # does): "auto" is the GPU Ray gave it when torch sees one there.
        device = settings.device if opts["num_gpus"] > 0 else "cpu"
        # A shard whose worker dies runs again; one that raises is reported below.
        task = ray.remote(embed_shard).options(max_retries=WORKER_RETRIES, **opts)
        t_submit = time.perf_counter()
        refs = {
            task.remote(
                store.root,
                store.storage_options,
                name,
                spec,
                device,
                shard,
                settings.embed_backend,
                str(settings.cache_root),
            ): shard
            for shard in shards
        }
        if on_progress:
            on_progress(0, pending.height)
        with StageProgress(f"embedding {domain.name}", pending.height, "papers") as shown:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                shard = refs.pop(done[0])
                try:
                    result = ray.get(done[0])
                except Exception as exc:
                    failures.append(f"{shard.name} ({len(shard.ids)} papers): {_root_cause(exc)}")
                    continue
                ns.check_embedder(spec, result["dim"])
                ns.append_manifest(manifest_rows(shard.ids, shard.shas, shard.name, run_id))
                embedded += result["n"]
                nodes.add(result["node"])
                log.debug(
                    "%s: %d papers in %.1f s (%s)",
                    shard.name,
                    result["n"],
                    result["seconds"],
                    result["backend"] or spec,
                )
                shown.update(embedded, backend=result["backend"] or spec)
                if on_progress:
                    on_progress(embedded, pending.height)
        embed_seconds = time.perf_counter() - t_submit

    report = EmbedReport(
        domain=domain.name,
        embedder=name,
        namespace=store.uri(ns.folder),
        papers=papers.height,
        already=already,
        adopted=adopted.height,
        embedded=embedded,
        remaining=total_pending - embedded,
        shards=len(shards),
        seconds=time.perf_counter() - t0,
        embed_seconds=embed_seconds,
        run_id=run_id,
        nodes=len(nodes),
    )
    if failures:
        raise EmbedFailedError(
            f"{len(failures)} of {len(shards)} shard(s) failed (the rest are recorded; "
            "rerun to retry): " + "; ".join(failures)
        )
    return report


def _root_cause(exc: Exception) -> str:
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {cause}"
