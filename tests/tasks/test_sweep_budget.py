"""A pack past its vector budget trains from the snapshot memory-mapped (.npy files in the
scratch folder) and writes the same cell as a pack that holds the snapshot in memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from infra.store import Store
from sae.config import RunInfo, TrainConfig
from sae.data import sparse_dictionary_data
from sae.model import TopKSAE
from tasks.embed.manifest import Namespace, manifest_rows
from tasks.embed.mapped import mapped_rows, mapped_snapshot, snapshot_bytes
from tasks.embed.snapshot import fix_snapshot, load_snapshot
from tasks.sweep.train import (
    DENSITY_FILE,
    IMPORTANCE_FILE,
    PRUNING_FILE,
    RETRIEVAL_FILE,
    PackSpec,
    train_pack,
)
from tests.tasks.test_snapshot import CS, papers

D = 16
CELLS = [(4, 64), (3, 32)]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """400 cs.LG papers embedded in two parts; one paper revised (and re-embedded) after
    the snapshot, which must keep its first vector."""
    from tasks.corpus.storage import write_papers

    store = Store(str(tmp_path_factory.mktemp("budget") / "store"))
    ns = Namespace(store, "toy")
    ns.check_embedder("toy", D)
    ids = [f"2601.{i:05d}" for i in range(400)]
    x = sparse_dictionary_data(400, D, n_atoms=32, active=3, seed=7).numpy()
    write_papers(store, papers(ids, ("cs.LG",)))
    for name, part in (("part-b.parquet", slice(0, 200)), ("part-a.parquet", slice(200, 400))):
        ns.write_part(name, ids[part], ["s"] * 200, x[part])
        ns.append_manifest(manifest_rows(ids[part], ["s"] * 200, name, name))
    snap = fix_snapshot(store, CS, "toy")
    ns.write_part("part-c.parquet", ids[:1], ["s2"], x[1:2] + 1)
    ns.append_manifest(manifest_rows(ids[:1], ["s2"], "part-c.parquet", "later"))
    return store, snap


def test_the_mapped_snapshot_holds_the_rows_load_snapshot_gives(snapshot, tmp_path):
    store, snap = snapshot
    want_train, want_eval = load_snapshot(store, snap)
    got_train, got_eval = mapped_snapshot(store, snap, tmp_path)
    np.testing.assert_array_equal(got_train[:].numpy(), want_train)
    np.testing.assert_array_equal(got_eval[:].numpy(), want_eval)
    assert snapshot_bytes(store, snap) == 400 * D * 4
    # One file, the snapshot's rows in id order (as the features read them).
    rows = mapped_rows(store, snap, tmp_path)
    assert isinstance(rows, np.memmap) and not rows.flags.writeable
    ids, want = Namespace(store, snap.embedder).load(keys=store.read_parquet(snap.path))
    assert ids == sorted(ids)
    np.testing.assert_array_equal(rows, want)
    # A folder of an earlier layout (train.npy, eval.npy) gives way to the file.
    legacy = tmp_path / "legacy"
    (legacy / "toy" / snap.id).mkdir(parents=True)
    np.save(legacy / "toy" / snap.id / "train.npy", np.zeros((2, D), np.float32))
    np.testing.assert_array_equal(mapped_rows(store, snap, legacy), want)
    assert [p.name for p in (legacy / "toy" / snap.id).iterdir()] == ["rows.npy"]
    # Written once: a second call maps the same file.
    before = Path(rows.filename).stat().st_mtime_ns
    mapped_snapshot(store, snap, tmp_path)
    assert [p.name for p in Path(rows.filename).parent.iterdir()] == ["rows.npy"]
    assert Path(rows.filename).stat().st_mtime_ns == before


def _pack(store, snap, sweep_id, budget):
    train = TrainConfig(batch_size=32, lr=3e-3, epochs=1, warmup_steps=0, log_every_steps=0)
    spec = PackSpec(
        sweep_id, store.root, {}, CELLS, train, RunInfo(domain="cs.LG", data_snapshot=snap.id),
        snap, prune_to=(32, 64), vector_budget_bytes=budget,
    )  # fmt: skip
    return train_pack(spec, store, _scratch(store) / sweep_id, "cpu")


def _scratch(store):
    return Path(store.root.removeprefix("file://")).parent / "scratch"


def test_a_pack_past_its_budget_writes_the_cells_an_in_memory_pack_writes(snapshot):
    store, snap = snapshot
    held = _pack(store, snap, "held", budget=400 * D * 4)  # just fits: held in memory
    streamed = _pack(store, snap, "streamed", budget=4096)  # 64 vectors of 16 floats
    assert list((_scratch(store) / "streamed" / "snapshots" / "toy").iterdir())
    assert not (_scratch(store) / "held").exists()  # nothing mapped
    for a, b in zip(held, streamed, strict=True):
        assert a.metrics == b.metrics and a.steps == b.steps
        root = Path(store.root.removeprefix("file://"))
        wa = TopKSAE.load(root / a.folder).state_dict()
        wb = TopKSAE.load(root / b.folder).state_dict()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        for name in (DENSITY_FILE, IMPORTANCE_FILE):
            np.testing.assert_array_equal(
                np.load(root / a.folder / name), np.load(root / b.folder / name)
            )
        for name in (PRUNING_FILE, RETRIEVAL_FILE):
            assert json.loads(store.read_bytes(f"{a.folder}/{name}")) == json.loads(
                store.read_bytes(f"{b.folder}/{name}")
            )
        retrieval = json.loads(store.read_bytes(f"{b.folder}/{RETRIEVAL_FILE}"))
        assert retrieval["retrieval_queries"] == retrieval["retrieval_queries_total"] == snap.n_eval
        assert retrieval["retrieval_recall_at_10_stderr"] == 0.0


def test_a_cell_s_features_past_the_budget_are_those_of_the_vectors_in_memory(snapshot, tmp_path):
    from tasks.features.params import FeaturesParams
    from tasks.features.run import CellJob, analyse_cell

    store, snap = snapshot
    (cell, *_) = _pack(store, snap, "features", budget=None)
    docs = []
    for budget in (None, 4096):
        job = CellJob(store.root, {}, "cs.LG", "toy", snap.path, "features", cell.cell,
                      cell.folder, "m", FeaturesParams().clean_rule(), budget)  # fmt: skip
        for name in ("features.json", "codes.parquet"):  # codes from these vectors too
            store.delete(f"{job.features_folder()}/{name}")
        analyse_cell(job, tmp_path / str(budget))
        docs.append(json.loads(store.read_bytes(f"{job.features_folder()}/features.json")))
    assert [p.name for p in (tmp_path / "4096" / "snapshots" / "toy").iterdir()] == [snap.id]
    assert not (tmp_path / "None" / "snapshots").exists()
    for doc in docs:  # the seconds are the runs' own
        for key in ("codes_seconds", "analysis_seconds"):
            doc["summary"].pop(key)
    assert docs[0] == docs[1]


def test_a_machine_keeps_the_two_most_recently_used_snapshots_mapped(snapshot, tmp_path):
    import os

    store, snap = snapshot
    snaps = [snap, *(fix_snapshot(store, CS, "toy", limit=m) for m in (300, 200))]
    assert len({s.id for s in snaps}) == 3
    first = mapped_rows(store, snaps[0], tmp_path)
    folder = Path(first.filename).parent.parent
    for age, s in ((100, snaps[0]), (50, snaps[1])):  # used in turn, the first longest ago
        mapped_rows(store, s, tmp_path)
        os.utime(folder / s.id, ns=(0, (os.stat(folder).st_mtime_ns - age * 10**9)))
    mapped_rows(store, snaps[2], tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(s.id for s in snaps[1:])
    _, want = Namespace(store, snap.embedder).load(keys=store.read_parquet(snap.path))
    np.testing.assert_array_equal(first, want)  # a map open when its file went still reads
    # Used again: written again, and now the least recently used goes.
    mapped_rows(store, snaps[0], tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted([snaps[0].id, snaps[2].id])
