"""300k papers through a cell's feature statistics within a stated memory bound.

Codes are streamed (one batch's [batch, n] pre-activations at a time) and every later
step reads them (N x k), so the peak stays far below one dense [N, n] activation matrix:
here 300k x 1024 float32 would be 1.2 GB; the bound is 500 MB over the start (211 MB
measured: the codes, their per-latent view and the co-occurrence counts).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(900)

N, D, N_LATENTS, K = 300_000, 32, 1024, 16
BOUND_MB = 500

_SCRIPT = """
import json, resource, sys
import numpy as np, torch
from sae.codes import encode_matrix
from sae.config import SAEConfig
from sae.model import TopKSAE
from tasks.features.cards import decoder_neighbours, latent_stats
from tasks.features.families import cooccurrence, top_cooccurring_all

N, D, n, k = map(int, sys.argv[1:5])
path = sys.argv[5]
torch.set_num_threads(2)
x = np.lib.format.open_memmap(path, mode="r")
model = TopKSAE(SAEConfig(d_in=D, n_latents=n, k=k), generator=torch.Generator().manual_seed(0))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
codes = encode_matrix(model, x, batch_size=4096)
stats = latent_stats(codes)
counts = cooccurrence(codes.values_NW, codes.indices_NW, n)
top_cooccurring_all(counts, 8)
decoder_neighbours(model.W_dec.detach())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024,
                  "rows": codes.n_rows, "live": int((stats.counts_N > 0).sum())}))
"""


def test_300k_papers_stay_within_the_memory_bound(tmp_path):
    import numpy as np

    path = tmp_path / "x.npy"
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(N, D))
    rng = np.random.default_rng(0)
    for start in range(0, N, 50_000):
        block = rng.standard_normal((min(50_000, N - start), D), dtype=np.float32)
        x[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    x.flush()
    del x
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(N), str(D), str(N_LATENTS), str(K), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    assert result["rows"] == N and result["live"] > N_LATENTS // 2
    dense_mb = N * N_LATENTS * 4 / 2**20
    assert result["peak_mb"] - result["base_mb"] < BOUND_MB < dense_mb / 2
