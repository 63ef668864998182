"""safetensors + cfg.json round trips, the released .pth format, and broken files."""

import json

import pytest
import torch

from sae import CheckpointError, RunInfo, SAEConfig, TopKSAE, TrainConfig, load_released
from sae.checkpoint import load_train_cfg


def _model(d=12, n=40, k=3, seed=0):
    m = TopKSAE(SAEConfig(d_in=d, n_latents=n, k=k), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        m.b_pre.normal_()
        m.b_lat.normal_()
    return m


def test_save_load_roundtrip_keeps_weights_and_every_setting(tmp_path):
    m = _model()
    train = TrainConfig(batch_size=256, lr=3e-4, epochs=2)
    run = RunInfo(embedder="minilm", data_snapshot="snap123", domain="cs.LG")
    m.save(tmp_path / "cell", train_cfg=train, run=run)
    back = TopKSAE.load(tmp_path / "cell")
    for name in ("W_enc", "b_lat", "W_dec", "b_pre"):
        assert torch.equal(getattr(back, name), getattr(m, name))
    assert back.cfg == m.cfg
    assert load_train_cfg(tmp_path / "cell") == train
    cfg = json.loads((tmp_path / "cell" / "cfg.json").read_text())
    assert cfg["sae"]["d_in"] == 12
    assert cfg["run"]["embedder"] == "minilm"
    assert cfg["run"]["data_snapshot"] == "snap123"
    x = torch.randn(5, 12)
    torch.testing.assert_close(back(x).x_hat, m(x).x_hat)
    assert not list((tmp_path / "cell").glob("*.tmp")), "no temporary files left behind"


def test_newer_cfg_format_is_refused_by_name(tmp_path):
    _model().save(tmp_path / "c")
    cfg_path = tmp_path / "c" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["format_version"] = 99
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format_version 99 is newer"):
        TopKSAE.load(tmp_path / "c")


def test_unknown_cfg_field_is_named(tmp_path):
    _model().save(tmp_path / "c")
    cfg_path = tmp_path / "c" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["sae"]["k_typo"] = 4
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="k_typo"):
        TopKSAE.load(tmp_path / "c")


def test_missing_weights_are_named(tmp_path):
    _model().save(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file missing"):
        TopKSAE.load(tmp_path / "c")


def _write_released(path, d=10, n=30, drop=None, bad=None):
    g = torch.Generator().manual_seed(0)
    dec = torch.randn(d, n, generator=g)
    dec /= dec.norm(dim=0, keepdim=True)
    state = {
        "encoder.weight": torch.randn(n, d, generator=g),
        "decoder.weight": dec,
        "pre_bias": torch.randn(d, generator=g),
        "latent_bias": torch.randn(n, generator=g),
    }
    if drop:
        del state[drop]
    if bad:
        state[bad] = torch.zeros(3, 3)
    torch.save(state, path)
    return state


def test_released_checkpoint_loads_and_reconstructs_like_the_papers_code(tmp_path):
    path = tmp_path / "csLG_4_30_256.pth"
    state = _write_released(path)
    m = load_released(path)
    assert (m.k, m.n_latents, m.d_in) == (4, 30, 10)
    x = torch.randn(6, 10)
    # The paper's forward: latents = topk(relu?) of encoder(x - pre_bias) + latent_bias.
    z = (x - state["pre_bias"]) @ state["encoder.weight"].T + state["latent_bias"]
    v, i = z.topk(4, dim=1)
    lat = torch.zeros(6, 30).scatter(1, i, v.relu())
    expect = lat @ state["decoder.weight"].T + state["pre_bias"]
    torch.testing.assert_close(m(x).x_hat, expect, rtol=1e-5, atol=1e-5)


def test_released_k_can_be_given_when_the_name_has_none(tmp_path):
    path = tmp_path / "weights.pth"
    _write_released(path)
    with pytest.raises(CheckpointError, match="cannot read k"):
        load_released(path)
    assert load_released(path, k=7).k == 7


@pytest.mark.parametrize("drop", ["encoder.weight", "pre_bias", "latent_bias", "decoder.weight"])
def test_released_missing_key_is_named(tmp_path, drop):
    path = tmp_path / "astroph_16_30_1024.pth"
    _write_released(path, drop=drop)
    with pytest.raises(CheckpointError, match=f"missing key.*{drop}"):
        load_released(path)


@pytest.mark.parametrize("bad", ["decoder.weight", "pre_bias", "latent_bias"])
def test_released_misshaped_key_is_named(tmp_path, bad):
    path = tmp_path / "astroph_16_30_1024.pth"
    _write_released(path, bad=bad)
    with pytest.raises(CheckpointError, match=f"{bad} has shape"):
        load_released(path)


def test_released_name_and_shape_disagreeing_is_named(tmp_path):
    path = tmp_path / "csLG_4_31_256.pth"
    _write_released(path)
    with pytest.raises(CheckpointError, match="n=31"):
        load_released(path)


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    from sae.checkpoint import atomic_torch_save

    target = tmp_path / "state.pt"
    atomic_torch_save({"ok": 1}, target)
    before = target.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - any pickling error will do
        atomic_torch_save({"bad": lambda: None}, target)
    assert target.read_bytes() == before, "the old file is untouched"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
