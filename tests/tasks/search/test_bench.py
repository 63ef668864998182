"""The search bench (:mod:`tasks.search.bench`) on a tiny synthetic corpus: its tables parse,
whatever the machine's speed."""

from __future__ import annotations

import re
import sys

import pytest

from tasks.search import bench

TINY = [
    "--domains",
    "",
    "--synthetic",
    "2000",
    "--d",
    "32",
    "--n-latents",
    "256",
    "--k",
    "8",
    "--clusters",
    "16",
    "--queries",
    "5",
    "--embedder-queries",
    "0",
]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Each table with a p50 column: (header cells, rows of as many cells)."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        head = re.split(r"\s{2,}", line.strip())
        if not any(c.startswith("p50") for c in head):
            continue
        rows = []
        for body in lines[i + 1 :]:
            cells = re.split(r"\s{2,}", body.strip())
            if len(cells) != len(head):
                break
            rows.append(cells)
        out.append((head, rows))
    return out


def column(head: list[str], prefix: str) -> int:
    return next(i for i, c in enumerate(head) if c.startswith(prefix))


def run(capsys, argv: list[str]) -> str:
    assert bench.main(argv) == 0
    return capsys.readouterr().out


def check_latencies(out: str) -> list[tuple[list[str], list[list[str]]]]:
    found = tables(out)
    assert found, out
    for head, rows in found:
        assert rows, (head, out)
        for cells in rows:
            for name in ("p50", "p95"):
                assert float(cells[column(head, name)]) > 0, (cells, out)
    return found


def test_the_bench_prints_latency_percentiles_and_an_index_verdict(capsys):
    out = run(capsys, TINY)
    assert out.startswith("cpu: ")
    found = check_latencies(out)
    assert any("encode + search" in cells[0] for _, rows in found for cells in rows)
    if "approximate index: skipped" in out:
        return
    faiss_tables = [(h, rows) for h, rows in found if any(c.startswith("recall") for c in h)]
    assert len(faiss_tables) == 1, out
    head, rows = faiss_tables[0]
    names = [cells[0] for cells in rows]
    assert any(n.startswith("faiss IndexFlatIP") for n in names)
    assert any(n.startswith("faiss IVFFlat") for n in names)
    for cells in rows:
        assert 0.0 <= float(cells[column(head, "recall")]) <= 1.0, cells


def test_without_faiss_the_bench_says_it_skipped(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    out = run(capsys, TINY)
    assert "approximate index: skipped" in out
    check_latencies(out)


@pytest.mark.parametrize("bad", [["--queries", "1"], ["--synthetic", "5"]])
def test_it_refuses_sizes_it_cannot_measure(bad):
    with pytest.raises(SystemExit):
        bench.main([*TINY, *bad])
