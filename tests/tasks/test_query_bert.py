"""Search embeds queries with the bundled MiniLM without transformers: the same vectors
as the shard embedder's fp32 path, to float rounding."""

import gzip
import json

import numpy as np

from tasks.embed.embedders import make_embedder, make_query_embedder, paper_text
from tasks.embed.query_bert import QueryBert


def test_the_query_path_gives_the_embedders_fp32_vectors(arxiv_data):
    with gzip.open(arxiv_data / "cs_lg.jsonl.gz", "rt") as f:
        papers = [json.loads(next(f)) for _ in range(6)]
    texts = [
        "graph neural networks for molecules",
        "A",
        "word " * 600,  # cut at the model's 256 tokens, as the shards are
        *(paper_text(p["title"], p["abstract"]) for p in papers),
    ]
    query = make_query_embedder("minilm")
    assert isinstance(query, QueryBert) and query.name == "minilm-l6-v2" and query.dim == 384
    reference = make_embedder("minilm", device="cpu", precision="fp32", backend="torch")
    got, want = query.embed(texts), reference.embed(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert query.embed([]).shape == (0, 384)
