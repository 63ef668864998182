"""Offline feature labels: the tokenizer, the term matrix, Monroe et al.'s z-scores and the
held-out scores, each against a plain reference or planted structure."""

from __future__ import annotations

import math
import string

import numpy as np
import pytest
import scipy.sparse as sp

from tasks.features.labels import (
    ALPHA0,
    FeatureLabel,
    TermMatrix,
    balanced_negatives,
    label_features,
    log_odds_z,
    pick_terms,
    summarize,
    tokenize,
)
from tasks.features.schema import LABEL_TERMS

# ---------------------------------------------------------------------------- tokenize


def test_tokenize_drops_math_and_keeps_text_command_arguments():
    terms = tokenize(
        r"Kernels $\mathrm{hidden}\alpha$ and $$\sum_i secret_i$$ or \(inline\) and"
        r" \[display\] over \emph{graph} data \textbf{sheaves} \cite{smith2020} \ref{fig}"
    )
    for gone in ("hidden", "mathrm", "alpha", "secret", "inline", "display", "emph"):
        assert gone not in terms
    for gone in ("textbf", "smith2020", "cite", "fig", "ref"):
        assert gone not in terms
    assert {"kernels", "graph", "data", "sheaves"} <= set(terms)
    assert "graph data" in terms


def test_tokenize_drops_stop_words_urls_emails_and_numbers():
    terms = tokenize(
        "In this paper we propose a novel approach: code at https://github.com/acme/repo"
        " and www.example.org/x, mail to jane.doe@uni.edu. We train 3D models like GPT-4"
        " on 2024 images with 10 layers in 2-3 days."
    )
    for gone in ("in", "this", "paper", "we", "propose", "novel", "approach", "a"):
        assert gone not in terms
    for gone in ("github", "acme", "repo", "https", "example", "jane", "doe", "uni", "edu"):
        assert gone not in terms
    for gone in ("2024", "10", "2-3"):
        assert gone not in terms
    assert {"3d", "gpt-4", "code", "models", "images", "layers"} <= set(terms)
    assert "3d models" in terms


def test_bigrams_join_adjacent_kept_words_within_a_sentence_only():
    terms = tokenize(
        "Graph neural networks for the molecules. Quantum chemistry $x^2$ kernel regression"
    )
    unigrams = [t for t in terms if " " not in t]
    assert unigrams == [
        "graph", "neural", "networks", "molecules", "quantum", "chemistry", "kernel",
        "regression",
    ]  # fmt: skip
    bigrams = {t for t in terms if " " in t}
    # The stop word "the" is skipped, so "networks molecules" is a bigram; the sentence
    # end and the math are not.
    assert bigrams == {
        "graph neural", "neural networks", "networks molecules", "quantum chemistry",
        "kernel regression",
    }  # fmt: skip
    assert "molecules quantum" not in terms and "chemistry kernel" not in terms


def test_tokenize_handles_empty_and_symbol_only_text():
    assert tokenize("") == []
    assert tokenize("$x$ . , 12 -- ()") == []


# ------------------------------------------------------------------------- TermMatrix


def _reference_matrix(texts, min_df, max_df):
    sets = [set(tokenize(t)) for t in texts]
    df: dict[str, int] = {}
    for terms in sets:
        for term in terms:
            df[term] = df.get(term, 0) + 1
    vocab = sorted(t for t, d in df.items() if min_df <= d <= max_df * len(texts))
    dense = np.array([[term in terms for term in vocab] for terms in sets], dtype=np.float32)
    return vocab, dense.reshape(len(texts), len(vocab))


@pytest.mark.parametrize(("min_df", "max_df"), [(1, 1.0), (2, 0.5), (3, 0.3)])
def test_term_matrix_matches_a_plain_count(min_df, max_df):
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda"]
    texts = []
    for _ in range(40):
        sentences = [" ".join(rng.choice(words, size=rng.integers(1, 6))) for _ in range(3)]
        texts.append(". ".join(sentences))
    texts += ["", "the of and"]
    matrix = TermMatrix.build(texts, min_df=min_df, max_df=max_df)
    vocab, dense = _reference_matrix(texts, min_df, max_df)
    assert matrix.vocab == vocab
    assert sp.isspmatrix_csr(matrix.docs_NV) or isinstance(matrix.docs_NV, sp.csr_array)
    assert matrix.docs_NV.shape == (len(texts), len(vocab))
    np.testing.assert_array_equal(matrix.docs_NV.toarray(), dense)
    np.testing.assert_array_equal(matrix.df, dense.sum(axis=0))
    assert any(" " in term for term in matrix.vocab)


def test_term_matrix_of_empty_texts():
    assert TermMatrix.build([]).docs_NV.shape == (0, 0)
    matrix = TermMatrix.build(["", "", "graph"], min_df=1, max_df=1.0)
    assert matrix.vocab == ["graph"]
    np.testing.assert_array_equal(matrix.docs_NV.toarray(), [[0], [0], [1]])
    assert TermMatrix.build(["", ""]).docs_NV.shape == (2, 0)


# -------------------------------------------------------------------------- log-odds


def _reference_z(fg, total, alpha0):
    """Monroe, Colaresi & Quinn (2008), eq. 16-22, one term at a time."""
    grand = sum(total)
    n_i = sum(fg)
    n_j = grand - n_i
    out = []
    for y_i, t in zip(fg, total, strict=True):
        if t == 0:
            out.append(0.0)
            continue
        a = alpha0 * t / grand
        y_j = t - y_i
        delta = math.log((y_i + a) / (n_i + alpha0 - y_i - a)) - math.log(
            (y_j + a) / (n_j + alpha0 - y_j - a)
        )
        out.append(delta / math.sqrt(1 / (y_i + a) + 1 / (y_j + a)))
    return out


def test_log_odds_matches_a_per_term_loop():
    rng = np.random.default_rng(2)
    total = rng.integers(0, 60, size=30)
    fg = np.stack([rng.binomial(total, p) for p in (0.05, 0.3, 0.9)])
    for alpha0 in (ALPHA0, 10.0):
        z = log_odds_z(fg, total, alpha0)
        ref = np.array([_reference_z(list(row), list(total), alpha0) for row in fg])
        assert np.allclose(z, ref)
    # A term over-represented in the foreground scores above one under-represented.
    z = log_odds_z(np.array([[9, 1]]), np.array([10, 100]))
    assert z[0, 0] > 0 > z[0, 1]


def test_pick_terms_lets_a_bigram_displace_its_unigrams():
    cands = ["graph", "quasar", "graph neural", "neural", "networks", "redshift", "sky", "x"]
    assert [cands[i] for i in pick_terms(cands, 3)] == ["quasar", "graph neural", "networks"]
    assert [cands[i] for i in pick_terms(cands, 5)] == [
        "quasar", "graph neural", "networks", "redshift", "sky",
    ]  # fmt: skip
    assert pick_terms([], 5) == []
    assert pick_terms(["a b", "a", "b"], 5) == [0]


def test_balanced_negatives_against_a_plain_draw():
    heldout = np.array([1, 4, 5, 8, 9, 12, 20, 21, 30, 31])
    positives = np.array([4, 9, 20])
    for seed in range(5):
        got = balanced_negatives(heldout, positives, np.random.default_rng(seed))
        free = np.setdiff1d(heldout, positives)
        draws = np.random.default_rng(seed).choice(len(free), size=3, replace=False)
        np.testing.assert_array_equal(got, free[np.sort(draws)])
    # All the non-positives when there are fewer of them than positives.
    many = np.array([1, 4, 5, 8, 9, 12, 20])
    got = balanced_negatives(heldout, many, np.random.default_rng(0))
    np.testing.assert_array_equal(got, [21, 30, 31])
    assert len(balanced_negatives(heldout, heldout, np.random.default_rng(0))) == 0


# ------------------------------------------------------------------ planted structure

PLANTED = [
    ("quasar", "redshift"),
    ("protein", "folding"),
    ("tokamak", "plasma"),
    ("glacier", "albedo"),
    ("auction", "bidder"),
]
N_PAPERS = 2000
RANDOM_LATENTS = [5, 6, 7]
DEAD, RARE = 8, 9
N_LATENTS = 10


def _filler_vocabulary(rng, size=300):
    letters = np.array(list(string.ascii_lowercase))
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters, size=rng.integers(5, 9))))
    return sorted(words - {w for pair in PLANTED for w in pair})


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(7)
    filler = _filler_vocabulary(rng)
    # Ten sentences a paper, one for each planted word (feature f's in 2f and 2f + 1), so
    # no two planted words ever form a bigram.
    sentences = [[list(rng.choice(filler, size=4)) for _ in range(10)] for _ in range(N_PAPERS)]
    members = [rng.choice(N_PAPERS, size=100, replace=False) for _ in PLANTED]
    n_words = np.zeros((N_PAPERS, len(PLANTED)), int)
    for f, (pair, papers) in enumerate(zip(PLANTED, members, strict=True)):
        lacking = set(papers[:5].tolist())
        for i in papers:
            for j, word in enumerate(pair):
                # A few members lack one word.
                if i in lacking and j == i % 2:
                    continue
                sentences[i][2 * f + j].insert(int(rng.integers(0, 5)), word)
                n_words[i, f] += 1
        others = np.setdiff1d(np.arange(N_PAPERS), papers)
        for i in rng.choice(others, size=8, replace=False):
            sentences[i][2 * f + int(i) % 2].append(pair[int(i) % 2])
    texts = [". ".join(" ".join(s) for s in paper) + "." for paper in sentences]

    width = 8
    values = np.zeros((N_PAPERS, width), np.float32)
    # Unused slots hold latent 0, which is live: only the value says a slot is unused.
    indices = np.zeros((N_PAPERS, width), np.int64)
    fill = np.zeros(N_PAPERS, int)

    def fire(i, latent, act):
        values[i, fill[i]], indices[i, fill[i]] = act, latent
        fill[i] += 1

    for f, papers in enumerate(members):
        for i in papers:
            fire(i, f, 0.5 * n_words[i, f] + 0.3 * rng.random())
    for latent in RANDOM_LATENTS:
        for i in rng.choice(N_PAPERS, size=100, replace=False):
            if fill[i] < width:
                fire(i, latent, 0.2 + rng.random())
    heldout = np.arange(N_PAPERS) % 5 == 0
    for i in [*np.flatnonzero(heldout)[:2].tolist(), 1, 2, 3]:
        fire(i, RARE, 1.0)
    terms = TermMatrix.build(texts)
    labels = label_features(terms, values, indices, N_LATENTS, heldout)
    return {
        "texts": texts, "terms": terms, "values": values, "indices": indices,
        "heldout": heldout, "labels": labels,
    }  # fmt: skip


def test_planted_labels_name_their_words(planted):
    labels = planted["labels"]
    assert [x.latent for x in labels] == list(range(N_LATENTS))
    for f, pair in enumerate(PLANTED):
        label = labels[f]
        assert set(pair) <= set(label.terms[:3]), (pair, label.terms)
        assert len(label.terms) == LABEL_TERMS
        assert label.z == sorted(label.z, reverse=True) and label.z[-1] > 0


def test_planted_labels_predict_held_out_papers(planted):
    labels = planted["labels"]
    for f in range(len(PLANTED)):
        assert labels[f].f1 >= 0.8, labels[f]
        assert labels[f].pearson > 0.5, labels[f]
    planted_f1 = [labels[f].f1 for f in range(len(PLANTED))]
    random_f1 = [labels[f].f1 for f in RANDOM_LATENTS]
    assert max(random_f1) < min(planted_f1) - 0.2, (random_f1, planted_f1)


def test_label_z_matches_the_dense_reference(planted):
    """label_features computes z only where the foreground holds a term; it must agree
    with log_odds_z over the whole vocabulary."""
    terms, values, indices, heldout = (
        planted[k] for k in ("terms", "values", "indices", "heldout")
    )
    docs = terms.docs_NV.toarray()
    train_df = docs[~heldout].sum(axis=0)
    for latent in [0, 3, *RANDOM_LATENTS]:
        rows = np.flatnonzero(((indices == latent) & (values != 0)).any(axis=1) & ~heldout)
        act = np.array([values[i][(indices[i] == latent) & (values[i] != 0)][0] for i in rows])
        fg = rows[np.argsort(-act, kind="stable")[:50]]
        z = log_odds_z(docs[fg].sum(axis=0)[None, :], train_df)[0]
        label = planted["labels"][latent]
        cols = [terms.vocab.index(t) for t in label.terms]
        assert np.allclose(label.z, z[cols])
        # No term held by the foreground beats the label's best.
        in_fg = docs[fg].sum(axis=0) > 0
        assert np.isclose(label.z[0], z[in_fg].max())


def _reference_scores(planted, label, seed=0):
    """The held-out F1 and Pearson r of one label, with plain loops."""
    texts, values, indices, heldout = (
        planted[k] for k in ("texts", "values", "indices", "heldout")
    )
    term_sets = [set(tokenize(t)) for t in texts]
    score = np.array([sum(t in s for t in label.terms) for s in term_sets])
    act = np.zeros(N_PAPERS)
    for i in range(N_PAPERS):
        for v, j in zip(values[i], indices[i], strict=True):
            if v != 0 and j == label.latent:
                act[i] = v
    fires = act > 0
    train = ~heldout
    n_pos, n_neg = (fires & train).sum(), (~fires & train).sum()
    best, threshold = -1.0, None
    for t in range(1, len(label.terms) + 1):
        tp = (fires & train & (score >= t)).sum()
        fp = (~fires & train & (score >= t)).sum() * n_pos / n_neg
        f1 = 2 * tp / (2 * tp + fp + (n_pos - tp)) if tp else 0.0
        if f1 > best:
            best, threshold = f1, t
    pos = np.flatnonzero(fires & heldout)
    free = np.flatnonzero(~fires & heldout)
    rng = np.random.default_rng([seed, label.latent])
    neg = free[np.sort(rng.choice(len(free), size=min(len(pos), len(free)), replace=False))]
    chosen = np.concatenate([pos, neg])
    predicted = score[chosen] >= threshold
    truth = fires[chosen]
    tp = (predicted & truth).sum()
    f1 = 2 * tp / (2 * tp + (predicted & ~truth).sum() + (~predicted & truth).sum())
    x, y = score[chosen], act[chosen]
    pearson = np.corrcoef(x, y)[0, 1] if x.std() > 0 and y.std() > 0 else 0.0
    return f1, pearson, len(pos)


def test_scores_match_a_plain_reference_on_a_balanced_held_out_set(planted):
    for latent in [0, 2, *RANDOM_LATENTS]:
        label = planted["labels"][latent]
        f1, pearson, n_pos = _reference_scores(planted, label)
        assert label.n_heldout == n_pos
        assert label.f1 == pytest.approx(f1)
        assert label.pearson == pytest.approx(pearson)


def test_the_seed_changes_only_the_negatives(planted):
    again = label_features(
        planted["terms"], planted["values"], planted["indices"], N_LATENTS,
        planted["heldout"], seed=1,
    )  # fmt: skip
    for a, b in zip(planted["labels"], again, strict=True):
        assert (a.terms, a.z, a.n_heldout) == (b.terms, b.z, b.n_heldout)
    # The random latents' scores depend on which negatives were drawn.
    assert any(planted["labels"][f].pearson != again[f].pearson for f in RANDOM_LATENTS)
    for latent in [1, RANDOM_LATENTS[0]]:
        f1, pearson, _ = _reference_scores(planted, again[latent], seed=1)
        assert again[latent].f1 == pytest.approx(f1)
        assert again[latent].pearson == pytest.approx(pearson)


def test_dead_and_rare_latents_have_no_scores(planted):
    dead = planted["labels"][DEAD]
    assert (dead.terms, dead.z, dead.f1, dead.pearson, dead.n_heldout) == ([], [], None, None, 0)
    rare = planted["labels"][RARE]
    assert rare.n_heldout == 2
    assert rare.f1 is None and rare.pearson is None


# ------------------------------------------------------------------------- edge cases


def test_empty_texts_do_not_crash():
    texts = ["", "graph theory", "", "$x$", "graph nodes"] * 8
    terms = TermMatrix.build(texts, min_df=1, max_df=1.0)
    values = np.zeros((len(texts), 2), np.float32)
    indices = np.zeros((len(texts), 2), np.int32)
    empty = np.array([t in ("", "$x$") for t in texts])
    theory = np.array([t == "graph theory" for t in texts])
    values[empty, 0] = 1.0
    values[theory, 1] = 0.5
    indices[theory, 1] = 1
    heldout = np.arange(len(texts)) % 3 == 0
    labels = label_features(terms, values, indices, 3, heldout)
    assert len(labels) == 3
    # Latent 0 fires on papers without words: nothing to name, so its label predicts
    # nothing; latent 1 fires on "graph theory" (which covers "graph" and "theory").
    assert labels[0].terms == [] and labels[0].f1 == 0.0 and labels[0].pearson == 0.0
    assert labels[1].terms == ["graph theory"] and labels[1].f1 == 1.0
    assert labels[2].terms == [] and labels[2].f1 is None


def test_codes_must_match_the_papers():
    terms = TermMatrix.build(["graph"] * 3, min_df=1, max_df=1.0)
    with pytest.raises(ValueError, match="papers"):
        label_features(terms, np.zeros((2, 1)), np.zeros((2, 1), int), 1, np.zeros(3, bool))
    with pytest.raises(ValueError, match="heldout"):
        label_features(terms, np.zeros((3, 1)), np.zeros((3, 1), int), 1, np.zeros(2, bool))


def test_summarize_counts_scored_features():
    def label(f1, pearson):
        return FeatureLabel(0, ["x"], [1.0], f1, pearson, 5)

    summary = summarize(
        [label(0.9, 0.7), label(0.5, 0.1), label(0.8, 0.4), label(None, None), label(0.2, 0.0)]
    )
    assert summary["labels_scored"] == 4 and summary["labels_unscored"] == 1
    assert summary["label_f1_mean"] == pytest.approx(0.6)
    assert summary["label_f1_median"] == pytest.approx(0.65)
    assert summary["label_f1_ge_0_8"] == pytest.approx(0.5)
    assert summary["label_pearson_mean"] == pytest.approx(0.3)
    empty = summarize([label(None, None)])
    assert empty["labels_scored"] == 0 and empty["label_f1_mean"] is None
