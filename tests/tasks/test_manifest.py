"""The embeddings' manifest: what is embedded, and loading the newest vector of each id."""

import numpy as np
import polars as pl
import pytest

from infra.store import Store
from tasks.embed.manifest import EmbeddingStoreError, Namespace, manifest_rows, text_sha
from tasks.embed.run import adopt_orphans, pending_papers, plan_shards


@pytest.fixture
def ns(tmp_path):
    return Namespace(Store(str(tmp_path)), "toy-3")


def unit(rows):
    v = np.asarray(rows, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_load_gives_the_newest_vector_of_each_id_sorted(ns):
    a = unit([[1, 0, 0], [0, 1, 0]])
    ns.write_part("part-a.parquet", ["2", "1"], ["s2", "s1"], a)
    b = unit([[0, 0, 1]])
    ns.write_part("part-b.parquet", ["2"], ["s2new"], b)  # id 2's abstract was revised
    ns.append_manifest(manifest_rows(["2", "1"], ["s2", "s1"], "part-a.parquet", "r1"))
    ns.append_manifest(manifest_rows(["2"], ["s2new"], "part-b.parquet", "r2"))
    ids, x = ns.load()
    assert ids == ["1", "2"]
    np.testing.assert_array_equal(x, np.stack([a[1], b[0]]))
    assert x.dtype == np.float32
    ids, x = ns.load(["2"])
    np.testing.assert_array_equal(x, b)


def test_load_of_ids_without_vectors_names_them(ns):
    ns.write_part("part-a.parquet", ["1"], ["s1"], unit([[1, 0, 0]]))
    ns.append_manifest(manifest_rows(["1"], ["s1"], "part-a.parquet", "r"))
    with pytest.raises(EmbeddingStoreError, match=r"1 id\(s\).*'9'.*sae embed DOMAIN"):
        ns.load(["1", "9"])


def test_a_vector_the_manifest_names_but_its_part_lacks_is_an_error_not_a_gap(ns):
    ns.write_part("part-a.parquet", ["1"], ["s1"], unit([[1, 0, 0]]))
    ns.write_part("part-b.parquet", ["3"], ["s3"], unit([[0, 0, 1]]))
    ns.append_manifest(manifest_rows(["1", "2"], ["s1", "s2"], "part-a.parquet", "r1"))
    ns.append_manifest(manifest_rows(["3"], ["s3"], "part-b.parquet", "r2"))
    with pytest.raises(EmbeddingStoreError, match=r"hold 2 of the 3 vectors"):
        ns.load()


def test_a_part_the_manifest_does_not_name_is_adopted(ns):
    ns.write_part("part-a.parquet", ["1", "2"], ["s1", "s2"], unit([[1, 0, 0], [0, 1, 0]]))
    ns.write_part("part-b.parquet", ["3"], ["s3"], unit([[0, 0, 1]]))
    manifest = manifest_rows(["1", "2"], ["s1", "s2"], "part-a.parquet", "r1")
    adopted = adopt_orphans(ns, manifest, "r2")
    assert adopted["id"].to_list() == ["3"] and adopted["part"].to_list() == ["part-b.parquet"]


def test_one_name_never_mixes_two_dimensions(ns):
    ns.check_embedder("st:model-a", 3)
    ns.check_embedder("st:model-a", 3)
    with pytest.raises(EmbeddingStoreError, match=r"holds 3-d vectors.*gives 4-d"):
        ns.check_embedder("st:model-a", 4)


def test_pending_is_what_has_no_vector_for_its_current_text():
    texts = pl.DataFrame(
        {"id": ["3", "1", "2"], "text": ["c", "a", "b2"], "text_sha": ["sc", "sa", "sb2"]}
    )
    manifest = manifest_rows(["1", "2"], ["sa", "sb"], "part-a.parquet", "r")
    assert pending_papers(texts, manifest)["id"].to_list() == ["2", "3"]


def test_shards_cover_everything_once_and_are_named_by_content():
    texts = [f"text {i}" for i in range(10)]
    pending = pl.DataFrame(
        {"id": [f"{i:02d}" for i in range(10)], "text": texts, "text_sha": map(text_sha, texts)}
    )
    shards = plan_shards(pending, 4, "toy-3")
    assert [len(s.ids) for s in shards] == [4, 4, 2]
    assert [i for s in shards for i in s.ids] == pending["id"].to_list()
    assert [s.name for s in plan_shards(pending, 4, "toy-3")] == [s.name for s in shards]
    assert plan_shards(pending, 4, "other")[0].name != shards[0].name
    assert len({s.name for s in shards}) == 3


def test_manifest_parts_add_up_and_compaction_keeps_every_row(ns):
    for i in range(5):
        ns.append_manifest(manifest_rows([str(i)], [f"s{i}"], f"part-{i}.parquet", f"r{i}"))
    before = ns.read_manifest().sort("id")
    assert before.height == 5 and len(ns.store.list(ns.manifest_dir)) == 5
    ns.compact_manifest(at=5)  # not beyond the threshold: left as is
    assert len(ns.store.list(ns.manifest_dir)) == 5
    ns.compact_manifest(at=2)
    assert len(ns.store.list(ns.manifest_dir)) == 1
    assert ns.read_manifest().sort("id").equals(before)
