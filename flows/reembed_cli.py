"""``sae reembed``: the re-embed flow from a shell, against a Prefect server for the run.

Exit codes: 0 done (also when there was nothing new), 1 partly failed (some shards, or
papers left without a vector: the watermark stays, a rerun finishes), 2 bad input or a
service that cannot be reached (arXiv, the store, MLflow, Prefect, Ray, the embedder),
3 another re-embed of the domain holds its lease (nothing was done).

Also runnable on its own: ``python -m flows.reembed_cli reembed cs.LG``.
"""

from __future__ import annotations

import typer

from flows.cli_common import (
    bug,
    debug,
    fail,
    quiet_prefect_console,
    setup_logging,
)
from flows.cli_params import model_command
from infra.local_stack import StackError, check_mlflow, prefect_for_run
from infra.ray_runtime import RayUnavailableError
from infra.settings import get_settings
from infra.store import Store, StoreError
from infra.tracking import TrackingUnavailableError
from tasks.embed.embedders import EmbedderError
from tasks.reembed import LeaseError, LeaseLostError, ReembedIncompleteError, ReembedParams

EXIT_PARTIAL = 1
EXIT_BAD_INPUT = 2
EXIT_BUSY = 3


def register(app: typer.Typer) -> None:
    """Adds ``reembed`` to the ``sae`` app."""
    model_command(app, ReembedParams, "reembed")(reembed_command)


def reembed_command(params: ReembedParams) -> None:
    """Harvest DOMAIN's new arXiv papers, embed them, then move its watermark.

    Harvests since the watermark without moving it, validates into the corpus (rejected
    records to the quarantine), embeds only the papers without a vector (one Ray task per
    shard) and moves the watermark once the vectors are stored. A crash leaves the
    watermark as it was; run the command again to finish. Prints new / duplicate /
    rejected / embedded counts; the same summary goes to the Prefect UI (an artifact)
    and to MLflow (a run tagged run_kind=reembed in the domain's experiment).

    Exits 0 when done, 1 when some papers could not be embedded (rerun to finish),
    2 on bad input or an unreachable service, 3 when another re-embed of DOMAIN runs.
    """
    setup_logging(own_handler=False)
    typer.echo(summary_text(run_reembed(params)))


def run_reembed(params) -> dict:
    """Runs the flow against a Prefect server for this run; typer.Exit with the exit code
    for each failure."""
    from prefect.exceptions import CancelledRun

    # polars, Prefect and MLflow: seconds that the rest of `sae` should not pay.
    from tasks.corpus.harvest import HarvestError
    from tasks.corpus.storage import WatermarkError
    from tasks.embed.manifest import EmbeddingStoreError
    from tasks.embed.run import EmbedFailedError

    settings = get_settings()
    try:
        # What is misconfigured fails at once, before any server starts.
        check_mlflow(settings)
        Store.from_settings(settings).check_writable()
        with prefect_for_run(settings, while_booting=_import_flow):
            from flows.reembed import reembed

            quiet_prefect_console()
            return reembed(params)
    except CancelledRun as exc:
        raise fail(exc, EXIT_BUSY) from exc
    except (EmbedFailedError, ReembedIncompleteError, LeaseLostError) as exc:
        raise fail(exc, EXIT_PARTIAL) from exc
    except (
        StackError,
        StoreError,
        TrackingUnavailableError,
        RayUnavailableError,
        HarvestError,
        WatermarkError,
        EmbedderError,
        EmbeddingStoreError,
        LeaseError,
        ValueError,
    ) as exc:
        raise fail(exc, EXIT_BAD_INPUT) from exc
    except Exception as exc:
        if debug():
            raise
        raise bug(exc) from exc


def _import_flow() -> None:
    # Imported while the Prefect server boots: Prefect, polars and MLflow take seconds.
    import flows.reembed  # noqa: F401


def summary_text(s: dict) -> str:
    """What the command prints: the counts, the window, the watermark and where things are."""
    lines = [
        f"{s['domain']} (arXiv {s['source']} {s['since']}..{s['until']}): "
        f"{s.get('new', 0)} new, {s.get('duplicate', 0)} duplicate, "
        f"{s.get('rejected', 0)} rejected, {s.get('other_domain', 0)} in other domains; "
        f"{s.get('embedded', 0)} embedded with {s['embedder']}",
        "  watermark: " + _watermark_change(s.get("watermark_before"), s.get("watermark")),
    ]
    if s.get("quarantine_uri"):
        lines.append(f"  rejected records and reasons: {s['quarantine_uri']}")
    if s.get("namespace"):
        lines.append(f"  vectors: {s['namespace']}")
    if s.get("mlflow_run_id"):
        lines.append(f"  MLflow run: {s['mlflow_run_id']} (experiment arxiv-sae/{s['domain']})")
    if s.get("tracking_error"):
        lines.append(f"  warning: the summary was not recorded: {s['tracking_error']}")
    return "\n".join(lines)


def _watermark_change(before: str | None, after: str | None) -> str:
    if not after or after == before:
        return f"{before or 'none'} (unchanged)"
    return f"{before or 'none'} -> {after}"


def _main() -> None:
    app = typer.Typer(add_completion=False, no_args_is_help=True)

    @app.callback()
    def _group() -> None:
        """Re-embed new arXiv papers (the ``sae reembed`` command on its own)."""

    register(app)
    app()


if __name__ == "__main__":
    _main()
