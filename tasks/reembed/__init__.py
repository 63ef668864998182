"""Re-embedding new arXiv papers on a schedule: parameters, the per-domain lease, steps."""

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
from tasks.reembed.steps import (
    COUNTS,
    embed_new,
    harvest_new,
    move_watermark,
    record_summary,
    summary_markdown,
)

__all__ = [
    "COUNTS",
    "LeaseError",
    "LeaseLostError",
    "ReembedBusyError",
    "ReembedIncompleteError",
    "ReembedParams",
    "acquire_lease",
    "check_owner",
    "embed_new",
    "harvest_new",
    "lease_path",
    "move_watermark",
    "record_summary",
    "summary_markdown",
]
