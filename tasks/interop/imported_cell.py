"""The files of an imported SAE's cell, those a sweep leaves (:mod:`tasks.sweep.train`):
our checkpoint (model.safetensors, cfg.json with d_in, n_latents, k, embedder and data
snapshot, no training settings), and what the sweep measures after training, on the
domain's data snapshot: metrics.json (held-out), feature_density.npy, importance.npy and
retrieval.json.

One difference: a SAE trained elsewhere has no dead-latent counter here, so its dead
latents are those that fire on none of the snapshot's papers, training and held-out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sae.config import RunInfo
from sae.importance import latent_importance
from sae.metrics import evaluate
from sae.model import TopKSAE
from sae.retrieval import retrieval_fidelity
from sae.trainer import METRICS_FILE
from tasks.sweep.train import DENSITY_FILE, IMPORTANCE_FILE, RETRIEVAL_FILE, npy_bytes

#: metrics.json's ``steps`` and ``seconds``: nothing was trained here.
_NOT_TRAINED = {"steps": 0, "seconds": 0.0}


def write_cell(
    model: TopKSAE, local: Path, run: RunInfo, x_train_ND: np.ndarray, x_eval_MD: np.ndarray
) -> dict[str, float]:
    """Writes the cell's files into ``local``; returns its held-out metrics (metrics.json's)."""
    model.save(local, run=run)
    never = ~_fired(model, np.concatenate([x_train_ND, x_eval_MD]))
    evaluation = evaluate(model, x_eval_MD, dead_mask_N=never)
    (local / DENSITY_FILE).write_bytes(npy_bytes(evaluation.density))
    (local / IMPORTANCE_FILE).write_bytes(npy_bytes(latent_importance(model, x_eval_MD)))
    retrieval = retrieval_fidelity(model, x_eval_MD, x_train_ND).as_dict()
    (local / RETRIEVAL_FILE).write_text(json.dumps(retrieval))
    payload = {"metrics": evaluation.metrics.as_dict(), **_NOT_TRAINED}
    (local / METRICS_FILE).write_text(json.dumps(payload, indent=2))
    return evaluation.metrics.as_dict()


@torch.no_grad()
def _fired(model: TopKSAE, x_ND: np.ndarray, batch_size: int = 4096) -> torch.Tensor:
    """[n] bool: the latents some row's code selects (the training rule's "fired")."""
    fired = torch.zeros(model.n_latents, dtype=torch.bool)
    for start in range(0, len(x_ND), batch_size):
        _, indices = model.encode(torch.from_numpy(x_ND[start : start + batch_size]))
        fired[indices.reshape(-1)] = True
    return fired
