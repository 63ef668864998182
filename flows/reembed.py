"""The ``reembed`` flow: new arXiv papers of one domain -> corpus -> embeddings -> watermark.

Harvest since the domain's watermark (without moving it), validate into the corpus and
the quarantine, embed only the papers that have no vector (one Ray task per shard), and
move the watermark only once the vectors are in the store. A crash anywhere before that
leaves the watermark where it was; a rerun finishes the job without duplicates. One run
per domain at a time (a lease in the store; see :mod:`tasks.reembed`): a second one waits
``wait_s`` at most, then ends Cancelled, naming the run that holds the lease.

Each run leaves its summary (new / duplicate / rejected / embedded) as a Prefect markdown
artifact and as a small MLflow run (``run_kind=reembed``) in the domain's experiment,
also when it fails. The steps are in :mod:`tasks.reembed`; the steps' own errors
(``HarvestError``, ``WatermarkError``, ``EmbedFailedError``...) propagate unchanged.
"""

from __future__ import annotations

import logging
import time
from datetime import date

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Cancelled, State

from infra.prefect_names import artifact_key
from infra.settings import get_settings
from tasks.corpus.domains import get_domain
from tasks.embed.embedders import embedder_name
from tasks.layout import open_store
from tasks.reembed import ReembedBusyError, ReembedParams, acquire_lease
from tasks.reembed.steps import (
    embed_new,
    harvest_new,
    move_watermark,
    record_summary,
    summary_markdown,
)

log = logging.getLogger(__name__)


@flow(name="reembed")
def reembed(params: ReembedParams) -> dict | State:
    """Harvest one domain's new arXiv papers, embed them, then move its watermark."""
    logger = get_run_logger()
    settings = get_settings()
    store = open_store(settings)
    dom = get_domain(params.domain)
    spec = params.embedder or settings.embedder
    name = embedder_name(spec)  # a bad SAE_EMBEDDER fails here, before the lease
    run_id = flow_run.id or None
    try:
        lease = acquire_lease(store, dom, wait_s=params.wait_s, label=f"flow run {run_id}")
    except ReembedBusyError as exc:
        logger.warning("%s", exc)
        create_markdown_artifact(
            markdown=f"## Re-embed {dom.name}: skipped\n\n{exc}\n",
            key=artifact_key(f"reembed-{dom.slug}"),
            description=f"re-embed of {dom.name} skipped: another run holds the lease",
        )
        return Cancelled(message=str(exc))

    summary: dict = {
        "domain": dom.name,
        "source": params.source,
        "since": params.since.isoformat() if params.since else None,
        "until": params.until.isoformat() if params.until else None,
        "embedder": name,
        "limit": params.limit,
        "status": "running",
    }
    t0 = time.perf_counter()
    with lease.held():
        try:
            harvested = harvest_new(
                dom.name, params.since, params.until, params.source, params.limit
            )
            summary.update(harvested)
            logger.info(
                "%s %s..%s: %d new, %d duplicate, %d rejected",
                dom.name,
                harvested["since"],
                harvested["until"],
                harvested["new"],
                harvested["duplicate"],
                harvested["rejected"],
            )
            lease.check()
            summary.update(embed_new(dom.name, spec))
            logger.info("%s: %d embedded with %s", dom.name, summary["embedded"], spec)
            lease.check()
            summary.update(
                move_watermark(
                    dom.name,
                    date.fromisoformat(harvested["since"]),
                    date.fromisoformat(harvested["until"]),
                    spec,
                    lease.owner,
                )
            )
            summary["status"] = "ok"
        except Exception as exc:
            summary["status"] = "failed"
            summary["error"] = f"{type(exc).__name__}: {exc}"
            summary["seconds"] = round(time.perf_counter() - t0, 3)
            _record(summary, run_id, logger)
            raise
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary.update(_record(summary, run_id, logger))
    logger.info("%s", summary_markdown(summary))
    return summary


def _record(summary: dict, run_id: str | None, logger) -> dict:
    """The artifact and the MLflow run; a tracking failure is reported, not fatal: the
    papers, vectors and watermark are in the store already."""
    try:
        return record_summary(summary, run_id)
    except Exception as exc:
        logger.error("could not record the summary of this re-embed: %s", exc)
        return {"tracking_error": f"{type(exc).__name__}: {exc}"}
