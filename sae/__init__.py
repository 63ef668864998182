"""TopK sparse autoencoders over dense embeddings: model, losses, metrics, trainer, I/O.

A pure library (torch, numpy, safetensors; Triton when present): usable from a
notebook without Prefect, Ray or MLflow.

    from sae import SAEConfig, TopKSAE, TrainConfig, PackTrainer
"""

from __future__ import annotations

import importlib
from typing import Any

# The names below load on first use: `sae.config` alone (what the `sae` command line
# reads its options from) must not import torch, which takes 3-6 s on 2 cores.
_EXPORTS = {
    "CheckpointError": "sae.checkpoint",
    "load_released": "sae.checkpoint",
    "load_sae": "sae.checkpoint",
    "save_sae": "sae.checkpoint",
    "ConfigError": "sae.config",
    "RunInfo": "sae.config",
    "SAEConfig": "sae.config",
    "TrainConfig": "sae.config",
    "cell_name": "sae.config",
    "DataError": "sae.errors",
    "EvalMetrics": "sae.metrics",
    "Evaluation": "sae.metrics",
    "evaluate": "sae.metrics",
    "SAEOutput": "sae.model",
    "TopKSAE": "sae.model",
    "CellResult": "sae.trainer",
    "PackTrainer": "sae.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
