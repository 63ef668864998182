"""Joining a Ray cluster, or starting a local one for the run."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time

from infra.retries import WORKER_RETRIES

log = logging.getLogger(__name__)

#: Variables a worker needs to see the same store, endpoints and offline switches as the
#: driver. Ray starts local workers from the driver's environment, but a cluster's workers
#: only get what the job's runtime_env carries. Secrets are not forwarded: the cluster's
#: own credential chain provides them.
_FORWARDED = (
    "SAE_STORE",
    "SAE_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "SAE_EMBEDDER",
    "SAE_EMBED_API_BASE",
    "SAE_KERNELS",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TRITON_INTERPRET",
    # Task runs of prefect-ray workers report to the driver's Prefect server, not to a
    # temporary server of their own.
    "PREFECT_API_URL",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
)


class RayUnavailableError(RuntimeError):
    pass


def ensure_ray(settings) -> dict[str, float]:
    """Connects once per process; returns the cluster's resources (CPU, GPU, ...)."""
    # Ray: 5 s of import on 2 busy cores (measured), which `sae --help` (it imports this
    # module) must not pay.
    import ray

    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if settings.ray_address:
            _check_reachable(settings.ray_address)
            env = {k: os.environ[k] for k in _FORWARDED if k in os.environ}
            kwargs["runtime_env"] = {"env_vars": env}
        try:
            if settings.ray_address:
                log.info("joining the Ray cluster at %s", settings.ray_address)
                _join(settings.ray_address, kwargs)
            else:
                # A local Ray for this process only; it stops when the process exits. Its
                # workers inherit this environment: no runtime_env, so the workers Ray
                # starts with it serve the tasks (one with a runtime_env needs new ones,
                # each started through an extra Python process).
                # Ray retitles its processes ("ray::DashboardAgent") over the memory that
                # /proc/PID/environ reads, wiping the start of it: RAY_RAYLET_PID with it,
                # at times, and the reaper found nothing to kill. setproctitle leaves the
                # environment alone when SPT_NOENV is set; the titles still fit.
                os.environ.setdefault("SPT_NOENV", "1")
                ray.init(num_cpus=os.cpu_count(), **kwargs)
                _reap_after_raylets()
        except (ConnectionError, RuntimeError, ValueError) as exc:
            if settings.ray_address and _token_refused(exc):
                raise RayUnavailableError(
                    f"the Ray cluster at {settings.ray_address} (RAY_ADDRESS) refused this "
                    "driver's token: set RAY_AUTH_MODE=token and give the cluster's token in "
                    "RAY_AUTH_TOKEN_PATH (a file) or RAY_AUTH_TOKEN; `ray get-auth-token` on "
                    "the head prints it"
                ) from exc
            where = settings.ray_address or "a local Ray"
            hint = ""
            if settings.ray_address and os.environ.get("RAY_AUTH_MODE") != "token":
                # Ray Client (ray://) reports a refused token only as a timeout.
                hint = (
                    " (if the cluster uses Ray's token authentication, set RAY_AUTH_MODE=token "
                    "and RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)"
                )
            raise RayUnavailableError(f"cannot start or reach {where}: {exc}{hint}") from exc
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def _reap_after_raylets() -> None:
    """Starts :mod:`infra.ray_reaper` for the raylet of the local Ray just started (this
    process's child): what its agents would leave running after this process dies."""
    if not os.path.isdir("/proc"):  # Ray ties a local Ray to its driver on Linux only
        return
    for pid in _children(os.getpid(), "raylet"):
        subprocess.Popen(
            [sys.executable, "-m", "infra.ray_reaper", str(pid)],
            # Not this process's output: a caller reading it to its end would wait for
            # the reaper too.
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


def _children(parent: int, name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, _, rest = f.read().rpartition(")")
        except (OSError, ValueError):
            continue
        if head.split("(", 1)[-1] == name and int(rest.split()[1]) == parent:
            pids.append(int(entry))
    return pids


#: Ray Client's head starts one server process per driver; seen on a loaded 2-core head
#: (Ray 2.60): that process dies before it runs, with empty logs, while the head's proxy
#: logs "Other threads are currently calling into gRPC, skipping fork() handlers". Asked
#: again at once, it died again (the proxy was still retrying the dead one's log stream):
#: the next try waits until the proxy has given up on it. When the proxy looks at the dead
#: process before it is reaped, Ray reports psutil's ZombieProcess instead (seen here in a
#: full test run).
_CLIENT_SERVER_DIED = ("Starting Ray client server failed", "psutil.ZombieProcess")
_CLIENT_TRIES = 3
_CLIENT_RETRY_PAUSE_S = 20.0


def _join(address: str, kwargs: dict) -> None:
    import ray  # see ensure_ray

    for attempt in range(1, _CLIENT_TRIES + 1):
        try:
            ray.init(address=address, **kwargs)
            return
        except ConnectionError as exc:
            died = any(sign in str(exc) for sign in _CLIENT_SERVER_DIED)
            if not died or attempt == _CLIENT_TRIES:
                raise
            log.warning(
                "the head's Ray Client server for this driver died at start (try %d of %d); "
                "asking again in %.0f s",
                attempt,
                _CLIENT_TRIES,
                _CLIENT_RETRY_PAUSE_S,
            )
            ray.shutdown()
            time.sleep(_CLIENT_RETRY_PAUSE_S)


def _token_refused(exc: BaseException) -> bool:
    """Whether Ray's token authentication (on by default for `ray start` since Ray 2.59)
    turned the driver away; ray.init reports it as a ConnectionError around the cause."""
    from ray.exceptions import AuthenticationError  # see ensure_ray

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AuthenticationError) or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connect to the head first: ray.init on a dead address retries for minutes."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailableError(
            f"RAY_ADDRESS={address!r} is not host:port or ray://host:port (or 'auto')"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise RayUnavailableError(
            f"cannot reach the Ray cluster at {address} (RAY_ADDRESS): {exc}"
        ) from exc


def cpus_per_node() -> int:
    """The CPUs of the largest alive node: what one CPU-bound task can use at most."""
    import ray  # see ensure_ray

    sizes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(max(sizes, default=1)))


#: Ray restarts a pack whose worker died (killed, out of memory, node lost); the pack
#: resumes from its cells' last checkpoints.
PACK_MAX_RETRIES = WORKER_RETRIES


def pack_resources(
    cluster: dict[str, float], gpus_per_pack: float, n_packs: int | None
) -> tuple[dict, int]:
    """Ray options of one training pack, and how many packs to split the grid into.

    With GPUs: ``gpus_per_pack`` of one each, as many packs as that fills. On CPU: one
    pack taking a whole node's cores (packs on the same cores would only contend).
    """
    n_gpus = cluster.get("GPU", 0.0)
    if n_gpus > 0:
        share = min(gpus_per_pack, n_gpus)
        packs = n_packs or max(1, int(n_gpus / share + 1e-9))
        return {"num_gpus": share, "num_cpus": 1, "max_retries": PACK_MAX_RETRIES}, packs
    return {"num_cpus": cpus_per_node(), "max_retries": PACK_MAX_RETRIES}, n_packs or 1
