"""Train one pack of grid cells on a data snapshot, checkpointing into the store.

Runs inside a Ray worker. The cell folders ``sae/{sweep_id}/{cell}/`` of the store are
the source of truth: a cell with ``metrics.json`` there is done and never retrained; a
cell with only ``train_state.pt`` resumes from it, on whichever worker picks the pack up
again. With a local store the trainer writes into the store directly; with S3 it trains
in a scratch folder and copies each checkpoint up as soon as it is written.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from infra.code_version import code_version
from infra.settings import get_settings
from infra.store import Store
from sae.checkpoint import CFG_FILE, WEIGHTS_FILE, atomic_write_bytes
from sae.config import RunInfo, SAEConfig, TrainConfig, cell_name
from sae.data import DataError, rows_within
from sae.importance import latent_importance, pruned_nmse
from sae.kernels import choose_backend
from sae.metrics import prefix_metrics
from sae.planner import plan_packs
from sae.retrieval import retrieval_fidelity
from sae.trainer import METRICS_FILE, STATE_FILE, LogFn, PackTrainer
from tasks.embed.mapped import mapped_snapshot, snapshot_bytes
from tasks.embed.snapshot import Snapshot, load_snapshot
from tasks.sweep.config import GridParams, MatrixParams, sweep_id
from tasks.sweep.matrix import MatrixFile, matrix_file

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
DENSITY_FILE = "feature_density.npy"
IMPORTANCE_FILE = "importance.npy"
"""[n] each latent's held-out NMSE rise when removed alone (:mod:`sae.importance`)."""
PRUNING_FILE = "pruning.json"
"""{m: held-out NMSE} of the cell pruned by importance to each grid n <= its own."""
RETRIEVAL_FILE = "retrieval.json"
"""Search with the reconstructions against search with the originals (held-out papers as
queries over the training papers): :class:`sae.retrieval.RetrievalFidelity`'s metrics."""
RETRIEVAL_MAX_QUERIES = 2000
"""Held-out queries retrieval fidelity measures at most (a seeded random sample past
that; retrieval.json records the sample and each metric's standard error, at most
0.5 / sqrt(2000) = 0.011 for recall@10). Its cost grows as queries x training rows:
2.7M training rows with all 140k held-out queries would be ~10^18 multiply-adds."""
PREFIXES_FILE = "prefixes.json"
"""A Matryoshka cell's prefixes used alone, {m: {"nmse", "dead_fraction"}} on the held-out
rows (:func:`sae.metrics.prefix_metrics`)."""
# Copied up in this order: metrics.json last, because it marks the cell as done.
CELL_FILES = (
    CFG_FILE, WEIGHTS_FILE, HISTORY_FILE, DENSITY_FILE, IMPORTANCE_FILE, PRUNING_FILE,
    PREFIXES_FILE, RETRIEVAL_FILE, STATE_FILE, METRICS_FILE,
)  # fmt: skip


@dataclass(frozen=True)
class PackSpec:
    """Everything a worker needs to train a pack (small: it travels through Ray)."""

    sweep_id: str
    store_root: str
    storage_options: dict  # the endpoint only: credentials come from the worker's chain
    cells: list[tuple[int, int]]  # (k, n_latents)
    train: TrainConfig
    run: RunInfo
    data: Snapshot | MatrixFile
    sae_options: dict = field(default_factory=dict)
    """The SAEConfig settings every cell shares (``GridParams.sae_options``)."""
    prune_to: tuple[int, ...] = ()
    """The whole grid's n values (a pack holds only some cells): each cell is pruned to
    those up to its own n for the comparison with the dedicated cells."""
    n_axis: bool = False
    """The cells are the grid's n-axis Matryoshka cells (:func:`n_axis_spec`)."""
    vector_budget_bytes: int | None = None
    """Bytes of embedding vectors the worker holds in memory (``SAE_VECTOR_BUDGET``):
    past it the snapshot is memory-mapped and every stage reads it in pieces, with the
    same results. None: no limit."""

    def store(self) -> Store:
        return Store(self.store_root, self.storage_options)

    @property
    def folder(self) -> str:
        """Where the cells' folders go, relative to the store root."""
        return sweep_folder(self.sweep_id)

    def with_cells(self, cells: list[tuple[int, int]]) -> PackSpec:
        return replace(self, cells=cells)

    @property
    def label(self) -> str:
        """``train-k32-n9216`` (one cell) or ``train-k32-n9216+k16-n3072``."""
        return "train-" + "+".join(f"k{k}-n{n}" for k, n in self.cells)


def sweep_pack(
    params: GridParams,
    sweep_id: str,
    store: Store,
    snapshot: Snapshot,
    code_version: str,
    vector_budget_bytes: int | None = None,
) -> PackSpec:
    """Every cell of ``params`` on a data snapshot (the planner splits it into packs);
    ``vector_budget_bytes`` None: the settings' ``SAE_VECTOR_BUDGET``."""
    run = RunInfo(
        embedder=snapshot.embedder,
        data_snapshot=snapshot.id,
        domain=snapshot.domain,
        code_version=code_version,
    )
    return PackSpec(
        sweep_id, store.root, store.storage_options, params.cells(), params.train_config(),
        run, snapshot, params.sae_options(), _grid_n(params.cells()),
        vector_budget_bytes=vector_budget_bytes or get_settings().vector_budget_bytes,
    )  # fmt: skip


def matrix_pack(
    params: MatrixParams, store: Store, vector_budget_bytes: int | None = None
) -> PackSpec:
    """Every cell of ``params`` on one matrix file (``sae train``); the run id, unless
    given, follows from the data, the training settings and the code, as a sweep id.
    ``vector_budget_bytes`` None: the settings' ``SAE_VECTOR_BUDGET``."""
    data = matrix_file(params.data, params.limit, params.seed)
    version = code_version()
    run = RunInfo(
        embedder=data.embedder, data_snapshot=data.id, domain=params.domain, code_version=version
    )
    run_id = params.run_id or sweep_id(params, "train", data.id, version)
    return PackSpec(
        run_id, store.root, store.storage_options, params.cells(), params.train_config(), run, data,
        params.sae_options(), _grid_n(params.cells()),
        vector_budget_bytes=vector_budget_bytes or get_settings().vector_budget_bytes,
    )  # fmt: skip


def n_axis_spec(grid: PackSpec, params: GridParams) -> PackSpec:
    """Beside ``grid``: per k one Matryoshka cell of the largest n nested at the grid's n
    values (no cells unless ``params.n_axis_matryoshka``); same data, settings, folder."""
    return replace(
        grid, cells=params.n_axis_cells(), sae_options=params.n_axis_options(), prune_to=(),
        n_axis=True,
    )  # fmt: skip


def unfinished(spec: PackSpec, done: dict[str, CellRef]) -> list[tuple[int, int]]:
    """The cells of ``spec`` not in ``done`` (by cell name: an n-axis cell shares its
    (k, n) with a dedicated cell)."""
    return [(k, n) for k, n in spec.cells if _name(spec, k, n) not in done]


def plan(spec: PackSpec, cells: list[tuple[int, int]], n_packs: int) -> list[PackSpec]:
    """``cells`` of ``spec`` split into at least ``n_packs`` packs balanced by cost."""
    packs = plan_packs(cells, n_packs, spec.train.batch_size)
    return [spec.with_cells(p.cells) for p in packs]


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
    n_axis: bool = False
    """An n-axis Matryoshka cell (:func:`n_axis_spec`), not one of the grid's."""

    def as_dict(self) -> dict:
        return asdict(self)

    def row(self) -> dict:
        """The cell as a row of :func:`tasks.sweep.results.results_table`."""
        return {"cell": self.cell, "k": self.k, "n_latents": self.n_latents, **self.metrics,
                "seconds": self.seconds}  # fmt: skip


def device_name(device: str = "auto") -> str:
    """What ``device`` ("cuda", "cpu", "auto": CUDA if there is one) is, in words."""
    if device != "cpu" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)"
    return f"cpu ({torch.get_num_threads()} threads)"


def compute_info() -> list[tuple[str, str]]:
    """The device training runs on and the sparse kernels' backend (``sae info``)."""
    backend = choose_backend()
    return [("device", device_name()), ("kernels", f"{backend.name} ({backend.reason})")]


def sweep_folder(run_id: str) -> str:
    return f"sae/{run_id}"


def finished_cells(store: Store, spec: PackSpec) -> dict[str, CellRef]:
    """Cells of ``spec`` already done in the store (their metrics.json exists)."""
    done = {}
    for k, n in spec.cells:
        name = _name(spec, k, n)
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
            n_axis=spec.n_axis,
        )
    return done


def train_pack(
    spec: PackSpec, store: Store, scratch: Path, device: str, on_log: LogFn | None = None
) -> list[CellRef]:
    """Train the cells of ``spec`` that are not done yet; return every cell's reference.

    ``on_log(cell, step, metrics)`` sees the training metrics as they are logged.
    Past ``spec.vector_budget_bytes`` the snapshot is memory-mapped from one .npy file
    under ``scratch/snapshots`` (written once per snapshot and machine,
    :mod:`tasks.embed.mapped`) and training and every evaluation read it in pieces bounded
    by the budget.
    """
    done = finished_cells(store, spec)
    todo = [(k, n) for k, n in spec.cells if _name(spec, k, n) not in done]
    if not todo:
        return [done[_name(spec, k, n)] for k, n in spec.cells]

    x_train, x_eval = _load(spec, store, scratch)
    out_dir = _work_dir(store, spec, scratch)
    names = [_name(spec, k, n) for k, n in todo]
    if not store.is_local:
        for name in names:
            # The checkpoint, if any, so the trainer resumes from it.
            pull_cell(store, f"{sweep_folder(spec.sweep_id)}/{name}", out_dir / name)

    history: dict[str, dict[int, dict[str, float]]] = {n: _read_history(out_dir / n) for n in names}

    def log_step(name: str, step: int, metrics: dict[str, float]) -> None:
        history[name][step] = metrics
        if on_log is not None:
            on_log(name, step, metrics)

    def on_checkpoint(dirs: list[Path]) -> None:
        for d in dirs:
            _write_history(d, history[d.name])
            if not store.is_local:
                _push(d, store, f"{sweep_folder(spec.sweep_id)}/{d.name}")

    trainer = PackTrainer(
        [SAEConfig(d_in=x_train.shape[1], n_latents=n, k=k, **spec.sae_options) for k, n in todo],
        spec.train,
        run=spec.run,
        out_dir=out_dir,
        device=device,
        on_log=log_step,
        on_checkpoint=on_checkpoint,
        vector_budget_bytes=spec.vector_budget_bytes,
    )
    log.info("%s: training %d cell(s) on %d x %d", spec.label, len(todo), *x_train.shape)
    results = trainer.fit(x_train, x_eval)
    if trainer.streamed:
        log.info("%s: read in pieces (past %d bytes)", spec.label, spec.vector_budget_bytes)
    x_eval = trainer.x_eval  # a matrix file's: the rows the trainer held out
    budget, batch = spec.vector_budget_bytes, spec.train.batch_size
    for r in results:
        d, model = out_dir / r.name, trainer.model(r.name)
        if r.density is not None:  # the final evaluation's; None only for older states
            atomic_write_bytes(d / DENSITY_FILE, npy_bytes(r.density))
        rows = rows_within(budget, 8 * (model.d_in + model.n_latents), most=4096, least=batch)
        _write_importance(d, model, x_eval, spec.prune_to, rows)
        if not isinstance(spec.data, MatrixFile):
            # A matrix file's held-out rows are inside its training matrix: no search there.
            _write_retrieval(d, model, x_eval, x_train, budget, batch)
        if r.sae_cfg.arch == "matryoshka":
            _write_prefixes(d, model, x_eval, rows)
        # Written after the trainer's final checkpoint, so copy metrics.json up last again.
        on_checkpoint([d])
    if not store.is_local:
        shutil.rmtree(out_dir, ignore_errors=True)
    done.update(finished_cells(store, spec))
    return [done[_name(spec, k, n)] for k, n in spec.cells]


def _write_importance(folder: Path, model, x_eval, prune_to: tuple[int, ...], rows: int) -> None:
    """``rows``: held-out rows read at a time (each holds [rows, 2 d + 2 n] floats)."""
    importance = latent_importance(model, x_eval, batch_size=rows)
    atomic_write_bytes(folder / IMPORTANCE_FILE, npy_bytes(importance))
    sizes = {m for m in prune_to if m < model.n_latents} | {model.n_latents}
    order = np.argsort(-importance, kind="stable")
    pruned = pruned_nmse(model, x_eval, order, sizes, batch_size=rows)
    payload = {str(m): v for m, v in pruned.items()}
    atomic_write_bytes(folder / PRUNING_FILE, json.dumps(payload).encode())


def _write_retrieval(folder: Path, model, x_eval, x_train, budget: int | None, batch: int):
    """Past the budget the training rows are searched a block at a time: each block row
    holds its vector, reconstruction, codes and a column of scores per query chunk."""
    model.eval()  # BatchTopK: its threshold, as at inference
    chunk = 1024
    row_bytes = 8 * model.d_in + 24 * model.cfg.code_width + 4 * chunk
    block = None if budget is None else rows_within(budget, row_bytes, x_train.shape[0], batch)
    fidelity = retrieval_fidelity(
        model, x_eval, x_train, chunk=chunk, corpus_block=block, max_queries=RETRIEVAL_MAX_QUERIES
    )
    log.info("%s: retrieval %s", folder.name, fidelity.summary())
    payload = fidelity.as_dict() | fidelity.sampling()
    atomic_write_bytes(folder / RETRIEVAL_FILE, json.dumps(payload).encode())


def _write_prefixes(folder: Path, model, x_eval, batch_size: int) -> None:
    model.eval()  # BatchTopK inside: its threshold, as at inference
    rows = prefix_metrics(model, x_eval, model.cfg.prefixes, batch_size=batch_size)
    payload = {str(p.n_latents): {"nmse": p.nmse, "dead_fraction": p.dead_fraction} for p in rows}
    atomic_write_bytes(folder / PREFIXES_FILE, json.dumps(payload).encode())


def _grid_n(cells: list[tuple[int, int]]) -> tuple[int, ...]:
    return tuple(sorted({n for _, n in cells}))


def _load(spec: PackSpec, store: Store, scratch: Path):
    """(train, eval) rows; a matrix file has no eval split (the trainer holds one out).
    Past the budget, memmaps (a snapshot's as views of its .npy file under ``scratch``)."""
    budget = spec.vector_budget_bytes
    if isinstance(spec.data, MatrixFile):
        if budget is not None and spec.data.path.endswith(".npy"):
            try:
                x = np.load(spec.data.path, mmap_mode="r")[: spec.data.limit]
            except (OSError, ValueError) as exc:
                raise DataError(f"--data {spec.data.path}: cannot map a matrix: {exc}") from exc
            if x.ndim == 2 and x.shape[0] * x.shape[1] * 4 > budget:
                return x, None
        return spec.data.load(), None
    if budget is not None and snapshot_bytes(store, spec.data) > budget:
        return mapped_snapshot(store, spec.data, scratch / "snapshots")
    x_train, x_eval = load_snapshot(store, spec.data)
    return torch.from_numpy(x_train), torch.from_numpy(x_eval)


def _name(spec: PackSpec, k: int, n: int) -> str:
    suffix = SAEConfig(d_in=1, n_latents=n, k=k, **spec.sae_options).name_suffix
    return cell_name(spec.run.domain, k, n, spec.train.batch_size, suffix)


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
        atomic_write_bytes(local / name, data)
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
    atomic_write_bytes(folder / HISTORY_FILE, json.dumps(payload).encode())


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32))
    return buf.getvalue()
