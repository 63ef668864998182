"""The pack trainer: learning, pack == solo, exact resume, and input checks."""

import itertools
import math

import numpy as np
import pytest
import torch

from sae import ConfigError, DataError, PackTrainer, RunInfo, SAEConfig, TopKSAE, TrainConfig

D = 24

# The exactness claims hold on CUDA too (Triton kernels, one matmul for the pack):
# checked by `pytest -m gpu` on a GPU machine (scripts/gpu_check.sh).
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]


def _cfgs(*kn, **kw):
    return [SAEConfig(d_in=D, n_latents=n, k=k, **kw) for k, n in kn]


def _train(epochs=2, **kw):
    base = dict(batch_size=64, lr=3e-3, epochs=epochs, warmup_steps=5, log_every_steps=4, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _weights(model):
    return [p.detach().clone() for p in (model.W_enc, model.b_lat, model.W_dec, model.b_pre)]


def test_training_lowers_nmse_well_below_one(make_data):
    x = make_data(3000, D, n_atoms=64, active=3)
    logs = []
    trainer = PackTrainer(
        _cfgs((4, 128)), _train(epochs=20), on_log=lambda name, step, m: logs.append((step, m))
    )
    (res,) = trainer.fit(x)
    assert res.metrics.nmse < 0.15, res.metrics
    assert res.metrics.l0 <= 4
    assert logs[-1][1]["train_nmse"] < logs[0][1]["train_nmse"]
    # Per-step names never clash with the held-out metrics' (MLflow keeps one value a key).
    assert set(logs[0][1]) == {
        "train_loss",
        "train_nmse",
        "train_auxk_loss",
        "train_dead_fraction",
        "lr",
    }
    assert math.isfinite(res.metrics.log_feature_density)
    # The per-latent densities the metrics summarise come back with them: k picks a row.
    assert res.density.shape == (128,) and res.density.sum() == pytest.approx(4)
    live = res.density[res.density > 0]
    assert res.metrics.log_feature_density == pytest.approx(np.log10(live).mean())
    # Dead by the training rule, not "never fired on the small eval split".
    model = trainer.model(res.name)
    assert res.metrics.dead_fraction == pytest.approx(model.dead_mask().float().mean().item())
    assert res.sae_cfg.dead_threshold_samples == 2850  # one epoch: 3000 rows less 5% eval


def test_the_default_dead_window_is_the_papers_266_steps_or_one_epoch(make_data):
    """266 steps x batch on a big split; one epoch where 266 steps would be many epochs
    (there no latent would ever count as dead and AuxK would never act)."""
    x = make_data(1000, D)
    train = _train(epochs=1, batch_size=2, eval_fraction=0.1)
    (res,) = PackTrainer(_cfgs((4, 64)), train).fit(x)
    assert res.sae_cfg.dead_threshold_samples == 266 * 2  # 900 rows > 266 steps of 2
    (res,) = PackTrainer(_cfgs((4, 64)), _train(epochs=1, eval_fraction=0.1)).fit(x)
    assert res.sae_cfg.dead_threshold_samples == 900  # 266 steps of 64 > 900 rows
    (res,) = PackTrainer(_cfgs((4, 64), dead_threshold_samples=7), train).fit(x)
    assert res.sae_cfg.dead_threshold_samples == 7  # a setting given is kept


@pytest.mark.parametrize("device", DEVICES)
def test_cells_in_a_pack_match_cells_trained_alone(make_data, device):
    x = make_data(600, D)
    packed = PackTrainer(_cfgs((4, 64), (8, 96)), _train(), device=device)
    packed.fit(x)
    for cfg in _cfgs((4, 64), (8, 96)):
        solo = PackTrainer([cfg], _train(), device=device)
        solo.fit(x)
        ours = next(c for c in packed._cells if c.name == solo._cells[0].name)
        assert ours.cfg == solo._cells[0].cfg
        for a, b in zip(_weights(ours.model), _weights(solo._cells[0].model), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


class CrashError(RuntimeError):
    pass


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("crash_at", [8, 12])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, make_data, crash_at, device):
    x = make_data(640, D)
    cfgs = _cfgs((4, 64), (6, 48), dead_threshold_samples=128)  # AuxK kicks in early
    train = _train(epochs=3, checkpoint_every_steps=4)
    ref = PackTrainer(cfgs, train, out_dir=tmp_path / "ref", device=device)
    ref_results = ref.fit(x)

    def crash(name, step, metrics):
        if step == crash_at:
            raise CrashError

    with pytest.raises(CrashError):
        PackTrainer(cfgs, train, out_dir=tmp_path / "run", on_log=crash, device=device).fit(x)
    resumed = PackTrainer(cfgs, train, out_dir=tmp_path / "run", device=device)
    results = resumed.fit(x)
    for a, b in zip(ref._cells, resumed._cells, strict=True):
        for wa, wb in zip(_weights(a.model), _weights(b.model), strict=True):
            torch.testing.assert_close(wa, wb, rtol=0, atol=0)
        assert torch.equal(a.model.samples_since_fired, b.model.samples_since_fired)
        sa, sb = a.opt.state_dict()["state"], b.opt.state_dict()["state"]
        for key in sa:
            torch.testing.assert_close(sa[key]["exp_avg"], sb[key]["exp_avg"], rtol=0, atol=0)
    assert [r.metrics for r in results] == [r.metrics for r in ref_results]
    loaded = TopKSAE.load(results[0].directory)
    torch.testing.assert_close(loaded.W_dec, ref._cells[0].model.W_dec.cpu())
    # The dead counter travels with the weights: a loaded model's dead fraction is the run's.
    assert torch.equal(loaded.samples_since_fired, ref._cells[0].model.samples_since_fired.cpu())
    assert loaded.cfg.dead_threshold_samples == 128


def test_a_finished_pack_is_not_retrained(tmp_path, make_data):
    x = make_data(300, D)
    cfgs = _cfgs((4, 64))
    first = PackTrainer(cfgs, _train(), out_dir=tmp_path).fit(x)
    state = tmp_path / first[0].name / "train_state.pt"
    mtime = state.stat().st_mtime_ns
    steps = []
    again = PackTrainer(cfgs, _train(), out_dir=tmp_path, on_log=lambda *a: steps.append(a)).fit(x)
    assert steps == []
    assert state.stat().st_mtime_ns == mtime
    assert again[0].metrics == first[0].metrics
    # The densities of the final evaluation come back too (kept in the resume state).
    np.testing.assert_array_equal(again[0].density, first[0].density)


@pytest.mark.parametrize(("interval", "epoch_ends"), [(0.0, 3), (3600.0, 0)])
def test_epoch_end_checkpoints_respect_the_minimum_interval(
    tmp_path, make_data, interval, epoch_ends
):
    x = make_data(300, D)
    calls = []
    trainer = PackTrainer(
        _cfgs((4, 64), (8, 64)),
        _train(epochs=3, checkpoint_every_s=interval),
        out_dir=tmp_path,
        on_checkpoint=lambda dirs: calls.append(sorted(d.name for d in dirs)),
    )
    results = trainer.fit(x)
    names = sorted(r.name for r in results)
    # Every epoch end checkpoints both cells at once, then each cell's final state alone.
    assert calls[:epoch_ends] == [names] * epoch_ends
    assert sorted(c[0] for c in calls[epoch_ends:]) == names
    assert len(calls) == epoch_ends + 2
    assert all((tmp_path / n / "train_state.pt").is_file() for n in names)


def test_changed_settings_do_not_resume_silently(tmp_path, make_data):
    x = make_data(300, D)
    PackTrainer(_cfgs((4, 64)), _train(), out_dir=tmp_path).fit(x)
    with pytest.raises(ConfigError, match="lr"):
        PackTrainer(_cfgs((4, 64)), _train(lr=1e-2), out_dir=tmp_path).fit(x)
    # How often it logs or checkpoints is not a setting of the weights: it resumes.
    watched = _train(log_every_steps=7, checkpoint_every_s=5.0, checkpoint_every_steps=3)
    PackTrainer(_cfgs((4, 64)), watched, out_dir=tmp_path).fit(x)


def test_cell_folders_use_the_released_naming(tmp_path, make_data):
    x = make_data(200, D)
    res = PackTrainer(
        _cfgs((4, 64)), _train(epochs=1), run=RunInfo(domain="cs.LG"), out_dir=tmp_path
    ).fit(x)
    assert res[0].name == "csLG_4_64_64"
    assert (tmp_path / "csLG_4_64_64" / "model.safetensors").is_file()
    assert (tmp_path / "csLG_4_64_64" / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (torch.randn(50, D + 1), "dimension 25"),
        (torch.empty(0, D), "empty"),
        (torch.randn(50), "2-D"),
        (torch.randint(0, 3, (50, D)), "floating point"),
    ],
)
def test_bad_data_is_named_before_training(tmp_path, data, message):
    with pytest.raises(DataError, match=message):
        PackTrainer(_cfgs((4, 64)), _train(), out_dir=tmp_path / "out").fit(data)
    assert not (tmp_path / "out").exists()


def test_nan_and_inf_rows_are_counted_and_located(tmp_path):
    x = torch.randn(50, D)
    x[7, 3] = float("nan")
    x[20, 0] = float("inf")
    with pytest.raises(DataError, match=r"2 row\(s\) hold NaN or inf.*\[7, 20\]"):
        PackTrainer(_cfgs((4, 64)), _train(), out_dir=tmp_path / "out").fit(x)
    assert not (tmp_path / "out").exists()


def test_pack_rules():
    with pytest.raises(ConfigError, match="at least one cell"):
        PackTrainer([], _train())
    with pytest.raises(ConfigError, match="share d_in"):
        PackTrainer(
            [SAEConfig(d_in=8, n_latents=16, k=2), SAEConfig(d_in=9, n_latents=16, k=2)], _train()
        )
    with pytest.raises(ConfigError, match="duplicate"):
        PackTrainer(_cfgs((4, 64), (4, 64)), _train())


def test_bfloat16_encoder_matmul_trains_about_as_well_as_float32(make_data):
    x = make_data(2000, D, n_atoms=64, active=3)
    nmse = {}
    for dtype in ("float32", "bfloat16"):
        (res,) = PackTrainer(_cfgs((4, 128)), _train(epochs=10, compute_dtype=dtype)).fit(x)
        nmse[dtype] = res.metrics.nmse
    assert nmse["bfloat16"] < 0.3
    assert abs(nmse["bfloat16"] - nmse["float32"]) < 0.05, nmse


def test_memory_mapped_numpy_input_is_accepted(tmp_path, make_data):
    np = pytest.importorskip("numpy")
    path = tmp_path / "emb.npy"
    np.save(path, make_data(300, D).numpy())
    mm = np.load(path, mmap_mode="r")
    (res,) = PackTrainer(_cfgs((4, 64)), _train(epochs=1)).fit(mm)
    assert res.metrics.n_samples == 15


def test_warmup_then_cosine_schedule(make_data):
    lrs = []
    train = _train(epochs=2, warmup_steps=4, lr_schedule="cosine", log_every_steps=1, lr=1e-2)
    PackTrainer(_cfgs((4, 64)), train, on_log=lambda n, s, m: lrs.append(m["lr"])).fit(
        make_data(640, D)
    )
    # 608 training rows / 64 = 9 steps an epoch, 18 in all.
    assert lrs[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))


@pytest.mark.parametrize("one_matmul", [False, True])
def test_pack_encoder_matches_each_models_own_pre_activations(make_data, one_matmul):
    from sae.pack import PackEncoder

    models = [
        TopKSAE(c, generator=torch.Generator().manual_seed(i))
        for i, c in enumerate(_cfgs((4, 64), (8, 96), (4, 32)))
    ]
    for m in models:
        with torch.no_grad():
            m.b_pre.normal_()
            m.b_lat.normal_()
    own = [m.W_enc.detach().clone() for m in models]
    enc = PackEncoder(models, one_matmul=one_matmul)
    for m, w in zip(models, own, strict=True):
        assert torch.equal(m.W_enc, w)
    with torch.no_grad():
        models[1].W_enc.mul_(2.0)  # an optimiser's in-place update reaches the shared buffer
    x = make_data(16, D)
    for m, z in zip(models, enc.pre_activations(x), strict=True):
        torch.testing.assert_close(z, m.pre_activations(x - m.b_pre), rtol=1e-5, atol=1e-5)
