"""A store written in the per-domain layout (by the code before it changed: the fixture
``tests/fixtures/store_v1``) moves in place to one corpus and one embedding per paper:
nothing embedded again, nothing lost, snapshots and so finished sweeps kept, and a rerun
after a crash at any point finishes the move."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import tasks.layout as layout
from tasks.corpus.domains import get_domain
from tasks.corpus.storage import read_papers, read_quarantine, read_watermark
from tasks.embed.manifest import Namespace
from tasks.embed.run import paper_texts, pending_papers
from tasks.embed.snapshot import fix_snapshot, load_snapshot, snapshot_by_id

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_v1"
EMBEDDER = "minilm-l6-v2"
CS, ASTRO = get_domain("cs.LG"), get_domain("astro-ph")
SNAPSHOTS = {CS: "cs_lg-3b3570af6799", ASTRO: "astro_ph-1de50d5b859c"}
SHARED = {"2511.15743", "2512.00769", "2601.05889"}


def old_files() -> dict[str, bytes]:
    return {
        p.relative_to(FIXTURE).as_posix(): p.read_bytes()
        for p in sorted(FIXTURE.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def old_store(store):
    """The fixture's files, copied into a local folder or a moto bucket."""
    for rel, data in old_files().items():
        store.write_bytes(rel, data)
    layout._checked.discard(store.root)
    yield store
    layout._checked.discard(store.root)


def old_table(pattern: str) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted(FIXTURE.glob(pattern))])


def old_vectors() -> dict[str, np.ndarray]:
    table = old_table(f"embeddings/{EMBEDDER}/*/part-*.parquet")
    return dict(zip(table["id"], table["vector"].to_numpy(), strict=True))


def migrate(store) -> None:
    layout._checked.discard(store.root)
    layout.ensure_layout(store)


def check_migrated(store) -> None:
    old_corpus = old_table("corpus/*/part-*.parquet")
    for dom, slug in ((CS, "cs_lg"), (ASTRO, "astro_ph")):
        before = pl.read_parquet(next(FIXTURE.glob(f"corpus/{slug}/part-*.parquet")))
        after = read_papers(store, dom)
        assert after["id"].to_list() == sorted(before["id"].to_list())
        assert after.drop("source").sort("id").equals(before.drop("source").sort("id"))
        # Nothing to embed again: every paper's exact text has its vector.
        manifest = Namespace(store, EMBEDDER).read_manifest()
        assert pending_papers(paper_texts(after), manifest).is_empty()
        # The snapshot keeps its id (finished sweeps stay finished) and its vectors.
        snap = snapshot_by_id(store, dom, EMBEDDER, SNAPSHOTS[dom])
        assert snap is not None and snap.n_train + snap.n_eval == before.height
        assert fix_snapshot(store, dom, EMBEDDER).id == SNAPSHOTS[dom]
        x_train, _ = load_snapshot(store, snap)
        rows = store.read_parquet(snap.path).filter(~pl.col("eval"))["id"].to_list()
        vectors = old_vectors()
        np.testing.assert_array_equal(x_train, np.stack([vectors[i] for i in rows]))
    # One corpus: the papers listed in both fields once.
    everything = read_papers(store, get_domain("all"))
    assert everything.height == old_corpus["id"].n_unique() == 24 + 20 - len(SHARED)
    both = set(read_papers(store, CS)["id"]) & set(read_papers(store, ASTRO)["id"])
    assert both == SHARED
    quarantine = read_quarantine(store)
    assert quarantine["id"].to_list() == ["2601.99999"]
    assert read_watermark(store, CS).newest.isoformat() == "2026-01-20"
    # The old layout is gone, and the store says it moved.
    assert not any(layout._old_files(store).values())
    assert store.read_json(layout.LAYOUT_FILE)["state"] == "done"
    assert not store.list(f"embeddings/{EMBEDDER}/cs_lg", "*")


def test_an_old_store_moves_in_place(old_store):
    assert sum(map(len, layout._old_files(old_store).values())) == 13  # all but the watermark
    migrate(old_store)
    check_migrated(old_store)
    # A second open changes nothing.
    files = sorted(old_store.list("", "**"))
    migrate(old_store)
    assert sorted(old_store.list("", "**")) == files


def test_a_crash_while_copying_is_finished_by_the_next_open(old_store, monkeypatch):
    real, writes = old_store.write_bytes, []

    def dies_on_the_sixth(rel, data):
        writes.append(rel)
        if len(writes) == 6:
            raise OSError("killed")
        return real(rel, data)

    monkeypatch.setattr(old_store, "write_bytes", dies_on_the_sixth)
    with pytest.raises(OSError, match="killed"):
        migrate(old_store)
    monkeypatch.setattr(old_store, "write_bytes", real)
    assert not old_store.exists(layout.LAYOUT_FILE)  # nothing deleted before the copy ends
    migrate(old_store)
    check_migrated(old_store)


def test_a_crash_while_deleting_is_finished_by_the_next_open(old_store, monkeypatch):
    real, deletes = old_store.delete, []

    def dies_on_the_third(rel):
        deletes.append(rel)
        if len(deletes) == 3:
            raise OSError("killed")
        real(rel)

    monkeypatch.setattr(old_store, "delete", dies_on_the_third)
    with pytest.raises(OSError, match="killed"):
        migrate(old_store)
    monkeypatch.setattr(old_store, "delete", real)
    assert old_store.read_json(layout.LAYOUT_FILE)["state"] == "copied"
    migrate(old_store)
    check_migrated(old_store)


def test_a_new_store_is_marked_and_not_listed_again(store):
    layout._checked.discard(store.root)
    layout.ensure_layout(store)
    assert store.read_json(layout.LAYOUT_FILE)["state"] == "done"


def test_two_processes_opening_an_old_store_at_once_both_end_with_it_moved(old_store):
    """The second lists the old files, then the first moves the store and deletes them
    under the second's copy: the second finds the move done, not an error."""
    stale = layout._old_files(old_store)
    layout._move(old_store, layout._old_files(old_store), None)  # the first process
    with pytest.raises(FileNotFoundError):
        layout._copy(old_store, stale)  # what the second meets, left to itself
    layout._move(old_store, stale, None)
    check_migrated(old_store)
