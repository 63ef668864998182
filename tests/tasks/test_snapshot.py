"""Snapshots: a fixed, named set of embedded papers and a split that never moves a paper."""

from datetime import date

import numpy as np
import polars as pl
import pytest

from infra.store import Store
from tasks.corpus.domains import get_domain
from tasks.corpus.records import PAPER_SCHEMA
from tasks.corpus.storage import write_papers
from tasks.embed.manifest import EmbeddingStoreError, Namespace, manifest_rows
from tasks.embed.snapshot import fix_snapshot, load_snapshot, snapshot_by_id

CS = get_domain("cs.LG")


def add(ns, name, ids, shas, seed, categories=("cs.LG",)):
    """Papers in the corpus, and their vectors."""
    write_papers(ns.store, papers(ids, categories))
    x = np.random.default_rng(seed).normal(size=(len(ids), 4)).astype(np.float32)
    ns.write_part(name, ids, shas, x)
    ns.append_manifest(manifest_rows(ids, shas, name, name))
    return dict(zip(ids, x, strict=True))


def papers(ids, categories):
    return pl.DataFrame(
        {
            "id": ids,
            "version": [1] * len(ids),
            "title": ids,
            "abstract": ids,
            "categories": [list(categories)] * len(ids),
            "published": [date(2026, 1, 2)] * len(ids),
            "source": ["test"] * len(ids),
        },
        schema=PAPER_SCHEMA,
    )


@pytest.fixture
def ns(tmp_path):
    return Namespace(Store(str(tmp_path)), "toy")


def test_snapshot_is_fixed_named_by_content_and_split_by_id(ns):
    ids = [f"2601.{i:05d}" for i in range(200)]
    vec = add(ns, "part-a.parquet", ids, ["s"] * 200, 0)
    snap = fix_snapshot(ns.store, CS, "toy")
    assert snap.n_train + snap.n_eval == 200 and 3 <= snap.n_eval <= 20
    assert fix_snapshot(ns.store, CS, "toy").id == snap.id

    # New papers and a revised one arrive; the old snapshot still loads what it froze.
    vec_new = add(ns, "part-b.parquet", [*ids[:1], "2602.00001"], ["s2", "s"], 1)
    x_train, x_eval = load_snapshot(ns.store, snap)
    assert x_train.shape == (snap.n_train, 4) and x_eval.shape == (snap.n_eval, 4)
    frozen = {tuple(v) for v in np.concatenate([x_train, x_eval])}
    assert tuple(vec[ids[0]]) in frozen and tuple(vec_new[ids[0]]) not in frozen

    later = fix_snapshot(ns.store, CS, "toy")
    assert later.id != snap.id and later.n_train + later.n_eval == 201
    # A paper in eval stays in eval.
    old_eval = set(ns.store.read_parquet(snap.path).filter(pl.col("eval"))["id"])
    new_rows = ns.store.read_parquet(later.path)
    assert old_eval <= set(new_rows.filter(pl.col("eval"))["id"])


def test_limit_takes_a_spread_not_the_oldest_ids(ns):
    ids = [f"2601.{i:05d}" for i in range(100)]
    add(ns, "part-a.parquet", ids, ["s"] * 100, 0)
    snap = fix_snapshot(ns.store, CS, "toy", limit=30)
    rows = ns.store.read_parquet(snap.path)
    assert rows.height == 30 and rows["id"].to_list() != ids[:30]


def test_nothing_embedded_is_named(ns):
    with pytest.raises(EmbeddingStoreError, match=r"sae embed cs\.LG"):
        fix_snapshot(ns.store, CS, "toy")


def test_a_snapshot_is_the_domains_view_over_shared_vectors(ns):
    """cs.CV after cs.LG: the shared papers' vectors serve both; each domain's snapshot
    holds its own papers, in its own folder, named by its slug."""
    both = [f"2601.{i:05d}" for i in range(40)]
    lg_only = [f"2602.{i:05d}" for i in range(40)]
    add(ns, "part-a.parquet", both, ["s"] * 40, 0, categories=("cs.LG", "cs.CV"))
    add(ns, "part-b.parquet", lg_only, ["s"] * 40, 1)
    cv = fix_snapshot(ns.store, get_domain("cs.CV"), "toy")
    lg = fix_snapshot(ns.store, CS, "toy")
    assert cv.n_train + cv.n_eval == 40 and lg.n_train + lg.n_eval == 80
    assert cv.id.startswith("cs_cv-") and cv.path.startswith("embeddings/toy/_snapshots/cs_cv/")
    assert set(ns.store.read_parquet(cv.path)["id"]) == set(both)
    assert snapshot_by_id(ns.store, get_domain("cs.CV"), "toy", cv.id) == cv
    assert snapshot_by_id(ns.store, CS, "toy", cv.id) is None  # another domain's folder
