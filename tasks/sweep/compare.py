"""Sweep results as MLflow holds them: one markdown table across domains and sweeps.

The scheme (written by the sweep flow): one experiment per domain named
``arxiv-sae/{domain}``; a parent run per sweep (``run_kind=sweep``) and a child run
per cell (``run_kind=cell``), both tagged ``sweep_id`` and ``domain``; each child has
params ``k`` and ``n_latents`` and the final held-out metrics as MLflow metrics.
A cell whose tag ``champion`` is ``"true"`` is marked in the table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from infra.tracking import EXPERIMENT_PREFIX, experiment_name
from sae.metrics import METRIC_NAMES
from tasks.corpus.domains import canonical_name
from tasks.sweep.results import results_table

# nmse, log_feature_density, act_mean, dead_fraction: EvalMetrics lists these four first;
# ``metrics=METRIC_NAMES`` adds the rest.
DEFAULT_METRICS = METRIC_NAMES[:4]
#: What the features flow logs on a cell's run (its label's and its category probes'
#: held-out F1, :mod:`tasks.features.probing`): a table shows each some cell has.
FEATURE_METRICS = (
    "label_f1_mean",
    "label_embed_f1_mean",
    "probe_single_f1_mean",
    "probe_f1_k1_mean",
    "probe_f1_k16_mean",
    "dense_probe_f1_mean",
)

_PAGE = 1000


def _client(client_or_tracking_uri):
    if isinstance(client_or_tracking_uri, str):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=client_or_tracking_uri)
    return client_or_tracking_uri


def _where(client) -> str:
    from infra.settings import mask_url

    return mask_url(str(getattr(client, "tracking_uri", "") or "(the default tracking URI)"))


def _quote(value: str) -> str:
    """A string literal for an MLflow filter."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot filter MLflow runs on a value with both quote kinds: {value!r}")


def _experiments(client, domains: Sequence[str] | None) -> list:
    if domains is not None:
        found = [client.get_experiment_by_name(experiment_name(d)) for d in domains]
        return [e for e in found if e is not None and e.lifecycle_stage == "active"]
    experiments, token = [], None
    while True:
        page = client.search_experiments(
            filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'", max_results=_PAGE, page_token=token
        )
        experiments += [e for e in page if e.name.startswith(EXPERIMENT_PREFIX)]
        token = page.token
        if not token:
            return experiments


def _search(client, experiment_ids: list[str], filter_string: str, order_by=None, limit=None):
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=min(_PAGE, limit) if limit else _PAGE,
            order_by=order_by,
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token or (limit and len(runs) >= limit):
            return runs[:limit] if limit else runs


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _shape(run) -> tuple[int | None, int | None]:
    """(k, n) from the params, else from the ``cell`` tag (``csLG_32_9216_1024``)."""
    k, n = _int(run.data.params.get("k")), _int(run.data.params.get("n_latents"))
    if (k is None or n is None) and run.data.tags.get("cell"):
        from sae.config import ConfigError, parse_cell_name

        try:
            _, ck, cn, _ = parse_cell_name(run.data.tags["cell"])
        except ConfigError:
            pass
        else:
            k, n = (ck if k is None else k), (cn if n is None else n)
    return k, n


def cell_rows(
    client_or_tracking_uri,
    domains: str | Iterable[str] | None = None,
    sweep_id: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> list[dict[str, Any]]:
    """The cell runs as dicts, sorted by domain, sweep, k, n.

    Keys: ``domain``, ``sweep_id``, ``k``, ``n_latents``, ``run_id``, ``run_name``,
    ``status``, ``champion`` (bool), ``cell``, and each of ``metrics`` (NaN when the
    run did not log it). The rows suit :func:`tasks.sweep.plots.pareto_plot`.
    Raises ``LookupError`` when no experiment or run matches.
    """
    client = _client(client_or_tracking_uri)
    if isinstance(domains, str):
        domains = [domains]
    domains = None if domains is None else [canonical_name(d) for d in domains]
    which = ", ".join(domains) if domains else "any domain"
    hint = f"sae sweep {domains[0]}" if domains else "sae sweep <domain>"
    experiments = _experiments(client, domains)
    if not experiments:
        names = (
            ", ".join(experiment_name(d) for d in domains) if domains else f"{EXPERIMENT_PREFIX}*"
        )
        raise LookupError(
            f"no sweep runs in MLflow at {_where(client)} for {which} "
            f"(no experiment named {names}); run `{hint}` first"
        )
    filter_string = "tags.run_kind = 'cell'"
    if sweep_id is not None:
        filter_string += f" and tags.sweep_id = {_quote(sweep_id)}"
    domain_of = {e.experiment_id: e.name[len(EXPERIMENT_PREFIX) :] for e in experiments}
    runs = _search(client, list(domain_of), filter_string)
    if not runs:
        of_sweep = f" of sweep {sweep_id}" if sweep_id is not None else ""
        raise LookupError(
            f"no sweep runs{of_sweep} in MLflow at {_where(client)} for {which}; run `{hint}` first"
        )
    rows = []
    for run in runs:
        tags = run.data.tags
        k, n = _shape(run)
        row = {
            "domain": tags.get("domain") or domain_of.get(run.info.experiment_id, ""),
            "sweep_id": tags.get("sweep_id", ""),
            "k": k,
            "n_latents": n,
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "champion": tags.get("champion", "").strip().lower() == "true",
            "cell": tags.get("cell", ""),
        }
        for m in metrics:
            row[m] = float(run.data.metrics.get(m, math.nan))
        rows.append(row)
    big = float("inf")
    rows.sort(
        key=lambda r: (
            r["domain"],
            r["sweep_id"],
            big if r["k"] is None else r["k"],
            big if r["n_latents"] is None else r["n_latents"],
            r["run_name"] or "",
        )
    )
    return rows


def runs_table(
    client_or_tracking_uri,
    domains: str | Iterable[str] | None = None,
    sweep_id: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> str:
    """A markdown table of the cell runs in MLflow, one row per cell.

    ``client_or_tracking_uri`` is an ``MlflowClient`` or a tracking URI. ``domains``
    None means every experiment named ``arxiv-sae/*``; ``sweep_id`` keeps one sweep.
    Columns: domain, sweep (first 12 characters), k, n, the ``metrics`` (nmse and
    act mean to 4 decimals, log FD and dead to 3; ``-`` when not logged), the run
    status (FINISHED, FAILED, RUNNING, ...) and ``champion`` (``*`` on the run tagged
    ``champion=true``). Rows are sorted by domain, sweep, k, n. After the metrics, each of
    ``FEATURE_METRICS`` that some row has (the features flow ran on its cell).
    Raises ``LookupError`` when no experiment or run matches.
    """
    metrics = tuple(metrics)
    extra = tuple(m for m in FEATURE_METRICS if m not in metrics)
    rows = cell_rows(client_or_tracking_uri, domains, sweep_id, (*metrics, *extra))
    shown = tuple(m for m in extra if any(not math.isnan(r[m]) for r in rows))
    return results_table(
        rows, ("domain", "sweep_id", "k", "n_latents", *metrics, *shown, "status", "champion")
    )


def latest_sweep_id(client_or_tracking_uri, domain: str) -> str | None:
    """The ``sweep_id`` of the domain's parent run with the newest start time.

    None when the experiment or any sweep run is missing.
    """
    client = _client(client_or_tracking_uri)
    experiments = _experiments(client, [canonical_name(domain)])
    if not experiments:
        return None
    experiment = experiments[0]
    runs = _search(
        client,
        [experiment.experiment_id],
        "tags.run_kind = 'sweep'",
        order_by=["attributes.start_time DESC"],
        limit=1,
    )
    if not runs:
        return None
    return runs[0].data.tags.get("sweep_id")


__all__ = [
    "DEFAULT_METRICS",
    "EXPERIMENT_PREFIX",
    "FEATURE_METRICS",
    "cell_rows",
    "experiment_name",
    "latest_sweep_id",
    "runs_table",
]
