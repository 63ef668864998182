"""Decoder-cosine matching: best matches, splitting across widths, lineage across champions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.features.lineage import best_matches, compare, splitting


def _unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _far_from(rng, W, d, below, count):
    """``count`` random unit rows whose |cosine| to every row of W stays under ``below``."""
    out = []
    while len(out) < count:
        x = _unit(rng.standard_normal((1, d)))[0]
        if np.abs(W @ x).max() < below:
            out.append(x)
    return np.array(out)


def _part_of(rng, p, W_prev, cos, below):
    """A unit row at cosine ``cos`` to p, with |cosine| under ``below`` to the other rows."""
    others = np.array([q for q in W_prev if not np.allclose(q, p)])
    while True:
        r = rng.standard_normal(p.size)
        r -= (r @ p) * p
        r /= np.linalg.norm(r)
        x = cos * p + np.sqrt(1 - cos**2) * r
        if np.abs(others @ x).max() < below:
            return x


def test_best_matches_equal_a_plain_argmax_for_any_chunk():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((300, 24)).astype(np.float32)
    B = rng.standard_normal((170, 24)).astype(np.float32) * rng.uniform(0.1, 3, (170, 1))
    full = _unit(A.astype(np.float64)) @ _unit(B.astype(np.float64)).T
    for chunk in (1, 7, 64, 300, 4096):
        idx, cos = best_matches(A, B, chunk=chunk)
        assert idx.dtype == np.int64 and cos.dtype == np.float32
        assert np.array_equal(idx, full.argmax(axis=1))
        np.testing.assert_allclose(cos, full.max(axis=1), atol=1e-5)


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((50, 16)).astype(np.float32)
    B = rng.standard_normal((40, 16)).astype(np.float32)
    np_idx, np_cos = best_matches(A, B)
    t_idx, t_cos = best_matches(torch.from_numpy(A), torch.from_numpy(B).requires_grad_())
    assert np.array_equal(np_idx, t_idx)
    np.testing.assert_allclose(np_cos, t_cos, atol=1e-6)
    a = compare(A, B).counts()
    assert compare(torch.from_numpy(A), torch.from_numpy(B).double()).counts() == a


def _lineage_case(seed):
    """200 previous rows: 150 come back permuted with small noise, 20 each come back as two
    parts at cosine 0.6, 30 are missing; 10 brand-new rows unlike any previous one."""
    rng = np.random.default_rng(seed)
    d = 32
    W_prev = _unit(rng.standard_normal((200, d)))
    perm = rng.permutation(200)
    stable_src, split_src = perm[:150], perm[150:170]
    rows = [_unit(W_prev[stable_src] + 0.03 * rng.standard_normal((150, d)))]
    for p in split_src:
        rows.append(np.stack([_part_of(rng, W_prev[p], W_prev, 0.6, 0.45) for _ in range(2)]))
    rows.append(_far_from(rng, W_prev, d, 0.4, 10))
    W_new = np.concatenate(rows)
    shuffle = rng.permutation(len(W_new))
    return W_prev.astype(np.float32), W_new[shuffle].astype(np.float32), perm[170:]


@pytest.mark.parametrize("seed", [0, 1])
def test_compare_counts_stable_split_new_and_gone(seed):
    W_prev, W_new, missing = _lineage_case(seed)
    lin = compare(W_prev, W_new)
    assert lin.counts() == {"stable": 150, "split": 40, "new": 10, "gone": 30}
    assert sorted(lin.gone) == sorted(missing.tolist())
    idx, cos = lin.match_new
    assert len(lin.status_new) == len(W_new) == len(idx) == len(cos)
    split = np.array(lin.status_new) == "split"
    assert (cos[split] > 0.55).all() and (cos[split] < 0.65).all()
    # With a stricter split threshold the parts at cosine 0.6 are new, their sources gone.
    strict = compare(W_prev, W_new, split_cos=0.65)
    assert strict.counts() == {"stable": 150, "split": 0, "new": 50, "gone": 50}


def test_a_split_whose_larger_part_stays_is_stable_plus_split():
    rng = np.random.default_rng(2)
    W_prev = _unit(rng.standard_normal((20, 32)))
    keep = _part_of(rng, W_prev[0], W_prev, 0.9, 0.45)
    part = _part_of(rng, W_prev[0], W_prev, 0.6, 0.45)
    # Row 1 comes back only as one weak part: too far to be stable, alone so not a split.
    lone = _part_of(rng, W_prev[1], W_prev, 0.6, 0.45)
    # Row 2 comes back twice, both close: only the mutual best match is stable.
    twins = [_part_of(rng, W_prev[2], W_prev, c, 0.45) for c in (0.8, 0.9)]
    W_new = np.concatenate([W_prev[3:], keep[None], part[None], lone[None], twins])
    lin = compare(W_prev, W_new)
    assert lin.status_new[-5:] == ["stable", "split", "new", "split", "stable"]
    assert lin.counts() == {"stable": 19, "split": 2, "new": 1, "gone": 0}
    assert lin.match_new[0][-5:].tolist() == [0, 0, 1, 2, 2]


def test_splitting_counts_come_back():
    rng = np.random.default_rng(3)
    d = 64
    W_small = _unit(rng.standard_normal((100, d)))
    copies = [2] * 30 + [3] * 20 + [1] * 40 + [0] * 10
    rows = []
    for s, c in enumerate(copies):
        for _ in range(c):
            rows.append(W_small[s] + 0.25 * rng.standard_normal(d) / np.sqrt(d))
    W_large = _unit(np.array(rows))[rng.permutation(len(rows))]
    out = splitting(W_small, W_large)
    assert (out["n_split"], out["n_one"], out["n_none"]) == (50, 40, 10)
    assert [len(s) for s in out["splits"]] == copies
    assert out["match"].shape == (100,) and out["match_cos"].dtype == np.float32
    # Features with copies find one as their best match; those without match worse.
    has = np.array(copies) > 0
    assert (out["match_cos"][has] > 0.9).all() and (out["match_cos"][~has] < 0.7).all()
    assert out["mean_best_cos"] == pytest.approx(float(out["match_cos"].mean()))
    for s, members in enumerate(out["splits"]):
        assert all(np.dot(W_large[m], W_small[s]) > 0.9 for m in members)
