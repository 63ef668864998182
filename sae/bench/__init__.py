"""Benchmarks that print tables (speed targets live here, not in timed tests).

python -m sae.bench [step] ...   one cell's training step vs dense vs the GEMM floor
python -m sae.bench kernels ...  sparse-op kernels vs the torch fallback vs dense
python -m sae.bench grid ...     one epoch of the k x n grid: cells one by one vs fused
python -m sae.bench aot [--arch 90]  kernels compiled for a GPU without one: registers, spills
"""
