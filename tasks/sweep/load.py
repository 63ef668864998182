"""A finished cell's trained SAE, read back from the store (for features and search).

Not in ``tasks/sweep/train.py``: that file is hashed into the code version, and what
reads finished models never changes their weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from infra.store import Store
from sae.checkpoint import CFG_FILE, WEIGHTS_FILE, load_sae
from tasks.sweep.train import pull_cell


def load_cell_model(
    store: Store, folder: str, device: str | torch.device = "cpu", scratch: Path | None = None
):
    """The trained SAE of the cell in ``folder`` (its cfg and weights), in eval mode;
    the files pass through a temporary folder under ``scratch`` (None: the system's)."""
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        local = pull_cell(store, folder, Path(tmp), (CFG_FILE, WEIGHTS_FILE))
        return load_sae(local, device).eval()
