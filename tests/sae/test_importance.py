"""Latent importance, power-law fit and pruning against plain references."""

import math

import numpy as np
import pytest
import torch

from sae import PackTrainer, SAEConfig, TopKSAE, TrainConfig, evaluate
from sae.importance import latent_importance, power_law_fit, pruned_nmse

D, N_LAT, K = 16, 48, 4


def _model(x, seed=0):
    model = TopKSAE(
        SAEConfig(d_in=D, n_latents=N_LAT, k=K), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        model.b_pre.copy_(x.mean(0))
    return model


def _dense_codes(model, x, keep=None):
    """Plain float64 TopK codes [N, n], optionally choosing only among ``keep`` [n] bool."""
    W_enc, b_lat = model.W_enc.double(), model.b_lat.double()
    z = (x.double() - model.b_pre.double()) @ W_enc.T + b_lat
    if keep is not None:
        z = z.masked_fill(~keep, -math.inf)
    v, i = z.topk(K if keep is None else min(K, int(keep.sum())), dim=1)
    return torch.zeros_like(z).scatter(1, i, v.relu())


def _nmse(codes, model, x):
    x = x.double()
    x_hat = codes @ model.W_dec.double() + model.b_pre.double()
    return (((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()).item()


@pytest.fixture(scope="module")
def trained():
    """A toy SAE trained a few hundred steps, and held-out rows it never saw."""
    from sae.data import sparse_dictionary_data

    x = sparse_dictionary_data(2600, D, n_atoms=40, active=3, seed=1)
    train = TrainConfig(batch_size=128, lr=3e-3, epochs=10, warmup_steps=0, log_every_steps=0)
    trainer = PackTrainer([SAEConfig(d_in=D, n_latents=N_LAT, k=K)], train)
    trainer.fit(x[:2000], x[2000:])
    return trainer.model(trainer.names[0]), x[2000:]


def test_importance_equals_removing_each_latent_alone(make_data):
    x = make_data(300, D)
    model = _model(x)
    with torch.no_grad():
        codes = _dense_codes(model, x)
        base = _nmse(codes, model, x)
        brute = np.zeros(N_LAT)
        for i in range(N_LAT):
            without = codes.clone()
            without[:, i] = 0
            brute[i] = _nmse(without, model, x) - base
    # Batches of 64 exercise the accumulation across batches of different sizes.
    got = latent_importance(model, x, batch_size=64)
    assert got.shape == (N_LAT,) and got.dtype == np.float64
    assert (brute != 0).sum() > N_LAT // 2  # most latents fire: the check has teeth
    np.testing.assert_allclose(got, brute, atol=1e-5, rtol=0)


def test_importance_of_a_latent_that_never_fires_is_zero(make_data):
    x = make_data(200, D)
    model = _model(x)
    with torch.no_grad():
        model.b_lat[7] = -1e6
    assert latent_importance(model, x)[7] == 0.0


def test_pruning_to_every_latent_is_the_full_model(trained):
    model, x_eval = trained
    full = evaluate(model, x_eval).metrics.nmse
    order = np.random.default_rng(0).permutation(N_LAT)
    got = pruned_nmse(model, x_eval, order, [N_LAT], batch_size=100)
    assert got[N_LAT] == pytest.approx(full, rel=1e-5)


def test_pruned_nmse_matches_a_plain_masked_topk(trained):
    model, x_eval = trained
    order = np.random.default_rng(1).permutation(N_LAT)
    sizes = [2, 12, 30]
    got = pruned_nmse(model, x_eval, order, sizes, batch_size=128)
    assert list(got) == sizes
    with torch.no_grad():
        for m in sizes:
            keep = torch.zeros(N_LAT, dtype=torch.bool)
            keep[torch.as_tensor(order[:m])] = True
            want = _nmse(_dense_codes(model, x_eval, keep), model, x_eval)
            assert got[m] == pytest.approx(want, rel=1e-5), m


def test_pruning_by_importance_beats_a_random_order(trained):
    model, x_eval = trained
    imp = latent_importance(model, x_eval)
    sizes = [6, 12, 24, 36]
    by_importance = pruned_nmse(model, x_eval, np.argsort(-imp), sizes)
    rng = np.random.default_rng(2)
    for _ in range(3):
        by_chance = pruned_nmse(model, x_eval, rng.permutation(N_LAT), sizes)
        for m in sizes:
            assert by_importance[m] <= by_chance[m], (m, by_importance, by_chance)
    # Fewer latents never reconstruct better when the order is by importance.
    values = [by_importance[m] for m in sizes]
    assert values == sorted(values, reverse=True)


def test_pruned_nmse_rejects_bad_orders_and_sizes(trained):
    model, x_eval = trained
    with pytest.raises(ValueError, match="permutation"):
        pruned_nmse(model, x_eval, np.zeros(N_LAT, dtype=int), [4])
    with pytest.raises(ValueError, match="sizes"):
        pruned_nmse(model, x_eval, np.arange(N_LAT), [N_LAT + 1])


def test_power_law_fit_recovers_a_known_exponent():
    rank = np.arange(1, 501, dtype=np.float64)
    exact = 3.0 * rank**-1.3
    # Dead (0) and overshooting (< 0) latents sort last and stay out of the fit.
    shuffled = np.random.default_rng(0).permutation(np.concatenate([exact, [0.0, 0.0, -1e-3]]))
    fit = power_law_fit(shuffled)
    assert fit.exponent == pytest.approx(1.3, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    exponent, r2 = fit  # a plain pair too
    assert (exponent, r2) == (fit.exponent, fit.r2)


def test_power_law_fit_of_too_few_points_is_nan():
    assert all(math.isnan(v) for v in power_law_fit([1.0, 0.0, -2.0]))
    assert math.isnan(power_law_fit(np.ones(10)).r2)  # a flat line: R^2 undefined


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_pruning_in_index_order_is_the_prefix_nmse(arch, make_data):
    from sae.metrics import prefix_metrics

    x = make_data(300, D)
    model = TopKSAE(
        SAEConfig(d_in=D, n_latents=N_LAT, k=K, arch=arch),
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        model.b_pre.copy_(x.mean(0))
        if arch == "batchtopk":
            model.threshold.fill_(0.05)  # inference keeps what clears it, per row
    sizes = [3, 16, N_LAT]
    got = pruned_nmse(model, x, np.arange(N_LAT), sizes, batch_size=128)
    want = {p.n_latents: p.nmse for p in prefix_metrics(model, x, sizes, batch_size=128)}
    for m in sizes:
        assert got[m] == pytest.approx(want[m], rel=1e-6), m
