"""Vectors made elsewhere, imported: the good rows land as embedded ones do, the bad ones
are kept aside with their reason, a file of another dimension is refused whole, and a
rerun after a crash finishes without doing anything twice."""

import json
from datetime import date

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.corpus.domains import get_domain
from tasks.corpus.records import PAPER_SCHEMA
from tasks.corpus.storage import write_papers
from tasks.embed.import_vectors import ImportVectorsError, import_vectors
from tasks.embed.manifest import EmbeddingStoreError, Namespace
from tasks.embed.run import embed_domain
from tasks.embed.snapshot import fix_snapshot, load_snapshot

CS = get_domain("cs.LG")
SPEC, NAME = "openai:text-embedding-3-small", "openai-text-embedding-3-small"
IDS = [f"2601.{i:05d}" for i in range(1, 41)]


@pytest.fixture
def corpus(store):
    rows = [
        {"id": i, "version": 1, "title": f"t{i}", "abstract": f"a{i}", "categories": ["cs.LG"],
         "published": date(2026, 1, 2), "source": "t"}
        for i in IDS
    ] + [{"id": "2601.09999", "version": 1, "title": "x", "abstract": "y",
          "categories": ["hep-th"], "published": date(2026, 1, 2), "source": "t"}]  # fmt: skip
    write_papers(store, pl.DataFrame(rows, schema=PAPER_SCHEMA))
    return store


def vectors(n, d=8, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def parquet(tmp_path, ids, rows, name="v.parquet"):
    path = tmp_path / name
    pl.DataFrame(
        {"id": ids, "vector": [None if r is None else list(r) for r in rows]}
    ).write_parquet(path)
    return path


def test_good_rows_land_as_embedded_ones_and_bad_ones_are_kept_with_their_reason(corpus, tmp_path):
    x = vectors(40)
    ids, rows = list(IDS), list(x)
    ids += ["2601.09999", "2612.00001", "2601.00002", IDS[2], IDS[3], IDS[4], "v3:bad"]
    rows += [x[0], x[0], x[1], x[2][:5], np.full(8, np.nan), np.zeros(8), x[0]]
    report = import_vectors(corpus, CS, parquet(tmp_path, ids, rows), SPEC, batch=16)
    # 2601.00002 is given twice: neither copy is taken.
    assert (report.read, report.imported, report.rejected, report.dim) == (47, 39 - 3, 11, 8)
    parts = corpus.list(f"embeddings/{NAME}/_quarantine")
    assert len(parts) == 2  # one per batch with rejects, written as it went
    assert report.quarantine_uri == corpus.uri(f"embeddings/{NAME}/_quarantine")
    quarantine = pl.concat([corpus.read_parquet(p) for p in parts])
    reasons = dict(zip(quarantine["location"], quarantine["reason"], strict=True))
    assert reasons["row 41"].startswith("not a paper of cs.LG in the corpus")
    assert reasons["row 42"].startswith("not a paper of cs.LG")
    assert reasons["row 43"] == reasons["row 2"] == "id given more than once in the file"
    assert reasons["row 44"] == "vector has 5 values, the file's others 8"
    assert reasons["row 45"] == "vector holds NaN or infinity"
    assert reasons["row 46"] == "vector is all zeros"
    assert reasons["row 47"].startswith("id ")
    ns = Namespace(corpus, NAME)
    loaded_ids, loaded = ns.load()
    taken = [i for i in IDS if i not in ("2601.00002", IDS[2], IDS[3], IDS[4])]
    assert loaded_ids == taken
    np.testing.assert_array_equal(loaded, np.stack([x[IDS.index(i)] for i in taken]))
    meta = corpus.read_json(f"{ns.folder}/_embedder.json")
    assert meta == {"name": NAME, "spec": SPEC, "dim": 8, "source": "import"}
    # A snapshot takes them like embedded vectors; nothing is embedded into the namespace.
    snap = fix_snapshot(corpus, CS, NAME)
    x_train, x_eval = load_snapshot(corpus, snap)
    assert x_train.shape[0] + x_eval.shape[0] == len(taken)
    from infra.settings import get_settings

    report = embed_domain(corpus, CS, settings=get_settings(), spec=SPEC)
    assert (report.embedded, report.remaining, report.shards) == (0, 4, 0)


def test_a_matrix_with_its_ids_and_a_rerun_imports_nothing_twice(corpus, tmp_path):
    x = vectors(40, seed=1)
    np.save(tmp_path / "v.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(IDS) + "\n")
    first = import_vectors(corpus, CS, tmp_path / "v.npy", SPEC, ids_file=tmp_path / "ids.txt")
    again = import_vectors(corpus, CS, tmp_path / "v.npy", SPEC, ids_file=tmp_path / "ids.txt")
    assert (first.imported, again.imported, again.already) == (40, 0, 40)
    assert Namespace(corpus, NAME).read_manifest().height == 40


def test_a_crash_leaves_whole_batches_and_the_rerun_finishes(corpus, tmp_path, monkeypatch):
    path = parquet(tmp_path, IDS, list(vectors(40)))
    ns = Namespace(corpus, NAME)
    real, calls = Namespace.append_manifest, []

    def dies_on_the_second(self, rows):
        calls.append(rows.height)
        if len(calls) == 2:
            raise OSError("killed")
        return real(self, rows)

    monkeypatch.setattr(Namespace, "append_manifest", dies_on_the_second)
    with pytest.raises(OSError, match="killed"):
        import_vectors(corpus, CS, path, SPEC, batch=16)
    monkeypatch.setattr(Namespace, "append_manifest", real)
    assert ns.read_manifest().height == 16  # the first batch, whole; no row without its vector
    rerun = import_vectors(corpus, CS, path, SPEC, batch=16)
    assert (rerun.imported, rerun.already) == (24, 16)
    assert ns.load()[0] == IDS


def test_another_dimension_than_the_namespaces_is_refused_naming_both(corpus, tmp_path):
    import_vectors(corpus, CS, parquet(tmp_path, IDS[:4], list(vectors(4))), SPEC)
    wide = parquet(tmp_path, IDS[4:8], list(vectors(4, d=12)), "wide.parquet")
    with pytest.raises(EmbeddingStoreError, match=r"12-d, but .* holds 8-d vectors"):
        import_vectors(corpus, CS, wide, SPEC)
    assert Namespace(corpus, NAME).read_manifest().height == 4


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.parquet", "is not a file"),
        (lambda p: (p / "v.csv").write_text("id,vector\n") and p / "v.csv", "a parquet file"),
        (
            lambda p: pl.DataFrame({"x": [1]}).write_parquet(p / "x.parquet") or p / "x.parquet",
            "has no column id, vector",
        ),
        (
            lambda p: np.save(p / "m.npy", np.zeros((2, 3))) or p / "m.npy",
            "name its ids with --ids",
        ),
    ],
)
def test_a_file_that_cannot_be_imported_is_named(corpus, tmp_path, make, message):
    with pytest.raises(ImportVectorsError, match=message):
        import_vectors(corpus, CS, make(tmp_path), SPEC)


def test_the_command(corpus, tmp_path):
    path = parquet(tmp_path, [*IDS[:5], "2612.00001"], list(vectors(6)))
    result = CliRunner().invoke(app, ["import-vectors", "cs.LG", str(path), "--embedder", SPEC])
    assert result.exit_code == 0, result.output
    assert "5 imported, 0 already there, 1 rejected (of 6 read; 8-d)" in result.output
    assert "1 not a paper of cs.LG in the corpus" in result.output
    wide = parquet(tmp_path, IDS[5:7], list(vectors(2, d=4)), "wide.parquet")
    refused = CliRunner().invoke(app, ["import-vectors", "cs.LG", str(wide), "--embedder", SPEC])
    assert refused.exit_code == 2 and "4-d, but" in refused.output and "8-d" in refused.output
    assert json.loads(corpus.read_bytes(f"embeddings/{NAME}/_embedder.json"))["dim"] == 8
