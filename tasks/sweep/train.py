"""Train one pack of grid cells on a data snapshot, checkpointing into the store.

Runs inside a Ray worker. The cell folders ``sae/{sweep_id}/{cell}/`` of the store are
the source of truth: a cell with ``metrics.json`` there is done and never retrained; a
cell with only ``train_state.pt`` resumes from it, on whichever worker picks the pack up
again. With a local store the trainer writes into the store directly; with S3 it trains
in a scratch folder and copies each checkpoint up as soon as it is written.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from infra.store import Store
from sae.checkpoint import CFG_FILE, WEIGHTS_FILE
from sae.trainer import METRICS_FILE, STATE_FILE
from tasks.corpus.domains import get_domain
from tasks.embed.snapshot import Snapshot, load_snapshot

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
DENSITY_FILE = "feature_density.npy"
# Copied up in this order: metrics.json last, because it marks the cell as done.
CELL_FILES = (CFG_FILE, WEIGHTS_FILE, HISTORY_FILE, DENSITY_FILE, STATE_FILE, METRICS_FILE)


@dataclass(frozen=True)
class PackSpec:
    """Everything a worker needs to train a pack (small: it travels through Ray)."""

    sweep_id: str
    store_root: str
    storage_options: dict  # the endpoint only: credentials come from the worker's chain
    domain: str
    snapshot: Snapshot
    cells: list[tuple[int, int]]  # (k, n_latents)
    batch_size: int
    epochs: int
    lr: float
    seed: int
    code_version: str
    checkpoint_every_steps: int = 0
    checkpoint_min_interval_s: float = 60.0
    log_every_steps: int = 10

    def store(self) -> Store:
        return Store(self.store_root, self.storage_options)

    @property
    def label(self) -> str:
        """``train-k32-n9216`` (one cell) or ``train-k32-n9216+k16-n3072``."""
        return "train-" + "+".join(f"k{k}-n{n}" for k, n in self.cells)


@dataclass(frozen=True)
class CellRef:
    """A finished cell: where its files are and its held-out metrics."""

    cell: str
    k: int
    n_latents: int
    d_in: int
    folder: str  # relative to the store root
    metrics: dict[str, float]
    steps: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def sweep_folder(sweep_id: str) -> str:
    return f"sae/{sweep_id}"


def finished_cells(store: Store, spec: PackSpec) -> dict[str, CellRef]:
    """Cells of ``spec`` already done in the store (their metrics.json exists)."""
    from sae.config import cell_name

    done = {}
    for k, n in spec.cells:
        name = cell_name(spec.domain, k, n, spec.batch_size)
        folder = f"{sweep_folder(spec.sweep_id)}/{name}"
        try:
            payload = store.read_json(f"{folder}/{METRICS_FILE}")
            cfg = store.read_json(f"{folder}/{CFG_FILE}")
        except FileNotFoundError:
            continue
        done[name] = CellRef(
            cell=name,
            k=k,
            n_latents=n,
            d_in=cfg["sae"]["d_in"],
            folder=folder,
            metrics=payload["metrics"],
            steps=payload["steps"],
            seconds=payload["seconds"],
        )
    return done


def train_pack(spec: PackSpec, store: Store, scratch: Path, device: str) -> list[CellRef]:
    """Train the cells of ``spec`` that are not done yet; return every cell's reference."""
    import torch

    from sae.config import RunInfo, SAEConfig, TrainConfig
    from sae.trainer import PackTrainer
    from tasks.sweep.plots import feature_densities

    done = finished_cells(store, spec)
    todo = [(k, n) for k, n in spec.cells if _name(spec, k, n) not in done]
    if not todo:
        return [done[_name(spec, k, n)] for k, n in spec.cells]

    domain = get_domain(spec.domain)
    x_train, x_eval = load_snapshot(store, domain, spec.snapshot)
    out_dir = _work_dir(store, spec, scratch)
    names = [_name(spec, k, n) for k, n in todo]
    if not store.is_local:
        for name in names:
            # The checkpoint, if any, so the trainer resumes from it.
            pull_cell(store, f"{sweep_folder(spec.sweep_id)}/{name}", out_dir / name)

    history: dict[str, dict[int, dict[str, float]]] = {n: _read_history(out_dir / n) for n in names}

    def on_log(name: str, step: int, metrics: dict[str, float]) -> None:
        history[name][step] = metrics

    def on_checkpoint(dirs: list[Path]) -> None:
        for d in dirs:
            _write_history(d, history[d.name])
            if not store.is_local:
                _push(d, store, f"{sweep_folder(spec.sweep_id)}/{d.name}")

    d_in = x_train.shape[1]
    trainer = PackTrainer(
        [SAEConfig(d_in=d_in, n_latents=n, k=k) for k, n in todo],
        TrainConfig(
            batch_size=spec.batch_size,
            lr=spec.lr,
            epochs=spec.epochs,
            seed=spec.seed,
            checkpoint_every_steps=spec.checkpoint_every_steps,
            log_every_steps=spec.log_every_steps,
        ),
        run=RunInfo(
            embedder=spec.snapshot.embedder,
            data_snapshot=spec.snapshot.id,
            domain=spec.domain,
            code_version=spec.code_version,
        ),
        out_dir=out_dir,
        device=device,
        on_log=on_log,
        on_checkpoint=on_checkpoint,
        checkpoint_min_interval_s=spec.checkpoint_min_interval_s,
    )
    log.info("%s: training %d cell(s) on %d x %d", spec.label, len(todo), *x_train.shape)
    results = trainer.fit(torch.from_numpy(x_train), torch.from_numpy(x_eval))
    x_eval_t = torch.from_numpy(x_eval)
    for r in results:
        density = feature_densities(trainer.model(r.name), x_eval_t)
        d = out_dir / r.name
        _atomic_bytes(d / DENSITY_FILE, _npy_bytes(density))
        # Written after the trainer's final checkpoint, so copy metrics.json up last again.
        on_checkpoint([d])
    if not store.is_local:
        shutil.rmtree(out_dir, ignore_errors=True)
    done.update(finished_cells(store, spec))
    return [done[_name(spec, k, n)] for k, n in spec.cells]


def _name(spec: PackSpec, k: int, n: int) -> str:
    from sae.config import cell_name

    return cell_name(spec.domain, k, n, spec.batch_size)


def _work_dir(store: Store, spec: PackSpec, scratch: Path) -> Path:
    if store.is_local:
        return Path(store.root.removeprefix("file://")) / sweep_folder(spec.sweep_id)
    return scratch / spec.sweep_id


def pull_cell(store: Store, folder: str, local: Path, names: tuple[str, ...] = CELL_FILES) -> Path:
    """Copies the cell's files that exist (of ``names``) from the store into ``local``."""
    local.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            data = store.read_bytes(f"{folder}/{name}")
        except FileNotFoundError:
            continue
        _atomic_bytes(local / name, data)
    return local


def _push(local: Path, store: Store, folder: str) -> None:
    for name in CELL_FILES:
        path = local / name
        if path.is_file():
            store.write_bytes(f"{folder}/{name}", path.read_bytes())


def _read_history(folder: Path) -> dict[int, dict[str, float]]:
    path = folder / HISTORY_FILE
    if not path.is_file():
        return {}
    return {int(step): m for step, m in json.loads(path.read_text()).items()}


def _write_history(folder: Path, history: dict[int, dict[str, float]]) -> None:
    # Keyed by step: a resumed cell logs the same steps again with the same values.
    payload = {str(s): history[s] for s in sorted(history)}
    _atomic_bytes(folder / HISTORY_FILE, json.dumps(payload).encode())


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32))
    return buf.getvalue()


def _atomic_bytes(path: Path, data: bytes) -> None:
    from sae.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, data)
