"""Re-embedding new arXiv papers on a schedule: parameters, the per-domain lease, and
the flow's steps (``tasks.reembed.steps``, not imported here: Prefect and MLflow take
seconds that the `sae` command line, which reads the parameters, should not pay)."""

from tasks.reembed.lease import (
    LeaseError,
    LeaseLostError,
    ReembedBusyError,
    ReembedIncompleteError,
    acquire_lease,
    check_owner,
    lease_path,
)
from tasks.reembed.params import ReembedParams

__all__ = [
    "LeaseError",
    "LeaseLostError",
    "ReembedBusyError",
    "ReembedIncompleteError",
    "ReembedParams",
    "acquire_lease",
    "check_owner",
    "lease_path",
]
