"""The stacked step against the per-cell path PackTrainer takes (PackEncoder's
pre-activations, TopKSAE.forward, constrained_step, the dead counter)."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sae.config import SAEConfig
from sae.model import TopKSAE
from sae.pack import PackEncoder
from sae.stacked import (
    StackedSAE,
    cell_optimizer_state,
    load_cell_optimizer_states,
    make_optimizer,
    stack_groups,
    stacked_step,
)
from sae.trainer import constrained_step

D, N, B, LR = 24, 96, 64, 1e-3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Toy tensors: a second thread only waits on the first (and on a loaded machine,
    on everything else); both paths run under the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfgs(ks, n=N, **kw):
    kw.setdefault("dead_threshold_samples", 1000)
    return [SAEConfig(d_in=D, n_latents=n, k=k, **kw) for k in ks]


def _models(cfgs, dead=0.0):
    """Cells with a nonzero b_pre and the first ``dead`` share of latents dead."""
    models = []
    for i, cfg in enumerate(cfgs):
        m = TopKSAE(cfg, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            m.b_pre.copy_(0.1 * torch.randn(D, generator=torch.Generator().manual_seed(99 + i)))
            m.samples_since_fired[: int(dead * cfg.n_latents)] = cfg.dead_threshold + 1
        models.append(m)
    return models


def _batches(steps):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(B, D, generator=g) for _ in range(steps)]


class PerCell:
    """PackTrainer's step, cell by cell."""

    def __init__(self, models):
        self.models = models
        self.encoder = PackEncoder(models, one_matmul=False)
        self.opts = [torch.optim.Adam(m.parameters(), lr=LR, fused=True) for m in models]

    def step(self, x, grad_clip=1.0):
        outs = []
        for m, opt, z in zip(self.models, self.opts, self.encoder.pre_activations(x), strict=True):
            out = m(x, z_pre_BN=z)
            out.loss.backward()
            constrained_step(m, opt, grad_clip)
            m.update_dead_counter(out.indices, out.values)
            m.update_threshold(out.values)
            outs.append(out)
        return outs


def _train_both(cfgs, steps=4, dead=0.0, grad_clip=1.0, one_matmul=False):
    models = _models(cfgs, dead)
    stack = StackedSAE(copy.deepcopy(models), one_matmul=one_matmul)
    opt = make_optimizer(stack, LR, (0.9, 0.999), 1e-8)
    ref = PerCell(models)
    history = []
    for x in _batches(steps):
        history.append((ref.step(x, grad_clip), stacked_step(stack, opt, x, grad_clip)))
    return ref, stack, opt, history


def _assert_close(a, b, rel):
    """Equal (rel 0), or ||a - b|| <= rel ||a||. A norm, not each element: where AuxK
    sums in another order, a dead row's projected decoder gradient (a difference of
    nearly equal terms) differs in its last bits, and Adam's normalisation turns that
    into a step-sized difference in a few elements (1.5e-6 of the largest weight after
    4 steps at lr 1e-3)."""
    if rel == 0:
        assert torch.equal(a, b), (a - b).abs().max()
    else:
        a, b = a.double(), b.double()
        assert (a - b).norm() <= rel * a.norm(), ((a - b).norm() / a.norm()).item()


def _assert_same(ref, stack, history, rel):
    for outs, so in history:
        for c, out in enumerate(outs):
            for name in ("loss", "nmse", "auxk_loss", "multi_topk_nmse"):
                _assert_close(getattr(out, name), getattr(so, name)[c], rel)
            w = out.indices.shape[1]
            _assert_close(out.values, so.values[c, :, :w], rel)
            if out.prefix_nmse is not None:
                _assert_close(out.prefix_nmse, so.prefix_nmse[c], rel)
    for c, m in enumerate(ref.models):
        split = stack.cell_state_dict(c)
        assert list(split) == list(m.state_dict())
        for key, v in m.state_dict().items():
            _assert_close(v, split[key], rel)


def test_mixed_k_and_multi_topk_equal_the_per_cell_path_bit_for_bit():
    cfgs = [*_cfgs((4, 8, 16)), SAEConfig(d_in=D, n_latents=N, k=6, multi_topk=True)]
    ref, stack, opt, history = _train_both(cfgs)
    assert stack.K == 24 and stack.W == 16  # one top-k at Multi-TopK's 4k, code at max k
    assert all(so.multi_topk_nmse[3] > 0 for _, so in history)
    _assert_same(ref, stack, history, rel=0)
    for c, ref_opt in enumerate(ref.opts):
        mine, theirs = cell_optimizer_state(opt, c), ref_opt.state_dict()
        assert mine["param_groups"] == theirs["param_groups"]
        for i, s in theirs["state"].items():
            for key, v in s.items():
                assert torch.equal(v, mine["state"][i][key]), (c, i, key)


def test_dead_latents_train_through_auxk_within_1e6():
    # AuxK's top-k is sorted over all latents here, unsorted over the dead ones per cell:
    # the same latents, summed in another order.
    # n wide enough that latents stay dead: 64 x 8 slots a step over 512 latents
    ref, stack, _, history = _train_both(_cfgs((2, 4, 8), n=512, k_aux=12), dead=0.5)
    assert all((so.auxk_loss > 0).all() for _, so in history), "AuxK must act"
    assert all((out.auxk_loss > 0) for outs, _ in history for out in outs)
    _assert_same(ref, stack, history, rel=1e-6)


def test_a_cell_without_dead_latents_beside_cells_with_them():
    models = _models(_cfgs((4, 8)), dead=0.5)
    with torch.no_grad():
        models[1].samples_since_fired.zero_()  # cell 1: none dead, so no AuxK
    stack = StackedSAE(copy.deepcopy(models))
    x = _batches(1)[0]
    out = stack(x)
    z_pre = PackEncoder(models).pre_activations(x)
    refs = [m(x, z_pre_BN=z) for m, z in zip(models, z_pre, strict=True)]
    assert out.auxk_loss[0] > 0 and out.auxk_loss[1] == 0 and refs[1].auxk_loss == 0
    assert torch.equal(out.loss[1], refs[1].loss)
    _assert_close(refs[0].loss, out.loss[0], 1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {"arch": "matryoshka"},
        {"arch": "batchtopk"},
        {"arch": "matryoshka", "matryoshka_selection": "batchtopk"},
    ],
)
def test_arch_variants_with_mixed_k_and_dead_latents(kw):
    ref, stack, _, history = _train_both(_cfgs((4, 8, 16), **kw), dead=0.3)
    _assert_same(ref, stack, history, rel=1e-6)


def test_batchtopk_of_equal_k_is_bit_for_bit():
    ref, stack, _, history = _train_both(_cfgs((8, 8), arch="batchtopk"))
    assert stack.threshold.min() > 0
    _assert_same(ref, stack, history, rel=0)


def test_the_one_matmul_layout_of_a_gpu_agrees_within_1e6():
    # On CUDA the stack's encoder is one [B, d] x [d, C*n] matmul and a top-k over [B, C, n].
    ref, stack, _, history = _train_both(_cfgs((4, 8, 16)), dead=0.3, one_matmul=True)
    _assert_same(ref, stack, history, rel=1e-6)


def test_split_and_restack_resumes_bit_for_bit():
    cfgs = _cfgs((4, 8, 16))
    xs = _batches(6)
    stack = StackedSAE(_models(cfgs, dead=0.3))
    opt = make_optimizer(stack, LR, (0.9, 0.999), 1e-8)
    for x in xs:
        stacked_step(stack, opt, x, 1.0)

    stack2 = StackedSAE(_models(cfgs, dead=0.3))
    opt2 = make_optimizer(stack2, LR, (0.9, 0.999), 1e-8)
    for x in xs[:3]:
        stacked_step(stack2, opt2, x, 1.0)
    # a checkpoint: per-cell TopKSAE and Adam state dicts, as PackTrainer writes them
    saved = [(stack2.cell_state_dict(c), cell_optimizer_state(opt2, c)) for c in range(3)]
    models = [TopKSAE(cfg) for cfg in cfgs]
    for m, (sd, _) in zip(models, saved, strict=True):
        m.load_state_dict(sd)
    resumed = StackedSAE(models)
    opt3 = make_optimizer(resumed, LR, (0.9, 0.999), 1e-8)
    load_cell_optimizer_states(opt3, [o for _, o in saved])
    for x in xs[3:]:
        stacked_step(resumed, opt3, x, 1.0)
    for c in range(3):
        for key, v in stack.cell_state_dict(c).items():
            assert torch.equal(v, resumed.cell_state_dict(c)[key]), (c, key)
    assert [m.cfg for m in resumed.to_models()] == cfgs


def test_cells_at_different_adam_steps_cannot_share_a_stack():
    cfgs = _cfgs((4, 8))
    stack = StackedSAE(_models(cfgs))
    opt = make_optimizer(stack, LR, (0.9, 0.999), 1e-8)
    stacked_step(stack, opt, _batches(1)[0], 1.0)
    a = cell_optimizer_state(opt, 0)
    b = copy.deepcopy(a)
    b["state"][0]["step"] += 1
    with pytest.raises(ValueError, match="same Adam step"):
        load_cell_optimizer_states(opt, [a, b])


def test_stack_groups_split_sizes_and_archs_and_a_mixed_stack_is_refused():
    cfgs = [
        *_cfgs((4, 8)),
        SAEConfig(d_in=D, n_latents=2 * N, k=4),
        SAEConfig(d_in=D, n_latents=N, k=4, arch="matryoshka"),
        SAEConfig(d_in=D, n_latents=N, k=16, multi_topk=True),
    ]
    assert stack_groups(cfgs) == [[0, 1, 4], [2], [3]]
    with pytest.raises(ValueError, match="stack_groups"):
        StackedSAE(_models([cfgs[0], cfgs[3]]))


class _Ops(TorchDispatchMode):
    """The aten ops a step runs and their output shapes."""

    def __init__(self):
        super().__init__()
        self.trace = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = [
            tuple(t.shape)
            for t in torch.utils._pytree.tree_leaves(out)
            if isinstance(t, torch.Tensor)
        ]
        self.trace.append((str(func.overloadpacket), shapes))
        return out


def _trace(step):
    with _Ops() as ops:
        step()
    return ops.trace


@pytest.mark.parametrize("dead", [0.0, 0.3, 1.0])
def test_the_step_has_no_host_sync_and_shapes_that_do_not_depend_on_the_data(dead):
    """What a CUDA graph needs: no nonzero or item(), the same ops on the same shapes
    whatever is dead (the per-cell path fails both)."""
    cfgs = _cfgs((4, 8))
    x = _batches(1)[0]

    def stacked(dead):
        stack = StackedSAE(_models(cfgs, dead))
        opt = make_optimizer(stack, LR, (0.9, 0.999), 1e-8)
        return _trace(lambda: stacked_step(stack, opt, x, 1.0))

    def per_cell(dead):
        ref = PerCell(_models(cfgs, dead))
        return _trace(lambda: ref.step(x))

    syncs = {"aten.nonzero", "aten._local_scalar_dense", "aten.masked_select"}
    trace = stacked(dead)
    assert not syncs & {op for op, _ in trace}
    assert trace == stacked(0.5)
    if dead:
        ref_ops = {op for op, _ in per_cell(dead)}
        assert "aten.nonzero" in ref_ops and "aten._local_scalar_dense" in ref_ops


def test_the_bench_runs_at_toy_sizes(capsys):
    from sae.bench import stacked as bench

    r = bench.main(["--d", "16", "--batch", "32", "--k", "2,4", "--n", "32,64", "--steps", "1"])
    assert r["cells"] == 4 and r["stacks"] == 2 and r["floor"] > 0
    assert set(r["aux"]) == {"sync", "masked"}
    assert "stacked, 2 stacks of equal n" in capsys.readouterr().out
