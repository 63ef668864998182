"""One size of the scale rehearsal: synthetic papers and vectors in through the corpus's
write path and ``import_vectors``, then every stage of a sweep and its applications
(the embedder aside), each through the project's own functions and measured
(:mod:`tasks.scale.measure`).

Training runs the real ``train_pack`` on a hash-random part of the snapshot holding
``steps`` batches (an epoch of 2.7M rows is thousands of steps a cell on a CPU): its
per-cell seconds per step, times a full sweep's steps, give the full grid's time; the
process's RSS at each logged step shows whether memory grows with steps. Evaluation,
importance and retrieval then run at full N with the library calls ``train_pack``
makes, on the snapshot read as ``train_pack`` reads it (memory-mapped past the vector
budget); features, the search index and queries run on the full snapshot too.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from infra.settings import get_settings
from infra.store import Store
from sae.data import MappedRows
from sae.metrics import evaluate
from tasks.corpus.domains import get_domain
from tasks.embed.embedders import embedder_name
from tasks.embed.import_vectors import import_vectors
from tasks.embed.mapped import mapped_snapshot, snapshot_bytes
from tasks.embed.snapshot import Snapshot, fix_snapshot, load_snapshot
from tasks.scale import synthetic
from tasks.scale.measure import StageCost, measured, rss
from tasks.sweep.config import GridParams
from tasks.sweep.train import sweep_pack, train_pack

DOMAIN = "all"


@dataclass(frozen=True)
class Plan:
    n: int
    d: int
    k: list[int]
    n_latents: list[int]
    """The cells trained: the grid's smallest and largest n at one k, past ``full_grid_at``."""
    grid_k: list[int]
    grid_n: list[int]
    steps: int = 200
    batch_size: int = 1024
    epochs: int = 50
    """A real sweep's epochs, for the extrapolated full-grid time."""
    queries: int = 200
    seed: int = 0

    @property
    def reduced(self) -> bool:
        return (self.k, self.n_latents) != (self.grid_k, self.grid_n)


def rehearse(plan: Plan, root: Path) -> list[StageCost]:
    """Every stage at ``plan``'s size in a store under ``root``; the stages' costs."""
    store, dom = Store(str(root / "store")), get_domain(DOMAIN)
    spec = f"openai:synthetic-d{plan.d}"
    costs: list[StageCost] = []
    with measured("synthesize (stands in for the embedder)", costs) as c:
        synthetic.write_corpus(store, plan.n, plan.seed)
        matrix, ids_file = synthetic.write_vectors(root, plan.n, plan.d, plan.seed)
    with measured("import vectors", costs) as c:
        report = import_vectors(store, dom, matrix, spec, ids_file=ids_file)
        c.notes = {"imported": report.imported, "rejected": report.rejected}
        if report.imported != plan.n:
            raise RuntimeError(f"the import took {report.imported} of {plan.n}: {report.summary()}")
    matrix.unlink()
    with measured("snapshot and split", costs) as c:
        snap = fix_snapshot(store, dom, embedder_name(spec))
        x_train, x_eval = _load(store, snap, root)
        mapped = isinstance(x_train, MappedRows)
        c.notes = {"n_train": snap.n_train, "n_eval": snap.n_eval, "mapped": mapped}
    del x_train, x_eval
    with measured("train", costs) as c:
        refs, c.notes = _train(plan, store, dom, spec, root)
    with measured("evaluate (full N)", costs) as c:
        model, x_train, x_eval = _model_and_rows(store, refs[-1], snap, root)
        metrics, _ = evaluate(model, x_eval, batch_size=max(plan.batch_size, 1024))
        c.notes = {"cell": refs[-1].cell, "nmse": round(metrics.nmse, 4)}
    with measured("importance and pruning (full N)", costs) as c:
        _importance(model, x_eval, plan)
    with measured("retrieval fidelity (full N)", costs) as c:
        c.notes = _retrieval(model, x_eval, x_train, plan, root / "retrieval")
    del x_train, x_eval
    with measured("features (codes, cards, labels, families)", costs) as c:
        c.notes = _features(store, snap, refs[-1], root)
    with measured("search index build", costs) as c:
        x_ND, ids = _corpus(store, snap)
        index, c.notes = _index(x_ND, snap, ids)
    with measured("query latency", costs) as c:
        c.notes = _queries(x_ND, ids, model, index, plan)
    return costs


def _load(store: Store, snap: Snapshot, root: Path):
    """(train, eval) as ``train_pack`` reads them: memory-mapped past the vector budget."""
    if snapshot_bytes(store, snap) > get_settings().vector_budget_bytes:
        return mapped_snapshot(store, snap, root / "scratch" / "snapshots")
    x_train, x_eval = load_snapshot(store, snap)
    return torch.from_numpy(x_train), torch.from_numpy(x_eval)


def _train(plan: Plan, store: Store, dom, spec: str, root: Path) -> tuple[list, dict]:
    # steps batches of training rows, plus the 1 in 20 the split holds out.
    limit = min(plan.n, math.ceil(plan.steps * plan.batch_size * 20 / 19) + plan.batch_size)
    part = fix_snapshot(store, dom, embedder_name(spec), limit=limit)
    params = GridParams(k=plan.k, n_latents=plan.n_latents, batch_size=plan.batch_size, epochs=1,
                        lr=1e-3, checkpoint_every_s=1e9)  # fmt: skip
    pack = sweep_pack(params, f"scale-{part.id}", store, part, "scale-rehearsal")
    memory: dict[str, list[tuple[int, int]]] = {}

    def on_log(cell: str, step: int, metrics: dict) -> None:
        memory.setdefault(cell, []).append((step, rss()))

    refs = train_pack(pack, store, root / "scratch", "cpu", on_log)
    per_step = {r.cell: r.seconds / max(r.steps, 1) for r in refs}
    steps = {r.cell: r.steps for r in refs}
    trace = next(iter(memory.values()), [])
    notes = {
        "cells": [r.cell for r in refs],
        "rows": part.n_train,
        "steps": steps,
        "s_per_step": {c: round(s, 4) for c, s in per_step.items()},
        "rss_first_log": trace[0][1] if trace else 0,
        "rss_last_log": trace[-1][1] if trace else 0,
        "full_grid_s": round(_full_grid_seconds(plan, refs), 1),
        "reduced_grid": plan.reduced,
    }
    return refs, notes


def _full_grid_seconds(plan: Plan, refs) -> float:
    """The whole grid, ``epochs`` over all N: each cell's seconds per step, interpolated
    linearly in n between the trained cells (the step's matmuls are linear in n)."""
    ns = np.array([r.n_latents for r in refs], dtype=float)
    s = np.array([r.seconds / max(r.steps, 1) for r in refs])
    order = np.argsort(ns)
    steps = plan.epochs * (plan.n * 19 // 20) // plan.batch_size
    cells = [(k, n) for k in plan.grid_k for n in plan.grid_n]
    per_cell = [np.interp(n, ns[order], s[order]) for _, n in cells]
    return float(sum(per_cell) * steps)


def _model_and_rows(store: Store, ref, snap: Snapshot, root: Path):
    from tasks.sweep.load import load_cell_model

    model = load_cell_model(store, ref.folder, "cpu", root / "scratch")
    x_train, x_eval = _load(store, snap, root)
    return model, x_train, x_eval


def _importance(model, x_eval, plan: Plan) -> None:
    from sae.importance import latent_importance, pruned_nmse

    importance = latent_importance(model, x_eval)
    sizes = {m for m in plan.n_latents if m <= model.n_latents}
    pruned_nmse(model, x_eval, np.argsort(-importance, kind="stable"), sizes)


def _retrieval(model, x_eval, x_train, plan: Plan, folder: Path) -> dict:
    """As a pack measures it: blocks of the training rows within the vector budget."""
    from tasks.sweep.train import RETRIEVAL_FILE, _write_retrieval

    folder.mkdir(parents=True, exist_ok=True)
    budget = get_settings().vector_budget_bytes
    _write_retrieval(folder, model, x_eval, x_train, budget, plan.batch_size)
    fidelity = json.loads((folder / RETRIEVAL_FILE).read_text())
    return {"recall_at_10": round(fidelity["retrieval_recall_at_10"], 3),
            "queries": fidelity.get("retrieval_queries")}  # fmt: skip


def _features(store: Store, snap: Snapshot, ref, root: Path) -> dict:
    from tasks.features.params import FeaturesParams
    from tasks.features.run import CellJob, analyse_cell

    job = CellJob(store.root, {}, DOMAIN, snap.embedder, snap.path, "scale", ref.cell, ref.folder,
                  "scale-rehearsal", FeaturesParams().clean_rule(),
                  get_settings().vector_budget_bytes)  # fmt: skip
    summary = analyse_cell(job, root / "scratch")["summary"]
    return {k: summary[k] for k in ("live_features", "codes_seconds") if k in summary}


def _corpus(store: Store, snap: Snapshot) -> tuple[torch.Tensor, list[str]]:
    from tasks.embed.manifest import Namespace

    ids, x = Namespace(store, snap.embedder).load(keys=store.read_parquet(snap.path))
    return torch.from_numpy(np.require(x, requirements="W")), ids


def _index(x_ND: torch.Tensor, snap: Snapshot, ids: list[str]):
    """The approximate index of :mod:`tasks.search.ann` past the corpus's exact-search
    size; None (exact search) below it."""
    from tasks.search import ann

    if x_ND.shape[0] < ann.EXACT_BELOW:
        return None, {"index": f"none: exact search below {ann.EXACT_BELOW} papers"}
    return ann.build(x_ND, ann.fingerprint(snap.id, ids)), {"index": ann.RECIPE}


def _queries(x_ND: torch.Tensor, ids: list[str], model, index, plan: Plan) -> dict:
    """Latency of the engine's search (the query's embedding given: no embedder), on
    papers' own vectors as queries."""
    from tasks.search.engine import SearchEngine

    engine = SearchEngine(model, ids, [""] * len(ids), x_ND, _no_embedder, None, "scale", DOMAIN,
                          "scale", index=index)  # fmt: skip
    rows = np.random.default_rng(plan.seed).choice(len(ids), min(plan.queries, len(ids)), False)
    seconds, found = [], 0
    for r in rows:
        t0 = time.perf_counter()
        result = engine.search("scale", top=10, x_D=x_ND[int(r)])
        seconds.append(time.perf_counter() - t0)
        found += result.hits[0].row == int(r)
    ms = np.array(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "self_found_at_1": round(found / len(rows), 3), "queries": len(rows),
            "index": "exact" if index is None else "ann"}  # fmt: skip


def _no_embedder(texts):
    raise RuntimeError("the rehearsal gives each query's vector; nothing embeds")
