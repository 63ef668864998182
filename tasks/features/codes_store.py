"""A cell's sparse codes in the store: ``codes.parquet``, one row per paper with only its
firing latents (``id``, ``latents`` list[int32], ``values`` list[float32])."""

from __future__ import annotations

import numpy as np
import polars as pl

from infra.store import Store
from sae.codes import SparseCodes


def codes_frame(ids: list[str], codes: SparseCodes) -> pl.DataFrame:
    import pyarrow as pa

    fire = codes.firing()
    offsets = pa.array(np.concatenate([[0], np.cumsum(fire.sum(axis=1))]).astype(np.int32))
    # Lists cut from one flat array by offsets: a Python list per paper costs seconds at 300k.
    lat = pa.ListArray.from_arrays(offsets, pa.array(codes.indices_NW[fire].astype(np.int32)))
    val = pa.ListArray.from_arrays(offsets, pa.array(codes.values_NW[fire].astype(np.float32)))
    table = pa.table({"id": pa.array(ids, pa.string()), "latents": lat, "values": val})
    return pl.from_arrow(table)


def codes_from_frame(df: pl.DataFrame, n_latents: int) -> tuple[list[str], SparseCodes]:
    lengths = df["latents"].list.len().to_numpy()
    width = int(lengths.max()) if len(lengths) else 0
    values = np.zeros((df.height, max(width, 1)), np.float32)
    indices = np.zeros((df.height, max(width, 1)), np.int32)
    slots = np.arange(values.shape[1])[None, :] < lengths[:, None]
    values[slots] = df["values"].explode().drop_nulls().to_numpy()
    indices[slots] = df["latents"].explode().drop_nulls().to_numpy()
    return df["id"].to_list(), SparseCodes(values, indices, n_latents)


def write_codes(store: Store, rel: str, ids: list[str], codes: SparseCodes) -> None:
    store.write_parquet(rel, codes_frame(ids, codes))


def read_codes(store: Store, rel: str, n_latents: int) -> tuple[list[str], SparseCodes]:
    return codes_from_frame(store.read_parquet(rel), n_latents)
