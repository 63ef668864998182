"""The store's sweep index (:mod:`tasks.sweep.catalog`) as search reads it: the newest
finished sweep of a domain without MLflow, MLflow only where the index has no answer,
and the index left behind for the next search."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from infra.store import Store, StoreError
from tasks.features.locate import CellInfo, SweepInfo
from tasks.search import load
from tasks.sweep import catalog


def sweep(sid: str, start: int, domain: str = "cs.LG") -> SweepInfo:
    cells = (
        CellInfo(f"{sid}_a", 8, 32, "run-a", champion=False, n_axis=False),
        CellInfo(f"{sid}_b", 8, 64, "run-b", champion=True, n_axis=False),
    )
    return SweepInfo(domain, sid, f"parent-{sid}", "exp", "snap", "minilm-l6-v2", start, cells)


class Client:
    """MLflow's answers: each parent run's status; ``find_sweep`` is patched separately."""

    def __init__(self, statuses: dict[str, str]):
        self.statuses = statuses

    def get_run(self, run_id: str):
        return SimpleNamespace(info=SimpleNamespace(status=self.statuses[run_id]))


@pytest.fixture()
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "store"))


def test_the_newest_finished_sweep_of_the_domain_is_read_back_whole(store):
    client = Client(
        {"parent-old": "FINISHED", "parent-new": "FINISHED", "parent-run": "RUNNING",
         "parent-cv": "FINISHED"}
    )  # fmt: skip
    for info in (sweep("old", 1), sweep("new", 2), sweep("run", 3), sweep("cv", 4, "cs.CV")):
        catalog.save_index(store, client, info)
    assert catalog.read_index(store, "cs.LG") == sweep("new", 2)
    assert catalog.read_index(store, "cs.LG", "run") == sweep("run", 3)  # any status, by id
    assert catalog.read_index(store, "cs.CV") == sweep("cv", 4, "cs.CV")
    assert catalog.read_index(store, "cs.LG", "cv") is None  # another domain's
    assert catalog.read_index(store, "astro-ph") is None
    assert catalog.read_index(store, "cs.LG", "../sae") is None
    store.write_json(catalog.index_path("new"), {"version": 99})  # a later format
    assert catalog.read_index(store, "cs.LG") == sweep("old", 1)


def test_search_asks_mlflow_only_without_an_index_and_indexes_the_newest(store, monkeypatch):
    asked = []
    client = Client({"parent-new": "FINISHED", "parent-x": "FAILED"})

    def find_sweep(client, domain, sweep_id=None):
        asked.append(sweep_id)
        return sweep(sweep_id or "new", 2)

    monkeypatch.setattr(load, "mlflow_client", lambda settings: client)
    monkeypatch.setattr(load, "find_sweep", find_sweep)
    assert load._find_sweep(None, store, "cs.LG", "x") == (sweep("x", 2), "MLflow")
    assert not store.exists(catalog.index_path("x"))  # it could hide a newer unindexed one
    assert load._find_sweep(None, store, "cs.LG", None) == (sweep("new", 2), "MLflow")
    assert load._find_sweep(None, store, "cs.LG", None) == (sweep("new", 2), "store index")
    assert asked == ["x", None]

    def read_only(*a, **kw):
        raise StoreError("cannot write: read-only")

    monkeypatch.setattr(load, "save_index", read_only)
    assert load._find_sweep(None, store, "cs.CV", None)[1] == "MLflow"


def test_an_import_answers_to_its_id_and_never_stands_in_for_the_domains_sweep(store, tmp_path):
    """In the store's index and in MLflow alike: a newer imported SAE is not the default."""
    from mlflow.tracking import MlflowClient

    from tasks.features.locate import IMPORTED, find_sweep

    client = Client({"parent-ours": "FINISHED", "parent-import-abc": "FINISHED"})
    catalog.save_index(store, client, sweep("ours", 1))
    catalog.save_index(store, client, sweep("import-abc", 2))
    assert catalog.read_index(store, "cs.LG") == sweep("ours", 1)
    assert catalog.read_index(store, "cs.LG", "import-abc") == sweep("import-abc", 2)

    mlflow = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("arxiv-sae/cs.LG")
    for sid, version, start in (("ours", "c1234", 1), ("import-abc", IMPORTED, 2)):
        tags = {"run_kind": "sweep", "sweep_id": sid, "domain": "cs.LG", "code_version": version,
                "data_snapshot": "snap", "embedder": "minilm-l6-v2"}  # fmt: skip
        run = mlflow.create_run(experiment, start_time=start, tags=tags)
        mlflow.set_terminated(run.info.run_id, "FINISHED")
    assert find_sweep(mlflow, "cs.LG").sweep_id == "ours"
    assert find_sweep(mlflow, "cs.LG", "import-abc").sweep_id == "import-abc"
