"""Parity of the sparse ops (torch fallback and Triton, the latter under TRITON_INTERPRET=1
on CPU) against dense formulas, forward and backward, including the edge cases:
d not a power of two, k not a multiple of 8, bf16 inputs, repeated indices, empty packs.
"""

import importlib.util
import os

import pytest
import torch

from sae.kernels import torch_ops
from sae.sparse import selected_encode, sparse_decode

BACKENDS = ["torch"]
if importlib.util.find_spec("triton") is not None:
    BACKENDS.append("triton")


@pytest.fixture(params=BACKENDS)
def ops(request):
    if request.param == "torch":
        return torch_ops
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors runs only through TRITON_INTERPRET=1")
    from sae.kernels import triton_ops

    return triton_ops


def _case(B, k, n, d, dtype=torch.float32, seed=0, repeat=False):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (B, k), generator=g)
    if repeat and B and k:
        idx[0] = idx[0, 0]  # one sample picks the same latent k times
        idx[:, -1] = idx[0, 0]  # and every sample shares one latent
    vals = torch.rand(B, k, generator=g).to(dtype)
    table = torch.randn(n, d, generator=g).to(dtype)
    vec = torch.randn(B, d, generator=g).to(dtype)
    return idx, vals, table, vec


def _dense(idx, vals, n):
    return torch.zeros(idx.shape[0], n).scatter_add(1, idx, vals.float())


SHAPES = [(6, 5, 23, 24), (4, 3, 17, 48), (5, 13, 40, 20), (3, 1, 7, 16)]


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}


@pytest.mark.parametrize(("B", "k", "n", "d"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_weighted_sum(ops, B, k, n, d, dtype):
    idx, vals, table, _ = _case(B, k, n, d, dtype, repeat=True)
    bias = torch.randn(d)
    expect = _dense(idx, vals, n) @ table.float() + bias
    got = ops.gather_weighted_sum(idx, vals, table, bias)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expect, **_tol(dtype))


@pytest.mark.parametrize(("B", "k", "n", "d"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_dot(ops, B, k, n, d, dtype):
    idx, _, table, vec = _case(B, k, n, d, dtype, repeat=True)
    expect = torch.einsum("bkd,bd->bk", table.float()[idx], vec.float())
    torch.testing.assert_close(ops.gather_dot(idx, table, vec), expect, **_tol(dtype))


@pytest.mark.parametrize(("B", "k", "n", "d"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_segment_sum(ops, B, k, n, d, dtype):
    idx, vals, _, rows = _case(B, k, n, d, dtype, repeat=True)
    dense = _dense(idx, vals, n)
    out, wsum = ops.segment_sum(idx, vals, rows, n, with_weight_sum=True)
    torch.testing.assert_close(out, dense.T @ rows.float(), **_tol(dtype))
    torch.testing.assert_close(wsum, dense.sum(0), **_tol(dtype))
    out2, none = ops.segment_sum(idx, vals, rows, n)
    assert none is None
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


@pytest.mark.parametrize(("B", "k"), [(0, 4), (3, 0), (0, 0)])
def test_empty_inputs(ops, B, k):
    idx, vals, table, vec = _case(B, k, 9, 20)
    bias = torch.randn(20)
    torch.testing.assert_close(
        ops.gather_weighted_sum(idx, vals, table, bias), bias.expand(B, 20).clone()
    )
    assert ops.gather_dot(idx, table, vec).shape == (B, k)
    out, wsum = ops.segment_sum(idx, vals, vec, 9, with_weight_sum=True)
    assert torch.equal(out, torch.zeros(9, 20)) and torch.equal(wsum, torch.zeros(9))


def test_segment_sum_is_deterministic(ops):
    # Deterministic: the same inputs give the same bits on every call.
    idx, vals, _, rows = _case(32, 7, 50, 36, seed=3)
    a, _ = ops.segment_sum(idx, vals, rows, 50)
    b, _ = ops.segment_sum(idx, vals, rows, 50)
    assert torch.equal(a, b)


@pytest.mark.parametrize("x_grad", [True, False])
def test_autograd_functions_match_dense_autograd(monkeypatch, ops, x_grad):
    import sae.sparse

    monkeypatch.setattr(sae.sparse, "ops_for", lambda t: ops)
    B, k, n, d = 6, 5, 30, 24
    idx, _, table, x = _case(B, k, n, d, repeat=True)
    b_pre = torch.randn(d)
    W_enc = torch.randn(n, d)
    b_lat = torch.randn(n)
    # x as data (no gradient: the pre-bias gets its own formula) and x as a leaf
    leaves = [x.clone().requires_grad_(x_grad)] + [
        t.clone().requires_grad_() for t in (b_pre, W_enc, b_lat, table)
    ]
    z = ((leaves[0] - leaves[1]) @ leaves[2].T + leaves[3]).detach()
    sel = selected_encode(*leaves[:4], idx, z.gather(1, idx))
    out = sparse_decode(torch.relu(sel), idx, leaves[4])
    grad = torch.randn(B, d)
    out.backward(grad)

    ref = [x.clone().requires_grad_(x_grad)] + [
        t.clone().requires_grad_() for t in (b_pre, W_enc, b_lat, table)
    ]
    z_ref = (ref[0] - ref[1]) @ ref[2].T + ref[3]
    (torch.relu(_gather_dense(z_ref, idx)) @ ref[4]).backward(grad)
    for got, want in zip(leaves, ref, strict=True):
        if want.grad is None:
            assert got.grad is None
        else:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


def _gather_dense(z, idx):
    """Dense [B, n] codes holding z at the selected places (repeats add up, as in the ops)."""
    return torch.zeros_like(z).scatter_add(1, idx, z.gather(1, idx))


def test_dispatch_uses_torch_for_cpu_tensors_and_honours_sae_kernels(monkeypatch):
    from sae.kernels import choose_backend, ops_for, reset_backend

    assert ops_for(torch.zeros(1)) is torch_ops
    monkeypatch.setenv("SAE_KERNELS", "torch")
    reset_backend()
    assert choose_backend() == ("torch", "forced by SAE_KERNELS=torch")
    monkeypatch.setenv("SAE_KERNELS", "cuda-please")
    with pytest.raises(ValueError, match="SAE_KERNELS"):
        choose_backend()
    reset_backend()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_step_matches_cpu_step(dtype):
    from sae import SAEConfig, TopKSAE
    from sae.kernels import ops_for, reset_backend, triton_ops

    reset_backend()
    assert ops_for(torch.zeros(1, device="cuda")) is triton_ops
    cfg = SAEConfig(d_in=1536, n_latents=3072, k=37)
    cpu = TopKSAE(cfg, generator=torch.Generator().manual_seed(0))
    gpu = TopKSAE(cfg, generator=torch.Generator().manual_seed(0)).cuda()
    x = torch.randn(512, 1536)
    out_c, out_g = cpu(x), gpu(x.cuda(), compute_dtype=None if dtype == torch.float32 else dtype)
    out_c.loss.backward()
    out_g.loss.backward()
    tol = {"rtol": 1e-3, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 5e-2, "atol": 5e-3}
    torch.testing.assert_close(out_g.loss.cpu(), out_c.loss, **tol)
    if dtype == torch.float32:
        torch.testing.assert_close(gpu.W_dec.grad.cpu(), cpu.W_dec.grad, **tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("B", "k", "n", "d"), [(4096, 32, 12288, 1536), (257, 17, 1000, 384)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernels_match_a_float64_reference_at_real_sizes(B, k, n, d, dtype):
    from sae.kernels import triton_ops

    idx, vals, table, vec = (t.cuda() for t in _case(B, k, n, d, dtype, repeat=True))
    codes = torch.zeros(B, n, dtype=torch.float64, device="cuda").scatter_add(1, idx, vals.double())
    T, V = table.double(), vec.double()
    seg, wsum = triton_ops.segment_sum(idx, vals, vec, n, with_weight_sum=True)
    for got, want in (
        (triton_ops.gather_weighted_sum(idx, vals, table), codes @ T),
        (triton_ops.gather_dot(idx, table, vec), (V @ T.T).gather(1, idx)),
        (seg, codes.T @ V),
        (wsum, codes.sum(0)),
    ):
        # float32 accumulation whatever the input dtype: float32 rounding only
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-5
