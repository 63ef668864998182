"""The sparse torch ops against dense formulas, including repeated indices."""

import torch

from sae.sparse import gather_dot, segment_sum_rows, sparse_decode


def _dense_codes(values, indices, n):
    return torch.zeros(values.shape[0], n, dtype=values.dtype).scatter_add(1, indices, values)


def test_segment_sum_rows_equals_sparse_transpose_matmul():
    g = torch.Generator().manual_seed(0)
    B, k, n, d = 12, 5, 17, 7
    idx = torch.randint(0, n, (B, k), generator=g)
    idx[0] = 3  # one sample selecting the same latent k times
    w = torch.randn(B, k, generator=g)
    rows = torch.randn(B, d, generator=g)
    expect = _dense_codes(w, idx, n).T @ rows
    torch.testing.assert_close(segment_sum_rows(idx, w, rows, n), expect)


def test_gather_dot_equals_dense_dot():
    g = torch.Generator().manual_seed(1)
    B, k, n, d = 9, 4, 13, 6
    idx = torch.randint(0, n, (B, k), generator=g)
    table = torch.randn(n, d, generator=g)
    vec = torch.randn(B, d, generator=g)
    expect = torch.einsum("bkd,bd->bk", table[idx], vec)
    torch.testing.assert_close(gather_dot(idx, table, vec), expect)


def test_sparse_decode_gradients_equal_dense_decode():
    g = torch.Generator().manual_seed(2)
    B, k, n, d = 8, 3, 11, 5
    idx = torch.randint(0, n, (B, k), generator=g)
    v1 = torch.rand(B, k, generator=g).requires_grad_()
    W1 = torch.randn(n, d, generator=g).requires_grad_()
    v2 = v1.detach().clone().requires_grad_()
    W2 = W1.detach().clone().requires_grad_()
    grad = torch.randn(B, d, generator=g)
    sparse_decode(v1, idx, W1).backward(grad)
    (_dense_codes(v2, idx, n) @ W2).backward(grad)
    torch.testing.assert_close(v1.grad, v2.grad)
    torch.testing.assert_close(W1.grad, W2.grad)
