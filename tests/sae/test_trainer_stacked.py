"""PackTrainer with ``TrainConfig.stacked``: a pack's stacks (sae.stacked) give the cells
the per-cell path's weights and metrics, resume exactly, and their checkpoints resume on
either path."""

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sae import ConfigError, PackTrainer, SAEConfig, TrainConfig

D = 24

# Two stacks (TopK with Multi-TopK beside it, BatchTopK of mixed k) and a cell of its own n.
MIXED = [
    SAEConfig(d_in=D, n_latents=64, k=4),
    SAEConfig(d_in=D, n_latents=64, k=8),
    SAEConfig(d_in=D, n_latents=64, k=6, multi_topk=True),
    SAEConfig(d_in=D, n_latents=64, k=4, arch="batchtopk"),
    SAEConfig(d_in=D, n_latents=64, k=8, arch="batchtopk"),
    SAEConfig(d_in=D, n_latents=48, k=4),
]
# n wide for k and a one-step dead window: most latents die and AuxK trains them.
DEAD = [
    SAEConfig(d_in=D, n_latents=512, k=k, k_aux=16, dead_threshold_samples=64, arch=arch)
    for k, arch in ((2, "topk"), (4, "topk"), (4, "matryoshka"), (8, "matryoshka"))
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Toy tensors: a second thread only waits on the first; both paths run alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def x():
    from sae.data import sparse_dictionary_data

    return sparse_dictionary_data(640, D)  # 9 steps an epoch at batch 64


def _train(stacked, **kw):
    base = dict(batch_size=64, lr=3e-3, epochs=3, warmup_steps=5, log_every_steps=4, seed=3)
    return TrainConfig(**{**base, **kw}, stacked=stacked)


class Run:
    """One fit, with its logs and the stacks' sizes seen at each log."""

    def __init__(self, cfgs, train, x, out_dir=None, crash_at=None):
        self.logs, self.stacks = {}, set()
        self.trainer = PackTrainer(cfgs, train, out_dir=out_dir, on_log=self._on_log)
        self.crash_at = crash_at
        self.results = self.trainer.fit(x)

    def _on_log(self, name, step, metrics):
        if step == self.crash_at:
            raise CrashError
        self.logs[name, step] = metrics
        self.stacks.add(tuple(sorted(len(s.cells) for s in self.trainer._stacks)))

    def states(self):
        return {c.name: (c.model.state_dict(), c.opt.state_dict()) for c in self.trainer._cells}


class CrashError(RuntimeError):
    pass


def _crash(cfgs, train, x, out_dir, at):
    with pytest.raises(CrashError):
        Run(cfgs, train, x, out_dir, crash_at=at)


def _close(a, b, rel):
    """Equal (rel 0), or ||a - b|| <= rel ||a|| (sae.stacked's tolerance where AuxK sums
    the dead latents in another order)."""
    if rel == 0:
        assert torch.equal(a, b), (a - b).abs().max()
    else:
        a, b = a.double(), b.double()
        assert (a - b).norm() <= rel * a.norm(), ((a - b).norm() / a.norm()).item()


def _assert_same_cells(ref: Run, run: Run, rel):
    """Weights, buffers, Adam state, held-out metrics and logs of every cell."""
    ref_states, states = ref.states(), run.states()
    assert list(states) == list(ref_states)
    for name, (model, opt) in ref_states.items():
        for key, v in model.items():
            _close(v, states[name][0][key], 0 if v.dtype == torch.long else rel)
        for i, s in opt["state"].items():
            for key, v in s.items():
                _close(v, states[name][1]["state"][i][key], rel)
    for a, b in zip(ref.results, run.results, strict=True):
        assert (a.name, a.sae_cfg, a.steps) == (b.name, b.sae_cfg, b.steps)
        if rel == 0:
            assert a.metrics == b.metrics
        else:
            for key, v in a.metrics.as_dict().items():
                assert b.metrics.as_dict()[key] == pytest.approx(v, rel=rel, abs=1e-9), key
    assert set(run.logs) == set(ref.logs)
    for key, metrics in ref.logs.items():
        assert run.logs[key] == pytest.approx(metrics, rel=max(rel, 1e-6)), key


def test_mixed_k_and_arch_stacked_equal_the_per_cell_path_bit_for_bit(tmp_path, x):
    off = Run(MIXED, _train("off"), x, tmp_path / "off")
    on = Run(MIXED, _train("on"), x, tmp_path / "on")
    assert off.stacks == {()} and on.stacks == {(2, 3)}  # the 48-latent cell steps alone
    _assert_same_cells(off, on, rel=0)
    for r in on.results:  # the same files, under the same names
        for file in ("metrics.json", "cfg.json"):
            ours, theirs = (
                json.loads((d / r.name / file).read_text())
                for d in (tmp_path / "on", tmp_path / "off")
            )
            if file == "metrics.json":
                assert ours["metrics"] == theirs["metrics"] and ours["steps"] == theirs["steps"]
            else:
                assert ours["sae"] == theirs["sae"] and ours["train"]["stacked"] == "on"


def test_dead_latents_and_auxk_match_the_per_cell_path_within_1e6(x):
    off = Run(DEAD, _train("off"), x)
    on = Run(DEAD, _train("on"), x)
    assert on.stacks == {(2, 2)}
    for run in (off, on):
        assert all(m["train_auxk_loss"] > 0 for m in run.logs.values()), "AuxK must act"
        assert min(r.metrics.dead_fraction for r in run.results) > 0.1
    _assert_same_cells(off, on, rel=1e-6)


@pytest.mark.parametrize(
    ("first", "then", "rel"), [("on", "on", 0), ("on", "off", 1e-6), ("off", "on", 1e-6)]
)
def test_a_checkpoint_resumes_on_either_path(tmp_path, x, first, then, rel):
    """Stacked, resumed stacked: bit for bit; across paths within the parity tolerance."""
    cfgs = [*DEAD, SAEConfig(d_in=D, n_latents=96, k=4, dead_threshold_samples=64)]
    ref = Run(cfgs, _train(then, checkpoint_every_steps=3), x, tmp_path / "ref")
    # Step 8 is in epoch 1, two steps after the last checkpoint.
    _crash(cfgs, _train(first, checkpoint_every_steps=3), x, tmp_path / "run", at=8)
    resumed = Run(cfgs, _train(then, checkpoint_every_steps=3), x, tmp_path / "run")
    assert min(step for _, step in resumed.logs) == 8  # it went on from step 6
    resumed.logs |= {key: m for key, m in ref.logs.items() if key[1] < 8}
    _assert_same_cells(ref, resumed, rel)


def test_a_cell_joins_the_stack_when_it_reaches_the_others_step(tmp_path, x):
    """A cell resumed at step 6 beside new cells of its n: they step as a stack of 2
    until they reach it, then all three as one."""
    cfgs = MIXED[:3]
    runs = {}
    for mode in ("off", "on"):
        _crash(cfgs[:1], _train(mode, checkpoint_every_steps=6), x, tmp_path / mode, at=8)
        runs[mode] = Run(cfgs, _train(mode, checkpoint_every_steps=6), x, tmp_path / mode)
    assert runs["on"].stacks == {(2,), (3,)}
    _assert_same_cells(runs["off"], runs["on"], rel=0)


def test_the_knob_is_checked_and_changes_no_identity(x):
    with pytest.raises(ConfigError, match=r"stacked must be one of \['auto', 'on', 'off'\]"):
        TrainConfig(stacked="yes")
    assert _train("on").weight_key() == _train("off").weight_key() == _train("auto").weight_key()
    assert not PackTrainer(MIXED, _train("auto"), device="cpu").stacking
    assert (
        PackTrainer(MIXED, _train("on"), device="cpu").names
        == PackTrainer(MIXED, _train("off")).names
    )


class _HostSyncs(TorchDispatchMode):
    """The aten ops run under it that read a device value on the host."""

    SYNCS = frozenset({"aten.nonzero", "aten._local_scalar_dense", "aten.masked_select"})

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in self.SYNCS:
            self.seen.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


class _Traced(PackTrainer):
    def _pack_step(self, active, xb):
        with _HostSyncs() as syncs:
            super()._pack_step(active, xb)
        self.syncs.append(syncs.seen)


@pytest.mark.parametrize(
    ("stacked", "log_every", "may_sync"),
    [("on", 0, set()), ("on", 4, {3, 7}), ("off", 0, set(range(9)))],
)
def test_a_stacked_pack_step_reads_nothing_back_but_its_logs(x, stacked, log_every, may_sync):
    """A CUDA graph needs a step without host syncs: with every cell in a stack, only a
    log step may read values back (the per-cell path syncs every step: the CPU's clip and
    AuxK's ``nonzero``). Reads through ``tolist`` do not show here on CPU."""
    trainer = _Traced(DEAD, _train(stacked, epochs=1, log_every_steps=log_every))
    trainer.syncs = []
    trainer.fit(x)
    assert len(trainer.syncs) == 9  # one epoch
    synced = {g for g, seen in enumerate(trainer.syncs) if seen}
    assert synced <= may_sync and (stacked == "on" or synced == may_sync)
