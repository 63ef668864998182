"""`sae sweep` refuses bad input and unreachable services at once, with the reason."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()
SMALL = ["--k", "4", "--n", "32", "--epochs", "1", "--batch-size", "16"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(*args: str):
    t0 = time.monotonic()
    result = runner.invoke(app, ["sweep", *args])
    return result, time.monotonic() - t0


def test_unknown_domain_is_refused_before_anything_starts():
    result, _ = _sweep("hep-th", *SMALL)
    assert result.exit_code == 2
    assert "unknown domain 'hep-th'" in result.output


def test_k_larger_than_n_names_the_pair():
    result, _ = _sweep("cs.LG", "--k", "16,64", "--n", "32")
    assert result.exit_code == 2
    assert "k=64 is larger than n_latents=32" in result.output


@pytest.mark.parametrize("bad", ["0", "x"])
def test_bad_grid_values(bad):
    result, _ = _sweep("cs.LG", "--k", bad, "--n", "32")
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("setting", "url", "what"),
    [
        ("MLFLOW_TRACKING_URI", "http://127.0.0.1:{port}", "MLflow server"),
        ("PREFECT_API_URL", "http://127.0.0.1:{port}/api", "Prefect server"),
    ],
)
def test_unreachable_service_fails_fast_naming_the_setting(monkeypatch, setting, url, what):
    monkeypatch.setenv(setting, url.format(port=_closed_port()))
    result, seconds = _sweep("cs.LG", *SMALL)
    assert result.exit_code == 2
    assert what in result.output and setting in result.output
    # Prefect's and MLflow's own clients would retry for a minute or more; one check
    # answers at once. The margin is for imports on a loaded machine.
    assert seconds < 60


def test_unreachable_s3_endpoint_fails_with_the_store_uri(monkeypatch):
    monkeypatch.setenv("SAE_STORE", "s3://nowhere/store")
    monkeypatch.setenv("SAE_S3_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    result, seconds = _sweep("cs.LG", *SMALL)
    assert result.exit_code == 2
    assert "s3://nowhere/store" in result.output
    assert seconds < 120  # the store's retries (15.5 s per call), not a hang


def test_missing_s3_credentials_say_which_are_missing(s3_store_root, monkeypatch, tmp_path):
    import s3fs

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    result, _ = _sweep("cs.LG", *SMALL)
    s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 2
    assert "credentials" in result.output.lower() and "AWS_ACCESS_KEY_ID" in result.output


def test_unreachable_ray_address_fails_fast():
    from infra.ray_runtime import RayUnavailableError, ensure_ray
    from infra.settings import Settings

    t0 = time.monotonic()
    with pytest.raises(RayUnavailableError, match="RAY_ADDRESS"):
        ensure_ray(Settings(ray_address=f"127.0.0.1:{_closed_port()}"))
    assert time.monotonic() - t0 < 60  # ray.init on a dead address retries for minutes


def test_an_empty_corpus_is_a_clear_error(prefect_api, tmp_path):
    # A subprocess: the real command, its own Ray and the session's Prefect server.
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "SAE_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "sweep", "cs.LG", *SMALL],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no papers for cs.LG" in proc.stderr


def test_s3_down_for_a_few_seconds_is_retried_without_partial_objects(monkeypatch):
    """The endpoint stops, a write waits for it, and the object lands whole."""
    import boto3
    from moto.server import ThreadedMotoServer

    from infra.store import Store

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    port = _closed_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="flaky")
    store = Store("s3://flaky/store", {"client_kwargs": {"endpoint_url": endpoint}})
    store.write_bytes("before", b"x")
    server.stop()

    restarted = []

    def restart_later():
        time.sleep(3)
        again = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        again.start()
        restarted.append(again)

    threading.Thread(target=restart_later, daemon=True).start()
    payload = os.urandom(256 * 1024)
    t0 = time.monotonic()
    store.write_bytes("part-1.bin", payload)
    try:
        assert time.monotonic() - t0 >= 2.5  # it did wait for the endpoint
        assert store.read_bytes("part-1.bin") == payload
        assert sorted(store.list("", "*")) == ["before", "part-1.bin"]
    finally:
        for s in restarted:
            s.stop()
