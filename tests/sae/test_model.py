"""TopKSAE against a plain dense implementation of SAE_RECIPE.md, with the same weights."""

import pytest
import torch

from sae import ConfigError, SAEConfig, TopKSAE
from sae.model import data_median, geometric_median


def dense_reference(params, x, k, dead_mask=None, k_aux=None, aux_coef=1 / 32, multi=False):
    """The recipe written the obvious way: dense latents, dense decode, autograd everywhere."""
    W_enc, b_lat, W_dec, b_pre = params
    z_pre = (x - b_pre) @ W_enc.T + b_lat
    n = z_pre.shape[1]

    def recon(kk):
        v, i = z_pre.topk(kk, dim=1)
        lat = torch.zeros_like(z_pre).scatter(1, i, torch.relu(v))
        return lat @ W_dec + b_pre, torch.relu(v), i

    def nmse(a, b):
        return ((a - b) ** 2).sum() / ((b - b.mean(0)) ** 2).sum()

    x_hat, v, i = recon(k)
    loss = nmse(x_hat, x)
    out = {"x_hat": x_hat, "values": v, "indices": i, "nmse": loss}
    if multi:
        x4, _, _ = recon(min(4 * k, n))
        loss = loss + nmse(x4, x) / 8
    if dead_mask is not None and dead_mask.any():
        kk = min(k_aux or 2 * k, int(dead_mask.sum()))
        masked = torch.where(dead_mask, z_pre, torch.tensor(-torch.inf))
        av, ai = masked.topk(kk, dim=1)
        lat = torch.zeros_like(z_pre).scatter(1, ai, torch.relu(av))
        e = x - x_hat.detach()
        aux = nmse(lat @ W_dec, e)
        out["auxk"] = aux
        loss = loss + aux_coef * aux
    out["loss"] = loss
    return out


def _model_and_ref(cfg, seed=0):
    model = TopKSAE(cfg, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.b_pre.copy_(torch.randn(cfg.d_in, generator=torch.Generator().manual_seed(1)) * 0.1)
        model.b_lat.copy_(
            torch.randn(cfg.n_latents, generator=torch.Generator().manual_seed(2)) * 0.1
        )
        # Untie the encoder so a wrong transpose cannot hide behind W_enc == W_dec.
        model.W_enc.add_(0.3 * torch.randn_like(model.W_enc))
    ref = [
        p.detach().clone().requires_grad_()
        for p in (model.W_enc, model.b_lat, model.W_dec, model.b_pre)
    ]
    return model, ref


def _assert_same_grads(out, expect, model, ref):
    """Backpropagate both losses and compare the four parameter gradients."""
    out.loss.backward()
    expect["loss"].backward()
    names = ["W_enc", "b_lat", "W_dec", "b_pre"]
    for name, want in zip(names, ref, strict=True):
        got = getattr(model, name).grad
        torch.testing.assert_close(got, want.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("multi", [False, True])
def test_forward_and_gradients_match_dense_reference(make_data, multi):
    cfg = SAEConfig(d_in=24, n_latents=96, k=5, multi_topk=multi)
    model, ref = _model_and_ref(cfg)
    x = make_data(64, 24)
    out = model(x)
    expect = dense_reference(ref, x, cfg.k, multi=multi)
    torch.testing.assert_close(out.x_hat, expect["x_hat"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.values, expect["values"])
    assert torch.equal(out.indices, expect["indices"])
    torch.testing.assert_close(out.nmse, expect["nmse"])
    torch.testing.assert_close(out.loss, expect["loss"])
    _assert_same_grads(out, expect, model, ref)


def test_auxk_loss_and_gradients_match_dense_reference(make_data):
    cfg = SAEConfig(d_in=16, n_latents=64, k=4, k_aux=6)
    model, ref = _model_and_ref(cfg)
    x = make_data(48, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True  # 22 dead latents
    out = model(x, dead_mask_N=dead)
    expect = dense_reference(ref, x, cfg.k, dead_mask=dead, k_aux=6)
    assert out.auxk_loss > 0
    torch.testing.assert_close(out.auxk_loss, expect["auxk"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, expect["loss"])
    _assert_same_grads(out, expect, model, ref)


def test_auxk_gradient_reaches_dead_latents_encoder_rows(make_data):
    cfg = SAEConfig(d_in=16, n_latents=64, k=4)
    model, _ = _model_and_ref(cfg)
    x = make_data(32, 16)
    with torch.no_grad():
        z = (x - model.b_pre) @ model.W_enc.T + model.b_lat
    fired = torch.zeros(64, dtype=torch.bool)
    fired[z.topk(4, dim=1).indices.flatten()] = True
    dead = ~fired
    assert dead.any()
    # Only the AuxK term can move the rows of latents that are in nobody's top k.
    model(x, dead_mask_N=dead).auxk_loss.backward()
    assert model.W_enc.grad[dead].abs().sum() > 0
    assert model.W_enc.grad[fired].abs().sum() == 0


def test_few_dead_latents_use_all_of_them(make_data):
    cfg = SAEConfig(d_in=16, n_latents=32, k=4, k_aux=8)
    model, ref = _model_and_ref(cfg)
    x = make_data(32, 16)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[3, 7]] = True
    out = model(x, dead_mask_N=dead)
    expect = dense_reference(ref, x, 4, dead_mask=dead, k_aux=8)
    torch.testing.assert_close(out.auxk_loss, expect["auxk"], rtol=1e-5, atol=1e-6)
    _assert_same_grads(out, expect, model, ref)


def test_no_dead_latents_means_no_auxk_loss(make_data):
    model, _ = _model_and_ref(SAEConfig(d_in=16, n_latents=32, k=4))
    out = model(make_data(32, 16), dead_mask_N=torch.zeros(32, dtype=torch.bool))
    assert out.auxk_loss == 0
    torch.testing.assert_close(out.loss, out.nmse)


def test_encode_decode_roundtrip_matches_forward(make_data):
    cfg = SAEConfig(d_in=20, n_latents=80, k=6)
    model, _ = _model_and_ref(cfg)
    x = make_data(10, 20)
    v, i = model.encode(x)
    assert v.shape == i.shape == (10, 6)
    assert (v >= 0).all()
    assert (v[:, :-1] >= v[:, 1:]).all(), "codes are sorted, largest first"
    torch.testing.assert_close(model.decode(v, i), model(x).x_hat)


def test_decoder_rows_stay_unit_norm_after_steps(make_data):
    cfg = SAEConfig(d_in=16, n_latents=48, k=4)
    model, _ = _model_and_ref(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = make_data(64, 16)
    for _ in range(5):
        model(x).loss.backward()
        model.remove_parallel_decoder_grad()
        # The projected gradient has no component along its row.
        dots = (model.W_dec.grad * model.W_dec).sum(1)
        assert dots.abs().max() < 1e-6
        opt.step()
        opt.zero_grad()
        model.normalize_decoder()
        torch.testing.assert_close(model.W_dec.norm(dim=1), torch.ones(48))


def test_dead_counter_counts_samples_since_last_fire():
    cfg = SAEConfig(d_in=4, n_latents=6, k=2, dead_threshold_samples=5)
    model = TopKSAE(cfg)
    model.update_dead_counter(torch.tensor([[0, 1], [1, 2]]))  # batch of 2
    assert model.samples_since_fired.tolist() == [0, 0, 0, 2, 2, 2]
    model.update_dead_counter(torch.tensor([[0, 1], [0, 1], [0, 1], [0, 1]]))
    assert model.samples_since_fired.tolist() == [0, 0, 4, 6, 6, 6]
    assert model.dead_mask().tolist() == [False, False, False, True, True, True]


def test_wrong_input_dimension_is_named():
    model = TopKSAE(SAEConfig(d_in=8, n_latents=16, k=2))
    with pytest.raises(ValueError, match=r"d_in=8"):
        model(torch.randn(3, 9))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 33, "n_latents": 32}, "larger than n_latents"),
        ({"k": 0, "n_latents": 32}, "k must be positive"),
        ({"k": -1, "n_latents": 32}, "k must be positive"),
        ({"k": 4, "n_latents": 0}, "n_latents must be a positive integer"),
    ],
)
def test_bad_shapes_fail_before_any_tensor(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SAEConfig(d_in=8, **kwargs)


# ------------------------------------------ the pre-bias: Weiszfeld geometric median


def test_geometric_median_is_a_stationary_point_of_the_distance_sum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) + 3.0
    m = geometric_median(x, iters=200)
    # d/dm sum_i ||x_i - m|| = -sum_i (x_i - m) / ||x_i - m||, zero at the median.
    unit = (x - m) / (x - m).norm(dim=1, keepdim=True)
    assert unit.sum(0).norm() < 1e-3 * len(x)
    assert (x - m).norm(dim=1).sum() < (x - x.mean(0)).norm(dim=1).sum()


def test_geometric_median_ignores_a_far_outlier_unlike_the_mean():
    x = torch.zeros(101, 3)
    x[:100] = torch.randn(100, 3, generator=torch.Generator().manual_seed(1)) * 0.01
    x[100] = torch.tensor([1e4, 0.0, 0.0])
    m = geometric_median(x)
    assert m.norm() < 0.1
    assert x.mean(0).norm() > 50


def test_zero_iterations_give_the_coordinate_wise_median():
    x = torch.tensor([[0.0, 5.0], [1.0, 6.0], [9.0, 7.0]])
    assert torch.equal(data_median(x, iters=0), torch.tensor([1.0, 6.0]))
