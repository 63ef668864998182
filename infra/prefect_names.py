"""Names that Prefect restricts."""

from __future__ import annotations

import re


def artifact_key(text: str) -> str:
    """``text`` as a Prefect artifact key, which allows a-z, 0-9 and ``-`` only (a sweep
    id ``cs_lg+stat_ml-...`` has more)."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower())
