"""Offline feature labels (no LLM) and how well they predict held-out papers.

Terms are unigrams and bigrams of a paper's kept words (:func:`tokenize`), counted once
per paper (:class:`TermMatrix`). Papers marked ``heldout_N`` take no part in fitting.

Label. Foreground = the latent's top ``fg_size`` label-train papers by activation;
background = the other label-train papers. With ``y_w`` the number of foreground papers
holding term ``w``, ``t_w`` the number of label-train papers holding it (background
``t_w - y_w``), ``n = sum_w y_w``, ``T = sum_w t_w``, and the informative Dirichlet prior
``a_w = alpha0 * t_w / T`` (Monroe, Colaresi & Quinn 2008)::

    d_w = log((y_w + a_w) / (n + alpha0 - y_w - a_w))
          - log((t_w - y_w + a_w) / (T - n + alpha0 - (t_w - y_w) - a_w))
    z_w = d_w / sqrt(1 / (y_w + a_w) + 1 / (t_w - y_w + a_w))

The label is the ``n_terms`` terms with the highest positive ``z_w`` among those in the
foreground; a chosen bigram ``"a b"`` displaces the unigrams ``a`` and ``b``.

Scores. A paper's score is how many of the label's terms it holds. The threshold
``t >= 1`` maximises F1 on the label-train papers, weighting their negatives to as many
as their positives (the balance of the test set). The test set: every held-out paper
where the latent fires plus as many held-out papers where it does not, drawn by
``numpy.random.default_rng([seed, latent])`` (all of them when fewer). There ``f1`` is
that of ``score >= t`` against firing, ``pearson`` the correlation of the score with the
activation (0 where it does not fire; 0.0 when either is constant). Both are None when
fewer than ``min_positives`` held-out papers fire it or no label-train paper does.
"""

from __future__ import annotations

import itertools
import re
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tasks.features.schema import LABEL_TERMS

#: The prior's total pseudo-count. A few hundred against a foreground of ~50 papers x ~100
#: terms shrinks a rare term's foreground rate towards its corpus rate without drowning
#: the foreground; the whole corpus's count (Monroe et al.'s choice for large groups)
#: would pull every foreground rate to the corpus rate, flattening all labels.
ALPHA0 = 500.0

_ENGLISH = """
a about above after again against all almost along already although always am among an
and another any anyone anything are around as at be because been before being below
between both but by can cannot could did do does doing done down during each either
else enough etc even ever every few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just least less like
made make makes many may me might more most mostly much must my myself neither no nor
not now of off often on once one only onto or other others otherwise our ours ourselves
out over own per perhaps quite rather really same several she should since so some
something still such than that the their theirs them themselves then there thereby
therefore these they this those though three through throughout thus to together too
toward towards two under until up upon us very via was we were what whatever when
where whereas whether which while who whom whose why will with within without would yet
you your yours yourself
"""
# Words every abstract uses whatever it is about: in a label they would name nothing.
_ACADEMIC = """
al also approach approaches article based demonstrate demonstrated demonstrates
different et existing find finds found furthermore however i.e e.g introduce introduced
introduces investigate investigated investigates method methods moreover new novel
obtain obtained obtains paper papers present presented presents propose proposed
proposes proposing provide provided provides recent recently respectively result results
show showed shown shows significant significantly studied studies study use used uses
using various well work works
"""
STOP_WORDS = frozenset((_ENGLISH + _ACADEMIC).split())

_BREAK = "\x00"
# Math and reference commands go; each leaves a break so no bigram spans the gap.
_MATH = re.compile(
    r"\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]"
    r"|\\begin\{(equation|align|eqnarray|gather|multline)\*?\}.*?\\end\{\1\*?\}"
    # \href{url}{text} loses the url and keeps the text.
    r"|\\(?:cite[a-z]*|[a-z]*ref|label|url|footnotemark)\*?(?:\[[^\]]*\])*\{[^}]*\}",
    re.DOTALL,
)
# Accented letters written as LaTeX (Schr\"odinger, \'{e}) keep the bare letter.
_ACCENT = re.compile(r"\\['\"`^~=.]\{?([a-z])\}?")
# Any other command name goes but its {argument} stays: \emph{graph} -> graph.
_COMMAND = re.compile(r"\\[a-z]+\*?|\\.")
# Addresses with a scheme, or bare ones on the usual hosts (github.com/x/y).
_URL = re.compile(
    r"(?:https?://|ftp://|www\.)\S+|\b[a-z0-9][\w-]*(?:\.[\w-]+)*\.(?:com|org|io|net)\b(?:/\S*)?"
)
_URL_HINTS = ("://", "www.", ".com", ".org", ".io", ".net")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_POSSESSIVE = re.compile(r"['\u2019]s\b")
# One pass yields words (the group) and breaks (an empty match of the group): sentence
# ends and phrase punctuation followed by a space (so 3.5 and e.g. stay whole), brackets,
# quotes, blank lines and the gaps left above. Words on either side are not a phrase.
_TOKEN = re.compile(
    r"[.!?;:,](?=\s|$)|[()\[\]\"\u201c\u201d]|\n\s*\n|" + _BREAK + r"|([^\W_]+(?:-[^\W_]+)*)"
)


def _segments(text: str) -> list[list[str]]:
    """The kept words of ``text``, in runs that bigrams may not cross."""
    text = text.lower()
    # The `in` tests skip patterns that cannot match: most abstracts have no LaTeX or URL,
    # and the e-mail pattern is slow to rule out at every word.
    if "$" in text or "\\" in text:
        text = _MATH.sub(_BREAK, text.replace("\\$", " "))
        text = _COMMAND.sub(" ", _ACCENT.sub(r"\1", text))
    if any(hint in text for hint in _URL_HINTS):
        text = _URL.sub(_BREAK, text)
    if "@" in text:
        text = _EMAIL.sub(_BREAK, text)
    if "'" in text or "\u2019" in text:
        text = _POSSESSIVE.sub("", text)
    runs: list[list[str]] = []
    run: list[str] = []
    for word in _TOKEN.findall(text):
        if not word:
            if run:
                runs.append(run)
                run = []
        elif (
            len(word) > 1
            and word not in STOP_WORDS
            and not (word[0].isdigit() and word.replace("-", "").isdigit())
        ):
            run.append(word)
    if run:
        runs.append(run)
    return runs


def tokenize(text: str) -> list[str]:
    """The terms of ``text``: its kept words in order, then the bigrams ``"a b"`` of
    adjacent kept words within a sentence or phrase."""
    runs = _segments(text)
    unigrams = [w for run in runs for w in run]
    bigrams = [f"{a} {b}" for run in runs for a, b in itertools.pairwise(run)]
    return unigrams + bigrams


@dataclass
class TermMatrix:
    """Which terms each paper holds: ``docs_NV[i, v] = 1`` when paper i holds ``vocab[v]``."""

    docs_NV: sp.csr_matrix
    vocab: list[str]

    @property
    def df(self) -> np.ndarray:
        """[V]: how many papers hold each term."""
        return np.bincount(self.docs_NV.indices, minlength=len(self.vocab))

    @classmethod
    def build(cls, texts: Iterable[str], min_df: int = 3, max_df: float = 0.5) -> TermMatrix:
        """Terms held by at least ``min_df`` papers and at most a ``max_df`` share of them;
        ``vocab`` is sorted."""
        word_ids: dict[str, int] = {}
        # One flat stream of word ids, -1 closing each run, so a bigram is two adjacent ids.
        stream = array("i")
        ends = array("q")
        for text in texts:
            for run in _segments(text):
                stream.extend([word_ids.setdefault(w, len(word_ids)) for w in run])
                stream.append(-1)
            ends.append(len(stream))
        n_docs = len(ends)
        words = list(word_ids)
        del word_ids
        tok = np.asarray(stream, dtype=np.int32)
        doc = np.repeat(np.arange(n_docs, dtype=np.int32), np.diff(np.asarray(ends), prepend=0))
        max_count = max_df * n_docs

        uni_doc, uni = _doc_unique(doc[tok >= 0], tok[tok >= 0])
        uni_df = np.bincount(uni, minlength=len(words))
        # A bigram is in no more papers than either of its words: this prunes most pairs.
        frequent = uni_df >= min_df
        left, right = tok[:-1], tok[1:]
        ok = (left >= 0) & (right >= 0)
        ok[ok] = frequent[left[ok]] & frequent[right[ok]]
        pairs, pair_of = _unique(left[ok].astype(np.int64) * len(words) + right[ok])
        bi_doc, bi = _doc_unique(doc[:-1][ok], pair_of)
        # The token stream is the largest thing here; the rest needs only the pairs.
        del tok, doc, left, right, ok, pair_of, stream
        bi_df = np.bincount(bi, minlength=len(pairs))

        keep_uni = np.flatnonzero((uni_df >= min_df) & (uni_df <= max_count))
        keep_bi = np.flatnonzero((bi_df >= min_df) & (bi_df <= max_count))
        terms = [words[i] for i in keep_uni] + [
            f"{words[p // len(words)]} {words[p % len(words)]}" for p in pairs[keep_bi]
        ]
        order = np.argsort(np.array(terms, dtype=object), kind="stable")
        vocab = [terms[i] for i in order]
        rank = np.empty(len(terms), np.int32)
        rank[order] = np.arange(len(terms))
        # Old term id -> column, -1 for terms cut by min_df/max_df.
        uni_col = np.full(len(words), -1, np.int32)
        uni_col[keep_uni] = rank[: len(keep_uni)]
        bi_col = np.full(len(pairs), -1, np.int32)
        bi_col[keep_bi] = rank[len(keep_uni) :]
        uni_cols, bi_cols = uni_col[uni], bi_col[bi]
        rows = np.concatenate([uni_doc[uni_cols >= 0], bi_doc[bi_cols >= 0]])
        cols = np.concatenate([uni_cols[uni_cols >= 0], bi_cols[bi_cols >= 0]])
        del uni_doc, uni, bi_doc, bi, uni_cols, bi_cols
        docs = sp.csr_matrix(
            (np.ones(len(cols), np.float32), (rows, cols)), shape=(n_docs, len(vocab))
        )
        docs.sort_indices()
        return cls(docs_NV=docs, vocab=vocab)


def _doc_unique(doc: np.ndarray, term: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (doc, term) pairs, sorted by doc, as int32 arrays."""
    if len(term) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    span = int(term.max()) + 1
    key = doc.astype(np.int64) * span + term
    key.sort()
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    key = key[first]
    return (key // span).astype(np.int32), (key % span).astype(np.int32)


def _unique(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(a, return_inverse=True)`` by sorting: numpy 2's hash-based unique
    takes seconds on the tens of millions of int64 keys of a large corpus."""
    order = np.argsort(a, kind="stable")
    ranked = a[order]
    first = np.ones(len(a), bool)
    first[1:] = ranked[1:] != ranked[:-1]
    inverse = np.empty(len(a), np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ranked[first], inverse


def log_odds_z(fg_LV: np.ndarray, total_V: np.ndarray, alpha0: float = ALPHA0) -> np.ndarray:
    """Monroe et al.'s z-scores of the foreground counts ``fg_LV`` (one row per feature)
    against the rest of ``total_V`` (the counts over all label-train papers, foreground
    included), with the prior ``alpha0 * total_V / total_V.sum()``. A term no paper holds
    gets 0."""
    fg = np.asarray(fg_LV, dtype=np.float64)
    total = np.asarray(total_V, dtype=np.float64)
    grand = total.sum()
    if grand <= 0:
        return np.zeros(np.broadcast_shapes(fg.shape, total.shape))
    n_fg = fg.sum(axis=-1, keepdims=True)
    z = _z(fg, total - fg, n_fg, grand - n_fg, alpha0 * total / grand, alpha0)
    return np.where(total > 0, z, 0.0)


def _z(fg, bg, n_fg, n_bg, alpha, alpha0: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        fg_a, bg_a = fg + alpha, bg + alpha
        delta = np.log(fg_a / (n_fg + alpha0 - fg_a)) - np.log(bg_a / (n_bg + alpha0 - bg_a))
        return delta / np.sqrt(1.0 / fg_a + 1.0 / bg_a)


def pick_terms(candidates: Sequence[str], n_terms: int = LABEL_TERMS) -> list[int]:
    """Positions in ``candidates`` (best first) of the label: the first ``n_terms``, where
    a taken bigram ``"a b"`` removes or skips the unigrams ``a`` and ``b``."""
    taken: list[int] = []
    covered: set[str] = set()
    for i, term in enumerate(candidates):
        parts = term.split(" ")
        if len(parts) == 1:
            if term in covered:
                continue
        else:
            covered.update(parts)
            taken = [j for j in taken if candidates[j] not in covered]
        taken.append(i)
        if len(taken) == n_terms:
            break
    return taken


def balanced_negatives(
    heldout_H: np.ndarray, positives: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """As many papers of ``heldout_H`` (sorted) outside ``positives`` (sorted, a subset)
    as there are positives, uniformly without replacement; all of them when fewer."""
    n_free = len(heldout_H) - len(positives)
    m = min(len(positives), n_free)
    if m <= 0:
        return np.zeros(0, heldout_H.dtype)
    draws = np.sort(rng.choice(n_free, size=m, replace=False))
    # The r-th paper outside the positives sits at r plus the positives before it.
    shifted = np.searchsorted(heldout_H, positives) - np.arange(len(positives))
    return heldout_H[draws + np.searchsorted(shifted, draws, side="right")]


def heldout_test(heldout_H: np.ndarray, pos_held: np.ndarray, latent: int, seed: int) -> np.ndarray:
    """The held-out papers a latent's label is scored on: its held-out positives
    ``pos_held`` (sorted) then as many others (:func:`balanced_negatives` drawn by
    ``default_rng([seed, latent])``), so every scorer of a label sees the same papers."""
    rng = np.random.default_rng([seed, latent])
    return np.concatenate([pos_held, balanced_negatives(heldout_H, pos_held, rng)])


def heldout_scores(
    score_H: np.ndarray, threshold: float, act_pos: np.ndarray
) -> tuple[float, float]:
    """(F1 of ``score_H >= threshold`` against firing, Pearson r of the score with the
    activation) on a test set (:func:`heldout_test`) whose first ``len(act_pos)`` papers
    fire at ``act_pos`` and the rest do not."""
    score = np.asarray(score_H, dtype=np.float64)
    fires = np.arange(len(score)) < len(act_pos)
    act = np.zeros(len(score))
    act[: len(act_pos)] = act_pos
    predicted = score >= threshold
    f1 = _f1(
        float((predicted & fires).sum()),
        float((predicted & ~fires).sum()),
        float((~predicted & fires).sum()),
    )
    return f1, _pearson(score, act)


@dataclass
class FeatureLabel:
    latent: int
    terms: list[str]
    z: list[float]
    f1: float | None
    pearson: float | None
    n_heldout: int


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def label_features(
    terms: TermMatrix,
    values_NW: np.ndarray,
    indices_NW: np.ndarray,
    n_latents: int,
    heldout_N: np.ndarray,
    *,
    fg_size: int = 50,
    n_terms: int = LABEL_TERMS,
    min_positives: int = 3,
    seed: int = 0,
    alpha0: float = ALPHA0,
    chunk: int = 256,
) -> list[FeatureLabel]:
    """One :class:`FeatureLabel` per latent, in latent order (see the module docstring)."""
    docs = terms.docs_NV.tocsr()
    n_docs, n_vocab = docs.shape
    values_NW = np.asarray(values_NW)
    indices_NW = np.asarray(indices_NW)
    heldout_N = np.asarray(heldout_N, dtype=bool)
    if values_NW.shape != indices_NW.shape or values_NW.shape[0] != n_docs:
        raise ValueError(f"codes {values_NW.shape}/{indices_NW.shape} do not match {n_docs} papers")
    if heldout_N.shape != (n_docs,):
        raise ValueError(f"heldout_N has shape {heldout_N.shape}, want ({n_docs},)")
    train_N = ~heldout_N

    # Per latent, its papers (ascending) and activations: the codes as a CSC matrix.
    # An unused slot's index may be anything, so only nonzero slots are read.
    paper, slot = np.nonzero(values_NW)
    codes = sp.coo_matrix(
        (values_NW[paper, slot].astype(np.float32), (paper, indices_NW[paper, slot])),
        shape=(n_docs, n_latents),
    ).tocsc()
    codes.sum_duplicates()

    # Per term, its papers (ascending): the columns of the term matrix.
    posting = docs.tocsc()
    posting.sort_indices()
    entry_doc = np.repeat(np.arange(n_docs), np.diff(docs.indptr))
    train_df_V = np.bincount(docs.indices[train_N[entry_doc]], minlength=n_vocab)
    n_train = int(train_N.sum())
    heldout_H = np.flatnonzero(heldout_N)
    vocab = np.array(terms.vocab, dtype=object)
    grand = float(train_df_V.sum())
    alpha_V = alpha0 * train_df_V / grand if grand > 0 else np.zeros(n_vocab)
    # Room for 3 x n_terms candidates: each bigram taken displaces at most two unigrams.
    n_cand = 3 * n_terms
    score_N = np.zeros(n_docs, np.int16)

    labels: list[FeatureLabel] = []
    for start in range(0, n_latents, chunk):
        stop = min(start + chunk, n_latents)
        fg_rows: list[np.ndarray] = []
        for latent in range(start, stop):
            rows, acts = _column(codes, latent)
            train = train_N[rows]
            rows, acts = rows[train], acts[train]
            fg_rows.append(rows[np.argsort(-acts, kind="stable")[:fg_size]])
        # Only terms some foreground paper holds can enter a label, so z is computed on
        # those (a few thousand a feature) rather than on the whole vocabulary.
        owner, col, fg, n_fg = _fg_counts(docs, fg_rows, n_vocab)
        z = _z(fg, train_df_V[col] - fg, n_fg[owner], grand - n_fg[owner], alpha_V[col], alpha0)
        bounds = np.searchsorted(owner, np.arange(stop - start + 1))
        for i, latent in enumerate(range(start, stop)):
            lat_z, lat_col = z[bounds[i] : bounds[i + 1]], col[bounds[i] : bounds[i + 1]]
            # Not > 0: where the foreground's rate equals the background's, rounding
            # leaves z at +-1e-15, which is no evidence for the term.
            positive = lat_z > 1e-9
            lat_z, lat_col = lat_z[positive], lat_col[positive]
            if len(lat_z) > n_cand:
                top = np.argpartition(-lat_z, n_cand - 1)[:n_cand]
                lat_z, lat_col = lat_z[top], lat_col[top]
            # Ties go to the earlier term in the (sorted) vocabulary, for stable labels.
            order = np.lexsort((lat_col, -lat_z))
            lat_z, lat_col = lat_z[order], lat_col[order]
            chosen = pick_terms(list(vocab[lat_col]), n_terms)
            labels.append(
                _score(
                    latent,
                    lat_col[chosen],
                    lat_z[chosen],
                    vocab,
                    codes,
                    posting,
                    score_N,
                    train_N,
                    n_train,
                    heldout_H,
                    min_positives,
                    seed,
                )
            )
    return labels


def _column(matrix: sp.csc_matrix, j: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = matrix.indptr[j], matrix.indptr[j + 1]
    return matrix.indices[lo:hi], matrix.data[lo:hi]


def _fg_counts(
    docs: sp.csr_matrix, fg_rows: list[np.ndarray], n_vocab: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The nonzero foreground counts as (feature, term, count) sorted by feature, then
    term; and per feature the total count (how many terms its foreground papers hold)."""
    rows = np.concatenate(fg_rows).astype(np.int64)
    lengths = np.diff(docs.indptr)[rows]
    owner_of_row = np.repeat(np.arange(len(fg_rows)), [len(r) for r in fg_rows])
    n_fg = np.bincount(owner_of_row, weights=lengths, minlength=len(fg_rows))
    # The term columns of all foreground papers back to back, without a Python loop.
    starts = docs.indptr[rows] - (np.cumsum(lengths) - lengths)
    offsets = np.repeat(starts, lengths) + np.arange(lengths.sum())
    key = np.sort(np.repeat(owner_of_row, lengths) * n_vocab + docs.indices[offsets])
    first = np.flatnonzero(np.diff(key, prepend=-1))
    count = np.diff(first, append=len(key)).astype(np.float64)
    return key[first] // n_vocab, key[first] % n_vocab, count, n_fg


def _score(
    latent: int,
    label_cols: np.ndarray,
    label_z: np.ndarray,
    vocab: np.ndarray,
    codes: sp.csc_matrix,
    posting: sp.csc_matrix,
    score_N: np.ndarray,
    train_N: np.ndarray,
    n_train: int,
    heldout_H: np.ndarray,
    min_positives: int,
    seed: int,
) -> FeatureLabel:
    rows, acts = _column(codes, latent)
    is_train = train_N[rows]
    pos_train = rows[is_train]
    pos_held, act_held = rows[~is_train], acts[~is_train]
    label = FeatureLabel(
        latent=latent,
        terms=[str(t) for t in vocab[label_cols]],
        z=[float(z) for z in label_z],
        f1=None,
        pearson=None,
        n_heldout=len(pos_held),
    )
    if len(pos_held) < min_positives or len(pos_train) == 0:
        return label
    k = len(label_cols)
    lists = [_column(posting, c)[0] for c in label_cols]
    for papers in lists:
        score_N[papers] += 1
    try:
        # Threshold on the label-train papers, negatives weighted to the positives' number.
        held = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        held = held[train_N[held]]
        # A paper with score s appears s times in `held`.
        per_entry = np.bincount(score_N[held], minlength=k + 1)
        docs_at = per_entry[1:] / np.arange(1, k + 1)
        all_ge = np.cumsum(docs_at[::-1])[::-1]
        pos_ge = np.cumsum(np.bincount(score_N[pos_train], minlength=k + 1)[::-1])[::-1][1:]
        n_neg = n_train - len(pos_train)
        weight = len(pos_train) / n_neg if n_neg > 0 else 0.0
        f1_t = [
            _f1(pos_ge[t], (all_ge[t] - pos_ge[t]) * weight, len(pos_train) - pos_ge[t])
            for t in range(k)
        ]
        threshold = int(np.argmax(f1_t)) + 1 if k else 1

        test = heldout_test(heldout_H, pos_held, latent, seed)
        label.f1, label.pearson = heldout_scores(score_N[test], threshold, act_held)
    finally:
        for papers in lists:
            score_N[papers] = 0
    return label


def summarize(labels: Sequence[FeatureLabel]) -> dict:
    """The labels' scores over the features that have them."""
    f1 = np.array([x.f1 for x in labels if x.f1 is not None], dtype=np.float64)
    pearson = np.array([x.pearson for x in labels if x.pearson is not None], dtype=np.float64)
    return {
        "label_f1_mean": float(f1.mean()) if len(f1) else None,
        "label_f1_median": float(np.median(f1)) if len(f1) else None,
        "label_f1_ge_0_8": float((f1 >= 0.8).mean()) if len(f1) else None,
        "label_pearson_mean": float(pearson.mean()) if len(pearson) else None,
        "labels_scored": len(f1),
        "labels_unscored": len(labels) - len(f1),
    }
