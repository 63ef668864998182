"""The n axis from one model: per k, a Matryoshka cell of the largest n nested at the
grid's n values, trained beside the dedicated cells, with its per-prefix metrics."""

from __future__ import annotations

import json

import pytest

from infra.store import Store
from sae.config import RunInfo, TrainConfig
from sae.data import split
from sae.metrics import prefix_metrics
from sae.model import TopKSAE
from tasks.sweep.config import GridParams
from tasks.sweep.matrix import matrix_file
from tasks.sweep.steps import plot_sweep, pruning_series
from tasks.sweep.train import (
    PREFIXES_FILE,
    PackSpec,
    finished_cells,
    n_axis_spec,
    train_pack,
    unfinished,
)

PARAMS = GridParams(k=[4], n_latents=[32, 64], n_axis_matryoshka=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("n_axis")
    store = Store(str(base / "store"))
    train = TrainConfig(batch_size=64, lr=3e-3, epochs=2, log_every_steps=0)
    data = matrix_file("synthetic", 600, 0)
    grid = PackSpec(
        "nax", store.root, {}, PARAMS.cells(), train, RunInfo(domain="cs.LG"), data,
        PARAMS.sae_options(), (32, 64),
    )  # fmt: skip
    nested = n_axis_spec(grid, PARAMS)
    refs = train_pack(grid, store, base / "scratch", "cpu")
    refs += train_pack(nested, store, base / "scratch", "cpu")
    return store, grid, nested, refs


def test_the_n_axis_cell_sits_beside_the_dedicated_cell_of_its_k_and_n(trained):
    store, grid, nested, refs = trained
    assert nested.cells == [(4, 64)]
    names = {r.cell: r.n_axis for r in refs}
    assert names == {"csLG_4_32_64": False, "csLG_4_64_64": False, "csLG_4_64_64_matryoshka": True}
    done = {**finished_cells(store, grid), **finished_cells(store, nested)}
    assert set(done) == set(names)
    assert done["csLG_4_64_64_matryoshka"].n_axis
    assert unfinished(grid, done) == unfinished(nested, done) == []
    cfg = json.loads(store.read_bytes(f"{done['csLG_4_64_64_matryoshka'].folder}/cfg.json"))
    assert cfg["sae"]["arch"] == "matryoshka" and cfg["sae"]["prefixes"] == [32, 64]


def test_prefixes_json_holds_each_prefix_used_alone_on_the_held_out_rows(trained):
    store, grid, _, refs = trained
    (ref,) = [r for r in refs if r.n_axis]
    payload = json.loads(store.read_bytes(f"{ref.folder}/{PREFIXES_FILE}"))
    assert set(payload) == {"32", "64"}
    model = TopKSAE.load(f"{store.root}/{ref.folder}").eval()
    x_eval = split(grid.data.load(), grid.train.eval_fraction, grid.train.seed).eval
    for row in prefix_metrics(model, x_eval, [32, 64]):
        got = payload[str(row.n_latents)]
        assert got["nmse"] == pytest.approx(row.nmse, rel=1e-5)
        assert got["dead_fraction"] == pytest.approx(row.dead_fraction)
    # The whole dictionary is the cell itself.
    assert payload["64"]["nmse"] == pytest.approx(ref.metrics["nmse"], rel=1e-4)
    assert payload["32"]["nmse"] > payload["64"]["nmse"]


def test_the_pruning_plot_sets_the_prefixes_beside_the_pruned_and_dedicated_cells(
    trained, tmp_path
):
    store, _, _, refs = trained
    grid_refs, nested = [r for r in refs if not r.n_axis], [r for r in refs if r.n_axis]
    (ref,) = nested
    series = pruning_series(store, grid_refs, nested)[4]
    prefixes = json.loads(store.read_bytes(f"{ref.folder}/{PREFIXES_FILE}"))
    assert series["one Matryoshka model, prefix n"] == {
        int(m): v["nmse"] for m, v in prefixes.items()
    }
    assert set(series) == {
        "trained at n",
        "largest n pruned by importance",
        "one Matryoshka model, prefix n",
    }
    assert "pruning.png" in {
        p.name for p in plot_sweep(store, grid_refs, "cs.LG", tmp_path, nested)
    }


def test_the_cell_run_gets_its_own_arch_params_and_the_prefix_metrics(trained, tmp_path):
    from mlflow import MlflowClient

    from tasks.sweep.track import _arch_params, _log_prefixes, model_name, run_name

    store, _, _, refs = trained
    (ref,) = [r for r in refs if r.n_axis]
    for name in ("cfg.json", PREFIXES_FILE):
        (tmp_path / name).write_bytes(store.read_bytes(f"{ref.folder}/{name}"))
    assert _arch_params(tmp_path / "cfg.json") == {
        "arch": "matryoshka", "prefixes": "[32, 64]", "matryoshka_selection": "topk",
        "threshold_decay": "0.99",
    }  # fmt: skip
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("nax")).info.run_id
    _log_prefixes(client, run_id, tmp_path / PREFIXES_FILE, ref.steps)
    _log_prefixes(client, run_id, tmp_path / "missing.json", ref.steps)  # not Matryoshka
    metrics = client.get_run(run_id).data.metrics
    payload = json.loads((tmp_path / PREFIXES_FILE).read_text())
    assert metrics["prefix_nmse_32"] == pytest.approx(payload["32"]["nmse"])
    assert metrics["prefix_dead_fraction_64"] == pytest.approx(payload["64"]["dead_fraction"])
    assert run_name(4, 64, n_axis=True) == "k4-n64-matryoshka" != run_name(4, 64)
    assert model_name("cs.LG", 4, 64, n_axis=True) == "sae-cs.LG-k4-n64-matryoshka"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_latents": [64]}, "at least two n_latents"),
        ({"arch": "matryoshka"}, "needs arch topk or batchtopk"),
    ],
)
def test_bad_n_axis_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GridParams(k=[4], **{"n_latents": [32, 64], "n_axis_matryoshka": True, **kwargs})


def test_the_n_axis_cells_select_as_the_grid_does():
    opts = GridParams(k=[4], n_latents=[32, 64], n_axis_matryoshka=True, arch="batchtopk")
    assert opts.n_axis_options()["matryoshka_selection"] == "batchtopk"
    assert PARAMS.n_axis_options()["prefixes"] == [32, 64]
    assert PARAMS.n_axis_cells() == [(4, 64)]
    assert GridParams(k=[4], n_latents=[32, 64]).n_axis_cells() == []
