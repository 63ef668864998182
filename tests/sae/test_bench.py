"""The benchmarks run end to end at toy sizes and print their tables (no timing asserted)."""

import re

from sae.bench import grid, kernels, step


def test_step_bench_prints_the_three_figures(capsys):
    step.main(["--d", "16", "--n", "64", "--k", "4", "--batch", "32", "--steps", "2"])
    out = capsys.readouterr().out
    for label in ("(a) this library", "(b) dense reference", "(c) encoder forward GEMM"):
        assert re.search(re.escape(label) + r".*\d+\.\d+\s+\d+\.\d+", out), out
    assert "speed-up of (a) over (b)" in out


def test_kernel_bench_prints_a_row_per_op_impl_and_shape(capsys):
    kernels.main(["--d", "16", "--n", "32", "--k", "3", "--batch", "8", "--steps", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("decode", "encoder"))]
    # 2 dtypes x 2 ops x (torch, dense) on a machine without CUDA
    assert len(rows) == 8, out


def test_grid_bench_prints_one_by_one_fused_and_floor(capsys):
    grid.main(["--d", "16", "--rows", "300", "--batch", "64", "--k", "2,4", "--n", "16,32"])
    out = capsys.readouterr().out
    assert "one epoch of 4 cells" in out
    for label in ("(a) cells one after another", "(b) fused, 1 pack(s)", "floor"):
        assert label in out
