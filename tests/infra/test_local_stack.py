"""The local stack against real servers (Prefect, MLflow, moto) on 127.0.0.1, no mocks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from flows.stack_cli import register
from infra import local_stack as ls
from infra.settings import get_settings

pytestmark = pytest.mark.slow

_CONFIG_VARS = (
    "PREFECT_API_URL",
    "SAE_PREFECT_API_URL",
    "MLFLOW_TRACKING_URI",
    "SAE_MLFLOW_TRACKING_URI",
)


@pytest.fixture(autouse=True)
def _nothing_configured(monkeypatch):
    """No server configured, unless a test says otherwise."""
    for name in _CONFIG_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _no_leaked_servers():
    """Every server a test starts is stopped by the code under test; stop and fail if not."""
    before = _servers_of(os.getpid())
    yield
    leaked = sorted(_servers_of(os.getpid()) - before)
    ls._stop_groups({pid: lambda pid=pid: not _group_members(pid) for pid in leaked}, 2.0)
    assert not leaked, f"servers left running: {leaked}"


@pytest.fixture
def settings():
    return get_settings()


@pytest.fixture
def stack(settings, monkeypatch):
    """Free ports for `sae up` (not 4200/5000: a developer's own stack may hold them)."""
    ports: dict[str, int] = {}
    while len(set(ports.values())) < 3:
        ports = {name: ls.free_port() for name in ("prefect", "mlflow", "s3")}
    monkeypatch.setattr(ls, "DEFAULT_PORTS", ports)
    try:
        yield ports
    finally:
        ls.stack_down(settings)


@pytest.fixture
def cli():
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args, env=None: runner.invoke(app, list(args), env=env)


# --- helpers: what the operating system says, not what the module believes ----------------


def _live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of each process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid, pgrp = text[text.rindex(")") + 2 :].split()[:3]
        if state != "Z":
            yield int(entry.name), int(ppid), int(pgrp)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    return [pid for pid, _, pgrp in _live_processes() if pgrp == pgid]


def _servers_of(parent: int) -> set[int]:
    """The live process groups that ``parent`` started (each server leads its own)."""
    return {pid for pid, ppid, pgrp in _live_processes() if ppid == parent and pgrp == pid}


def _listen_addresses(port: int) -> set[str]:
    """Addresses with a listening TCP socket on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            if len(address) == 8:  # IPv4, little-endian
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
            else:
                found.add(f"ipv6:{address}")
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _pids(settings) -> dict[str, int]:
    return {name: s["pid"] for name, s in ls.stack_status(settings).items() if s["healthy"]}


def _assert_local_only(port: int) -> None:
    if Path("/proc/net/tcp").exists():
        assert _listen_addresses(port) == {"127.0.0.1"}


def _write_stale_record(settings, name: str, pid: int) -> Path:
    """A pid file whose server is gone (no process holds its log)."""
    pid_file = settings.home / "stack" / f"{name}.pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{pid}\n")
    return pid_file


# --- the persistent stack --------------------------------------------------------------------


def test_up_ui_down(settings, stack, cli, tmp_path):
    stale_pid = _dead_pid()
    _write_stale_record(settings, "prefect", stale_pid)

    result = cli("up")
    assert result.exit_code == 0, result.output
    prefect_url = f"http://127.0.0.1:{stack['prefect']}/api"
    mlflow_url = f"http://127.0.0.1:{stack['mlflow']}"
    assert f"export PREFECT_API_URL={prefect_url}" in result.output
    assert f"export MLFLOW_TRACKING_URI={mlflow_url}" in result.output
    status = ls.stack_status(settings)
    assert {n: s["healthy"] for n, s in status.items()} == {"prefect": True, "mlflow": True}
    assert status["prefect"]["pid"] != stale_pid  # the stale record was replaced
    pids = _pids(settings)
    assert {p.name for p in (settings.home / "stack").glob("*.pid")} == {
        "prefect.pid",
        "mlflow.pid",
    }

    assert httpx.get(f"{prefect_url}/health", trust_env=False).json() is True
    assert httpx.get(f"{mlflow_url}/health", trust_env=False).status_code == 200
    for port in (stack["prefect"], stack["mlflow"]):
        _assert_local_only(port)
    assert ls.running_stack_url(settings, "prefect") == prefect_url
    # MLflow's experiments keep their artifacts in the store.
    created = httpx.post(
        f"{mlflow_url}/api/2.0/mlflow/experiments/create", json={"name": "e"}, trust_env=False
    ).json()
    experiment = httpx.get(
        f"{mlflow_url}/api/2.0/mlflow/experiments/get",
        params={"experiment_id": created["experiment_id"]},
        trust_env=False,
    ).json()["experiment"]
    assert experiment["artifact_location"].startswith(f"{settings.store}/mlflow")

    # A server that dies at start: its log's end is in the error, the running ones stay.
    broken = tmp_path / "broken"
    (broken / "moto").mkdir(parents=True)
    (broken / "moto" / "__init__.py").write_text("raise SystemExit('moto broken on purpose')")
    result = cli("up", "--s3", env={"PYTHONPATH": str(broken)})
    assert result.exit_code == 2
    assert "broken on purpose" in result.output or "moto[server]" in result.output
    assert _pids(settings) == pids
    assert "s3" not in ls.stack_status(settings)

    # A second `up`: nothing already healthy is restarted.
    assert ls.stack_up(settings) == {"prefect": prefect_url, "mlflow": mlflow_url}
    assert _pids(settings) == pids
    # With `sae up` healthy, a run records there directly and starts no server of its own.
    with ls.prefect_for_run(settings, timeout=600) as url:
        assert url == prefect_url
    assert _pids(settings) == pids
    if ls.importlib.util.find_spec("moto") is not None:
        result = cli("up", "--s3")
        assert result.exit_code == 0, result.output
        s3_url = f"http://127.0.0.1:{stack['s3']}"
        assert f"export SAE_S3_ENDPOINT_URL={s3_url}" in result.output
        assert {k: v for k, v in _pids(settings).items() if k != "s3"} == pids
        assert httpx.put(f"{s3_url}/sae", trust_env=False).status_code == 200
        _assert_local_only(stack["s3"])

    result = cli("ui")
    assert result.exit_code == 0, result.output
    assert f"MLflow UI   {mlflow_url}" in result.output
    assert f"Prefect UI  http://127.0.0.1:{stack['prefect']}" in result.output

    all_pids = _pids(settings)
    result = cli("down")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "stopped: " + ", ".join(sorted(all_pids))
    assert not any(_group_members(pid) for pid in all_pids.values())
    assert not any(_port_open(port) for port in stack.values())
    assert not list((settings.home / "stack").glob("*.pid"))
    assert not (settings.home / "stack" / "stack.json").exists()
    assert ls.stack_status(settings) == {}

    result = cli("ui")
    assert "not running" in result.output
    assert "mlflow ui --backend-store-uri sqlite:////" in result.output


def test_ui_prints_the_configured_servers(cli, monkeypatch):
    closed = ls.free_port()  # the experiment links are extra: nothing answers here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:hunter2@127.0.0.1:{closed}")
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{closed}/api")
    result = cli("ui")
    assert result.exit_code == 0, result.output
    assert f"MLflow UI   http://user:***@127.0.0.1:{closed}\n" in result.output
    assert f"Prefect UI  http://127.0.0.1:{closed}\n" in result.output
    assert "hunter2" not in result.output
    monkeypatch.setenv("PREFECT_API_URL", "https://api.prefect.cloud/api/accounts/a/workspaces/w")
    assert "Prefect UI  https://app.prefect.cloud\n" in cli("ui").output


def test_stale_records_are_cleaned_and_never_signalled(settings):
    pid_file = _write_stale_record(settings, "prefect", _dead_pid())
    stray = settings.home / "stack" / "mlflow.pid"  # a live pid: this process's
    stray.write_text(f"{os.getpid()}\n")
    assert ls.stack_status(settings)["prefect"]["healthy"] is False
    assert ls.running_stack_url(settings, "prefect") is None
    assert ls.stack_down(settings) == []
    assert not pid_file.exists() and not stray.exists()
    assert not (settings.home / "stack" / "stack.json").exists()

    # A live pid whose log nothing holds is someone else's process now.
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        _write_stale_record(settings, "prefect", sleeper.pid)
        assert ls.stack_down(settings) == []
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


# --- one run ---------------------------------------------------------------------------------


def test_prefect_for_run_starts_stops_and_is_used(settings):
    seen = {}
    before = _servers_of(os.getpid())

    def while_booting():
        seen["env"] = os.environ.get("PREFECT_API_URL")
        import prefect  # noqa: F401  (the import overlaps the server's boot)

    with ls.prefect_for_run(settings, while_booting=while_booting) as url:
        port = int(url.split(":")[2].split("/")[0])
        assert url == f"http://127.0.0.1:{port}/api"
        assert seen["env"] == url == os.environ["PREFECT_API_URL"]
        _assert_local_only(port)
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.environ['PREFECT_API_URL'])"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert child.stdout.strip() == url  # what Ray workers started now will see

        from prefect import flow
        from prefect.settings import get_current_settings

        assert get_current_settings().api.url == url

        @flow
        def tiny() -> int:
            return 1

        assert tiny() == 1
        runs = httpx.post(f"{url}/flow_runs/filter", json={}, trust_env=False).json()
        assert [r["name"] for r in runs]  # the run reported to this server
        (pid,) = _servers_of(os.getpid()) - before

    assert "PREFECT_API_URL" not in os.environ
    assert not _port_open(port)
    assert not _group_members(pid)
    assert ls.history_database(settings).exists()  # the next run skips migrations


# Enters prefect_for_run, says the server's URL, then waits to be killed.
_RUN = """
import sys
from infra import local_stack as ls
from infra.settings import get_settings

with ls.prefect_for_run(get_settings(), timeout=600) as url:
    print(url, flush=True)
    sys.stdin.read()
"""


def test_a_runs_server_dies_with_the_run_even_by_sigkill(settings):
    """A run killed outright (a laptop closed, the OOM killer) takes its Prefect server
    along: no server is left holding memory, its port and the history database."""
    pid = None
    with subprocess.Popen(
        [sys.executable, "-c", _RUN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as run:
        try:
            url = run.stdout.readline().strip()  # the server answers, or the run has ended
            assert url, f"the run ended ({run.wait()}) before its server served"
            (pid,) = _servers_of(run.pid)
            port = int(url.split(":")[2].split("/")[0])
            assert httpx.get(f"{url}/health", trust_env=False).json() is True
            assert ls._claim_database(ls.history_database(settings)) is None  # held by it

            run.kill()
            run.wait()
            # Ends when the server is gone; the limit is a safety net for a loaded machine.
            deadline = time.monotonic() + 300
            while _group_members(pid) or _port_open(port):
                assert time.monotonic() < deadline, f"the run's server ({pid}) outlived it"
                time.sleep(0.2)
            assert not _group_members(pid) and not _port_open(port)
            # `sae up` can serve the history now. The lock goes when the last holder of its
            # file exits; on a loaded 2-core machine that came moments after the group's end,
            # so wait for it, within the same safety net.
            while (lock := ls._claim_database(ls.history_database(settings))) is None:
                assert time.monotonic() < deadline, "the history database stays locked"
                time.sleep(0.2)
            lock.close()
        finally:
            run.kill()
            if pid is not None and _group_members(pid):
                os.killpg(pid, signal.SIGKILL)


def test_unreachable_configured_servers_fail_fast(monkeypatch):
    closed = ls.free_port()
    monkeypatch.setenv("PREFECT_API_URL", f"http://user:hunter2@127.0.0.1:{closed}/api")
    monkeypatch.setenv("SAE_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed}")
    settings = get_settings()
    started = _servers_of(os.getpid())

    t0 = time.monotonic()
    with pytest.raises(ls.StackError) as error, ls.prefect_for_run(settings):
        pass
    # One check, where the clients' own retries would take a minute or more; the margin
    # is for a loaded machine.
    assert time.monotonic() - t0 < 60
    message = str(error.value)
    assert "cannot reach the Prefect server" in message
    assert "(PREFECT_API_URL)" in message
    assert "user:***@" in message and "hunter2" not in message
    assert _servers_of(os.getpid()) == started  # no server started in its place

    t0 = time.monotonic()
    with pytest.raises(ls.StackError, match=r"MLflow server .*\(SAE_MLFLOW_TRACKING_URI\)"):
        ls.check_mlflow(settings)
    assert time.monotonic() - t0 < 60


def test_sqlite_tracking_needs_no_server(settings):
    ls.check_mlflow(settings)  # nothing to reach, nothing raised


def test_a_server_that_dies_at_start_quotes_its_log(monkeypatch):
    # A store MLflow cannot open: the server exits while starting. The URI carries a
    # password, which the quoted log must not show.
    monkeypatch.setenv("SAE_MLFLOW_TRACKING_URI", "bogus://user:hunter2@nowhere/db")
    server = ls.start_mlflow_server(get_settings())
    with pytest.raises(ls.StackError) as error:
        server.wait_healthy(timeout=300)  # its exit ends the wait; importing MLflow is slow
    message = str(error.value)
    assert "the mlflow server" in message and "exited" in message
    assert str(server.log_path) in message
    assert "unsupported URI 'bogus://user:***@nowhere/db'" in message  # MLflow's own words
    assert "hunter2" not in message
    assert not server.alive()


def test_a_taken_port_is_refused_before_starting(settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ls.StackError, match=f"port {port} on 127.0.0.1 is in use"):
            ls.start_prefect_server(settings, port=port)
