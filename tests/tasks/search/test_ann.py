"""The approximate index (:mod:`tasks.search.ann`) against exact search, through a real
local store and through the engine."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from infra.store import Store
from tasks.embed.snapshot import Snapshot
from tasks.search import ann, load
from tasks.search.bench import synthetic_vectors
from tasks.search.engine import SearchEngine
from tests.tasks.search.axes import axis_sae, document

N, DIM, TOP = 8_000, 384, 10


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Clustered unit vectors [N, DIM], and queries from the same clusters [40, DIM]."""
    gen = torch.Generator().manual_seed(0)
    x, centres = synthetic_vectors(N, DIM, 110, gen)
    q, _ = synthetic_vectors(40, DIM, 110, gen, centres)
    return [f"2501.{i:05d}" for i in range(N)], x, q


@pytest.fixture()
def snap(tmp_path) -> tuple[Store, Snapshot]:
    store = Store(str(tmp_path / "store"))
    rel = "embeddings/toy/_snapshots/cs_lg/cs_lg-0123456789ab.parquet"
    return store, Snapshot("cs_lg-0123456789ab", "cs.LG", "toy", N, 0, rel, store.uri(rel))


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    hits = [len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact, strict=True)]
    return sum(hits) / exact.numel()


@pytest.fixture(autouse=True)
def _fresh_cache():
    load._INDEXES.clear()
    yield
    load._INDEXES.clear()


def test_above_the_threshold_the_index_finds_the_exact_top_10(corpus, snap):
    ids, x, q = corpus
    store, s = snap
    assert load._search_index(store, s, ids, x) is None  # N is under EXACT_BELOW: exact
    index = load._search_index(store, s, ids, x, exact_below=N)
    stats = faiss.cvar.indexIVF_stats
    stats.reset()
    scores, rows = index.search(q, TOP)
    assert stats.nq == len(q) and 0 < stats.ndis < len(q) * N / 4  # it scanned a part
    exact_rows = ann.exact_search(x, q, TOP)[1]
    assert recall(rows, exact_rows) >= 0.95
    # Its scores are exact cosines of the rows it gives, best first.
    torch.testing.assert_close(scores, torch.einsum("btd,bd->bt", x[rows], q))
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert load._search_index(store, s, ids, x, exact_below=N) is index  # kept, per snapshot


def test_the_index_is_saved_beside_its_snapshot_and_read_back_whole(corpus, snap):
    ids, x, q = corpus
    store, s = snap
    fp = ann.fingerprint(s.id, ids)
    built = ann.open_index(store, ann.index_path(s.path), x, fp)
    folder = store.fs.ls(store._path("embeddings/toy/_snapshots/cs_lg"), detail=False)
    assert [p.rsplit("/", 1)[1] for p in folder] == ["cs_lg-0123456789ab.ann"]  # no temp file
    loaded = ann.AnnIndex.load(store, ann.index_path(s.path), x, fp)
    assert loaded is not None and loaded.index.ntotal == N
    for a, b in zip(built.search(q, TOP), loaded.search(q, TOP), strict=True):
        torch.testing.assert_close(a, b)
    stamp = store.fs.info(store._path(ann.index_path(s.path)))["mtime"]
    ann.open_index(store, ann.index_path(s.path), x, fp)  # read, not built and written again
    assert store.fs.info(store._path(ann.index_path(s.path)))["mtime"] == stamp


def test_an_index_of_other_rows_is_rebuilt_never_used(corpus, snap):
    ids, x, q = corpus
    store, s = snap
    rel = ann.index_path(s.path)
    ann.open_index(store, rel, x, ann.fingerprint(s.id, ids))
    # The same papers in another order: the old index's rows would name the wrong papers.
    order = torch.from_numpy(np.random.default_rng(1).permutation(N))
    ids2, x2 = [ids[i] for i in order], x[order].contiguous()
    fp2 = ann.fingerprint(s.id, ids2)
    assert ann.AnnIndex.load(store, rel, x2, fp2) is None
    index = ann.open_index(store, rel, x2, fp2)
    assert recall(index.search(q, TOP)[1], ann.exact_search(x2, q, TOP)[1]) >= 0.95
    assert ann.AnnIndex.load(store, rel, x2, fp2) is not None  # the rebuilt one replaced it
    assert ann.AnnIndex.load(store, rel, x, ann.fingerprint(s.id, ids)) is None
    store.write_bytes(rel, b"not an index")
    assert ann.AnnIndex.load(store, rel, x2, fp2) is None


def test_bad_input_is_named(corpus):
    _, x, q = corpus
    with pytest.raises(ann.AnnIndexError, match="float32"):
        ann.build(x.double())
    with pytest.raises(ann.AnnIndexError, match="non-empty"):
        ann.build(torch.empty(0, DIM))
    index = ann.build(x[:2000])
    with pytest.raises(ann.AnnIndexError, match=rf"\[B, {DIM}\]"):
        index.search(q[:, :5], TOP)
    with pytest.raises(ann.AnnIndexError, match="top must be 1 to 2000"):
        index.search(q, 0)


def test_a_steered_search_goes_through_the_index(corpus):
    """The engine's edited search vector is what the index is asked, and it gives the
    exact engine's papers."""
    ids, x, q = corpus
    index = ann.build(x)
    mean_act = np.full(DIM, 0.1)
    exact_eng, eng = (
        SearchEngine(axis_sae(DIM, 8), ids, ids, x, lambda t: q[:1].numpy(),
                     document(DIM, mean_act), index=i)
        for i in (None, index)
    )  # fmt: skip
    strongest = int(q[0].argmax())
    stats = faiss.cvar.indexIVF_stats
    plain = {h.row for h in exact_eng.search("q", top=TOP).hits}
    for edits in ({7: 4.0}, {strongest: 0.0}, {3: 2.0, strongest: 0.5}):
        stats.reset()
        got = eng.search("q", edits, top=TOP)
        assert stats.nq == 1 and 0 < stats.ndis < N / 4  # the index was asked, and scanned a part
        want = exact_eng.search("q", edits, top=TOP)
        assert {h.row for h in want.hits} != plain  # the edit moved the results
        assert len({h.row for h in got.hits} & {h.row for h in want.hits}) >= 9
        assert got.hits[0] == want.hits[0] and got.features == want.features
    with pytest.raises(ValueError, match="an index of"):
        SearchEngine(axis_sae(DIM, 8), ids[:9], ids[:9], x[:9], lambda t: t, index=index)
