"""Retrieval fidelity against plain references: full [Q, N] score matrices, numpy sorts
with an explicit tie-break, and Python loops for recall and nDCG."""

import math

import numpy as np
import pytest
import torch

from sae.codes import SparseCodes, encode_matrix
from sae.config import SAEConfig
from sae.data import sparse_dictionary_data
from sae.errors import DataError
from sae.model import TopKSAE
from sae.retrieval import (
    RETRIEVAL_METRIC_NAMES,
    InvertedIndex,
    RetrievalFidelity,
    fidelity_from_reconstructions,
    ndcg_at_k,
    recall_at_k,
    retrieval_fidelity,
    search,
    sparse_search,
    top_k_rows,
)

K = 10


def _model():
    return TopKSAE(
        SAEConfig(d_in=16, n_latents=64, k=4), generator=torch.Generator().manual_seed(0)
    )


def _unit(rows, d, seed):
    x = np.random.default_rng(seed).standard_normal((rows, d))
    return torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True)).float()


def _ref_top_k(scores_QN, k=K):
    """Each row's k best columns: score descending, then the lower column."""
    scores_QN = np.asarray(scores_QN, dtype=np.float64)
    cols = np.arange(scores_QN.shape[1])
    return np.stack([np.lexsort((cols, -row))[:k] for row in scores_QN])


def _ref_search(q, c, k=K):
    return _ref_top_k(q.double().numpy() @ c.double().numpy().T, k)


def _ref_recall(found, truth):
    return sum(len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)) / len(
        truth
    )


def _ref_ndcg(found, truth):
    total = 0.0
    for f, t in zip(found, truth, strict=True):
        dcg = sum(1 / math.log2(r + 2) for r, j in enumerate(f) if j in set(t))
        idcg = sum(1 / math.log2(r + 2) for r in range(len(t)))
        total += dcg / idcg
    return total / len(truth)


def _ref_sparse_search(q_codes: SparseCodes, c_codes: SparseCodes, k=K):
    dense_q, dense_c = q_codes.dense().astype(np.float64), c_codes.dense().astype(np.float64)
    return _ref_top_k(dense_q @ dense_c.T, k)


def _random_codes(rows, n, w, seed, levels=None):
    """Codes with unused (0) slots whose ids repeat a firing one's; ``levels``: values drawn
    from them (exact sums, so exact ties), else uniform."""
    rng = np.random.default_rng(seed)
    indices = np.stack([rng.choice(n, w, replace=False) for _ in range(rows)]).astype(np.int32)
    values = rng.uniform(0.1, 1.0, (rows, w)) if levels is None else rng.choice(levels, (rows, w))
    values[rng.random((rows, w)) < 0.25] = 0.0
    indices[:, -1] = np.where(values[:, -1] == 0, indices[:, 0], indices[:, -1])
    return SparseCodes(values.astype(np.float32), indices, n)


# ------------------------------------------------------------- the model path
@pytest.mark.parametrize(("chunk", "batch_size"), [(1, 1000), (7, 50), (64, 13), (1000, 4096)])
def test_retrieval_fidelity_matches_plain_reference(chunk, batch_size):
    model = _model()
    x = sparse_dictionary_data(248, 16, seed=3)
    queries, corpus = x[:37], x[37:]
    with torch.no_grad():
        model.eval()
        q_hat, c_hat = model(queries).x_hat, model(corpus).x_hat
    truth = _ref_search(queries, corpus)
    found_q = _ref_search(q_hat, corpus)
    found_c = _ref_search(q_hat, c_hat)
    found_s = _ref_sparse_search(encode_matrix(model, queries), encode_matrix(model, corpus))

    got = retrieval_fidelity(model, queries, corpus, batch_size=batch_size, chunk=chunk)

    want = RetrievalFidelity(
        recall_at_10=_ref_recall(found_q, truth),
        ndcg_at_10=_ref_ndcg(found_q, truth),
        corpus_recall_at_10=_ref_recall(found_c, truth),
        corpus_ndcg_at_10=_ref_ndcg(found_c, truth),
        sparse_recall_at_10=_ref_recall(found_s, truth),
    )
    for name, value in want.as_dict().items():
        assert 0.0 < value < 1.0, name  # a comparison that could go either way
        assert got.as_dict()[name] == pytest.approx(value, abs=1e-12), name
    # nDCG weighs the rank of each hit, so it is not recall under another name.
    assert got.ndcg_at_10 != got.recall_at_10
    # The rankings themselves, not only their summaries.
    np.testing.assert_array_equal(search(q_hat, corpus, K, chunk=chunk).numpy(), found_q)


def test_numpy_inputs_give_the_same_numbers():
    model = _model()
    x = sparse_dictionary_data(120, 16, seed=4)
    a = retrieval_fidelity(model, x[:20], x[20:], chunk=8)
    b = retrieval_fidelity(model, x[:20].numpy(), x[20:].numpy().astype(np.float64), chunk=8)
    assert a == b


# ------------------------------------------------------------ ranking and ties
@pytest.mark.parametrize("chunk", [1, 5, 100])
def test_search_breaks_ties_by_the_lower_corpus_index(chunk):
    # Small integers: every dot product is exact, so equal scores are truly equal.
    g = torch.Generator().manual_seed(0)
    corpus = torch.randint(-1, 2, (60, 3), generator=g).float()
    queries = torch.randint(-1, 2, (30, 3), generator=g).float()
    scores = (queries @ corpus.T).numpy()
    kth = np.sort(scores, axis=1)[:, ::-1]
    assert (kth[:, K - 1] == kth[:, K]).sum() > 10  # most rows have contested last places
    np.testing.assert_array_equal(
        search(queries, corpus, K, chunk=chunk).numpy(), _ref_search(queries, corpus)
    )


def test_top_k_rows_orders_ties_and_takes_every_column_when_k_is_n():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    assert top_k_rows(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert top_k_rows(scores, 5).tolist() == [[1, 2, 4, 0, 3], [0, 1, 2, 3, 4]]
    with pytest.raises(ValueError, match="k must lie in"):
        top_k_rows(scores, 6)


def test_recall_and_ndcg_of_a_hand_worked_ranking():
    found = torch.tensor([[1, 2, 3], [7, 8, 9]])
    truth = torch.tensor([[3, 4, 1], [7, 8, 9]])
    assert recall_at_k(found, truth).tolist() == [2 / 3, 1.0]
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    ndcg = ndcg_at_k(found, truth).tolist()
    assert ndcg[0] == pytest.approx((1 + 1 / math.log2(4)) / idcg, rel=1e-15)
    assert ndcg[1] == 1.0


# ------------------------------------------------- identity and permutation
@pytest.mark.parametrize("tied", [False, True])
def test_reconstruction_equal_to_the_input_scores_exactly_one(tied):
    if tied:
        g = torch.Generator().manual_seed(1)
        corpus = torch.randint(-1, 2, (80, 4), generator=g).float()
        queries = torch.randint(-1, 2, (25, 4), generator=g).float()
    else:
        corpus, queries = _unit(300, 16, 0), _unit(40, 16, 1)
    got = fidelity_from_reconstructions(
        queries, queries.clone(), corpus, corpus.clone(), k_search=K, chunk=7
    )
    assert got.recall_at_10 == 1.0 and got.ndcg_at_10 == 1.0
    assert got.corpus_recall_at_10 == 1.0 and got.corpus_ndcg_at_10 == 1.0
    assert math.isnan(got.sparse_recall_at_10)  # no codes given


def test_a_random_permutation_scores_near_chance():
    N = 400
    corpus, queries = _unit(N, 64, 2), _unit(400, 64, 3)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    got = fidelity_from_reconstructions(queries, queries[perm], corpus, corpus, chunk=64)
    # Two unrelated queries share 10 * 10 / N of their top 10 on average.
    assert got.recall_at_10 == pytest.approx(K / N, abs=0.01)
    assert got.ndcg_at_10 == pytest.approx(K / N, abs=0.01)
    assert got.corpus_recall_at_10 == got.recall_at_10


# ------------------------------------------------------------- sparse search
@pytest.mark.parametrize("levels", [None, (0.5, 1.0, 2.0)])
@pytest.mark.parametrize("chunk", [1, 9, 500])
def test_sparse_search_matches_dense_codes(levels, chunk):
    q_codes = _random_codes(31, 40, 5, seed=0, levels=levels)
    c_codes = _random_codes(120, 40, 5, seed=1, levels=levels)
    got = sparse_search(q_codes, InvertedIndex.from_codes(c_codes), K, chunk=chunk)
    want = _ref_sparse_search(q_codes, c_codes)
    np.testing.assert_array_equal(got.numpy(), want)
    if levels is not None:  # the data must contest last places, or ties go untested
        ranked = np.sort(q_codes.dense() @ c_codes.dense().T, axis=1)[:, ::-1]
        assert (ranked[:, K - 1] == ranked[:, K]).sum() > 10


def test_sparse_search_ranks_rows_sharing_no_latent_by_index():
    # Few latents in use, so most queries reach fewer than K rows: the rest tie at 0.
    q_codes = _random_codes(12, 200, 2, seed=4)
    c_codes = _random_codes(50, 200, 2, seed=5)
    assert ((q_codes.dense() @ c_codes.dense().T > 0).sum(axis=1) < K).all()
    got = sparse_search(q_codes, InvertedIndex.from_codes(c_codes), K, chunk=5)
    np.testing.assert_array_equal(got.numpy(), _ref_sparse_search(q_codes, c_codes))


def test_sparse_recall_from_given_codes_matches_reference():
    corpus, queries = _unit(150, 8, 4), _unit(20, 8, 5)
    q_codes = _random_codes(20, 30, 4, seed=2)
    c_codes = _random_codes(150, 30, 4, seed=3)
    got = fidelity_from_reconstructions(queries, queries, corpus, corpus, q_codes, c_codes, chunk=6)
    want = _ref_recall(_ref_sparse_search(q_codes, c_codes), _ref_search(queries, corpus))
    assert got.sparse_recall_at_10 == pytest.approx(want, abs=1e-12)


# ------------------------------------------------------------ names and errors
def test_metric_names():
    m = RetrievalFidelity(0.1, 0.2, 0.3, 0.4, 0.5)
    names = [
        "retrieval_recall_at_10",
        "retrieval_ndcg_at_10",
        "retrieval_corpus_recall_at_10",
        "retrieval_corpus_ndcg_at_10",
        "sparse_recall_at_10",
    ]
    assert list(m.as_dict()) == names == list(RETRIEVAL_METRIC_NAMES)
    assert list(m.as_dict().values()) == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_bad_shapes_are_named():
    model = _model()
    x = sparse_dictionary_data(30, 16, seed=0)
    with pytest.raises(DataError, match=r"queries: rows have dimension 8.*d_in=16"):
        retrieval_fidelity(model, torch.zeros(3, 8), x)
    with pytest.raises(DataError, match=r"corpus: rows have dimension 12.*d_in=16"):
        retrieval_fidelity(model, x[:3], torch.zeros(20, 12))
    with pytest.raises(ValueError, match="k_search=10 exceeds the corpus size N=5"):
        retrieval_fidelity(model, x[:3], x[3:8])
    with pytest.raises(ValueError, match="k_search must be positive"):
        retrieval_fidelity(model, x[:3], x[3:], k_search=0)
    with pytest.raises(ValueError, match="chunk must be positive"):
        retrieval_fidelity(model, x[:3], x[3:], chunk=0)
    with pytest.raises(ValueError, match=r"queries_hat has shape \(3, 15\)"):
        fidelity_from_reconstructions(x[:3], x[:3, :15], x[3:], x[3:])
    with pytest.raises(ValueError, match="queries have dimension 16, corpus rows 15"):
        search(x[:3], x[3:, :15])
    codes = _random_codes(4, 30, 3, seed=0)
    with pytest.raises(ValueError, match="query codes have 30 latents, the index 20"):
        sparse_search(codes, InvertedIndex.from_codes(_random_codes(12, 20, 3, seed=1)))
