"""The re-embed flow's steps (thin Prefect tasks) and its summary.

The flow (``flows/reembed.py``) orders the steps:

1. :func:`harvest_new`: harvest the domain since its watermark (arXiv API or OAI-PMH),
   validating into the corpus and the quarantine, *without* moving the watermark.
2. :func:`embed_new`: embed every corpus paper whose exact text has no vector yet in the
   embedder's namespace (:func:`tasks.embed.run.embed_domain`, one Ray task per shard).
3. :func:`move_watermark`: read the manifest back from the store, check that every paper
   of the harvest window has its vector there, and only then move the watermark to the
   newest of them.
4. :func:`record_summary`: a Prefect markdown artifact and a small MLflow run.

A crash anywhere before step 3 leaves the watermark where it was; a rerun harvests the
same window again (the papers come back as duplicates), embeds only what is missing,
and moves the watermark then.
"""

from __future__ import annotations

import logging
import time
from datetime import date
from typing import Any

import polars as pl
from mlflow.entities import Metric, Param, RunTag
from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE as NO_CACHE

from infra.prefect_names import artifact_key
from infra.settings import get_settings
from infra.store import Store
from infra.tracking import ensure_experiment, mlflow_client
from tasks.corpus.domains import Domain, get_domain
from tasks.corpus.harvest import HarvestConfig, HarvestStats
from tasks.corpus.ingest import harvest, harvest_window
from tasks.corpus.storage import WatermarkError, read_papers, read_watermark, write_watermark
from tasks.embed.embedders import embedder_name
from tasks.embed.manifest import Namespace
from tasks.embed.run import EmptyCorpusError, embed_domain, paper_texts, pending_papers
from tasks.layout import open_store
from tasks.reembed.lease import ReembedIncompleteError, check_owner

log = logging.getLogger(__name__)


def _store() -> Store:
    return open_store(get_settings())


@task(name="harvest-new", cache_policy=NO_CACHE)
def harvest_new(
    domain: str, since: date | None, until: date | None, source: str, limit: int | None
) -> dict:
    """Harvest and validate the window's papers into the corpus; the watermark stays put.

    Raises WatermarkError (naming the file) for a corrupt or future watermark, and
    HarvestError once the endpoint's retries are spent; what arrived before is kept.
    """

    settings = get_settings()
    store, dom = _store(), get_domain(domain)
    config = HarvestConfig.from_settings(settings)
    if since is None:
        before = read_watermark(store, dom)  # a corrupt or future one stops the run here
    else:
        try:
            before = read_watermark(store, dom)
        except WatermarkError:  # an explicit since gets past it; the move replaces it
            before = None
    since, until = harvest_window(store, dom, since, until)
    stats = HarvestStats()
    report = harvest(
        store,
        dom,
        since=since,
        until=until,
        source=source,
        config=config,
        limit=limit,
        move_watermark=False,
        stats=stats,
    )
    c = report.counts
    log.info("%s", report.summary())
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "watermark_before": before.newest.isoformat() if before else None,
        "read": c.get("read", 0),
        "new": c.get("accepted", 0),
        "duplicate": c.get("duplicate", 0),
        "rejected": c.get("rejected", 0),
        "other_domain": c.get("other_domain", 0),
        "requests": stats.requests,
        "retries": stats.retries,
        "papers_uri": report.papers_uri,
        "quarantine_uri": report.quarantine_uri,
    }


# No Prefect retries: the store, the embeddings client and Ray have retried what may
# pass (infra.retries); failed shards are left for the next run, the rest is recorded.
@task(name="embed-new", cache_policy=NO_CACHE)
def embed_new(domain: str, embedder: str) -> dict:
    """Embed the corpus papers without a vector for this exact text (one Ray task per shard)."""

    settings = get_settings()
    store, dom = _store(), get_domain(domain)
    progress: dict[str, Any] = {}

    def on_progress(done: int, total: int) -> None:
        if total <= 0:
            return
        if "id" not in progress:
            progress["id"] = create_progress_artifact(
                progress=0.0, description=f"{domain}: papers embedded of {total}"
            )
        update_progress_artifact(progress["id"], 100.0 * done / total)

    try:
        report = embed_domain(store, dom, settings=settings, spec=embedder, on_progress=on_progress)
    except EmptyCorpusError:  # a first run over an empty window: nothing to embed
        return {"embedder": embedder_name(embedder), "embedded": 0, "papers": 0, "shards": 0}
    return {
        "embedder": report.embedder,
        "namespace": report.namespace,
        "papers": report.papers,
        "already": report.already,
        "adopted": report.adopted,
        "embedded": report.embedded,
        "shards": report.shards,
        "embed_seconds": round(report.embed_seconds, 3),
    }


@task(name="move-watermark", cache_policy=NO_CACHE)
def move_watermark(domain: str, since: date, until: date, embedder: str, lease_owner: str) -> dict:
    """Moves the watermark to the newest paper of the window, once all have their vectors.

    The vectors are checked in the manifest as read back from the store (what a reader
    and the next sweep will see), not in what the embed step reported.
    """

    store, dom = _store(), get_domain(domain)
    check_owner(store, dom, lease_owner)
    name = embedder_name(embedder)
    papers = read_papers(store, dom).filter(pl.col("published").is_between(since, until))
    if papers.is_empty():
        return {"watermark": _current_mark(store, dom), "moved": False}
    missing = pending_papers(paper_texts(papers), Namespace(store, name).read_manifest())
    if missing.height:
        raise ReembedIncompleteError(
            f"{missing.height} paper(s) of {domain} in {since}..{until} have no {name} vector "
            f"yet (e.g. {missing['id'].head(3).to_list()}); the watermark stays where it was. "
            "Rerun to embed them"
        )
    newest = papers["published"].max()
    before = _current_mark(store, dom)
    mark = write_watermark(store, dom, newest)
    return {"watermark": mark.newest.isoformat(), "moved": mark.newest.isoformat() != before}


def _current_mark(store: Store, dom: Domain) -> str | None:

    try:
        mark = read_watermark(store, dom)
    except WatermarkError:
        return None
    return mark.newest.isoformat() if mark else None


# --- the summary ----------------------------------------------------------------------------

#: Counted in every summary, and logged as MLflow metrics of the re-embed run.
COUNTS = ("new", "duplicate", "rejected", "embedded")


def summary_markdown(summary: dict) -> str:
    s = summary
    status = s.get("status", "?")
    lines = [
        f"## Re-embed {s['domain']}: {status}",
        "",
        f"arXiv {s.get('source')} {s.get('since') or '?'}..{s.get('until') or '?'}, "
        f"embedder `{s.get('embedder')}`",
        "",
        "| new | duplicate | rejected | other domains | embedded | adopted |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {s.get('new', 0)} | {s.get('duplicate', 0)} | {s.get('rejected', 0)} | "
        f"{s.get('other_domain', 0)} | {s.get('embedded', 0)} | {s.get('adopted', 0)} |",
        "",
        f"watermark: {s.get('watermark_before') or 'none'} -> "
        f"{s.get('watermark') or s.get('watermark_before') or 'none'}",
    ]
    for key, label in (
        ("quarantine_uri", "rejected records and reasons"),
        ("namespace", "vectors"),
    ):
        if s.get(key):
            lines.append(f"\n{label}: `{s[key]}`")
    if s.get("error"):
        lines.append(f"\nerror: {s['error']}")
    return "\n".join(lines) + "\n"


@task(name="record-summary", cache_policy=NO_CACHE)
def record_summary(summary: dict, flow_run_id: str | None = None) -> dict:
    """The summary as a Prefect markdown artifact and a small MLflow run in the domain's
    experiment (tags run_kind=reembed and domain; the counts as metrics)."""

    dom = get_domain(summary["domain"])
    settings = get_settings()
    create_markdown_artifact(
        markdown=summary_markdown(summary),
        key=artifact_key(f"reembed-{dom.slug}"),
        description=f"re-embed of {dom.name}: new / duplicate / rejected / embedded",
    )
    client = mlflow_client(settings)
    experiment_id = ensure_experiment(
        client, settings, dom.name, dom.slug, str(summary.get("embedder"))
    )
    tags = {
        "run_kind": "reembed",
        "domain": dom.name,
        "status": summary.get("status", "?"),
        "embedder": str(summary.get("embedder")),
    }
    if flow_run_id:
        tags["prefect_flow_run_id"] = flow_run_id
    run = client.create_run(
        experiment_id, run_name=f"reembed-{summary.get('until') or 'now'}", tags=tags
    )
    run_id = run.info.run_id
    stamp = int(time.time() * 1000)
    params = {
        k: str(summary.get(k) if summary.get(k) is not None else "none")
        for k in ("since", "until", "source", "embedder", "limit")
    }
    metrics = [Metric(k, float(summary.get(k) or 0), stamp, 0) for k in COUNTS]
    metrics += [
        Metric(k, float(summary[k]), stamp, 0)
        for k in ("other_domain", "adopted", "requests", "retries", "seconds")
        if isinstance(summary.get(k), int | float)
    ]
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag("watermark", str(summary.get("watermark") or "unchanged"))],
    )
    if summary.get("error"):
        client.set_tag(run_id, "error", str(summary["error"])[:5000])
    client.set_terminated(run_id, "FINISHED" if summary.get("status") == "ok" else "FAILED")
    return {"mlflow_run_id": run_id, "experiment_id": experiment_id}
