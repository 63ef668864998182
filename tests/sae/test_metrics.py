"""Held-out metrics against plain formulas computed in the test."""

import math

import numpy as np
import pytest
import torch

from sae import SAEConfig, TopKSAE, evaluate
from sae.metrics import METRIC_NAMES, EvalMetrics


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
    m, got_density = evaluate(model, x, batch_size=64)
    nmse = ((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert math.isclose(m.nmse, nmse.item(), rel_tol=1e-5)
    density = torch.bincount(i.flatten(), minlength=64).double() / 300
    np.testing.assert_array_equal(got_density, density.numpy())
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
    m = evaluate(model, x).metrics
    assert m.nmse < 1e-12
    assert m.dead_fraction == 0
    assert math.isclose(m.log_feature_density, math.log10(1 / d))


def test_metric_names_are_the_fields_but_the_sample_count():
    assert METRIC_NAMES == (
        "nmse",
        "log_feature_density",
        "act_mean",
        "dead_fraction",
        "l0",
        "auxk_loss",
    )
    assert set(METRIC_NAMES) | {"n_samples"} == set(EvalMetrics.__dataclass_fields__)


# ------------------------------------------------------------ per-latent densities
def reference_densities(model: TopKSAE, x: torch.Tensor) -> np.ndarray:
    """One row at a time: topk of W_enc (x - b_pre) + b_lat, counted by index."""
    counts = np.zeros(model.n_latents)
    with torch.no_grad():
        for row in x:
            z_pre = model.W_enc @ (row - model.b_pre) + model.b_lat
            counts[z_pre.topk(model.k).indices.numpy()] += 1
    return counts / x.shape[0]


@pytest.fixture
def small_sae():
    g = torch.Generator().manual_seed(0)
    model = TopKSAE(SAEConfig(d_in=16, n_latents=64, k=4), generator=g)
    with torch.no_grad():
        model.b_lat.copy_(0.1 * torch.randn(64, generator=g))
        model.b_pre.copy_(0.1 * torch.randn(16, generator=g))
    return model, torch.randn(300, 16, generator=g)


def test_densities_match_reference(small_sae):
    model, x = small_sae
    got = evaluate(model, x, batch_size=64).density  # batches of 64, a ragged last one
    assert got.shape == (64,) and got.dtype == np.float64
    np.testing.assert_allclose(got, reference_densities(model, x), rtol=0, atol=1e-12)
    # Every row contributes its k selected indices (counted even if the ReLU zeroed one).
    assert got.sum() == pytest.approx(model.k)
    assert ((got >= 0) & (got <= 1)).all()
    # Batch size does not matter, and numpy input works too.
    np.testing.assert_array_equal(evaluate(model, x.numpy(), batch_size=7).density, got)


def test_densities_agree_with_the_metrics(small_sae):
    model, x = small_sae
    m, d = evaluate(model, x)
    live = d[d > 0]
    assert m.log_feature_density == pytest.approx(np.log10(live).mean(), abs=1e-12)
    assert m.dead_fraction == pytest.approx(1 - live.size / d.size)


def test_relu_zeroed_picks_still_count_in_the_densities():
    """With all pre-activations negative the ReLU zeroes every value; indices still count."""
    model = TopKSAE(SAEConfig(d_in=16, n_latents=64, k=4), generator=torch.Generator())
    with torch.no_grad():
        model.b_lat.fill_(-100.0)
    x = torch.randn(20, 16)
    values, _ = model.encode(x)
    assert (values == 0).all()
    d = evaluate(model, x).density
    assert d.sum() == pytest.approx(4.0)


def test_evaluate_rejects_bad_input(small_sae):
    model, _ = small_sae
    with pytest.raises(ValueError, match="non-empty"):
        evaluate(model, torch.zeros(0, 16))
    with pytest.raises(ValueError, match="d_in"):
        evaluate(model, torch.zeros(3, 8))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, torch.zeros(3, 16), batch_size=0)
