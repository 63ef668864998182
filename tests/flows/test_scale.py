"""The scale rehearsal at a toy size: every stage measured at two sizes, the table and
the JSON hold them all, and the growth with N is fitted."""

import json

from flows.scale import main, parse_size
from tasks.scale.report import exponent

STAGES = {
    "synthesize (stands in for the embedder)", "import vectors", "snapshot and split", "train",
    "evaluate (full N)", "importance and pruning (full N)", "retrieval fidelity (full N)",
    "features (codes, cards, labels, families)", "search index build", "query latency",
}  # fmt: skip


def test_every_stage_is_measured_at_each_size_and_its_growth_fitted(tmp_path, capsys):
    out, table = tmp_path / "figures.json", tmp_path / "table.md"
    args = ["--d", "32", "--grid-k", "4,8", "--grid-n", "32,64", "--steps", "5", "--batch-size",
            "64", "--queries", "5", "--out", str(out), "--table", str(table)]  # fmt: skip
    main(["--sizes", "1000", *args])
    figures = main(["--sizes", "2k", *args])  # one size at a time adds up
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"1000x32", "2000x32"} and figures["runs"] == runs
    for run in runs.values():
        assert {s["stage"] for s in run["stages"]} == STAGES
        assert run["reduced_grid"] and run["trained_k"] == [8] and run["trained_n"] == [32, 64]
        for s in run["stages"]:
            assert s["seconds"] > 0 and s["peak_rss"] >= s["rss_start"] > 0
            assert 0 < s["peak_anon"] <= s["peak_rss"]
    (imported,) = [s for s in runs["2000x32"]["stages"] if s["stage"] == "import vectors"]
    assert imported["notes"] == {"imported": 2000, "rejected": 0}
    assert imported["written_bytes"] > 2000 * 32 * 4  # the vectors went into the store
    (train,) = [s for s in runs["2000x32"]["stages"] if s["stage"] == "train"]
    assert set(train["notes"]["steps"].values()) == {5}
    assert train["notes"]["full_grid_s"] > 0
    text = table.read_text()
    assert capsys.readouterr().out.endswith(text)  # the table printed is the one written
    growth = text.split("Growth with N")[1]
    for stage in STAGES:
        (row,) = [line for line in growth.splitlines() if line.startswith(f"| 32 | {stage} |")]
        float(row.split("|")[3])  # the time exponent over the two sizes is a number


def test_sizes_and_the_growth_fit():
    assert [parse_size(s) for s in ("100k", "2.7M", "2000")] == [100_000, 2_700_000, 2000]
    assert abs(exponent([(1000, 2.0), (4000, 32.0), (2000, 8.0)]) - 2.0) < 1e-9
    assert exponent([(1000, 2.0)]) is None
