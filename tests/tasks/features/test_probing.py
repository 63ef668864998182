"""Sparse probing on arXiv categories (:mod:`tasks.features.probing`) and the categories
a feature is over-represented in (:mod:`tasks.features.categories`), on synthetic papers
whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from sae.codes import SparseCodes
from tasks.corpus.domains import get_domain
from tasks.features import probing
from tasks.features.categories import category_matrix, over_represented
from tasks.features.probing import (
    PROBE_KS,
    best_threshold,
    f1_score,
    probe_categories,
    probe_holdout,
    probed,
    summarize,
)

CS = get_domain("cs.LG")


def _papers(n: int = 1500, seed: int = 0):
    """cs.LG papers, 20% cross-listed to cs.CV, 8% to stat.ML, 30 to math.OC (too few),
    each also in cs.LG; latent 3 fires exactly on the cs.CV papers, latent 5 on a random
    half of the stat.ML ones, the other 30 latents at random. The embedding's coordinate 2
    is cs.CV plus noise; the rest is noise."""
    rng = np.random.default_rng(seed)
    ids = [f"2401.{i:05d}" for i in range(n)]
    cv = rng.random(n) < 0.2
    ml = rng.random(n) < 0.08
    oc = np.zeros(n, bool)
    oc[rng.choice(n, 30, replace=False)] = True
    names = np.array(["cs.CV", "stat.ML", "math.OC"])
    lists = [["cs.LG", *names[row]] for row in np.stack([cv, ml, oc], axis=1)]
    width, n_latents = 4, 32
    indices = np.stack([rng.choice(np.r_[0:3, 6:n_latents], width, replace=False) for _ in ids])
    values = rng.uniform(0.1, 1.0, (n, width)).astype(np.float32)
    values[rng.random((n, width)) < 0.3] = 0.0
    indices[cv, 0], values[cv, 0] = 3, rng.uniform(0.5, 1.0, cv.sum())
    half = ml & (rng.random(n) < 0.5)
    indices[half, 1], values[half, 1] = 5, 1.0
    codes = SparseCodes(values, indices.astype(np.int32), n_latents)
    x = rng.normal(size=(n, 24)).astype(np.float32)
    x[:, 2] += 4.0 * cv
    return ids, lists, codes, x


def test_the_holdout_is_disjoint_stable_and_a_fifth():
    ids = [f"2401.{i:05d}" for i in range(5000)]
    held = probe_holdout(ids)
    assert 0.18 < held.mean() < 0.22
    part = probing.probe_split(ids)
    assert ((part == 0) == held).all() and 0.18 < (part == 1).mean() < 0.22
    # An id's side does not depend on the others: a grown corpus keeps it.
    assert (probe_holdout(ids[:1000]) == held[:1000]).all()
    assert (probe_holdout(ids[::-1]) == held[::-1]).all()
    # Salted apart from the labels' own split: not the same papers.
    from tasks.features.run import label_holdout

    assert (label_holdout(ids) != held).any()


def test_a_latent_that_is_the_category_probes_perfectly():
    ids, lists, codes, x = _papers()
    cats = category_matrix(lists)
    probes = probe_categories(ids, cats, CS, codes, x)
    # cs.LG is the domain's own, math.OC has 30 papers: only cs.CV and stat.ML are probed.
    assert [p.category for p in probes] == ["cs.CV", "stat.ML"]
    cv, ml = probes
    held = probe_holdout(ids)
    y = np.array(["cs.CV" in c for c in lists])
    assert cv.papers == y.sum() and cv.heldout == y[held].sum() > 0
    assert cv.single_latent == 3 and cv.single_f1 == 1.0
    assert cv.latents[0] == 3 and cv.sparse_f1[1] == 1.0
    assert cv.sparse_f1[16] > 0.95 and len(cv.latents) == 16
    assert cv.coords[0] == 2 and cv.full_f1 > 0.9 and cv.dense_f1[1] > 0.9
    # stat.ML: latent 5 fires on half of it and nothing else, so it is the best single
    # feature, with F1 near 2/3; the noise embedding knows nothing of it.
    assert ml.single_latent == 5 and 0.5 < ml.single_f1 < 0.8
    assert ml.full_f1 < 0.5

    summary = summarize(probes)
    assert summary["probe_categories"] == 2
    assert summary["probe_f1_k1_mean"] == pytest.approx((1.0 + ml.sparse_f1[1]) / 2)
    assert summary["dense_probe_f1_mean"] == pytest.approx((cv.full_f1 + ml.full_f1) / 2)
    assert {f"probe_f1_k{k}_mean" for k in PROBE_KS} <= set(summary)
    assert set(cv.as_json()) >= {"category", "single", "sparse_f1", "dense_f1", "full_f1"}


def test_small_and_domain_categories_are_not_probed(monkeypatch):
    lists = [["astro-ph.GA", "gr-qc"]] * 60 + [["astro-ph.CO", "hep-ph"]] * 49
    lists += [["astro-ph", "astro-ph.CO"]] * 55
    cats = category_matrix(lists)
    # An archive's own categories are its labels; its bare code is how papers got in.
    astro = get_domain("astro-ph")
    assert [cats.names[c] for c in probed(cats, astro)] == ["astro-ph.CO", "astro-ph.GA", "gr-qc"]
    assert [cats.names[c] for c in probed(cats, get_domain("gr-qc"))] == [
        "astro-ph.CO",
        "astro-ph.GA",
        "astro-ph",
    ]
    assert "astro-ph" in [cats.names[c] for c in probed(cats, get_domain("all"))]
    # A category nearly every paper holds leaves too few papers without it.
    held = category_matrix([["cs.CV", "cs.LG"]] * 120 + [["cs.LG"]] * 30)
    assert [held.names[c] for c in probed(held, get_domain("cs.LG"))] == []
    # The most frequent MAX_CATEGORIES only.
    monkeypatch.setattr(probing, "MAX_CATEGORIES", 1)
    monkeypatch.setattr(probing, "MIN_PAPERS", 40)
    assert [cats.names[c] for c in probed(cats, get_domain("cs.LG"))] == ["astro-ph.CO"]


def test_nothing_to_probe_gives_an_empty_summary():
    ids, lists, codes, x = _papers(n=200)
    probes = probe_categories(ids, category_matrix(lists), CS, codes, x)
    assert probes == []  # 200 papers: no category other than cs.LG reaches 50
    assert summarize(probes)["probe_categories"] == 0
    assert summarize(probes)["probe_f1_k16_mean"] is None


def test_the_dense_ceiling_does_not_overfit_few_positives():
    """384 noise coordinates and one that carries a 4% category: the full probe, its ridge
    and threshold chosen on validation papers, scores near the one coordinate alone (fit
    and thresholded on its own training papers it separated them and scored 0.44)."""
    import torch

    rng = np.random.default_rng(5)
    y = rng.random(2000) < 0.04
    x = rng.normal(size=(2000, 384)).astype(np.float32)
    x[:, 0] += 3.0 * y
    part = np.minimum(probing.probe_split([f"2401.{i:05d}" for i in range(2000)]), 2)
    full = probing._probe_f1(torch.as_tensor(x), y, part)
    one = probing._probe_f1(torch.as_tensor(x[:, :1]), y, part)
    assert full > 0.55 and full > one - 0.1


def test_the_threshold_is_the_best_f1_cut():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 12, 400).astype(np.float64)  # many ties
    y = rng.random(400) < scores / 14
    t = best_threshold(scores, y)
    every = {u: f1_score(scores >= u, y) for u in np.unique(scores)}
    assert f1_score(scores >= t, y) == max(every.values())


def test_the_logistic_fit_matches_a_reference_optimiser():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 5)) * [1.0, 10.0, 0.1, 1.0, 3.0] + [0, 5, 0, -2, 0]
    y = rng.random(300) < 1 / (1 + np.exp(-(X[:, 0] + X[:, 2] * 10 - 0.5)))
    train = rng.random(300) < 0.7
    import torch

    got, _ = probing._logistic_scores(torch.as_tensor(X), y, train, 1e-3)
    Xt, yt = X[train], y[train]
    mu, sd = Xt.mean(0), Xt.std(0)
    Z = (Xt - mu) / sd

    def loss(p):
        z = Z @ p[:-1] + p[-1]
        return np.mean(np.logaddexp(0, z) - yt * z) + 0.5 * 1e-3 * p[:-1] @ p[:-1]

    p = minimize(loss, np.zeros(6), method="BFGS", options={"gtol": 1e-9}).x
    want = (X - mu) / sd @ p[:-1] + p[-1]
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_over_represented_categories_match_a_count_by_hand():
    _, lists, codes, _ = _papers(n=800, seed=1)
    cats = category_matrix(lists)
    shown = over_represented(codes, cats, top=3, min_count=5)
    dense = codes.dense() > 0
    member = {name: np.array([name in c for c in lists]) for name in cats.names}
    assert shown[3][0][0] == "cs.CV" and shown[3][0][2] == member["cs.CV"].sum()
    for j, rows in enumerate(shown):
        expect = []
        for name, m in member.items():
            both = int((dense[:, j] & m).sum())
            lift = both / dense[:, j].sum() / m.mean() if both else 0.0
            if both >= 5 and lift > 1:
                expect.append((name, lift, both))
        expect.sort(key=lambda e: -e[1])
        assert [(c, n) for c, _, n in rows] == [(c, n) for c, _, n in expect[:3]]
        for (_, got, _), (_, want, _) in zip(rows, expect, strict=False):
            assert got == pytest.approx(want, rel=1e-5)
    # cs.LG is every paper's: lift 1, never shown.
    assert not any(c == "cs.LG" for rows in shown for c, _, _ in rows)


def test_past_max_papers_the_probes_see_a_stable_sample(monkeypatch):
    ids, lists, codes, x = _papers(n=1500)
    rows = probing.sample_rows(ids, 1000)
    assert len(rows) == 1000 and (np.diff(rows) > 0).all()
    # The same papers, whatever order the ids come in.
    order = np.random.default_rng(1).permutation(len(ids))
    again = probing.sample_rows([ids[i] for i in order], 1000)
    assert sorted(ids[r] for r in rows) == sorted(ids[order[r]] for r in again)

    monkeypatch.setattr(probing, "MAX_PAPERS", 1000)
    sampled = probe_categories(ids, category_matrix(lists), CS, codes, x)
    monkeypatch.setattr(probing, "MAX_PAPERS", 10**9)
    part = SparseCodes(codes.values_NW[rows], codes.indices_NW[rows], codes.n_latents)
    subset = probe_categories(
        [ids[r] for r in rows], category_matrix([lists[r] for r in rows]), CS, part, x[rows]
    )
    assert [p.as_json() for p in sampled] == [p.as_json() for p in subset]
    assert sum(p.papers for p in sampled) < sum(
        p.papers for p in probe_categories(ids, category_matrix(lists), CS, codes, x)
    )
