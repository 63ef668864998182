"""Streamed sparse codes against the model's own encode of the whole matrix at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae.codes import SparseCodes, encode_matrix
from sae.config import SAEConfig
from sae.data import sparse_dictionary_data
from sae.model import TopKSAE


def _model(arch="topk"):
    cfg = SAEConfig(d_in=16, n_latents=48, k=4, arch=arch)
    return TopKSAE(cfg, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("batch_size", [1, 7, 300])
def test_streamed_codes_equal_one_encode_of_everything(batch_size):
    model = _model()
    x = sparse_dictionary_data(300, 16, seed=1)
    codes = encode_matrix(model, x.numpy(), batch_size=batch_size)
    with torch.no_grad():
        values, indices = model.encode(x)
    assert codes.values_NW.dtype == np.float32 and codes.indices_NW.dtype == np.int32
    np.testing.assert_allclose(codes.values_NW, values.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(codes.indices_NW, indices.numpy())


def test_counts_and_the_latent_view_against_the_dense_matrix():
    rng = np.random.default_rng(0)
    values = rng.random((50, 5)).astype(np.float32)
    values[rng.random((50, 5)) < 0.3] = 0.0  # unused slots
    indices = np.stack([rng.choice(20, 5, replace=False) for _ in range(50)]).astype(np.int32)
    codes = SparseCodes(values, indices, 20)
    dense = codes.dense()
    assert dense.shape == (50, 20)
    np.testing.assert_array_equal(codes.counts(), (dense > 0).sum(axis=0))
    offsets, rows, vals = codes.by_latent()
    for j in range(20):
        lo, hi = offsets[j], offsets[j + 1]
        got = list(zip(rows[lo:hi], vals[lo:hi], strict=True))
        col = dense[:, j]
        want = sorted(((int(i), col[i]) for i in np.nonzero(col)[0]), key=lambda p: -p[1])
        assert [v for _, v in got] == [v for _, v in want]
        assert {int(i) for i, _ in got} == {i for i, _ in want}


def test_batchtopk_codes_mark_unused_slots_with_zero():
    model = _model("batchtopk")
    model.threshold.fill_(0.05)
    x = sparse_dictionary_data(64, 16, seed=2)
    codes = encode_matrix(model, x, batch_size=10)
    assert (codes.values_NW >= 0).all()
    z = model.pre_activations(x - model.b_pre)
    # A latent fires exactly when its pre-activation clears the threshold (and is in the width).
    for i in range(8):
        fired = set(codes.indices_NW[i][codes.values_NW[i] > 0].tolist())
        above = set(torch.nonzero(z[i] > 0.05).squeeze(1).tolist())
        assert fired <= above and (len(fired) == codes.values_NW.shape[1] or fired == above)
