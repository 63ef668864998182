"""Past a vector budget, rows are read from disk in pieces and every result stays the same:
the weights bit for bit, the metrics, importance and retrieval rankings exactly."""

import numpy as np
import pytest
import torch

from sae import DataError, PackTrainer, SAEConfig, TopKSAE, TrainConfig
from sae.data import MappedRows, row_chunks, rows_within, split
from sae.importance import latent_importance, pruned_nmse
from sae.metrics import evaluate, prefix_metrics
from sae.retrieval import retrieval_fidelity

D = 16
TINY = 4096  # bytes: 64 rows of 16 floats, far below the 320-row matrices below


def _mapped(tmp_path, x: torch.Tensor, name="x.npy") -> np.memmap:
    np.save(tmp_path / name, x.numpy())
    return np.load(tmp_path / name, mmap_mode="r")


def _train(**kw):
    base = dict(batch_size=32, lr=3e-3, epochs=2, warmup_steps=3, log_every_steps=0, seed=5)
    return TrainConfig(**(base | kw))


def _fit(x, x_eval=None, budget=None, **kw):
    cfgs = [SAEConfig(d_in=D, n_latents=64, k=4), SAEConfig(d_in=D, n_latents=48, k=3)]
    trainer = PackTrainer(cfgs, _train(**kw), vector_budget_bytes=budget)
    return trainer, trainer.fit(x, x_eval)


def _same_cells(a, b):
    (ta, ra), (tb, rb) = a, b
    for x, y in zip(ra, rb, strict=True):
        for p, q in zip(ta.model(x.name).parameters(), tb.model(y.name).parameters(), strict=True):
            assert torch.equal(p, q), x.name
        assert x.metrics == y.metrics
        np.testing.assert_array_equal(x.density, y.density)


@pytest.mark.parametrize("given_eval", [True, False])
def test_a_streamed_fit_equals_the_in_memory_fit_bit_for_bit(tmp_path, make_data, given_eval):
    x = make_data(320, D, n_atoms=32, active=3, seed=1)
    # 16 held-out rows: one evaluation batch either way, so the metrics' sums group alike.
    x_train, x_eval = (x[:304], x[304:]) if given_eval else (x, None)
    kw = {} if given_eval else {"eval_fraction": 0.05}
    in_memory = _fit(x_train, x_eval, **kw)
    mm_eval = None if x_eval is None else _mapped(tmp_path, x_eval, "eval.npy")
    streamed = _fit(_mapped(tmp_path, x_train), mm_eval, budget=TINY, **kw)
    assert streamed[0].streamed and not in_memory[0].streamed
    assert isinstance(streamed[0].x_eval, MappedRows)
    _same_cells(in_memory, streamed)


def test_data_within_the_budget_is_held_in_memory(tmp_path, make_data):
    x = make_data(300, D, seed=2)
    trainer, _ = _fit(_mapped(tmp_path, x), budget=300 * D * 4)
    assert not trainer.streamed and isinstance(trainer.x_eval, torch.Tensor)


def test_bad_rows_on_disk_are_named_by_their_row_numbers(tmp_path, make_data):
    x = make_data(300, D, seed=3)
    x[[70, 201]] = float("nan")
    with pytest.raises(DataError, match=r"2 row\(s\) hold NaN or inf .*\[70, 201\]"):
        _fit(_mapped(tmp_path, x), budget=TINY)


def test_mapped_rows_come_back_in_the_order_asked(tmp_path, make_data):
    x = make_data(50, D, seed=4)
    rows = MappedRows(_mapped(tmp_path, x))
    idx = torch.tensor([7, 3, 49, 3, 0])
    assert torch.equal(rows.take(idx), x[idx])
    sub = rows.subset(np.array([10, 2, 30]))
    assert torch.equal(sub.take(torch.tensor([2, 0])), x[[30, 10]])
    assert torch.equal(sub[1:], x[[2, 30]])
    assert torch.equal(torch.cat(list(row_chunks(sub, 2))), x[[10, 2, 30]])


def test_rows_within_a_budget():
    assert rows_within(None, 64, most=4096) == 4096
    assert rows_within(TINY, 64, most=4096) == 64
    assert rows_within(TINY, 64, most=4096, least=256) == 256
    assert rows_within(10**12, 64, most=4096) == 4096


@pytest.fixture(scope="module")
def model():
    from sae.data import sparse_dictionary_data

    x = sparse_dictionary_data(300, D, n_atoms=32, active=3, seed=6)
    trainer = PackTrainer([SAEConfig(d_in=D, n_latents=64, k=4)], _train(epochs=3))
    (res,) = trainer.fit(x)
    return trainer.model(res.name).eval(), split(x, 0.1, 0).train


def test_evaluation_stages_read_a_memmap_as_they_read_a_tensor(tmp_path, model):
    sae, x = model
    mm = _mapped(tmp_path, x)
    view = MappedRows(mm)
    for rows in (mm, view):
        got, want = evaluate(sae, rows, batch_size=50), evaluate(sae, x, batch_size=50)
        assert got.metrics == want.metrics
        np.testing.assert_array_equal(got.density, want.density)
        np.testing.assert_array_equal(
            latent_importance(sae, rows, batch_size=50), latent_importance(sae, x, batch_size=50)
        )
        order = np.arange(64)[::-1].copy()
        assert pruned_nmse(sae, rows, order, [8, 64], 50) == pruned_nmse(sae, x, order, [8, 64], 50)
        assert prefix_metrics(sae, rows, [16, 64], 50) == prefix_metrics(sae, x, [16, 64], 50)


@pytest.mark.parametrize("block", [7, 100])
def test_retrieval_over_corpus_blocks_equals_one_pass(tmp_path, model, block):
    sae, x = model
    queries, corpus = x[:40], x[40:]
    whole = retrieval_fidelity(sae, queries, corpus, chunk=16)
    mm = _mapped(tmp_path, corpus)
    for rows in (mm, MappedRows(mm)):
        assert retrieval_fidelity(sae, queries, rows, chunk=16, corpus_block=block) == whole
    assert whole.n_queries == whole.n_queries_total == 40 and whole.stderr == (0.0,) * 5


def test_a_sample_of_queries_records_its_size_and_standard_error(model):
    sae, x = model
    queries, corpus = x[:150], x[150:]
    whole = retrieval_fidelity(sae, queries, corpus)
    sample = retrieval_fidelity(sae, queries, corpus, max_queries=50, seed=1)
    assert (sample.n_queries, sample.n_queries_total) == (50, 150)
    assert all(0 < e < 0.1 for e in sample.stderr)
    # The sample's mean lies within a few standard errors of the whole set's.
    assert abs(sample.recall_at_10 - whole.recall_at_10) < 4 * sample.stderr[0]
    assert sample != retrieval_fidelity(sae, queries, corpus, max_queries=50, seed=2)
    info = sample.sampling()
    assert info["retrieval_queries"] == 50
    assert info["retrieval_recall_at_10_stderr"] == sample.stderr[0]
    assert "50 of 150 queries" in sample.summary()


def test_no_stage_holds_a_dense_row_by_latent_matrix():
    """The largest tensor a stage makes is one piece's [rows, n], whatever N: checked by
    counting the elements of every tensor the model's encoder returns."""
    sae = TopKSAE(SAEConfig(d_in=D, n_latents=64, k=4), generator=torch.Generator().manual_seed(0))
    seen = []
    pre = sae.pre_activations

    def spy(x, *args):
        out = pre(x, *args)
        seen.append(out.shape[0])
        return out

    sae.pre_activations = spy
    x = torch.randn(500, D)
    evaluate(sae, x, batch_size=64)
    latent_importance(sae, x, batch_size=64)
    retrieval_fidelity(sae, x[:100], x[100:], batch_size=64, corpus_block=128)
    assert seen and max(seen) <= 64


def test_a_view_reads_the_rows_asked_for_in_file_order_or_not(tmp_path):
    x = torch.randn(200, D)
    rows = torch.randperm(200, generator=torch.Generator().manual_seed(1))[:120].sort().values
    view = MappedRows(_mapped(tmp_path, x), rows)
    assert torch.equal(view[10:90], x[rows[10:90]])  # in file order: read straight
    shuffled = torch.tensor([5, 99, 0, 42, 42, 7])
    assert torch.equal(view.take(shuffled), x[rows[shuffled]])  # out of order, repeated
    assert view.take(torch.zeros(0, dtype=torch.long)).shape == (0, D)
