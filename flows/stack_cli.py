"""``sae up``, ``sae down``, ``sae ui``: the persistent local stack on 127.0.0.1."""

from __future__ import annotations

import re
import webbrowser
from typing import Annotated

import typer

from flows.cli_common import exit_codes
from infra.local_stack import StackError, stack_down, stack_status, stack_up
from infra.settings import Settings, get_settings, mask_url
from infra.tracking import EXPERIMENT_PREFIX

_S3_NOTE = """\
# moto accepts any keys, but the AWS clients want some:
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
# a bucket for the store, then point the store at it (and `sae down && sae up --s3` so
# MLflow's artifact root follows):
python -c "import boto3; boto3.client('s3', endpoint_url='{url}').create_bucket(Bucket='sae')"
export SAE_STORE=s3://sae/store"""


def register(app: typer.Typer) -> None:
    """Adds ``up``, ``down`` and ``ui`` to the ``sae`` app."""
    app.command()(up)
    app.command()(down)
    app.command()(ui)


def up(
    s3: Annotated[
        bool, typer.Option("--s3", help="Also an S3 endpoint (moto), to try the S3 store.")
    ] = False,
) -> None:
    """Start a local Prefect server and MLflow server (UI included) that stay up until `sae down`.

    Already running and healthy servers are kept. Pid files in {SAE_HOME}/stack, logs in
    {SAE_HOME}/logs. Everything listens on 127.0.0.1 only.
    """
    settings = get_settings()
    typer.echo("starting the local stack (a first start migrates its databases: ~30 s)")
    with exit_codes([(StackError, 2)]):
        urls = stack_up(settings, s3=s3)
    width = max(len(name) for name in urls)
    for name, url in sorted(urls.items()):
        extra = f"  (UI {url.removesuffix('/api')})" if name == "prefect" else ""
        typer.echo(f"{name:<{width}}  {mask_url(url)}{extra}")
    typer.echo(f"logs in {settings.home / 'logs'}; stop with `sae down`\n")
    typer.echo("To use it from this shell:")
    exports = {"prefect": "PREFECT_API_URL", "mlflow": "MLFLOW_TRACKING_URI"}
    if s3:
        exports["s3"] = "SAE_S3_ENDPOINT_URL"
    for name, variable in exports.items():
        if name in urls:
            typer.echo(f"export {variable}={urls[name]}")
    if s3 and "s3" in urls:
        typer.echo(_S3_NOTE.format(url=urls["s3"]))


def down() -> None:
    """Stop the local stack started by `sae up`."""
    stopped = stack_down(get_settings())
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def ui(
    open_: Annotated[bool, typer.Option("--open", help="Open them in a browser too.")] = False,
) -> None:
    """Print the addresses of the MLflow and Prefect UIs (those a run would use)."""
    rows = _uis(get_settings())
    for label, url, hint in rows:
        typer.echo(f"{label:<10}  {mask_url(url) if url else hint}")
    if rows[0][1]:
        for name, url in _experiment_links(rows[0][1]).items():
            typer.echo(f"  {name}  {url}")
    if open_:
        for _, url, _ in rows:
            if url:
                webbrowser.open(_without_credentials(url))


def _experiment_links(mlflow_ui: str) -> dict[str, str]:
    """Each domain's experiment in the UI's model-training view. MLflow 3.17's UI opens an
    experiment as GenAI (traces, evaluations) unless the link or the user's switch says
    otherwise; it does not read the experiment's kind tag for that."""
    import httpx  # here: 0.5-0.6 s of `sae --help` otherwise (infra.local_stack._answers)

    query = {"filter": f"name LIKE '{EXPERIMENT_PREFIX}%'", "max_results": 1000}
    try:
        response = httpx.post(
            f"{mlflow_ui.rstrip('/')}/api/2.0/mlflow/experiments/search", json=query, timeout=5
        )
        experiments = response.json().get("experiments", []) if response.is_success else []
    except (httpx.HTTPError, ValueError):  # the addresses above matter; links are extra
        experiments = []
    base = _without_credentials(mlflow_ui).rstrip("/")
    return {
        e["name"]: f"{base}/#/experiments/{e['experiment_id']}?workflowType=machine_learning"
        for e in sorted(experiments, key=lambda e: e["name"])
    }


def _uis(settings: Settings) -> list[tuple[str, str | None, str]]:
    """(label, the UI a run would use or None, what to do without one) for MLflow and
    Prefect. A run's own Prefect server stops with the run: only `sae up` leaves one."""
    status = stack_status(settings)
    running = {name: r["ui"] for name, r in status.items() if r["healthy"]}
    mlflow = settings.tracking_uri
    if mlflow.startswith(("http://", "https://")):
        running["mlflow"] = mlflow
    prefect = settings.prefect_api_url.rstrip("/")
    if prefect:
        cloud = "api.prefect.cloud" in prefect
        running["prefect"] = "https://app.prefect.cloud" if cloud else prefect.removesuffix("/api")
    hint = "not running: `sae up` starts it"
    return [
        (
            "MLflow UI",
            running.get("mlflow"),
            f"{hint}, or `mlflow ui --backend-store-uri {mask_url(mlflow)}`",
        ),
        ("Prefect UI", running.get("prefect"), hint),
    ]


def _without_credentials(url: str) -> str:
    return re.sub(r"://[^/@\s]+@", "://", url)
