"""Card statistics and stored codes against plain references over the dense matrix."""

from __future__ import annotations

import numpy as np
import torch

from infra.store import Store
from sae.codes import SparseCodes
from tasks.features.cards import decoder_neighbours, latent_stats
from tasks.features.codes_store import read_codes, write_codes


def _codes(n_rows=400, n=30, w=6, seed=0) -> SparseCodes:
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, size=(n_rows, w)).astype(np.float32)
    values[rng.random((n_rows, w)) < 0.2] = 0.0
    # Latents 0..n-3 only: the last two are dead.
    indices = np.stack([rng.choice(n - 2, w, replace=False) for _ in range(n_rows)])
    return SparseCodes(values, indices.astype(np.int32), n)


def test_latent_stats_against_the_dense_matrix():
    codes = _codes()
    dense = codes.dense()
    stats = latent_stats(codes, top=5, middle=3)
    fires = dense > 0
    np.testing.assert_array_equal(stats.counts_N, fires.sum(0))
    np.testing.assert_allclose(stats.density, fires.mean(0))
    for j in range(codes.n_latents):
        col = dense[:, j]
        if not fires[:, j].any():
            assert stats.mean_act[j] == 0 and stats.top[j] == [] and stats.middle[j] == []
            continue
        assert stats.mean_act[j] == np.float64(col[col > 0].astype(np.float64).mean())
        want = sorted(col[col > 0], reverse=True)
        assert [a for _, a in stats.top[j]] == [float(v) for v in want[:5]]
        assert all(col[r] == a for r, a in stats.top[j] + stats.middle[j])
        # The middle papers sit around the median of the feature's activations, below its top.
        mids = [a for _, a in stats.middle[j]]
        assert len(mids) == 3 and max(mids) <= want[4]
        median = float(np.median(want))
        assert min(mids) <= median <= max(mids) or abs(np.mean(mids) - median) < np.std(want)


def test_decoder_neighbours_against_the_full_cosine_matrix():
    W = torch.randn(37, 8, generator=torch.Generator().manual_seed(3))
    unit = W / W.norm(dim=1, keepdim=True)
    full = unit @ unit.T
    full.fill_diagonal_(-2)
    for chunk in (1, 5, 64):
        ids, cos = decoder_neighbours(W, m=4, chunk=chunk)
        want_cos, want_ids = full.topk(4, dim=1)
        np.testing.assert_array_equal(ids, want_ids.numpy())
        np.testing.assert_allclose(cos, want_cos.numpy(), rtol=1e-5)
        assert not (ids == np.arange(37)[:, None]).any()


def test_codes_round_trip_through_the_store(tmp_path):
    store = Store(str(tmp_path))
    codes = _codes(n_rows=50)
    codes.values_NW[7] = 0.0  # a paper whose code is empty
    ids = [f"2401.{i:05d}" for i in range(50)]
    write_codes(store, "cell/features/codes.parquet", ids, codes)
    back_ids, back = read_codes(store, "cell/features/codes.parquet", codes.n_latents)
    assert back_ids == ids
    np.testing.assert_array_equal(back.dense(), codes.dense())
    assert store.list("cell/features", "*") == ["cell/features/codes.parquet"]
