"""Joining a Ray cluster, or starting a local one for the run."""

from __future__ import annotations

import logging
import os

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
)


class RayUnavailableError(RuntimeError):
    pass


def ensure_ray(settings) -> dict[str, float]:
    """Connects once per process; returns the cluster's resources (CPU, GPU, ...)."""
    import ray

    if not ray.is_initialized():
        env = {k: os.environ[k] for k in _FORWARDED if k in os.environ}
        kwargs = dict(
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": env},
        )
        try:
            if settings.ray_address:
                log.info("joining the Ray cluster at %s", settings.ray_address)
                ray.init(address=settings.ray_address, **kwargs)
            else:
                # A local Ray for this process only; it stops when the process exits.
                ray.init(num_cpus=os.cpu_count(), **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = settings.ray_address or "a local Ray"
            raise RayUnavailableError(f"cannot start or reach {where}: {exc}") from exc
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def cpus_per_node() -> int:
    """The CPUs of the largest alive node: what one CPU-bound task can use at most."""
    import ray

    sizes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(max(sizes, default=1)))
