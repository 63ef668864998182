"""Train a *pack* of grid cells from one pass over each batch, with exact resume.

Every cell of the pack sees the same batches in the same order (the order depends
only on ``TrainConfig.seed`` and the epoch) and starts from an initialisation that
depends only on (seed, k, n); so a cell trained in a pack matches the same cell
trained alone. Each cell keeps its own optimiser, dead-latent counter, checkpoint
and resume point. With ``TrainConfig.stacked`` in force the active cells of equal n and
arch step as one stack (:mod:`sae.stacked`: one StackedSAE and one fused Adam per stack,
no host sync), split back into the per-cell state for checkpoints and the end.

Checkpoint folder per cell (``out_dir/{domain}_{k}_{n}_{batch}/``, with an arch suffix
such as ``_matryoshka`` for the archs other than TopK):
    train_state.pt      everything needed to resume (weights, Adam, schedule,
                        dead counters, data position, log accumulators; once
                        done, the eval densities)
    model.safetensors   the exported model (epoch ends and the end)
    cfg.json            every hyper-parameter, d_in, embedder, data snapshot
    metrics.json        held-out metrics, written once the cell is done
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sae.checkpoint import atomic_torch_save, atomic_write_bytes, save_sae
from sae.config import (
    ConfigError,
    RunInfo,
    SAEConfig,
    TrainConfig,
    cell_name,
    from_dict,
    resolve_dead_threshold,
    to_dict,
)
from sae.data import (
    DataError,
    MappedRows,
    as_matrix,
    check_rows,
    row_chunks,
    rows_within,
    split,
    split_rows,
)
from sae.metrics import EvalMetrics, evaluate
from sae.model import TopKSAE, affine, data_median
from sae.pack import PackEncoder
from sae.perf import keep_freed_memory
from sae.stacked import (
    StackedSAE,
    cell_optimizer_state,
    load_cell_optimizer_states,
    make_optimizer,
    stack_groups,
    stacked_step,
)

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.json"
_MEDIAN_SAMPLE = 16384

LogFn = Callable[[str, int, dict[str, float]], None]
CheckpointFn = Callable[[list[Path]], None]


@dataclass
class CellResult:
    name: str
    sae_cfg: SAEConfig
    metrics: EvalMetrics
    steps: int
    seconds: float
    directory: Path | None = None
    density: np.ndarray | None = None
    """[n] per-latent density on the eval split, from the evaluation behind ``metrics``
    (:class:`sae.metrics.Evaluation`; kept in train_state.pt for a cell an earlier fit
    finished). None only for a cell finished before densities were kept there."""


@dataclass(eq=False)  # cells are compared by identity (`c in active`), never by value
class _Cell:
    name: str
    cfg: SAEConfig
    model: TopKSAE
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    """Global steps already taken; the cell trains on step g only when g >= step."""
    done: bool = False
    metrics: EvalMetrics | None = None
    density: np.ndarray | None = None
    seconds: float = 0.0
    acc: dict[str, torch.Tensor] = field(default_factory=dict)
    acc_steps: int = 0
    lr: float = 0.0
    """Learning rate of the last step taken."""


_ACC_KEYS = ("loss", "nmse", "auxk_loss")


@dataclass(eq=False)
class _Stack:
    """Cells of one :func:`stack_groups` group stepping as one problem. While they do,
    their weights, Adam state, schedule and log sums live here (the cells' models keep
    a stale copy of the weights, their optimisers none); :meth:`PackTrainer._unstack`
    brings the cells up to date."""

    cells: list[_Cell]
    model: StackedSAE
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    acc: dict[str, torch.Tensor]
    """[C] sums of each cell's step metrics since its last log, ``_ACC_KEYS``."""


def cell_seed(seed: int, k: int, n_latents: int) -> int:
    """Initialisation seed of one cell: independent of which pack it is trained in."""
    return (seed * 1_000_003 + k * 10_007 + n_latents) % (2**63 - 1)


def epoch_order(n_rows: int, seed: int, epoch: int) -> torch.Tensor:
    """Row order of one epoch: a pure function of (seed, epoch), so resume needs no RNG state."""
    g = torch.Generator().manual_seed((seed * 7_919 + epoch) % (2**63 - 1))
    return torch.randperm(n_rows, generator=g)


class PackTrainer:
    """Trains several SAEs over the same embeddings, one read of each batch for all.

    ``configs``: one :class:`SAEConfig` per cell (all with the same ``d_in``).
    ``out_dir``: where checkpoints go; None trains in memory only (no resume).
    ``on_log(cell_name, step, metrics)``: called every ``log_every_steps``.
    ``on_checkpoint(cell_dirs)``: called after each checkpoint is on disk (e.g. to copy
    the folders to remote storage, so a restarted worker elsewhere can resume).
    ``train.checkpoint_every_s`` skips epoch-end checkpoints written sooner than that
    after the previous one: short epochs would spend more time saving than training.
    ``vector_budget_bytes``: the most bytes of embedding rows :meth:`fit` holds in host
    memory; numpy (memory-mapped) inputs larger than that stay on disk and are read a
    batch at a time (None: no limit). Either way the cells see the same batches in the
    same order, so the weights are the same bit for bit.
    """

    def __init__(
        self,
        configs: Sequence[SAEConfig],
        train: TrainConfig,
        *,
        run: RunInfo | None = None,
        out_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        on_log: LogFn | None = None,
        on_checkpoint: CheckpointFn | None = None,
        vector_budget_bytes: int | None = None,
    ):
        if not configs:
            raise ConfigError("a pack needs at least one cell")
        d_ins = {c.d_in for c in configs}
        if len(d_ins) != 1:
            raise ConfigError(f"all cells of a pack must share d_in, got {sorted(d_ins)}")
        self.run = run or RunInfo()
        names = [
            cell_name(self.run.domain, c.k, c.n_latents, train.batch_size, c.name_suffix)
            for c in configs
        ]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate cells in the pack: {names}")
        self.configs = list(configs)
        self.names = names
        self.train = train
        self.d_in = d_ins.pop()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.on_log = on_log
        self.on_checkpoint = on_checkpoint
        self.vector_budget_bytes = vector_budget_bytes
        self.streamed = False
        """Whether the last fit read its rows from disk in pieces (past the budget)."""
        self._last_checkpoint = 0.0
        self._cells: list[_Cell] = []
        self.epoch_seconds: list[float] = []
        """Wall time of each epoch's step loop in the last fit (no init, export or eval)."""
        self.x_eval: torch.Tensor | MappedRows | None = None
        """[N_eval, d] the rows the last fit evaluated on (given, or held out by it); a
        :class:`MappedRows` when the fit was streamed."""
        # None keeps the matmul in float32; otherwise the dtype it runs in.
        self._compute_dtype = (
            None if train.compute_dtype == "float32" else getattr(torch, train.compute_dtype)
        )
        # auto leaves the CPU per cell although stacks of 4 cells stepped 1.2x (no latent
        # dead) to 2x (10% dead) faster there (python -m sae.bench stacked --n 3072,4608,
        # d=384, batch 1024, 2-core AMD EPYC): CPU runs keep the per-cell path's figures.
        self.stacking = train.stacked == "on" or (
            train.stacked == "auto" and self.device.type == "cuda"
        )
        """Whether cells of equal n and arch step as stacks (``TrainConfig.stacked``)."""
        self._stacks: list[_Stack] = []
        self._solo: list[_Cell] = []
        self._planned: tuple[_Cell, ...] = ()
        """The active cells that ``_stacks`` and ``_solo`` were made for."""
        self._total_steps = 0

    # ------------------------------------------------------------------ public
    def fit(self, x, x_eval=None) -> list[CellResult]:
        """Train every cell to ``train.epochs`` (resuming from ``out_dir`` when possible).

        ``x`` [N, d] (and ``x_eval`` [M, d], else ``train.eval_fraction`` of ``x`` is held
        out): tensors, numpy arrays or memmaps, or :class:`MappedRows`. Past
        ``vector_budget_bytes`` the numpy ones are read in pieces (:attr:`streamed`).
        """
        if x_eval is None and self.train.eval_fraction == 0:
            raise DataError("no held-out split: pass x_eval or set eval_fraction > 0")
        nbytes = _nbytes(x) + (0 if x_eval is None else _nbytes(x_eval))
        self.streamed = self.vector_budget_bytes is not None and nbytes > self.vector_budget_bytes
        read = self._mapped if self.streamed else self._in_memory
        x_train, x_eval = read(x, x_eval)
        self.x_eval = x_eval
        if x_train.shape[0] < 2:
            raise DataError("need at least 2 training rows")
        if self.device.type == "cpu":
            keep_freed_memory()

        batch = self.train.batch_size
        if x_train.shape[0] < batch:
            # Training on fewer rows would save a cfg.json that misstates the batch size.
            raise DataError(
                f"batch_size {batch} is larger than the {x_train.shape[0]} training rows: "
                "lower the batch size or add data"
            )
        steps_per_epoch = x_train.shape[0] // batch
        total = steps_per_epoch * self.train.epochs
        self._total_steps = total
        self.configs = [resolve_dead_threshold(c, batch, x_train.shape[0]) for c in self.configs]
        cells = self._build_cells(x_train, total)
        self._cells = cells
        self.epoch_seconds = []
        self._last_checkpoint = time.monotonic()

        pending = [c for c in cells if not c.done]
        start = min((c.step for c in pending), default=total)
        x_dev = self._on_device(x_train)
        for epoch in range(start // steps_per_epoch, self.train.epochs):
            order = epoch_order(x_train.shape[0], self.train.seed, epoch)
            if isinstance(x_dev, torch.Tensor):
                order = order.to(x_dev.device)
            first = start - epoch * steps_per_epoch if epoch == start // steps_per_epoch else 0
            t_epoch = time.perf_counter()
            for s in range(first, steps_per_epoch):
                g = epoch * steps_per_epoch + s
                rows = order[s * batch : (s + 1) * batch]
                xb = _take(x_dev, rows).to(self.device, non_blocking=True)
                self._pack_step([c for c in pending if g >= c.step], xb)
                if (
                    self.train.checkpoint_every_steps
                    and (g + 1) % self.train.checkpoint_every_steps == 0
                ):
                    self._checkpoint(pending, epoch, s + 1)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.epoch_seconds.append(time.perf_counter() - t_epoch)
            if time.monotonic() - self._last_checkpoint >= self.train.checkpoint_every_s:
                self._checkpoint(pending, epoch + 1, 0, export=True)

        self._unstack()
        for c in pending:
            t0 = time.perf_counter()
            c.metrics, c.density = evaluate(
                c.model, x_eval, batch_size=max(batch, 1024), compute_dtype=self._compute_dtype
            )
            c.seconds += time.perf_counter() - t0
            c.done = True
            self._finish(c)
        return [
            CellResult(
                name=c.name,
                sae_cfg=c.cfg,
                metrics=c.metrics,  # type: ignore[arg-type]
                steps=c.step,
                seconds=c.seconds,
                directory=self._dir(c),
                density=c.density,
            )
            for c in cells
        ]

    def model(self, name: str) -> TopKSAE:
        """The model of cell ``name`` after :meth:`fit` (e.g. to compute extra metrics)."""
        for c in self._cells:
            if c.name == name:
                return c.model
        raise KeyError(f"no cell {name!r} in this pack; cells: {self.names}")

    # --------------------------------------------------------------- internals
    def _in_memory(self, x, x_eval):
        """(train, eval) as float32 tensors, checked whole."""
        if isinstance(x, MappedRows):
            x = x[:]
        x = as_matrix(x, self.d_in, "training embeddings")
        if x_eval is None:
            return split(x, self.train.eval_fraction, self.train.seed)
        if isinstance(x_eval, MappedRows):
            x_eval = x_eval[:]
        return x, as_matrix(x_eval, self.d_in, "eval embeddings")

    def _mapped(self, x, x_eval):
        """(train, eval) as :class:`MappedRows`, checked a piece at a time; a held-out
        split takes the rows :func:`split` would."""
        x = _as_mapped(x)
        chunk = rows_within(self.vector_budget_bytes, 4 * self.d_in, most=65536)
        check_rows(x, self.d_in, "training embeddings", chunk)
        if x_eval is None:
            train_rows, eval_rows = split_rows(
                x.shape[0], self.train.eval_fraction, self.train.seed
            )
            return x.subset(train_rows), x.subset(eval_rows)
        x_eval = _as_mapped(x_eval)
        check_rows(x_eval, self.d_in, "eval embeddings", chunk)
        return x, x_eval

    def _on_device(self, x_train):
        """The training rows where batches are gathered from: on the GPU when they fit in
        a quarter of its free memory (a streamed matrix goes up a piece at a time, so
        the host never holds it whole), else where they are."""
        if self.device.type != "cuda":
            return x_train
        free, _ = torch.cuda.mem_get_info(self.device)
        if _nbytes(x_train) >= 0.25 * free:
            return x_train
        if isinstance(x_train, torch.Tensor):
            return x_train.to(self.device)
        x_dev = torch.empty(x_train.shape, dtype=torch.float32, device=self.device)
        size = rows_within(self.vector_budget_bytes, 4 * self.d_in, most=65536)
        for start, piece in zip(
            range(0, x_train.shape[0], size), row_chunks(x_train, size), strict=True
        ):
            x_dev[start : start + piece.shape[0]] = piece.to(self.device)
        return x_dev

    def _build_cells(self, x_train, total_steps: int) -> list[_Cell]:
        g = torch.Generator().manual_seed(self.train.seed)
        sample = _take(x_train, torch.randperm(x_train.shape[0], generator=g)[:_MEDIAN_SAMPLE])
        b_pre = data_median(sample, self.train.geometric_median_iters).to(self.device)
        models = []
        for cfg in self.configs:
            gen = torch.Generator().manual_seed(cell_seed(self.train.seed, cfg.k, cfg.n_latents))
            model = TopKSAE(cfg, generator=gen).to(self.device)
            with torch.no_grad():
                model.b_pre.copy_(b_pre)
            models.append(model)
        self._encoder = PackEncoder(models)
        cells = []
        for cfg, name, model in zip(self.configs, self.names, models, strict=True):
            opt = torch.optim.Adam(
                model.parameters(),
                lr=self.train.lr,
                betas=self.train.adam_betas,
                eps=self.train.adam_eps,
                fused=True,
            )
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(self.train, total_steps))
            cell = _Cell(name=name, cfg=cfg, model=model, opt=opt, sched=sched)
            self._restore(cell)
            cells.append(cell)
        return cells

    def _pack_step(self, active: list[_Cell], xb: torch.Tensor) -> None:
        """One optimiser step of every active cell on batch ``xb`` (one read of it for all).

        The step's wall time is shared among the cells in proportion to n.
        """
        if not active:
            return
        t0 = time.perf_counter()
        if self.stacking:
            stacks, solo = self._plan(active)
            for s in stacks:
                self._stack_step(s, xb)
            for c in solo:
                self._step(c, xb, _pre_activations(c.model, xb, self._compute_dtype))
        else:
            z_pre = self._encoder.pre_activations(xb, self._compute_dtype)
            for c, z in zip(self._cells, z_pre, strict=True):
                if c in active:
                    self._step(c, xb, z)
        wall = time.perf_counter() - t0
        total_n = sum(c.cfg.n_latents for c in active)
        for c in active:
            c.seconds += wall * c.cfg.n_latents / total_n

    def _step(self, c: _Cell, xb: torch.Tensor, z_pre: torch.Tensor) -> None:
        model = c.model
        c.lr = c.opt.param_groups[0]["lr"]
        out = model(xb, z_pre_BN=z_pre)
        out.loss.backward()
        constrained_step(model, c.opt, self.train.grad_clip)
        c.sched.step()
        model.update_dead_counter(out.indices, out.values)
        model.update_threshold(out.values)
        c.step += 1
        self._accumulate(c, out)
        if self.train.log_every_steps and c.step % self.train.log_every_steps == 0:
            self._log(c)

    def _accumulate(self, c: _Cell, out) -> None:
        # Sums stay on the device; the host reads them once per log interval.
        vals = {"loss": out.loss, "nmse": out.nmse, "auxk_loss": out.auxk_loss}
        for key, v in vals.items():
            v = v.detach().float()
            c.acc[key] = c.acc[key] + v if key in c.acc else v
        c.acc_steps += 1

    def _log(self, c: _Cell) -> None:
        if self.on_log is not None and c.acc_steps:
            metrics = {f"train_{k}": (v / c.acc_steps).item() for k, v in c.acc.items()}
            metrics["train_dead_fraction"] = c.model.dead_mask().float().mean().item()
            metrics["lr"] = c.lr
            self.on_log(c.name, c.step, metrics)
        c.acc, c.acc_steps = {}, 0

    # ------------------------------------------------------------ stacking
    def _plan(self, active: list[_Cell]) -> tuple[list[_Stack], list[_Cell]]:
        """The stacks (groups of >= 2 cells) and lone cells of ``active``; made again,
        from the cells' current state, whenever the active cells change."""
        if tuple(active) != self._planned:
            self._unstack()
            groups = stack_groups([c.cfg for c in active])
            self._stacks = [self._stack([active[i] for i in g]) for g in groups if len(g) > 1]
            self._solo = [active[g[0]] for g in groups if len(g) == 1]
            self._planned = tuple(active)
        return self._stacks, self._solo

    def _stack(self, cells: list[_Cell]) -> _Stack:
        """One stack of ``cells``, which hand it their weights, Adam state and schedule."""
        model = StackedSAE([c.model for c in cells])
        t = self.train
        opt = make_optimizer(model, t.lr, t.adam_betas, t.adam_eps)
        # Before the Adam state: LambdaLR's constructor sets the lr of step 0.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(t, self._total_steps))
        load_cell_optimizer_states(opt, [c.opt.state_dict() for c in cells])
        sched.last_epoch = cells[0].sched.last_epoch
        zero = torch.zeros((), device=self.device)
        # 0 + v is v: the sums go on bit for bit as the cells' own would.
        acc = {k: torch.stack([c.acc.get(k, zero) for c in cells]) for k in _ACC_KEYS}
        for c in cells:
            c.opt.state.clear()  # the stack holds it until it is split
        return _Stack(cells=cells, model=model, opt=opt, sched=sched, acc=acc)

    def _unstack(self) -> None:
        """Each stacked cell's weights, buffers, Adam state, schedule and log sums back
        into the cell (checkpoints and evaluation read the cells); no stacks remain."""
        for s in self._stacks:
            for i, c in enumerate(s.cells):
                c.model.load_state_dict(s.model.cell_state_dict(i))
                c.opt.load_state_dict(cell_optimizer_state(s.opt, i))
                c.sched.last_epoch = s.sched.last_epoch
                c.acc = {k: v[i].clone() for k, v in s.acc.items()} if c.acc_steps else {}
        self._stacks, self._solo, self._planned = [], [], ()

    def _stack_step(self, s: _Stack, xb: torch.Tensor) -> None:
        """:meth:`_step` for every cell of a stack; no host sync unless it logs."""
        lr = s.opt.param_groups[0]["lr"]
        out = stacked_step(s.model, s.opt, xb, self.train.grad_clip, self._compute_dtype)
        s.sched.step()
        for key, v_C in zip(_ACC_KEYS, (out.loss, out.nmse, out.auxk_loss), strict=True):
            s.acc[key] = s.acc[key] + v_C.detach().float()
        for c in s.cells:
            c.lr = lr
            c.step += 1
            c.acc_steps += 1
        step = s.cells[0].step  # the cells of a stack are at one step
        if self.train.log_every_steps and step % self.train.log_every_steps == 0:
            self._log_stack(s)

    def _log_stack(self, s: _Stack) -> None:
        """:meth:`_log` for every cell of a stack, with one read of the stack's sums."""
        if self.on_log is not None:
            steps_C = torch.tensor([c.acc_steps for c in s.cells], device=self.device)
            means = {f"train_{k}": (v / steps_C).tolist() for k, v in s.acc.items()}
            dead = s.model.dead_mask().float().mean(dim=1).tolist()
            for i, c in enumerate(s.cells):
                if c.acc_steps:
                    metrics = {k: v[i] for k, v in means.items()}
                    metrics["train_dead_fraction"] = dead[i]
                    metrics["lr"] = c.lr
                    self.on_log(c.name, c.step, metrics)
        s.acc = {k: torch.zeros_like(v) for k, v in s.acc.items()}
        for c in s.cells:
            c.acc_steps = 0

    def _dir(self, c: _Cell) -> Path | None:
        return None if self.out_dir is None else self.out_dir / c.name

    def _state(self, c: _Cell, epoch: int, step_in_epoch: int) -> dict:
        return {
            "sae_cfg": to_dict(c.cfg),
            "train_cfg": to_dict(self.train),
            "run": to_dict(self.run),
            "model": c.model.state_dict(),
            "optimizer": c.opt.state_dict(),
            "scheduler": {"last_epoch": c.sched.last_epoch},
            "step": c.step,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "acc": {k: v.cpu() for k, v in c.acc.items()},
            "acc_steps": c.acc_steps,
            "seconds": c.seconds,
            "done": c.done,
            "density": None if c.density is None else torch.from_numpy(c.density),
        }

    def _checkpoint(self, cells: Sequence[_Cell], epoch: int, step_in_epoch: int, export=False):
        if self.out_dir is None:
            return
        self._unstack()  # the next step stacks the cells again
        for c in cells:
            d = self._dir(c)
            atomic_torch_save(self._state(c, epoch, step_in_epoch), d / STATE_FILE)
            if export:
                save_sae(c.model, d, self.train, self.run)
        self._last_checkpoint = time.monotonic()
        if self.on_checkpoint is not None:
            self.on_checkpoint([self._dir(c) for c in cells])  # type: ignore[misc]

    def _finish(self, c: _Cell) -> None:
        d = self._dir(c)
        if d is None:
            return
        save_sae(c.model, d, self.train, self.run)
        payload = {"metrics": c.metrics.as_dict(), "steps": c.step, "seconds": c.seconds}  # type: ignore[union-attr]
        atomic_write_bytes(d / METRICS_FILE, json.dumps(payload, indent=2).encode())
        atomic_torch_save(self._state(c, self.train.epochs, 0), d / STATE_FILE)
        if self.on_checkpoint is not None:
            self.on_checkpoint([d])

    def _restore(self, c: _Cell) -> None:
        d = self._dir(c)
        if d is None or not (d / STATE_FILE).is_file():
            return
        state = torch.load(d / STATE_FILE, map_location=self.device, weights_only=True)
        # Through SAEConfig, so a state written before a field existed reads as its default.
        saved_sae = to_dict(from_dict(SAEConfig, state["sae_cfg"], f"{d / STATE_FILE} [sae_cfg]"))
        # How often a run logs or checkpoints may change between runs; the rest may not.
        for key, saved, current in (
            ("sae_cfg", saved_sae, to_dict(c.cfg)),
            ("train_cfg", TrainConfig.weights_of(state["train_cfg"]), self.train.weight_key()),
        ):
            if saved != current:
                raise ConfigError(
                    f"{d / STATE_FILE} was written with other settings ({key} differs: "
                    f"{_diff(saved, current)}); use a new output folder to train these"
                )
        c.model.load_state_dict(state["model"])
        c.opt.load_state_dict(state["optimizer"])
        c.sched.last_epoch = state["scheduler"]["last_epoch"]
        c.step = state["step"]
        c.acc = {k: v.to(self.device) for k, v in state["acc"].items()}
        c.acc_steps = state["acc_steps"]
        c.seconds = state["seconds"]
        if state["done"] and (d / METRICS_FILE).is_file():
            c.done = True
            c.metrics = EvalMetrics(**json.loads((d / METRICS_FILE).read_text())["metrics"])
            density = state.get("density")  # absent from states written by older code
            c.density = None if density is None else density.cpu().numpy()


def _nbytes(x) -> int:
    """Bytes of ``x``'s rows as float32, held whole."""
    return int(np.prod(x.shape)) * 4


def _as_mapped(x) -> MappedRows:
    if isinstance(x, MappedRows):
        return x
    if isinstance(x, torch.Tensor):  # already in memory: read in pieces all the same
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise DataError(f"expected a tensor or numpy array, got {type(x).__name__}")
    return MappedRows(x)


@torch.no_grad()
def _pre_activations(model: TopKSAE, x_BD: torch.Tensor, compute_dtype) -> torch.Tensor:
    """[B, n] z_pre of one cell, as :class:`PackEncoder` issues it on CPU (a lone cell
    of a stacked pack: the pack's matmul would compute every cell's)."""
    return affine(x_BD, model.W_enc, model.b_lat - model.W_enc @ model.b_pre, compute_dtype)


def _take(x, rows: torch.Tensor) -> torch.Tensor:
    """[B, d] rows of ``x`` (a tensor, or :class:`MappedRows` read from disk) in order."""
    return x.take(rows.cpu()) if isinstance(x, MappedRows) else x[rows]


# ------------------------------------------------------- one optimiser step
@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm``; returns the norm before clipping.

    On the CPU, reading the norm costs nothing, so grads are only rescaled when the
    norm is too large (saving one pass over every gradient on most steps). On an
    accelerator the rescale is always issued, which avoids a host sync per step.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    coef = max_norm / (norm + 1e-6)
    if grads[0].device.type == "cpu":
        if coef.item() < 1.0:
            torch._foreach_mul_(grads, coef)
    else:
        torch._foreach_mul_(grads, coef.clamp(max=1.0))
    return norm


def constrained_step(model: TopKSAE, opt: torch.optim.Optimizer, grad_clip: float) -> None:
    """After ``backward``: project the decoder grads, clip, step, clear grads, renormalise.

    Keeps the decoder rows on the unit sphere (SAE_RECIPE.md); ``grad_clip`` 0 skips clipping.
    """
    model.remove_parallel_decoder_grad()
    if grad_clip > 0:
        clip_grad_norm(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.normalize_decoder()


def _lr_lambda(train: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warm = train.warmup_steps

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if train.lr_schedule == "cosine":
            span = max(total_steps - warm - 1, 1)  # reaches 0 at the last step
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))
        return 1.0

    return factor


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
