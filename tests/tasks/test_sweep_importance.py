"""A finished cell keeps its latent importance and pruning; the parent run plots them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infra.store import Store
from sae.config import RunInfo, TrainConfig
from sae.data import split
from sae.importance import latent_importance
from sae.model import TopKSAE
from tasks.sweep.matrix import matrix_file
from tasks.sweep.steps import plot_sweep, pruning_series
from tasks.sweep.train import (
    IMPORTANCE_FILE,
    PRUNING_FILE,
    PackSpec,
    finished_cells,
    train_pack,
)
from tests.tasks.test_sweep_plots import assert_png

CELLS = [(4, 32), (4, 64), (8, 64)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("importance")
    store = Store(str(base / "store"))
    train = TrainConfig(batch_size=64, lr=3e-3, epochs=3, warmup_steps=0, log_every_steps=0)
    data = matrix_file("synthetic", 700, 0)
    spec = PackSpec(
        "imp", store.root, {}, CELLS, train, RunInfo(domain="cs.LG"), data, prune_to=(32, 64)
    )
    refs = train_pack(spec, store, base / "scratch", "cpu")
    return store, spec, refs


def test_each_cell_keeps_importance_and_pruning_on_the_held_out_rows(trained):
    store, spec, refs = trained
    x_eval = split(spec.data.load(), spec.train.eval_fraction, spec.train.seed).eval
    for ref in refs:
        folder = f"{store.root}/{ref.folder}"
        importance = np.load(f"{folder}/{IMPORTANCE_FILE}")
        want = latent_importance(TopKSAE.load(folder), x_eval)
        np.testing.assert_allclose(importance, want, rtol=1e-5, atol=1e-8)
        pruned = json.loads(store.read_bytes(f"{ref.folder}/{PRUNING_FILE}"))
        # Pruned to its own n, a cell is the cell: the same rows as its metrics.
        assert set(pruned) == {str(n) for n in spec.prune_to if n <= ref.n_latents}
        assert pruned[str(ref.n_latents)] == pytest.approx(ref.metrics["nmse"], rel=1e-4)
    assert set(finished_cells(store, spec)) == {r.cell for r in refs}


def test_the_pruning_series_sets_the_largest_cell_pruned_beside_the_dedicated_ones(trained):
    store, _, refs = trained
    series = pruning_series(store, refs)
    assert list(series) == [4]  # k=8 has one n only: nothing to compare
    dedicated = series[4]["trained at n"]
    pruned = series[4]["largest n pruned by importance"]
    assert set(dedicated) == set(pruned) == {32, 64}
    assert pruned[64] == pytest.approx(dedicated[64], rel=1e-4)
    assert pruned[32] > pruned[64]


def test_the_parent_run_gets_importance_and_pruning_plots(trained, tmp_path):
    store, _, refs = trained
    paths = plot_sweep(store, refs, "cs.LG", tmp_path)
    names = {p.name for p in paths}
    assert {"importance.png", "pruning.png"} <= names
    for name in ("importance.png", "pruning.png"):
        assert_png(tmp_path / name)


def test_the_cell_run_gets_the_power_law_fit_as_metrics(trained, tmp_path):
    from mlflow import MlflowClient

    from sae.importance import power_law_fit
    from tasks.sweep.track import _log_importance_fit

    store, _, refs = trained
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("imp")).info.run_id
    ref = refs[-1]
    path = tmp_path / IMPORTANCE_FILE
    path.write_bytes(store.read_bytes(f"{ref.folder}/{IMPORTANCE_FILE}"))
    _log_importance_fit(client, run_id, path, ref.steps)
    _log_importance_fit(client, run_id, tmp_path / "missing.npy", ref.steps)  # older cell
    fit = power_law_fit(np.load(path))
    metrics = client.get_run(run_id).data.metrics
    assert metrics["importance_exponent"] == pytest.approx(fit.exponent)
    assert metrics["importance_r2"] == pytest.approx(fit.r2)
    assert 0 < fit.r2 <= 1
