"""BatchTopK and Matryoshka SAEs against a plain dense reference, and through save, load,
the pack trainer and resume (TopK itself: tests/sae/test_model.py)."""

import json

import pytest
import torch

from sae import ConfigError, PackTrainer, SAEConfig, TopKSAE, TrainConfig, evaluate
from sae.config import cell_name, parse_cell_name

D = 16

ARCHS = [
    pytest.param({"arch": "batchtopk"}, id="batchtopk"),
    pytest.param({"arch": "matryoshka", "prefixes": (10, 24, 40, 64)}, id="matryoshka-topk"),
    pytest.param(
        {"arch": "matryoshka", "prefixes": (8, 32, 64), "matryoshka_selection": "batchtopk"},
        id="matryoshka-batchtopk",
    ),
]


def dense_reference(params, x, cfg, train=True, threshold=None, dead_mask=None):
    """The archs written the obvious way: dense latents [B, n], dense masks, dense decode."""
    W_enc, b_lat, W_dec, b_pre = params
    z_pre = (x - b_pre) @ W_enc.T + b_lat
    B, n = z_pre.shape
    relu = torch.relu(z_pre)
    if cfg.selection == "topk":
        mask = torch.zeros(B, n, dtype=torch.bool)
        mask.scatter_(1, z_pre.topk(cfg.k, dim=1).indices, True)
    elif train:
        flat = torch.zeros(B * n, dtype=torch.bool)
        flat[relu.flatten().topk(cfg.k * B).indices] = True
        mask = flat.view(B, n)
    else:
        mask = z_pre > threshold
    z = torch.where(mask, relu, torch.zeros(()))

    def nmse(a, b):
        return ((a - b) ** 2).sum() / ((b - b.mean(0)) ** 2).sum()

    x_hat = z @ W_dec + b_pre
    out = {"z": z, "x_hat": x_hat, "nmse": nmse(x_hat, x)}
    recon = out["nmse"]
    if cfg.arch == "matryoshka":
        below = torch.arange(n)[None, :]
        prefix = [nmse((z * (below < m)) @ W_dec + b_pre, x) for m in cfg.prefixes]
        out["prefix_nmse"] = torch.stack(prefix)
        recon = out["prefix_nmse"].mean()
    loss = recon
    if dead_mask is not None and dead_mask.any():
        kk = min(cfg.effective_k_aux, int(dead_mask.sum()))
        av, ai = torch.where(dead_mask, z_pre, torch.tensor(-torch.inf)).topk(kk, dim=1)
        lat = torch.zeros_like(z_pre).scatter(1, ai, torch.relu(av))
        out["auxk"] = nmse(lat @ W_dec, x - x_hat.detach())
        loss = loss + cfg.aux_coef * out["auxk"]
    out["loss"] = loss
    return out


def _model_and_ref(cfg, seed=0):
    model = TopKSAE(cfg, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.b_pre.copy_(torch.randn(cfg.d_in, generator=g) * 0.1)
        model.b_lat.copy_(torch.randn(cfg.n_latents, generator=g) * 0.1)
        model.W_enc.add_(0.3 * torch.randn(model.W_enc.shape, generator=g))
    ref = [
        p.detach().clone().requires_grad_()
        for p in (model.W_enc, model.b_lat, model.W_dec, model.b_pre)
    ]
    return model, ref


def _dense(values_BW, indices_BW, n):
    return torch.zeros(values_BW.shape[0], n).scatter_add(1, indices_BW, values_BW.detach())


def _cfg(**kw):
    return SAEConfig(d_in=D, n_latents=64, k=4, **kw)


@pytest.mark.parametrize("with_dead", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_training_forward_and_gradients_match_dense_reference(make_data, arch, with_dead):
    cfg = _cfg(**arch)
    model, ref = _model_and_ref(cfg)
    x = make_data(32, D)
    dead = None
    if with_dead:
        dead = torch.zeros(64, dtype=torch.bool)
        dead[::3] = True
    out = model(x, dead_mask_N=dead if dead is not None else torch.zeros(64, dtype=torch.bool))
    expect = dense_reference(ref, x, cfg, dead_mask=dead)
    # The reference keeps exactly the batch's top k*B; so does ours when no row needs
    # more than the code's w slots.
    assert int((expect["z"] > 0).sum(1).max()) <= cfg.code_width
    assert out.values.shape == (32, cfg.code_width)
    torch.testing.assert_close(_dense(out.values, out.indices, 64), expect["z"])
    torch.testing.assert_close(out.x_hat, expect["x_hat"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.nmse, expect["nmse"])
    if cfg.arch == "matryoshka":
        torch.testing.assert_close(out.prefix_nmse, expect["prefix_nmse"])
    else:
        assert out.prefix_nmse is None
    if with_dead:
        assert out.auxk_loss > 0
        torch.testing.assert_close(out.auxk_loss, expect["auxk"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, expect["loss"])
    out.loss.backward()
    expect["loss"].backward()
    for name, want in zip(["W_enc", "b_lat", "W_dec", "b_pre"], ref, strict=True):
        got = getattr(model, name).grad
        torch.testing.assert_close(got, want.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_batchtopk_keeps_k_times_batch_in_training_and_the_threshold_at_inference(make_data):
    cfg = _cfg(arch="batchtopk")
    model, ref = _model_and_ref(cfg)
    x = make_data(32, D)
    out = model(x)
    per_sample = (out.values > 0).sum(1)
    assert int(per_sample.sum()) == cfg.k * 32
    assert per_sample.min() < cfg.k < per_sample.max(), "samples hold varying counts"
    assert (out.values[:, :-1] >= out.values[:, 1:]).all(), "largest first, zeros last"

    with torch.no_grad():
        model.threshold.fill_(0.6)
    expect = dense_reference(ref, x, cfg, train=False, threshold=0.6)
    assert int((expect["z"] > 0).sum(1).max()) <= cfg.code_width  # no row is capped
    values, indices = model.encode(x)
    torch.testing.assert_close(_dense(values, indices, 64), expect["z"])
    model.eval()
    out = model(x)
    torch.testing.assert_close(out.x_hat, expect["x_hat"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.nmse, expect["nmse"])
    # The whole-batch choice belongs to training only: inference is per sample.
    torch.testing.assert_close(model.encode(x[:5])[0], values[:5])


def test_batchtopk_codes_are_capped_at_their_width():
    cfg = SAEConfig(d_in=4, n_latents=40, k=2, arch="batchtopk")  # w = 8
    model = TopKSAE(cfg)
    z_pre = torch.zeros(4, 40)
    z_pre[0] = torch.linspace(1.0, 2.0, 40)  # one row wants every one of the 8 = k*B kept
    out = model(torch.zeros(4, 4), z_pre_BN=z_pre)
    assert out.values.shape == (4, 8)
    assert int((out.values > 0).sum()) == 8
    z_pre[1, :3] = 5.0  # now row 0 gives up its 3 smallest of the top 8 to row 1
    out = model(torch.zeros(4, 4), z_pre_BN=z_pre)
    assert (out.values > 0).sum(1).tolist() == [5, 3, 0, 0]


def test_threshold_is_a_bias_corrected_ema_of_the_smallest_kept_activation():
    model = TopKSAE(_cfg(arch="batchtopk", threshold_decay=0.9))
    assert model.threshold.item() == -1.0  # not estimated yet
    lows = [0.2, 0.7, 0.4]
    batches = [torch.tensor([[1.5, low, 0.0], [1.0 + low, 0.0, 0.0]]) for low in lows]
    for t, batch in enumerate(batches, start=1):
        model.update_threshold(batch)
        weights = [0.9 ** (t - i) for i in range(1, t + 1)]  # newest weighs 1
        want = sum(w * v for w, v in zip(weights, lows, strict=False)) / sum(weights)
        assert model.threshold.item() == pytest.approx(want)  # t=1: the first batch's
    model.update_threshold(torch.zeros(2, 3))  # nothing kept: unchanged
    assert model.threshold.item() == pytest.approx(want)
    TopKSAE(_cfg()).update_threshold(torch.ones(2, 3))  # TopK: nothing to do


def test_padding_slots_never_count_as_firing(make_data):
    model = TopKSAE(SAEConfig(d_in=4, n_latents=6, k=1, arch="batchtopk"))
    indices = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 1]])
    values = torch.tensor([[0.5, 0.2, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]])
    model.update_dead_counter(indices, values)
    assert model.samples_since_fired.tolist() == [0, 0, 2, 2, 0, 2]
    with pytest.raises(ValueError, match="pass its values"):
        model.update_dead_counter(indices)

    cfg = _cfg(arch="batchtopk")
    model, ref = _model_and_ref(cfg)
    x = make_data(40, D)
    with torch.no_grad():
        model.threshold.fill_(0.6)
    metrics, density = evaluate(model, x, batch_size=16)
    z = dense_reference(ref, x, cfg, train=False, threshold=0.6)["z"].detach()
    assert int((z > 0).sum(1).max()) <= cfg.code_width  # no row is capped
    assert density.tolist() == pytest.approx(((z > 0).sum(0) / 40).tolist())
    assert metrics.l0 == pytest.approx(float((z > 0).sum() / 40))
    assert metrics.act_mean == pytest.approx(float(z[z > 0].mean()))
    assert model.training, "evaluate puts the model back in the mode it found"


def test_matryoshka_prefixes_are_nested_reconstructions(make_data):
    cfg = _cfg(arch="matryoshka", prefixes=(16, 64))
    model, _ = _model_and_ref(cfg)
    x = make_data(32, D)
    out = model(x)
    v, i = out.values, out.indices
    first = model.decode(v.masked_fill(i >= 16, 0.0), i)
    torch.testing.assert_close(out.prefix_nmse[0], ((first - x) ** 2).sum() / x.var(0).sum() / 31)
    torch.testing.assert_close(out.prefix_nmse[1], out.nmse)
    torch.testing.assert_close(out.loss, out.prefix_nmse.mean())
    # Default prefixes: the paper grid's n values for n = 12288, the same fractions below.
    assert SAEConfig(d_in=D, n_latents=12288, k=16, arch="matryoshka").prefixes == (
        3072, 4608, 6144, 9216, 12288,
    )  # fmt: skip
    assert _cfg(arch="matryoshka").prefixes == (16, 24, 32, 48, 64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "jumprelu"}, "arch must be one of"),
        ({"prefixes": (32, 64)}, "set arch='matryoshka'"),
        ({"arch": "matryoshka", "prefixes": (16, 32)}, "last prefix must be n_latents=64"),
        ({"arch": "matryoshka", "prefixes": (32, 16, 64)}, "strictly ascending"),
        ({"arch": "matryoshka", "prefixes": (0, 64)}, "positive"),
        ({"matryoshka_selection": "batchtopk"}, "applies to arch='matryoshka' only"),
        ({"arch": "batchtopk", "multi_topk": True}, "multi_topk is defined for arch='topk'"),
        ({"arch": "batchtopk", "threshold_decay": 1.0}, "threshold_decay"),
    ],
)
def test_bad_arch_settings_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**kwargs)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_gives_the_same_outputs(tmp_path, make_data, arch):
    cfg = _cfg(**arch)
    model, _ = _model_and_ref(cfg)
    x = make_data(24, D)
    model(x)
    if cfg.selection == "batchtopk":
        model.update_threshold(model(x).values)
    model.save(tmp_path / "c")
    back = TopKSAE.load(tmp_path / "c")
    assert back.cfg == cfg
    for a, b in ((model, back), (model.eval(), back.eval())):
        torch.testing.assert_close(a(x).x_hat, b(x).x_hat, rtol=0, atol=0)
    if cfg.selection == "batchtopk":
        assert back.threshold.item() == model.threshold.item() > 0
        assert back.threshold_weight.item() == model.threshold_weight.item() > 0


def test_a_cfg_json_from_before_the_arch_fields_loads_as_topk(tmp_path):
    TopKSAE(_cfg()).save(tmp_path / "c")
    path = tmp_path / "c" / "cfg.json"
    cfg = json.loads(path.read_text())
    for key in ("arch", "prefixes", "matryoshka_selection", "threshold_decay"):
        del cfg["sae"][key]
    cfg["format_version"] = 2
    path.write_text(json.dumps(cfg))
    assert TopKSAE.load(tmp_path / "c").cfg == _cfg()


def test_arch_cells_are_named_apart_from_the_topk_cell():
    cfgs = [
        SAEConfig(d_in=4, n_latents=12288, k=16, arch=a)
        for a in ("topk", "batchtopk", "matryoshka")
    ]
    names = {cell_name("cs.LG", 16, 12288, 1024, c.name_suffix) for c in cfgs}
    assert names == {
        "csLG_16_12288_1024",
        "csLG_16_12288_1024_batchtopk",
        "csLG_16_12288_1024_matryoshka",
    }
    assert {parse_cell_name(n) for n in names} == {("csLG", 16, 12288, 1024)}


class CrashError(RuntimeError):
    pass


def _weights(model):
    return [p.detach().clone() for p in (model.W_enc, model.b_lat, model.W_dec, model.b_pre)]


def test_a_mixed_arch_pack_resumes_exactly_after_a_crash(tmp_path, make_data):
    x = make_data(448, D)  # 6 steps an epoch
    cfgs = [
        SAEConfig(d_in=D, n_latents=64, k=4, dead_threshold_samples=128),
        SAEConfig(d_in=D, n_latents=64, k=4, dead_threshold_samples=128, arch="batchtopk"),
        SAEConfig(
            d_in=D, n_latents=48, k=6, dead_threshold_samples=128, arch="matryoshka",
            matryoshka_selection="batchtopk",
        ),
        SAEConfig(d_in=D, n_latents=64, k=4, dead_threshold_samples=128, arch="matryoshka"),
    ]  # fmt: skip
    train = TrainConfig(
        batch_size=64, lr=3e-3, epochs=2, log_every_steps=4, seed=3, checkpoint_every_steps=3
    )
    ref = PackTrainer(cfgs, train, out_dir=tmp_path / "ref")
    ref_results = ref.fit(x)

    def crash(name, step, metrics):
        if step == 8:  # in epoch 2, two steps after the last checkpoint
            raise CrashError

    with pytest.raises(CrashError):
        PackTrainer(cfgs, train, out_dir=tmp_path / "run", on_log=crash).fit(x)
    resumed = PackTrainer(cfgs, train, out_dir=tmp_path / "run")
    results = resumed.fit(x)
    for a, b in zip(ref._cells, resumed._cells, strict=True):
        for wa, wb in zip(_weights(a.model), _weights(b.model), strict=True):
            torch.testing.assert_close(wa, wb, rtol=0, atol=0)
        assert torch.equal(a.model.samples_since_fired, b.model.samples_since_fired)
        if a.cfg.selection == "batchtopk":
            assert a.model.threshold.item() > 0
            assert torch.equal(a.model.threshold, b.model.threshold)
            assert torch.equal(a.model.threshold_weight, b.model.threshold_weight)
    assert [r.metrics for r in results] == [r.metrics for r in ref_results]
    by_name = {r.name: r for r in results}
    assert set(by_name) == {
        "data_4_64_64", "data_4_64_64_batchtopk", "data_6_48_64_matryoshka_batchtopk",
        "data_4_64_64_matryoshka",
    }  # fmt: skip
    for r in results:
        assert r.metrics.nmse < 0.9, (r.name, r.metrics)
        loaded = TopKSAE.load(r.directory)
        assert loaded.cfg == r.sae_cfg
        if r.sae_cfg.selection == "batchtopk":
            assert torch.equal(loaded.threshold, resumed.model(r.name).threshold)


def test_triton_interpreter_serves_batchtopk_matryoshka(monkeypatch, make_data):
    """The padded codes through the Triton kernels (TRITON_INTERPRET=1 on CPU)."""
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors runs only through TRITON_INTERPRET=1")
    import sae.sparse
    from sae.kernels import triton_ops

    cfg = SAEConfig(
        d_in=8, n_latents=24, k=2, arch="matryoshka", prefixes=(8, 24),
        matryoshka_selection="batchtopk",
    )  # fmt: skip
    model, ref = _model_and_ref(cfg)
    x = make_data(6, 8)
    monkeypatch.setattr(sae.sparse, "ops_for", lambda t: triton_ops)
    out = model(x)
    expect = dense_reference(ref, x, cfg)
    torch.testing.assert_close(out.loss, expect["loss"], rtol=1e-5, atol=1e-6)
    out.loss.backward()
    expect["loss"].backward()
    torch.testing.assert_close(model.W_enc.grad, ref[0].grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.W_dec.grad, ref[2].grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_metrics_cut_the_dictionary_as_a_dedicated_sae_would(make_data, arch):
    from sae.metrics import prefix_metrics

    cfg = _cfg(**arch)
    model, ref = _model_and_ref(cfg)
    x = make_data(40, D)
    if cfg.selection == "batchtopk":
        model.threshold.fill_(0.6)
    model.samples_since_fired[::4] = 10**9  # latents 0, 4, 8, ... dead
    got = prefix_metrics(model, x, [8, 33, 64], batch_size=16)
    W_enc, b_lat, W_dec, b_pre = (p.detach() for p in ref)
    z_pre = (x - b_pre) @ W_enc.T + b_lat
    for row, m in zip(got, [8, 33, 64], strict=True):
        z = z_pre.clone()
        z[:, m:] = -torch.inf
        if cfg.selection == "topk":
            v, i = z.topk(cfg.k, dim=1)
            lat = torch.zeros_like(z).scatter(1, i, torch.relu(v))
        else:
            lat = torch.where(z > 0.6, torch.relu(z), torch.zeros(()))
        x_hat = lat @ W_dec + b_pre
        want = ((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert row.n_latents == m
        assert row.nmse == pytest.approx(want.item(), rel=1e-5)
        assert row.dead_fraction == pytest.approx(len(range(0, m, 4)) / m)
    model.eval()
    assert got[-1].nmse == pytest.approx(evaluate(model, x).metrics.nmse, rel=1e-6)
