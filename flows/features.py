"""The ``features`` flow: cells of a finished sweep -> codes, cards, labels, families, page.

Per domain: find the sweep in MLflow (the newest finished one unless named), choose its
cells (the champion and, per k, the largest n by default), analyse each unanalysed cell
as one Ray task (codes of the snapshot's papers, cards, offline labels with held-out
scores, families, arXiv category probes, the browser page, all stored next to the cell),
then log each cell's label, family and probe metrics on its run and its page (and the
probes' F1 against k, ``plots/probes_vs_k.png``) on the sweep's parent run. Beside them:
how features split across n at each k, and, when an earlier sweep of the domain ran on
other data, how the champion's features compare with the previous champion's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from infra.prefect_names import artifact_key
from infra.settings import get_settings
from infra.tracking import mlflow_client
from tasks.features.locate import (
    choose_cells,
    find_sweep,
    previous_sweep,
    require_label_api,
)
from tasks.features.params import FeaturesParams
from tasks.features.steps import (
    analyse_cells,
    cell_jobs,
    lineage_report,
    llm_labels_task,
    plot_probes,
    record_cell,
    record_reports,
    splitting_report,
)
from tasks.layout import open_store


@dataclass
class DomainFeatures:
    domain: str
    sweep_id: str
    parent_run_id: str
    cells: dict[str, dict] = field(default_factory=dict)  # cell -> summary
    pages: dict[str, str] = field(default_factory=dict)  # cell -> store URI of its page
    splitting: dict = field(default_factory=dict)
    lineage: dict | None = None


@flow(name="features")
def features(params: FeaturesParams = FeaturesParams()) -> list[DomainFeatures]:  # noqa: B008
    """Cards, labels, families and a browser page for chosen cells of a finished sweep."""
    logger = get_run_logger()
    settings = get_settings()
    store = open_store(settings)
    client = mlflow_client(settings)
    if params.llm_labels:
        require_label_api(settings)
    out = []
    for domain in params.domains:
        info = find_sweep(client, domain, params.sweep)
        cells = choose_cells(info, params.cells)
        logger.info(
            "%s: sweep %s, cells %s", domain, info.sweep_id, ", ".join(c.cell for c in cells)
        )
        versions = _versions(client, info, cells)
        jobs = cell_jobs(store, info, cells, versions, params.clean_rule())
        results = analyse_cells(jobs)
        if params.llm_labels:
            for job in jobs:
                results[job.cell] = {
                    **results[job.cell],
                    "summary": llm_labels_task(job, params.llm_labels),
                }
        result = DomainFeatures(domain, info.sweep_id, info.parent_run_id)
        for cell, job in zip(cells, jobs, strict=True):
            record_cell(info, cell, results[cell.cell], job.features_folder())
            result.cells[cell.cell] = results[cell.cell]["summary"]
            result.pages[cell.cell] = store.uri(f"{job.features_folder()}/browser.html")
        result.splitting = splitting_report(info)
        prev = previous_sweep(client, info)
        if prev is not None and info.champion is not None:
            result.lineage = lineage_report(info, prev)
        record_reports(info, result.splitting, result.lineage)
        plot_probes(info, result.cells)
        create_markdown_artifact(
            markdown=_markdown(result),
            key=artifact_key(f"features-{info.sweep_id}"),
            description=f"features of sweep {info.sweep_id}",
        )
        out.append(result)
    return out


def _versions(client, info, cells) -> dict[str, str]:
    """cell -> ``sae-cs.LG-k64-n3072/2``, the registered version of the cell's run."""
    found = {}
    for c in cells:
        for v in client.search_model_versions(f"run_id = '{c.run_id}'"):
            found[c.cell] = f"{v.name}/{v.version}"
    return found


def _markdown(r: DomainFeatures) -> str:
    lines = [f"## Features of sweep {r.sweep_id} ({r.domain})", ""]
    lines += [
        "| cell | live | label F1 mean | F1 >= 0.8 | families | probe F1 k=1 / 16 | dense | page |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for cell, s in r.cells.items():
        lines.append(
            f"| {cell} | {s.get('live_features')} | {s.get('label_f1_mean')} | "
            f"{s.get('label_f1_ge_0_8')} | {s.get('families')} | {s.get('probe_f1_k1_mean')} / "
            f"{s.get('probe_f1_k16_mean')} | {s.get('dense_probe_f1_mean')} | {r.pages[cell]} |"
        )
    if r.lineage:
        lines += ["", f"Lineage against {r.lineage['previous_champion']}: {r.lineage['counts']}"]
    return "\n".join(lines) + "\n"
