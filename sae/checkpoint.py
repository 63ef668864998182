"""Checkpoint I/O: ``model.safetensors`` + ``cfg.json`` per SAE, and the released ``.pth``.

Every file is written to a temporary name in the same folder and renamed into place,
so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sae.config import (
    CFG_FORMAT_VERSION,
    ConfigError,
    RunInfo,
    SAEConfig,
    TrainConfig,
    from_dict,
    parse_cell_name,
    to_dict,
)

WEIGHTS_FILE = "model.safetensors"
CFG_FILE = "cfg.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed or from an unsupported format."""


# Parameter name -> shape as a function of (n, d).
_SHAPES = {
    "W_enc": lambda n, d: (n, d),
    "b_lat": lambda n, d: (n,),
    "W_dec": lambda n, d: (n, d),
    "b_pre": lambda n, d: (d,),
}
_COUNTER = "samples_since_fired"
# BatchTopK's inference threshold and its EMA's weight, shape [1] each (only models with
# BatchTopK selection; the weight lets a loaded model train on without a jump).
_THRESHOLD = "threshold"
_THRESHOLD_WEIGHT = "threshold_weight"


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """Yield a temporary name beside ``path``; rename it into place only if the body succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def build_cfg(
    sae_cfg: SAEConfig, train_cfg: TrainConfig | None = None, run: RunInfo | None = None
) -> dict[str, Any]:
    """The cfg.json document: every hyper-parameter, flat names, plus the format version."""
    run = run or RunInfo()
    return {
        "format_version": CFG_FORMAT_VERSION,
        "sae": to_dict(sae_cfg),
        "train": to_dict(train_cfg) if train_cfg is not None else None,
        "run": to_dict(run),
    }


def save_sae(
    model,
    directory: str | os.PathLike,
    train_cfg: TrainConfig | None = None,
    run: RunInfo | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``cfg.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: getattr(model, name).detach().float().cpu().contiguous() for name in _SHAPES}
    # The dead-latent counter too: the dead fraction of a loaded model is then the one
    # its training ended with.
    tensors[_COUNTER] = model.samples_since_fired.detach().cpu().contiguous()
    threshold = getattr(model, _THRESHOLD, None)
    if threshold is not None:
        tensors[_THRESHOLD] = threshold.detach().float().cpu().reshape(1)
        tensors[_THRESHOLD_WEIGHT] = model.threshold_weight.detach().float().cpu().reshape(1)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, tmp, metadata={"format_version": str(CFG_FORMAT_VERSION)})
    cfg = build_cfg(model.cfg, train_cfg, run)
    atomic_write_bytes(directory / CFG_FILE, json.dumps(cfg, indent=2, sort_keys=True).encode())
    return directory


def read_cfg(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CFG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no cfg.json in this checkpoint folder")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    version = cfg.get("format_version") if isinstance(cfg, dict) else None
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: missing integer 'format_version'")
    if version > CFG_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version} is newer than this library reads "
            f"({CFG_FORMAT_VERSION}); upgrade the package to load it"
        )
    if not isinstance(cfg.get("sae"), dict):
        raise CheckpointError(f"{path}: missing the 'sae' section")
    return cfg


def load_sae(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a folder written by :func:`save_sae`."""
    from sae.model import TopKSAE

    directory = Path(directory)
    cfg = read_cfg(directory)
    try:
        sae_cfg = from_dict(SAEConfig, cfg["sae"], f"{directory / CFG_FILE} [sae]")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: weights file missing")
    tensors = load_file(str(weights_path))
    model = TopKSAE(sae_cfg)
    _assign(model, tensors, source=str(weights_path))
    counter = tensors.get(_COUNTER)  # absent from files written before it was saved
    if counter is not None and counter.shape == model.samples_since_fired.shape:
        model.samples_since_fired.copy_(counter)
    if hasattr(model, _THRESHOLD):
        threshold = tensors.get(_THRESHOLD)
        if threshold is None or threshold.numel() != 1:
            raise CheckpointError(
                f"{weights_path}: arch {sae_cfg.arch!r} selects by a learned threshold, "
                "but the file holds no one-element 'threshold' tensor"
            )
        model.threshold.copy_(threshold.reshape(()))
        weight = tensors.get(_THRESHOLD_WEIGHT)
        model.threshold_weight.fill_(1.0 if weight is None else float(weight.reshape(-1)[0]))
    return model.to(device)


def load_train_cfg(directory: str | os.PathLike) -> TrainConfig | None:
    cfg = read_cfg(directory)
    if cfg.get("train") is None:
        return None
    return from_dict(TrainConfig, cfg["train"], f"{Path(directory) / CFG_FILE} [train]")


def load_released(path: str | os.PathLike, k: int | None = None):
    """Load a checkpoint published with arXiv 2408.00657.

    The file is a ``torch.save``d state dict: ``encoder.weight`` [n, d],
    ``decoder.weight`` [d, n], ``pre_bias`` [d], ``latent_bias`` [n]. k is not stored;
    it is read from the name ``{domain}_{k}_{n}_{batch}.pth`` unless given.
    """
    from sae.model import TopKSAE

    path = Path(path)
    if k is None:
        try:
            _, k, n_from_name, _ = parse_cell_name(path.stem)
        except ConfigError as exc:
            raise CheckpointError(
                f"{path.name}: cannot read k from the file name (expected "
                "{domain}_{k}_{n}_{batch}.pth); pass k= explicitly"
            ) from exc
    else:
        n_from_name = None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable torch state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    needed = ["encoder.weight", "decoder.weight", "pre_bias", "latent_bias"]
    missing = [key for key in needed if key not in state]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {missing}; found {sorted(state)}")
    enc = state["encoder.weight"]
    if enc.ndim != 2:
        raise CheckpointError(
            f"{path}: encoder.weight has shape {tuple(enc.shape)}, expected [n, d]"
        )
    n, d = enc.shape
    if n_from_name is not None and n_from_name != n:
        raise CheckpointError(f"{path}: file name says n={n_from_name}, encoder.weight has n={n}")
    tensors = {
        "W_enc": enc,
        "W_dec": _expect(state, "decoder.weight", (d, n), path).T,
        "b_pre": _expect(state, "pre_bias", (d,), path),
        "b_lat": _expect(state, "latent_bias", (n,), path),
    }
    try:
        model = TopKSAE(SAEConfig(d_in=d, n_latents=n, k=k))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    _assign(model, tensors, source=str(path))
    return model


def _expect(state: dict, key: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    t = state[key]
    if tuple(t.shape) != shape:
        raise CheckpointError(f"{path}: {key} has shape {tuple(t.shape)}, expected {shape}")
    return t


def _assign(model, tensors: dict[str, torch.Tensor], source: str) -> None:
    n, d = model.n_latents, model.d_in
    missing = [name for name in _SHAPES if name not in tensors]
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {missing}")
    with torch.no_grad():
        for name, shape_of in _SHAPES.items():
            t = tensors[name]
            if tuple(t.shape) != shape_of(n, d):
                raise CheckpointError(
                    f"{source}: {name} has shape {tuple(t.shape)}, expected {shape_of(n, d)}"
                )
            if not torch.isfinite(t).all():
                raise CheckpointError(f"{source}: {name} holds NaN or inf values")
            getattr(model, name).copy_(t.float())
