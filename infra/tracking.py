"""MLflow connection: the tracking URI, one experiment per domain, artifacts in the store.

Experiments are named ``arxiv-sae/{domain}`` and keep their artifacts under
``{store}/mlflow/{domain slug}``, so models and plots live beside the checkpoints (on S3
when the store is). Create experiments here, in the driver: workers never do.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from infra.empty_db import seed_mlflow_db
from infra.local_stack import check_mlflow
from infra.settings import Settings, mask_url

log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "arxiv-sae/"
#: The UI's description of an experiment or a run (markdown).
NOTE_TAG = "mlflow.note.content"
#: MLflow 3's experiment kind, and the value its UI offers as "custom model development".
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server or database cannot be used (an unreachable server
    raises :class:`infra.local_stack.StackError` instead, before anything starts)."""


def experiment_name(domain: str) -> str:
    return f"{EXPERIMENT_PREFIX}{domain}"


def mlflow_client(settings: Settings):
    """A client for ``settings.tracking_uri``, after checking it answers (no hang)."""
    # MLflow: ~20 s of import on 2 busy cores (measured); `sae --help` imports this module.
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = settings.tracking_uri
    _export_s3_endpoint(settings)
    check_mlflow(settings)
    if uri.startswith("sqlite:///"):
        settings.home.mkdir(parents=True, exist_ok=True)
        seed_mlflow_db(Path(uri.removeprefix("sqlite:///")), settings.cache_root)
    # For the fluent calls (log_model). mlflow.set_tracking_uri also exports
    # MLFLOW_TRACKING_URI, which our settings read: put it back, so a later run in this
    # process (another SAE_HOME) does not inherit this one's tracking store.
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client, settings: Settings, domain: str, slug: str, embedder: str) -> str:
    """The experiment id of ``domain``, created with its artifacts in the store if new,
    marked a model-training experiment and described (see :func:`describe_experiment`)."""
    experiment_id = _get_or_create(client, settings, domain, slug)
    describe_experiment(client, experiment_id, domain, embedder)
    return experiment_id


def describe_experiment(client, experiment_id: str, domain: str, embedder: str) -> None:
    """Sets the experiment's kind and description (the embedder: the latest run's).

    The kind says "model training" to whatever reads it (MLflow's API, hosted UIs);
    MLflow 3.17's own UI picks its view from the link or its switch, so ``sae ui``
    prints links to the training view.
    """
    tags = {EXPERIMENT_KIND_TAG: TRAINING_KIND, NOTE_TAG: experiment_note(domain, embedder)}
    for key, value in tags.items():
        client.set_experiment_tag(experiment_id, key, value)


def experiment_note(domain: str, embedder: str) -> str:
    return (
        f"**TopK sparse autoencoders over arXiv {domain} abstracts**, embedded with "
        f"`{embedder}` (title + abstract).\n\n"
        "- a parent run per sweep (`run_kind=sweep`): its description is the results table; "
        "plots and results.md / results.json in its artifacts\n"
        "- a child run per k x n cell (`run_kind=cell`): training curves, held-out metrics, "
        "the checkpoint and the logged model\n"
        f"- a registered model per cell, `sae-{domain}-k{{k}}-n{{n}}`; the domain's best "
        "has the alias `champion`\n"
        "- a run per re-embed (`run_kind=reembed`): papers harvested and embedded\n"
    )


def _get_or_create(client, settings: Settings, domain: str, slug: str) -> str:
    name = experiment_name(domain)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = f"{settings.store.rstrip('/')}/mlflow/{slug}"
    if settings.store_is_local:
        location = "file://" + location.removeprefix("file://")
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception as exc:  # another driver created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise TrackingUnavailableError(
                f"cannot create the MLflow experiment {name!r} at "
                f"{mask_url(settings.tracking_uri)}: {exc}"
            ) from exc
        return exp.experiment_id


def _export_s3_endpoint(settings: Settings) -> None:
    # MLflow's S3 artifact client reads its endpoint from this variable only.
    if settings.s3_endpoint_url and not settings.store_is_local:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)
