"""Records of the shared arXiv sample, read in place (never copied into the project)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tasks.embed.embedders import paper_text


def first_paper_texts(arxiv_data: Path, n: int) -> list[str]:
    """``paper_text`` of the shared sample's first ``n`` records, read in place."""
    texts = []
    with gzip.open(arxiv_data / "cs_lg.jsonl.gz", "rt") as f:
        for line in f:
            record = json.loads(line)
            texts.append(paper_text(record["title"], record["abstract"]))
            if len(texts) == n:
                return texts
    raise AssertionError("sample too short")
