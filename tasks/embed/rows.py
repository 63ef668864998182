"""Which papers of a snapshot train and which are held out, and the order of the rows.

These decide a cell's weights, so the code version hashes this file
(:mod:`infra.code_version`); where the rows are stored (:mod:`tasks.embed.snapshot`,
:mod:`tasks.embed.manifest`) does not, and can change without retraining anything.

The split is a function of the id alone (5% of ids hash into eval), so a paper never
moves from eval to train as the corpus grows.
"""

from __future__ import annotations

import hashlib

import polars as pl

EVAL_EVERY = 20  # one id in 20 (5%) is held out


def id_hash(ids: pl.Series) -> pl.Series:
    return pl.Series([int(hashlib.sha256(i.encode()).hexdigest()[:12], 16) for i in ids])


def snapshot_rows(latest: pl.DataFrame, limit: int | None) -> pl.DataFrame:
    """[id, text_sha, eval] sorted by id, from one (id, text_sha) per embedded paper;
    ``limit``: a hash-random subset of that size, not the oldest ids."""
    rows = latest.select("id", "text_sha").with_columns(id_hash(latest["id"]).alias("h"))
    if limit is not None:
        rows = rows.sort("h").head(limit)
    return rows.with_columns((pl.col("h") % EVAL_EVERY == 0).alias("eval")).drop("h").sort("id")
