"""TopK sparse autoencoders over dense embeddings: model, losses, metrics, trainer, I/O.

A pure library (torch, numpy, safetensors; Triton when present): usable from a
notebook without Prefect, Ray or MLflow.

    from sae import SAEConfig, TopKSAE, TrainConfig, PackTrainer
"""

from sae.checkpoint import CheckpointError, load_released, load_sae, save_sae
from sae.config import ConfigError, RunInfo, SAEConfig, TrainConfig, cell_name
from sae.data import DataError
from sae.metrics import EvalMetrics, Evaluation, evaluate
from sae.model import SAEOutput, TopKSAE
from sae.trainer import CellResult, PackTrainer

__all__ = [
    "CellResult",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EvalMetrics",
    "Evaluation",
    "PackTrainer",
    "RunInfo",
    "SAEConfig",
    "SAEOutput",
    "TopKSAE",
    "TrainConfig",
    "cell_name",
    "evaluate",
    "load_released",
    "load_sae",
    "save_sae",
]
