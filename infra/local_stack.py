"""Local servers on 127.0.0.1: a Prefect server for one run, and the persistent ``sae up`` stack.

* One run with nothing configured: :func:`prefect_for_run` gives the run a Prefect server
  (the configured one, else the ``sae up`` one, else one it starts and stops itself) and
  points ``PREFECT_API_URL`` at it, so Ray workers started afterwards report to that server
  instead of each starting a temporary one. A run's own server keeps its history in the
  database ``sae up`` serves (``{home}/prefect/prefect.db``), so the Prefect UI shows every
  run, and it dies with the run however the run ends, SIGKILL included. MLflow needs no
  server then: the sqlite file under ``SAE_HOME``. :func:`check_mlflow` fails fast on an
  unreachable MLflow server.
* ``sae up`` / ``sae down``: :func:`stack_up` / :func:`stack_down` keep Prefect, MLflow (and
  optionally an S3 endpoint, moto) running between runs, recorded in ``{home}/stack/``
  (``stack.json``, and ``{name}.pid`` for people); logs in ``{home}/logs/{name}.log``.

The operating system does the bookkeeping. Every server leads its own session (process
group), so stopping it stops its workers too (``mlflow server`` runs uvicorn as a child).
Every server holds an flock on its log for as long as it runs, so "the recorded server
still runs" is a lock test: no pid to trust (a reused pid holds no lock) and no zombie to
tell from a live process. Nothing happens on import; httpx and prefect are imported
where used (seconds of start-up for the command line otherwise).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

from infra.settings import mask_url

if TYPE_CHECKING:
    from infra.settings import Settings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: Ports ``sae up`` tries first, so the exports it prints stay valid across down and up;
#: a taken one falls back to a free port.
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000, "s3": 9000}
#: How long a configured server gets to answer before a run gives up on it.
CHECK_TIMEOUT_S = 5.0

# Services a run's own Prefect server can do without: they serve deployments, schedules,
# work pools, cancellation and automations, none of which a single run started from
# the command line uses. The task run recorder stays: it is what records task runs.
_RUN_SERVER_OFF = (
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED",
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_ENABLED",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED",
    "PREFECT_UI_ENABLED",
)


class StackError(RuntimeError):
    """A local server did not start, or a configured one cannot be reached."""


class DatabaseInUseError(StackError):
    """Another Prefect server serves the sqlite file this one was to serve."""


# Servers started by this process and not yet reaped, by pid.
_children: dict[int, subprocess.Popen] = {}


# --- ports, locks and process groups -------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: a TIME_WAIT left by a stopped server does not make it taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _log_is_held(log_path: str | Path) -> bool:
    """Whether the server writing ``log_path`` still runs: it holds an flock on it."""
    try:
        with open(log_path, "rb") as file:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no such log
        return False
    return False


def _stop_groups(groups: dict[int, Callable[[], bool]], grace: float = 5.0) -> None:
    """SIGTERM to each process group (pgid -> whether it is gone), SIGKILL to those still
    there after ``grace`` s."""
    left = dict(groups)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pgid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = {pgid: gone for pgid, gone in left.items() if not gone()}
        if not left:
            return
    log.warning("process group(s) %s still running after SIGKILL", sorted(left))


def _reap(pid: int) -> None:
    """Waits for a server this process started, so that none stays a zombie."""
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(5.0)


def _log_tail(path: Path, lines: int = 20, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]
    return mask_url(tail) or "(empty log)"


def _answers(url: str, timeout: float = 1.0) -> bool:
    """GET ``url`` answers 200. Local servers only: no proxy from the environment."""
    # httpx is imported where used: 0.5-0.6 s of the 2.8 s that `sae --help` spends
    # importing the command line (measured on 2 cores), which imports this module.
    import httpx

    try:
        return httpx.get(url, timeout=timeout, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


# --- one server ----------------------------------------------------------------------------


@dataclass
class Server:
    """A server subprocess on 127.0.0.1, the leader of its own process group.

    ``url`` is its base address (the UI), ``api_url`` what clients are given (Prefect's
    ends in ``/api``), ``health_url`` what answers 200 once it serves. ``tie`` is the
    write end of a tied server's stdin (see infra.tied), closed once it has stopped.
    """

    name: str
    url: str
    api_url: str
    health_url: str
    log_path: Path
    process: subprocess.Popen = field(repr=False, compare=False)
    tie: int | None = field(default=None, repr=False, compare=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_healthy(self, timeout: float = 90.0) -> Server:
        """Polls the health URL; raises StackError with the log's tail if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise StackError(
                    f"the {self.name} server on {self.url} exited with code "
                    f"{self.process.returncode} while starting; the end of {self.log_path}:\n"
                    f"{_log_tail(self.log_path)}"
                )
            if _answers(self.health_url):
                return self
            if time.monotonic() > deadline:
                raise StackError(
                    f"the {self.name} server on {self.url} did not answer {self.health_url} "
                    f"within {timeout:.0f} s; the end of {self.log_path}:\n"
                    f"{_log_tail(self.log_path)}"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(0.25)  # an exit ends the pause at once

    def stop(self, grace: float = 5.0) -> bool:
        """SIGTERM to the process group, SIGKILL after ``grace`` s; False if it had exited."""
        running = self.alive()
        if running:  # an exited leader's pgid may be someone else's by now: no signal then
            _stop_groups({self.pid: lambda: not self.alive()}, grace)
            log.info("stopped the %s server on %s", self.name, self.url)
        _reap(self.pid)
        if self.tie is not None:
            os.close(self.tie)
            self.tie = None
        return running


def _fresh_log(home: Path, log_name: str) -> IO[bytes]:
    """A new ``{home}/logs/{log_name}.log``, open; the previous one kept as ``.log.1`` (a
    crash's story). Always a new file, so the lock a server holds on its log is its own."""
    folder = home / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{log_name}.log"
    while True:  # again only if another server's start created the file in between
        with contextlib.suppress(FileNotFoundError):
            path.replace(path.with_name(path.name + ".1"))
        with contextlib.suppress(FileExistsError):
            return open(path, "xb")  # the caller closes it


def _spawn(
    settings: Settings,
    name: str,
    module_argv: list[str],
    *,
    port: int,
    env: dict[str, str],
    health_path: str,
    api_path: str = "",
    log_name: str | None = None,
    pass_fds: tuple[int, ...] = (),
    tied: bool = False,
) -> Server:
    """Starts ``python -m {module_argv}`` in its own session, its output in its log (which
    it holds an flock on while it runs); ``tied``: it dies with this process (infra.tied)."""
    if not port_is_free(port):
        # Checked here: a server already answering there would pass our health check.
        raise StackError(f"port {port} on {HOST} is in use: the {name} server cannot listen there")
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", *(["infra.tied"] if tied else []), *module_argv]
    stdin, tie = os.pipe() if tied else (subprocess.DEVNULL, None)
    try:
        with _fresh_log(home, log_name or name) as out:
            fcntl.flock(out, fcntl.LOCK_EX)  # a new file: only a reader's test can delay it
            process = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=home,  # whatever a server writes next to itself stays under SAE_HOME
                start_new_session=True,
                pass_fds=pass_fds,
            )
    except BaseException:
        if tie is not None:
            os.close(tie)
        raise
    finally:
        if tie is not None:
            os.close(stdin)
    _children[process.pid] = process
    log_path = Path(out.name)
    url = f"http://{HOST}:{port}"
    log.info("starting the %s server on %s (log: %s)", name, url, log_path)
    return Server(name, url, url + api_path, url + health_path, log_path, process, tie)


def _server_env(**updates: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # the log's tail must be there when a server dies
    env.update(updates)
    return env


def history_database(settings: Settings) -> Path:
    """The sqlite file of every local Prefect server: ``sae up``'s and each run's own."""
    return settings.home / "prefect" / "prefect.db"


def _claim_database(database: Path) -> IO[str] | None:
    """An exclusive lock on ``{database}.lock`` as an open file, or None if a server holds it.

    Two servers on one sqlite file would fight over its migrations and locks. The server
    inherits the lock, so it is held exactly as long as that server runs.
    """
    # Not a `with`: the lock outlives this function, in the server.
    lock = open(database.with_name(database.name + ".lock"), "w")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def start_prefect_server(
    settings: Settings,
    port: int | None = None,
    *,
    persistent: bool = False,
    database: Path | None = None,
) -> Server:
    """Starts ``prefect server start`` on 127.0.0.1 and returns at once (see wait_healthy).

    The database is :func:`history_database` unless given, so a run's server and ``sae up``
    record one history (and a later start skips the migrations); DatabaseInUseError while
    another server serves it. A run's server (``persistent=False``) serves no UI, runs
    none of the scheduling services, and dies with this process.
    """
    port = port or free_port()
    prefect_home = settings.home / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    database = database or history_database(settings)
    lock = _claim_database(database)
    if lock is None:
        raise DatabaseInUseError(
            f"another Prefect server serves {database} (a run started without `sae up`?): "
            "start this one once it has stopped"
        )
    env = _server_env(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{database}",
    )
    # The server must not act as a client of another server, nor take an older-named
    # database setting over ours.
    for name in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(name, None)
    if not persistent:
        env.update(dict.fromkeys(_RUN_SERVER_OFF, "false"))
    argv = ["infra.prefect_server", "server", "start", "--host", HOST, "--port", str(port)]
    with lock:
        return _spawn(
            settings,
            "prefect",
            argv,
            port=port,
            env=env,
            health_path="/api/health",
            api_path="/api",
            log_name="prefect" if persistent else "prefect-run",
            pass_fds=(lock.fileno(),),
            tied=not persistent,
        )


def local_tracking_uri(settings: Settings) -> str:
    """The sqlite MLflow store under SAE_HOME (four slashes: an absolute path)."""
    return f"sqlite:///{settings.home / 'mlflow.db'}"


def start_mlflow_server(
    settings: Settings, port: int | None = None, artifact_root: str | None = None
) -> Server:
    """Starts ``mlflow server`` on 127.0.0.1 over the settings' tracking store; returns at once.

    An http(s) tracking URI is a server already, so the local sqlite store is served instead.
    Artifacts go to ``artifact_root`` or ``{store}/mlflow``.
    """
    port = port or free_port()
    backend = settings.tracking_uri
    if backend.startswith(("http://", "https://")):
        backend = local_tracking_uri(settings)
    env = _server_env(
        # Otherwise it forks job workers (GBs of memory) that nothing here uses.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        # Through the environment, not argv: a database password would show in `ps`.
        MLFLOW_BACKEND_STORE_URI=backend,
    )
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not settings.store_is_local and settings.s3_endpoint_url:
        env["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    argv = [
        "mlflow",
        "server",
        "--default-artifact-root",
        artifact_root or f"{settings.store}/mlflow",
    ]
    argv += ["--host", HOST, "--port", str(port), "--workers", "1"]
    return _spawn(settings, "mlflow", argv, port=port, env=env, health_path="/health")


def _require_moto() -> None:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise StackError(
            "a local S3 endpoint needs moto's server, a development dependency: "
            "pip install 'moto[server]'"
        )


def start_s3_server(settings: Settings, port: int | None = None) -> Server:
    """Starts moto's S3-protocol server on 127.0.0.1 (any keys work); returns at once."""
    _require_moto()
    port = port or free_port()
    argv = ["moto.server", "-H", HOST, "-p", str(port)]
    return _spawn(settings, "s3", argv, port=port, env=_server_env(), health_path="/moto-api/")


# --- configured servers --------------------------------------------------------------------


def _setting_name(*names: str) -> str:
    """The variable the value came from (the first set of the aliases), for error messages."""
    return next((n for n in names if os.environ.get(n)), names[-1])


def _check_reachable(url: str, setting: str, what: str, headers: dict[str, str]) -> None:
    import httpx  # see _answers

    try:
        response = httpx.get(url, headers=headers, timeout=CHECK_TIMEOUT_S)
    except httpx.TimeoutException:
        reason = f"no answer within {CHECK_TIMEOUT_S:.0f} s"
    except httpx.HTTPError as exc:  # refused, unknown host, TLS
        reason = str(exc) or type(exc).__name__
    else:
        # 401/403: a server is there; credentials are the client's business later.
        if response.status_code < 300 or response.status_code in (401, 403):
            return
        reason = f"HTTP {response.status_code} from {url}"
    raise StackError(f"cannot reach the {what} at {mask_url(url)} ({setting}): {mask_url(reason)}")


def check_prefect(settings: Settings) -> None:
    """A configured Prefect API URL must answer ``{url}/health`` within a few seconds."""
    url = settings.prefect_api_url.rstrip("/")
    if not url:
        return
    key = os.environ.get("PREFECT_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    setting = _setting_name("SAE_PREFECT_API_URL", "PREFECT_API_URL")
    _check_reachable(f"{url}/health", setting, "Prefect server", headers)


def check_mlflow(settings: Settings) -> None:
    """An http(s) MLflow tracking URI must answer ``/health`` within a few seconds.

    sqlite and file stores need no server: nothing to check.
    """
    uri = settings.tracking_uri.rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    setting = _setting_name("SAE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")
    _check_reachable(f"{uri}/health", setting, "MLflow server", headers)


# --- one run -------------------------------------------------------------------------------


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _start_run_server(settings: Settings, stack: contextlib.ExitStack) -> tuple[Server, bool]:
    """A Prefect server for one run and whether it keeps the history: on the shared file,
    else (another run's server holds it) on a private one that goes away with the run."""
    try:
        return start_prefect_server(settings), True
    except DatabaseInUseError:
        private = history_database(settings).with_name(f"run-{os.getpid()}.db")
        log.warning(
            "another run's Prefect server holds %s: this run's Prefect history is not kept",
            history_database(settings),
        )
        stack.callback(_remove_database, private)
        return start_prefect_server(settings, database=private), False


def stack_prefect_ui() -> str:
    """Where ``sae up`` serves the Prefect UI when its port is free: runs without it link there."""
    return f"http://{HOST}:{DEFAULT_PORTS['prefect']}"


def _remove_database(database: Path) -> None:
    for path in database.parent.glob(f"{database.name}*"):  # with its -wal, -shm and .lock
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def prefect_for_run(
    settings: Settings,
    *,
    while_booting: Callable[[], object] | None = None,
    timeout: float = 90.0,
) -> Iterator[str]:
    """The Prefect API URL for one run, set as ``PREFECT_API_URL`` until the block ends.

    In order: the configured ``PREFECT_API_URL`` (it must answer within ~5 s, else
    StackError), the ``sae up`` server if it is healthy, else a server started here on
    127.0.0.1 and stopped at the end (or when this process dies, however it dies).
    ``os.environ["PREFECT_API_URL"]`` is set (and restored afterwards) before anything
    else, so processes started inside the block, Ray's included, report to that server;
    the Prefect settings of this process follow too.

    A new server takes 10-20 s to boot on 2 cores. ``while_booting`` is called meanwhile, with the
    variable already set: pass the rest of the start-up (``ray.init``, loading data) so it
    overlaps. The block is entered once the server answers.

    A server started here serves no UI, but records into the database ``sae up`` serves:
    Prefect's "View at" links point at the ``sae up`` UI (``PREFECT_UI_URL``), and at the
    end the run logs how to open its flow runs there.
    """
    url = _running_prefect_url(settings)
    with contextlib.ExitStack() as stack:
        server, kept = None, False
        if url is None:
            server, kept = _start_run_server(settings, stack)
            stack.callback(server.stop)
            url = server.api_url
        _warn_if_cluster_cannot_report(settings, url)
        ui_url = stack_prefect_ui() if kept else None
        stack.enter_context(_environ("PREFECT_API_URL", url))
        if ui_url:
            stack.enter_context(_environ("PREFECT_UI_URL", ui_url))
        if while_booting is not None:
            while_booting()
        if server is not None:
            server.wait_healthy(timeout)
            log.info("a Prefect server for this run: %s", url)
        stack.enter_context(_prefect_settings(url, ui_url))
        if kept:
            since = datetime.now(UTC).isoformat()
            stack.callback(_point_at_history, settings, url, since)
        if server is not None:
            stack.callback(_drain_prefect_clients)  # first thing at exit (LIFO)
        yield url


def _point_at_history(settings: Settings, api_url: str, since: str) -> None:
    """Logs where the run's flow runs can be seen once its own server has stopped."""
    import httpx  # see _answers

    query = {
        "flow_runs": {"start_time": {"after_": since}, "parent_task_run_id": {"is_null_": True}},
        "sort": "START_TIME_ASC",
        "limit": 20,
    }
    try:
        response = httpx.post(
            f"{api_url}/flow_runs/filter", json=query, timeout=30, trust_env=False
        )
        runs = response.json() if response.status_code == 200 else []
    except httpx.HTTPError:
        runs = []
    ui = stack_prefect_ui()
    links = [f"{ui}/runs/flow-run/{run['id']}" for run in runs]
    log.info(
        "this run's Prefect server stops now; its history stays in %s. To see it: "
        "`sae up`, then open %s",
        history_database(settings),
        " ".join(links) or f"{ui}/runs",
    )


def _warn_if_cluster_cannot_report(settings: Settings, url: str) -> None:
    """Ray workers report their task runs to Prefect themselves: on other machines they
    cannot reach a server that listens on this machine's loopback."""
    if settings.ray_address and urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "RAY_ADDRESS=%s but Prefect is %s, on this machine only: Ray workers on other "
            "machines cannot report their task runs to it. Set PREFECT_API_URL to a Prefect "
            "server they can reach.",
            settings.ray_address,
            url,
        )


def _running_prefect_url(settings: Settings) -> str | None:
    if settings.prefect_api_url:
        check_prefect(settings)
        return settings.prefect_api_url.rstrip("/")
    return running_stack_url(settings, "prefect")


def _drain_prefect_clients(timeout: float = 5.0) -> None:
    """Sends the logs and events this process still queues, before their server goes away.

    Otherwise Prefect tries at interpreter exit and prints connection errors.
    """
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout, at_exit=False)
        except Exception as exc:  # a flush must not hide the run's own outcome
            log.debug("draining %s: %s", worker.__name__, exc)


def _prefect_settings(url: str, ui_url: str | None) -> contextlib.AbstractContextManager:
    # Imported here: importing prefect takes seconds (4.6 s measured on 2 cores), which
    # `sae up`, `down` and `ui` do not need. Prefect reads the environment once, at
    # import: a variable set later does not reach this process's flows without an
    # explicit override.
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    updates = {PREFECT_API_URL: url}
    if ui_url:
        updates[PREFECT_UI_URL] = ui_url
    return temporary_settings(updates=updates)


# --- the persistent stack ------------------------------------------------------------------


def _stack_dir(settings: Settings) -> Path:
    folder = settings.home / "stack"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def _stack_lock(settings: Settings) -> Iterator[None]:
    """Serialises ``up`` and ``down`` of one SAE_HOME (a second waits for the first)."""
    with open(_stack_dir(settings) / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_records(settings: Settings) -> dict[str, dict]:
    try:
        records = json.loads((settings.home / "stack" / "stack.json").read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _write_records(settings: Settings, records: dict[str, dict]) -> None:
    """``stack.json`` and one ``{name}.pid`` per record; neither is left without records."""
    folder = _stack_dir(settings)
    for pid_file in folder.glob("*.pid"):
        if pid_file.stem not in records:  # no record to say what it is: never signal it
            pid_file.unlink(missing_ok=True)
    for name, record in records.items():
        (folder / f"{name}.pid").write_text(f"{record['pid']}\n")
    path = folder / "stack.json"
    if not records:
        path.unlink(missing_ok=True)
        return
    tmp = folder / "stack.json.tmp"
    tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)  # readers never see half a file


def _running(record: dict) -> bool:
    """The recorded server still runs: it holds the lock on its log."""
    return bool(record.get("log")) and _log_is_held(record["log"])


def _live_records(settings: Settings) -> dict[str, dict]:
    """The records whose server runs; stale entries and pid files removed."""
    records = _read_records(settings)
    for name in [name for name, record in records.items() if not _running(record)]:
        log.info("removing the stale record of the %s server", name)
        del records[name]
    _write_records(settings, records)
    return records


def _stop_records(records: list[dict]) -> None:
    """Stops recorded servers, by process group; done when each has let its log go."""
    _stop_groups({r["pid"]: lambda r=r: not _running(r) for r in records})
    for record in records:
        _reap(record["pid"])


def stack_up(settings: Settings, s3: bool = False, *, timeout: float = 180.0) -> dict[str, str]:
    """Starts Prefect and MLflow (and moto with ``s3``) unless running and healthy.

    Records each in ``{home}/stack/stack.json`` (and ``{name}.pid``) as soon as it is
    started, waits until all answer, and returns name -> URL of every stack service
    (Prefect's is its API URL). A second call with everything healthy starts nothing.
    """
    starters: dict[str, Callable[[int], Server]] = {
        "prefect": lambda port: start_prefect_server(settings, port, persistent=True),
        "mlflow": lambda port: start_mlflow_server(settings, port),
        "s3": lambda port: start_s3_server(settings, port),
    }
    names = ["prefect", "mlflow"] + (["s3"] if s3 else [])
    with _stack_lock(settings):
        records = _live_records(settings)
        missing = [n for n in names if not _record_healthy(records, n)]
        if "s3" in missing:
            _require_moto()  # before anything starts
        started: list[Server] = []
        try:
            for name in missing:
                port = DEFAULT_PORTS[name]
                server = starters[name](port if port_is_free(port) else free_port())
                started.append(server)
                records[name] = {
                    "url": server.api_url,
                    "ui": server.url,
                    "health": server.health_url,
                    "pid": server.pid,
                    "log": str(server.log_path),
                }
                _write_records(settings, records)
            deadline = time.monotonic() + timeout
            for server in started:
                server.wait_healthy(max(1.0, deadline - time.monotonic()))
        except BaseException:
            for server in started:
                server.stop()
                records.pop(server.name, None)
            _write_records(settings, records)
            raise
        return {name: record["url"] for name, record in records.items()}


def _record_healthy(records: dict[str, dict], name: str) -> bool:
    """Whether ``name`` runs and answers; a live one that does not answer is stopped."""
    record = records.get(name)
    if record is None:
        return False
    for _ in range(3):  # a busy server gets a few chances before it counts as hung
        if _answers(record["health"], timeout=2.0):
            return True
    log.warning("the %s server (pid %s) does not answer: restarting it", name, record["pid"])
    _stop_records([records.pop(name)])
    return False


def stack_down(settings: Settings) -> list[str]:
    """Stops every recorded server (its whole process group); returns the names stopped."""
    with _stack_lock(settings):
        records = _live_records(settings)
        _stop_records(list(records.values()))
        _write_records(settings, {})
    return sorted(records)


def stack_status(settings: Settings) -> dict[str, dict]:
    """name -> url, ui, pid, log, healthy for each recorded server. Reads only: no lock."""
    status = {}
    for name, record in _read_records(settings).items():
        healthy = _running(record) and _answers(record.get("health", ""), timeout=2.0)
        status[name] = {k: record.get(k) for k in ("url", "ui", "pid", "log")}
        status[name]["healthy"] = healthy
    return status


def running_stack_url(settings: Settings, name: str) -> str | None:
    """The URL of the ``sae up`` server ``name`` if it runs and answers, else None."""
    record = stack_status(settings).get(name)
    return record["url"] if record and record["healthy"] else None
