"""Held-out metrics against plain formulas computed in the test."""

import math

import torch

from sae import SAEConfig, TopKSAE, evaluate


def test_metrics_match_plain_formulas(make_data):
    x = make_data(300, 16)
    model = TopKSAE(
        SAEConfig(d_in=16, n_latents=64, k=4), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        model.b_pre.copy_(x.mean(0))
        z = (x - model.b_pre) @ model.W_enc.T + model.b_lat
        v, i = z.topk(4, dim=1)
        v = v.relu()
        x_hat = torch.zeros(300, 64).scatter(1, i, v) @ model.W_dec + model.b_pre
    # Batches of 64 exercise the accumulation across batches of different sizes.
    m = evaluate(model, x, batch_size=64)
    nmse = ((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert math.isclose(m.nmse, nmse.item(), rel_tol=1e-5)
    density = torch.bincount(i.flatten(), minlength=64).double() / 300
    assert math.isclose(m.dead_fraction, (density == 0).double().mean().item())
    assert math.isclose(
        m.log_feature_density, density[density > 0].log10().mean().item(), rel_tol=1e-9
    )
    assert math.isclose(m.act_mean, v[v > 0].mean().item(), rel_tol=1e-5)
    assert math.isclose(m.l0, (v > 0).sum().item() / 300)
    assert m.n_samples == 300
    # The mean log density can never exceed log10(k/n).
    assert m.log_feature_density <= math.log10(4 / 64) + 1e-9


def test_a_perfect_reconstruction_has_zero_nmse():
    # With one-hot inputs and a decoder equal to them, top-1 reconstructs exactly.
    d = 8
    model = TopKSAE(SAEConfig(d_in=d, n_latents=d, k=1))
    with torch.no_grad():
        model.W_dec.copy_(torch.eye(d))
        model.W_enc.copy_(torch.eye(d))
    x = torch.eye(d).repeat(3, 1)
    m = evaluate(model, x)
    assert m.nmse < 1e-12
    assert m.dead_fraction == 0
    assert math.isclose(m.log_feature_density, math.log10(1 / d))
