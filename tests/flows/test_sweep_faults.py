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
from infra.settings import get_settings

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


@pytest.fixture
def no_flow(monkeypatch):
    """Fails the command under test if it gets as far as starting a Prefect server, which
    every flow run needs; tracebacks off whatever the caller's environment says."""
    import flows.cli

    def refuse(*args, **kwargs):
        raise AssertionError("a Prefect server, and so a flow run, was started")

    monkeypatch.setattr(flows.cli, "prefect_for_run", refuse)
    monkeypatch.setenv("SAE_DEBUG", "0")


def _refused(result, *words: str) -> None:
    """Exit 2, one ``error:`` line on stderr holding ``words``, no traceback anywhere."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(w in lines[0] for w in words), (words, lines[0])
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--source", "missing.jsonl.gz"], ["missing.jsonl.gz does not exist", "give the path"]),
        (["--source", "{empty_dir}"], ["holds no data files"]),
        (["--source", "{empty_file}"], ["empty file", "name one of"]),
        ([], ["no papers of cs.LG", "sae ingest cs.LG"]),
        (["--source", "{papers}", "--data-snapshot", "nope"], ["no data snapshot 'nope'"]),
        (["--embedder", "word2vec"], ["unknown embedder spec"]),
        (["--k", ""], ["--k is empty"]),
        (["--k", "4,x"], ["--k takes comma-separated integers"]),
        (["--k", "0"], ["--k: k must be positive"]),
        (["--k", "64", "--n", "32"], ["k=64 is larger than n_latents=32", "drop that k"]),
        (["--lr", "0"], ["--lr: lr must be positive"]),
        (["--epochs", "0"], ["--epochs: epochs must be a positive integer"]),
        (["--batch-size=-16"], ["--batch-size: batch_size must be a positive integer"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_any_flow_starts(args, words, no_flow, tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_file.txt").write_text("")
    (tmp_path / "papers.jsonl").write_text('{"id": "2401.00001", "title": "t"}\n')
    places = {
        "{empty_dir}": str(tmp_path / "empty_dir"),
        "{empty_file}": str(tmp_path / "empty_file.txt"),
        "{papers}": str(tmp_path / "papers.jsonl"),
    }
    result, _ = _sweep("cs.LG", *SMALL, *(places.get(a, a) for a in args))
    _refused(result, *words)
    assert not (get_settings().home / "mlflow.db").exists()  # MLflow untouched


def test_unknown_domain_is_refused_before_anything_starts():
    result, _ = _sweep("cs.ML", *SMALL)
    assert result.exit_code == 2
    assert "unknown domain 'cs.ML': did you mean cs.LG or stat.ML?" in result.output


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no papers of cs.LG"),
        (["--source", "missing.jsonl.gz"], "source missing.jsonl.gz does not exist"),
    ],
)
def test_the_real_command_refuses_bad_input_in_one_line(tmp_path, args, message):
    # A subprocess: stderr exactly as a user sees it (logging, warnings and all).
    env = {**os.environ, "SAE_HOME": str(tmp_path / "home")}
    env.pop("SAE_DEBUG", None)
    loaded = tmp_path / "modules.txt"
    # `python -m flows.cli`, noting at exit the modules it loaded.
    run_cli = (
        "import atexit, runpy, sys\n"
        f"atexit.register(lambda: open({str(loaded)!r}, 'w').write(' '.join(sys.modules)))\n"
        "runpy.run_module('flows.cli', run_name='__main__', alter_sys=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", run_cli, "sweep", "cs_lg", *SMALL, *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "home" / "prefect").exists()  # no Prefect server, no flow run
    # Nor the seconds of importing what only a run needs.
    assert {"torch", "mlflow", "ray"}.isdisjoint(loaded.read_text().split())


def test_a_bug_is_one_line_and_its_traceback_goes_to_the_log_or_with_debug(monkeypatch, tmp_path):
    import contextlib

    import flows.cli
    import flows.sweep

    def broken(params):
        raise RuntimeError("a bug in the flow")

    monkeypatch.setattr(flows.cli, "prefect_for_run", lambda *a, **kw: contextlib.nullcontext())
    monkeypatch.setattr(flows.sweep, "sweep", broken)
    monkeypatch.setenv("SAE_DEBUG", "0")
    papers = tmp_path / "papers.jsonl"
    papers.write_text('{"id": "2401.00001", "title": "t"}\n')
    args = ["sweep", "cs.LG", *SMALL, "--source", str(papers)]

    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "unexpected RuntimeError: a bug in the flow" in line and "--debug" in line
    assert "Traceback" not in result.output
    logged = (get_settings().home / "logs" / "sae.log").read_text()
    assert "Traceback" in logged and "a bug in the flow" in logged

    for switch in ("--debug", "SAE_DEBUG=1"):
        monkeypatch.setenv("SAE_DEBUG", "1" if switch == "SAE_DEBUG=1" else "0")
        result = runner.invoke(app, ["--debug", *args] if switch == "--debug" else args)
        assert result.exit_code == 1
        assert isinstance(result.exception, RuntimeError), switch  # Typer prints it


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


@pytest.mark.parametrize("debug", ["0", "1"])
def test_prefect_console_shows_a_failed_run_without_its_traceback_unless_debugging(
    monkeypatch, debug
):
    import logging

    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    from flows.cli_common import quiet_prefect_console

    monkeypatch.setenv("SAE_DEBUG", debug)
    ensure_logging_setup()
    (console,) = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    monkeypatch.setattr(console, "formatter", console.formatter)  # restored afterwards
    quiet_prefect_console()
    try:
        raise RuntimeError("the task's error")
    except RuntimeError:
        record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed: %s",
                                   ("RuntimeError",), sys.exc_info())  # fmt: skip
    record.task_run_name = "ensure-corpus-0"
    shown = console.format(record)
    assert "failed: RuntimeError" in shown
    assert ("Traceback" in shown) == (debug == "1")
    assert record.exc_info is not None  # still there for the API handler and log files
