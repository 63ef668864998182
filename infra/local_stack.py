"""Local servers on 127.0.0.1: a Prefect server for one run, and the persistent ``sae up`` stack.

* :func:`prefect_for_run` gives a run a Prefect server: the configured one (it must
  answer within a few seconds), else the ``sae up`` one, else one started for the run.
  That one records into the database ``sae up`` serves (``{home}/prefect/prefect.db``),
  so the Prefect UI shows every run, and dies with the run however the run ends, SIGKILL
  included (infra.tied). MLflow needs no server then: the sqlite file under SAE_HOME.
* ``sae up`` / ``sae down`` (:func:`stack_up` / :func:`stack_down`): Prefect, MLflow (and
  optionally moto's S3) on fixed ports, a pid file each in ``{home}/stack``, logs in
  ``{home}/logs/{name}.log``.

Every server leads its own process group, so stopping the group stops its workers too
(``mlflow server`` runs uvicorn as a child). Every process of a ``sae up`` server writes
to its log, which carries an flock: it is held exactly as long as one of them runs, so a
pid file whose log is free is stale and never signalled (its pid may be reused).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
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

from infra.empty_db import template_path
from infra.settings import mask_url

if TYPE_CHECKING:
    from infra.settings import Settings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: The ``sae up`` ports: fixed, so the exports it prints and the links a run logs hold
#: across down and up (a taken one is an error, not another port).
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000, "s3": 9000}
#: Each server's (API path, health path) under its base URL.
_PATHS = {"prefect": ("/api", "/api/health"), "mlflow": ("", "/health"), "s3": ("", "/moto-api/")}
#: How long a configured server gets to answer before a run gives up on it.
CHECK_TIMEOUT_S = 5.0

# Services a run's own Prefect server can do without (deployments, schedules, work pools,
# cancellation, automations, block types: a run started from the command line uses none of
# them). The task run recorder stays: it is what records task runs.
_RUN_SERVER_OFF = (
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START",
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


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: a TIME_WAIT left by a stopped server does not make it taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _log_is_held(log_path: Path) -> bool:
    """Whether a process of the server writing ``log_path`` still runs."""
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
    if left:
        log.warning("process group(s) %s still running after SIGKILL", sorted(left))


def _log_tail(path: Path, lines: int = 20, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]
    return mask_url(tail) or "(empty log)"


def _answers(url: str, timeout: float = 1.0) -> bool:
    """GET ``url`` answers 200. Local servers only: no proxy from the environment."""
    # Imported here: 0.5-0.6 s of the 2.8 s that `sae --help` spends importing the
    # command line (measured on 2 cores), which imports this module.
    import httpx

    try:
        return httpx.get(url, timeout=timeout, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


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
        while not _answers(self.health_url):
            if not self.alive():
                problem = f"exited with code {self.process.returncode} while starting"
            elif time.monotonic() > deadline:
                problem = f"did not answer {self.health_url} within {timeout:.0f} s"
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(0.25)  # an exit ends the pause at once
                continue
            raise StackError(
                f"the {self.name} server on {self.url} {problem}; the end of "
                f"{self.log_path}:\n{_log_tail(self.log_path)}"
            )
        return self

    def stop(self, grace: float = 5.0) -> bool:
        """SIGTERM to the process group, SIGKILL after ``grace`` s; False if it had exited."""
        running = self.alive()  # polling reaps an exited one
        if running:  # an exited leader's pgid may be someone else's by now: no signal then
            _stop_groups({self.pid: lambda: not self.alive()}, grace)
            log.info("stopped the %s server on %s", self.name, self.url)
        if self.tie is not None:
            os.close(self.tie)
            self.tie = None
        return running


def _spawn(
    settings: Settings,
    name: str,
    module_argv: list[str],
    *,
    port: int,
    env: dict[str, str | None],
    log_name: str | None = None,
    pass_fds: tuple[int, ...] = (),
    tied: bool = False,
) -> Server:
    """Starts ``python -m {module_argv}`` in its own session, its output in a new log (the
    previous one kept as ``.log.1``, a crash's story). ``tied``: it dies with this process
    (infra.tied); else it holds an flock on its log for as long as it runs."""
    if not _port_is_free(port):
        # Checked here: a server already answering there would pass our health check.
        raise StackError(f"port {port} on {HOST} is in use: the {name} server cannot listen there")
    log_path = settings.home / "logs" / f"{log_name or name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        log_path.replace(log_path.with_name(log_path.name + ".1"))
    argv = [sys.executable, "-m", *(["infra.tied"] if tied else []), *module_argv]
    stdin, tie = os.pipe() if tied else (subprocess.DEVNULL, None)
    # Unbuffered, so that the log's tail is there when a server dies; None unsets.
    env = {k: v for k, v in {**os.environ, "PYTHONUNBUFFERED": "1", **env}.items() if v is not None}
    try:
        with open(log_path, "wb") as out:
            if not tied:  # a new file: only a reader's test can delay this
                fcntl.flock(out, fcntl.LOCK_EX)
            process = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=settings.home,  # whatever a server writes next to itself stays there
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
    url = f"http://{HOST}:{port}"
    api_path, health_path = _PATHS[name]
    log.info("starting the %s server on %s (log: %s)", name, url, log_path)
    return Server(name, url, url + api_path, url + health_path, log_path, process, tie)


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
    prefect_home = settings.home / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    database = database or history_database(settings)
    lock = _claim_database(database)
    if lock is None:
        raise DatabaseInUseError(
            f"another Prefect server serves {database} (a run started without `sae up`?): "
            "start this one once it has stopped"
        )
    env: dict[str, str | None] = {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database}",
        "SAE_PREFECT_EMPTY_DB": str(template_path(settings.cache_root, "prefect")),
        # Not a client of another server, nor an older-named database setting over ours.
        "PREFECT_API_URL": None,
        "PREFECT_API_DATABASE_CONNECTION_URL": None,
    }
    if not persistent:
        env.update(dict.fromkeys(_RUN_SERVER_OFF, "false"))
    port = port or free_port()
    argv = ["infra.prefect_server", "server", "start", "--host", HOST, "--port", str(port)]
    with lock:
        return _spawn(
            settings,
            "prefect",
            argv,
            port=port,
            env=env,
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
    backend = settings.tracking_uri
    if backend.startswith(("http://", "https://")):
        backend = local_tracking_uri(settings)
    env = {
        # Otherwise it forks job workers (GBs of memory) that nothing here uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # Through the environment, not argv: a database password would show in `ps`.
        "MLFLOW_BACKEND_STORE_URI": backend,
        "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),
    }
    if not settings.store_is_local and settings.s3_endpoint_url:
        env["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    port = port or free_port()
    argv = [
        "mlflow",
        "server",
        "--default-artifact-root",
        artifact_root or f"{settings.store}/mlflow",
    ]
    argv += ["--host", HOST, "--port", str(port), "--workers", "1"]
    return _spawn(settings, "mlflow", argv, port=port, env=env)


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
    return _spawn(settings, "s3", ["moto.server", "-H", HOST, "-p", str(port)], port=port, env={})


# --- configured servers --------------------------------------------------------------------


def _check_reachable(url: str, names: tuple[str, str], what: str, token: str | None) -> None:
    """``{url}/health`` answers within CHECK_TIMEOUT_S, else StackError naming the variable
    (the first set of ``names``) it came from."""
    import httpx  # see _answers

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{url}/health", headers=headers, timeout=CHECK_TIMEOUT_S)
    except httpx.TimeoutException:
        reason = f"no answer within {CHECK_TIMEOUT_S:.0f} s"
    except httpx.HTTPError as exc:  # refused, unknown host, TLS
        reason = str(exc) or type(exc).__name__
    else:
        # 401/403: a server is there; credentials are the client's business later.
        if response.status_code < 300 or response.status_code in (401, 403):
            return
        reason = f"HTTP {response.status_code} from {url}/health"
    setting = next((n for n in names if os.environ.get(n)), names[-1])
    raise StackError(f"cannot reach the {what} at {mask_url(url)} ({setting}): {mask_url(reason)}")


def check_prefect(settings: Settings) -> None:
    """A configured Prefect API URL must answer ``{url}/health`` within a few seconds."""
    url = settings.prefect_api_url.rstrip("/")
    if url:
        names = ("SAE_PREFECT_API_URL", "PREFECT_API_URL")
        _check_reachable(url, names, "Prefect server", os.environ.get("PREFECT_API_KEY"))


def check_mlflow(settings: Settings) -> None:
    """An http(s) MLflow tracking URI must answer ``/health`` within a few seconds (sqlite
    and file stores need no server)."""
    uri = settings.tracking_uri.rstrip("/")
    if uri.startswith(("http://", "https://")):
        names = ("SAE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")
        _check_reachable(uri, names, "MLflow server", os.environ.get("MLFLOW_TRACKING_TOKEN"))


# --- one run -------------------------------------------------------------------------------


@contextlib.contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    """Sets the variables that are not None until the block ends."""
    old = {name: os.environ.get(name) for name in values}
    os.environ.update({name: value for name, value in values.items() if value is not None})
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def stack_prefect_ui() -> str:
    """Where ``sae up`` serves the Prefect UI: runs without it link there."""
    return f"http://{HOST}:{DEFAULT_PORTS['prefect']}"


def _start_run_server(settings: Settings, stack: contextlib.ExitStack) -> tuple[Server, bool]:
    """A Prefect server for one run and whether it keeps the history: on the shared file,
    else (another run's server holds it) on a private one that goes away with the run."""
    try:
        return start_prefect_server(settings), True
    except DatabaseInUseError:
        history = history_database(settings)
        log.warning(
            "another run's Prefect server holds %s: this run's history is not kept", history
        )
        private = history.with_name(f"run-{os.getpid()}.db")
        # With its -wal, -shm and .lock; registered before the start, which creates them.
        stack.callback(
            lambda: [p.unlink(missing_ok=True) for p in private.parent.glob(f"{private.name}*")]
        )
        return start_prefect_server(settings, database=private), False


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
    if settings.prefect_api_url:
        check_prefect(settings)
        url = settings.prefect_api_url.rstrip("/")
    else:
        url = running_stack_url(settings, "prefect")
    with contextlib.ExitStack() as stack:
        server, kept = None, False
        if url is None:
            server, kept = _start_run_server(settings, stack)
            stack.callback(server.stop)
            url = server.api_url
        if settings.ray_address and urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "RAY_ADDRESS=%s but Prefect is %s, on this machine only: Ray workers on other "
                "machines cannot report their task runs to it. Set PREFECT_API_URL to a "
                "Prefect server they can reach.",
                settings.ray_address,
                url,
            )
        ui_url = stack_prefect_ui() if kept else None
        stack.enter_context(_environ(PREFECT_API_URL=url, PREFECT_UI_URL=ui_url))
        if while_booting is not None:
            while_booting()
        if server is not None:
            server.wait_healthy(timeout)
            log.info("a Prefect server for this run: %s", url)
        stack.enter_context(_prefect_settings(url, ui_url))
        if kept:
            stack.callback(_point_at_history, settings, url, datetime.now(UTC).isoformat())
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
    log.info(
        "this run's Prefect server stops now; its history stays in %s. To see it: "
        "`sae up`, then open %s",
        history_database(settings),
        " ".join(f"{ui}/runs/flow-run/{run['id']}" for run in runs) or f"{ui}/runs",
    )


def _drain_prefect_clients(timeout: float = 5.0) -> None:
    """Sends the logs and events this process still queues, before their server goes away.

    Otherwise Prefect tries at interpreter exit and prints connection errors.
    """
    if "prefect" not in sys.modules:  # nothing queued, and nothing to import for it
        return
    # Prefect: 4.6 s of import (see _prefect_settings), paid only by a process that uses it.
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


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.home / "stack" / f"{name}.pid"


def _stack_log(settings: Settings, name: str) -> Path:
    return settings.home / "logs" / f"{name}.log"


@contextlib.contextmanager
def _stack_lock(settings: Settings) -> Iterator[None]:
    """Serialises ``up`` and ``down`` of one SAE_HOME (a second waits for the first)."""
    folder = settings.home / "stack"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _stop_stack(settings: Settings, pids: dict[str, int]) -> None:
    """Stops ``sae up`` servers (name -> pid), by process group; done when each has let
    its log go."""
    logs = {pid: _stack_log(settings, name) for name, pid in pids.items()}
    _stop_groups({pid: lambda p=path: not _log_is_held(p) for pid, path in logs.items()})


def _stack_pids(settings: Settings) -> dict[str, int | None]:
    """name -> pid for each ``sae up`` pid file; None where its server has stopped."""
    pids = {}
    for name in DEFAULT_PORTS:
        with contextlib.suppress(OSError, ValueError):
            pid = int(_pid_file(settings, name).read_text())
            pids[name] = pid if _log_is_held(_stack_log(settings, name)) else None
    return pids


def stack_status(settings: Settings) -> dict[str, dict]:
    """name -> url, ui, pid, log, healthy for each ``sae up`` pid file. Reads only: no lock."""
    status = {}
    for name, pid in _stack_pids(settings).items():
        ui = f"http://{HOST}:{DEFAULT_PORTS[name]}"
        api_path, health_path = _PATHS[name]
        status[name] = {"url": ui + api_path, "ui": ui, "pid": pid}
        status[name]["log"] = str(_stack_log(settings, name))
        status[name]["healthy"] = pid is not None and _answers(ui + health_path, timeout=5.0)
    return status


def running_stack_url(settings: Settings, name: str) -> str | None:
    """The URL of the ``sae up`` server ``name`` if it runs and answers, else None."""
    record = stack_status(settings).get(name)
    return record["url"] if record and record["healthy"] else None


def stack_up(settings: Settings, s3: bool = False, *, timeout: float = 180.0) -> dict[str, str]:
    """Starts Prefect and MLflow (and moto with ``s3``) unless running and healthy; one
    that runs but does not answer is restarted.

    Writes each one's pid file as soon as it is started, waits until all answer, and
    returns name -> URL of every stack server (Prefect's is its API URL).
    """
    starters: dict[str, Callable[[int], Server]] = {
        "prefect": lambda port: start_prefect_server(settings, port, persistent=True),
        "mlflow": lambda port: start_mlflow_server(settings, port),
        "s3": lambda port: start_s3_server(settings, port),
    }
    if s3:
        _require_moto()  # before anything starts
    with _stack_lock(settings):
        status = stack_status(settings)
        urls = {name: record["url"] for name, record in status.items() if record["healthy"]}
        started: list[Server] = []
        try:
            for name in ["prefect", "mlflow"] + (["s3"] if s3 else []):
                pid = status.get(name, {}).get("pid")
                if name in urls:
                    continue
                if pid is not None:
                    log.warning("the %s server (pid %s) does not answer: restarting it", name, pid)
                    _stop_stack(settings, {name: pid})
                started.append(starters[name](DEFAULT_PORTS[name]))
                _pid_file(settings, name).write_text(f"{started[-1].pid}\n")
            deadline = time.monotonic() + timeout
            for server in started:
                server.wait_healthy(max(1.0, deadline - time.monotonic()))
                urls[server.name] = server.api_url
        except BaseException:
            for server in started:
                server.stop()
                _pid_file(settings, server.name).unlink(missing_ok=True)
            raise
    return urls


def stack_down(settings: Settings) -> list[str]:
    """Stops every ``sae up`` server (its whole process group); returns the names stopped.
    Stale pid files go too."""
    with _stack_lock(settings):
        pids = _stack_pids(settings)
        running = {name: pid for name, pid in pids.items() if pid is not None}
        _stop_stack(settings, running)
        for name in pids:
            _pid_file(settings, name).unlink(missing_ok=True)
    return sorted(running)
