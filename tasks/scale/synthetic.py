"""Synthetic papers and their vectors, made alike from the same hidden topics.

Each paper mixes ``ACTIVE`` of ``TOPICS`` hidden directions (as
:func:`sae.data.sparse_dictionary_data`, with a fixed atom set and in pieces, so 2.7M
rows never need the [N, TOPICS] mixing matrix): its vector is the unit-norm positive
mix plus noise, its text repeats made-up words of those topics (so feature labels have
something to find), and its categories follow its first two topics over the real arXiv
categories (the second a cross-list for a third of the papers). Everything is a pure
function of (seed, row), so the corpus and the vectors agree however they are chunked.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from infra.store import Store
from tasks.corpus.records import PAPER_SCHEMA
from tasks.corpus.storage import write_papers

TOPICS, ACTIVE, NOISE = 384, 4, 0.02
#: Papers per month of made-up ids (arXiv's five digits allow 99,999).
PER_MONTH = 90_000
CHUNK = 200_000
CROSS_LIST_SHARE = 1 / 3
TAXONOMY = Path(__file__).resolve().parents[1] / "corpus" / "taxonomy.tsv"


def arxiv_categories() -> list[str]:
    """The category rows of the project's arXiv taxonomy."""
    rows = [line.split("\t") for line in TAXONOMY.read_text().splitlines()]
    return [r[1] for r in rows if r[0] == "category"]


def topics_of(seed: int, start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(topic ids [size, ACTIVE] int64, weights [size, ACTIVE] float32) of rows
    ``start`` to ``start + size``; ``start`` must be a multiple of :data:`CHUNK`."""
    rng = np.random.default_rng([seed, start])
    idx = rng.integers(0, TOPICS, (size, ACTIVE))
    return idx, (rng.random((size, ACTIVE)) + 0.5).astype(np.float32)


def chunks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, CHUNK):
        yield start, min(CHUNK, n - start)


def paper_ids(start: int, size: int) -> list[str]:
    """``YYMM.NNNNN`` ids from 1501 on, :data:`PER_MONTH` a month."""
    rows = np.arange(start, start + size)
    month, seq = rows // PER_MONTH, rows % PER_MONTH + 1
    yy, mm = 15 + month // 12, month % 12 + 1
    return [f"{y:02d}{m:02d}.{s:05d}" for y, m, s in zip(yy, mm, seq, strict=True)]


def _word(topic: int, j: int) -> str:
    letters = string.ascii_lowercase
    return "".join(letters[(topic // 26**p + 7 * j) % 26] for p in range(3)) + "ology"[j:]


def write_corpus(store: Store, n: int, seed: int = 0) -> int:
    """Writes ``n`` papers through the corpus's write path, one part per chunk."""
    cats = np.array(arxiv_categories())
    words = np.array([" ".join(_word(t, j) for j in range(3)) for t in range(TOPICS)])
    for start, size in chunks(n):
        idx, _ = topics_of(seed, start, size)
        ids = paper_ids(start, size)
        primary = cats[idx[:, 0] % len(cats)]
        cross = cats[idx[:, 1] % len(cats)]
        listed = np.random.default_rng([seed, start, 1]).random(size) < CROSS_LIST_SHARE
        categories = [
            [p, c] if x and c != p else [p] for p, c, x in zip(primary, cross, listed, strict=True)
        ]
        topic_words = words[idx]  # [size, ACTIVE]
        abstracts = [" ".join(row) + " in a synthetic study." for row in topic_words.tolist()]
        papers = pl.DataFrame(
            {
                "id": ids,
                "version": 1,
                "title": [f"On {row[0]}" for row in topic_words.tolist()],
                "abstract": abstracts,
                "categories": categories,
                "published": [date(2000 + int(i[:2]), int(i[2:4]), 1) for i in ids],
                "source": "scale-rehearsal",
            },
            schema=PAPER_SCHEMA,
        )
        write_papers(store, papers)
    return n


def write_vectors(folder: Path, n: int, d: int, seed: int = 0) -> tuple[Path, Path]:
    """(an .npy matrix [n, d] float32 of unit-norm rows, its ids file), written a chunk at
    a time into a memory map: what ``sae import-vectors`` takes."""
    atoms = np.random.default_rng([seed, d]).normal(size=(TOPICS, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    matrix, ids_file = folder / "vectors.npy", folder / "ids.txt"
    out = np.lib.format.open_memmap(matrix, mode="w+", dtype=np.float32, shape=(n, d))
    with ids_file.open("w") as f:
        for start, size in chunks(n):
            idx, w = topics_of(seed, start, size)
            x = sum(w[:, j, None] * atoms[idx[:, j]] for j in range(ACTIVE))  # [size, d]
            x += NOISE * np.random.default_rng([seed, start, 2]).normal(size=x.shape)
            out[start : start + size] = x / np.linalg.norm(x, axis=1, keepdims=True)
            f.write("\n".join(paper_ids(start, size)) + "\n")
    out.flush()
    del out
    return matrix, ids_file
