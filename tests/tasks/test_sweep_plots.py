"""The sweep plots write readable PNGs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.sweep.plots import (
    density_histograms,
    importance_plot,
    pareto_plot,
    probe_plot,
    pruning_plot,
    retrieval_plot,
    training_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width=300, min_height=200):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    import matplotlib.image

    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, image.shape
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    # Something was drawn: not a single flat colour.
    assert float(image[..., :3].std()) > 0.01


def grid_rows():
    rows = []
    for n in (3072, 6144, 12288):
        for k in (16, 32, 64, 128):
            rows.append(
                {
                    "k": k,
                    "n_latents": n,
                    "nmse": 0.25 * (16 / k) ** 0.4 * (3072 / n) ** 0.1,
                    "log_feature_density": math.log10(k / n) - 0.3,
                }
            )
    return rows


# ----------------------------------------------------------------- pareto_plot
def test_pareto_plot_grid(tmp_path):
    out = pareto_plot(grid_rows(), tmp_path / "sub" / "pareto.png", domain="cs.LG")
    assert out == tmp_path / "sub" / "pareto.png"
    assert_png(out, min_width=800)


def test_pareto_plot_single_cell_and_nan(tmp_path):
    single = [{"k": 32, "n_latents": 9216, "nmse": 0.12, "log_feature_density": -2.4}]
    assert_png(pareto_plot(single, tmp_path / "one.png"))
    rows = grid_rows()
    rows[0]["nmse"] = float("nan")
    rows[1]["log_feature_density"] = float("-inf")  # every latent dead
    rows[2]["nmse"] = None
    assert_png(pareto_plot(rows, tmp_path / "nan.png", domain="astro-ph"))
    all_nan = [{"k": 16, "n_latents": 3072, "nmse": math.nan, "log_feature_density": math.nan}]
    assert_png(pareto_plot(all_nan, tmp_path / "all_nan.png"))


def test_pareto_plot_rejects_empty_and_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        pareto_plot([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="lacks"):
        pareto_plot([{"k": 16, "nmse": 0.2}], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------- density_histograms
def test_density_histograms(tmp_path):
    rng = np.random.default_rng(0)
    densities = {}
    for label in ("csLG_16_3072_1024", "csLG_64_9216_1024"):
        d = 10 ** rng.uniform(-5, -1, size=512)
        d[:40] = 0.0  # dead
        densities[label] = d
    assert_png(density_histograms(densities, tmp_path / "density.png"))


def test_density_histograms_edge_cases(tmp_path):
    one = {"only": np.array([0.0, 0.01, 0.02, np.nan, 0.5])}
    assert_png(density_histograms(one, tmp_path / "one.png"))
    same = {"flat": np.full(64, 1 / 16)}  # every latent equally dense
    assert_png(density_histograms(same, tmp_path / "flat.png"))
    dead = {"all dead": np.zeros(32), "torch": torch.tensor([0.0, 0.25, 0.75])}
    assert_png(density_histograms(dead, tmp_path / "dead.png"))
    with pytest.raises(ValueError, match="empty"):
        density_histograms({}, tmp_path / "x.png")


# ------------------------------------------------------------ training_curves
def test_training_curves(tmp_path):
    histories = {
        f"k{k}-n9216": [(s, 0.5 * (16 / k) ** 0.3 * (1 + s) ** -0.3) for s in range(0, 2000, 50)]
        for k in (16, 32, 64)
    }
    assert_png(training_curves(histories, tmp_path / "curves.png"))


def test_training_curves_edge_cases(tmp_path):
    one = {"k32-n9216": [(100, 0.2), (0, 0.9), (50, float("nan")), (150, 0.15)]}
    assert_png(training_curves(one, tmp_path / "one.png", metric="train_loss"))
    nonpositive = {"a": [(0, 0.0), (1, -1.0)], "b": []}  # log axis impossible: linear
    assert_png(training_curves(nonpositive, tmp_path / "lin.png", metric="lr"))
    with pytest.raises(ValueError, match="empty"):
        training_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        training_curves({"a": []}, tmp_path / "x.png")


# ------------------------------------------------------------ importance_plot
def test_importance_plot(tmp_path):
    rng = np.random.default_rng(0)
    importances = {
        f"k{k}-n{n}": rng.permutation(0.1 * np.arange(1, n + 1) ** -(0.6 + k / 100))
        for k in (16, 64)
        for n in (3072, 12288)
    }
    assert_png(importance_plot(importances, tmp_path / "importance.png"))


def test_importance_plot_edge_cases(tmp_path):
    # Dead (0), overshooting (< 0) and NaN entries cannot go on a log axis: left out.
    mixed = {"k4-n32": np.array([0.3, 0.1, 0.0, -0.01, np.nan, 0.05])}
    assert_png(importance_plot(mixed, tmp_path / "mixed.png"))
    none_positive = {"k4-n32": np.zeros(8), "k8-n32": np.array([0.2, 0.1, 0.05])}
    assert_png(importance_plot(none_positive, tmp_path / "dead.png"))
    # A sweep whose every cell has none (a toy sweep) still gets its plot, not an error.
    assert_png(importance_plot({"k4-n32": np.zeros(8)}, tmp_path / "all-dead.png"))
    with pytest.raises(ValueError, match="empty"):
        importance_plot({}, tmp_path / "x.png")


# --------------------------------------------------------------- pruning_plot
def test_pruning_plot(tmp_path):
    ns = (3072, 6144, 12288)
    series = {
        k: {
            "trained at n": {n: 0.3 * (16 / k) ** 0.4 * (3072 / n) ** 0.1 for n in ns},
            "largest n pruned by importance": {
                n: 0.3 * (16 / k) ** 0.4 * (12288 / n) ** 0.05 * (3072 / n) ** 0.1 for n in ns
            },
            "matryoshka prefix": {n: 0.31 * (16 / k) ** 0.4 * (3072 / n) ** 0.08 for n in ns},
        }
        for k in (16, 64, 128)
    }
    assert_png(pruning_plot(series, tmp_path / "pruning.png"))


def test_pruning_plot_edge_cases(tmp_path):
    one = {4: {"trained at n": {32: 0.4}, "pruned": {32: float("nan")}}}
    assert_png(pruning_plot(one, tmp_path / "one.png"))
    with pytest.raises(ValueError, match="empty"):
        pruning_plot({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        pruning_plot({4: {"trained at n": {}}}, tmp_path / "x.png")


def test_retrieval_plot(tmp_path):
    rows = [
        {"k": k, "n_latents": n, "retrieval_recall_at_10": 0.5 + k / 300 - n / 1e5,
         "sparse_recall_at_10": 0.3 + k / 400}
        for k in (16, 32, 64, 128) for n in (3072, 12288)
    ]  # fmt: skip
    assert_png(retrieval_plot(rows, tmp_path / "retrieval.png"))
    one = [{"k": 8, "n_latents": 64, "retrieval_recall_at_10": 0.7}]  # no sparse figure
    assert_png(retrieval_plot(one, tmp_path / "one.png"))
    with pytest.raises(ValueError, match="no rows"):
        retrieval_plot([], tmp_path / "x.png")


def test_probe_plot(tmp_path):
    dense = {
        "dense_probe_f1_k1_mean": 0.2,
        "dense_probe_f1_k4_mean": 0.4,
        "dense_probe_f1_k16_mean": 0.6,
        "dense_probe_f1_mean": 0.8,
        "probe_categories": 5,
    }
    rows = [
        {"k": k, "n_latents": n, **dense, "probe_f1_k1_mean": 0.3 + k / 400,
         "probe_f1_k4_mean": 0.45, "probe_f1_k16_mean": 0.55 + n / 1e5}
        for k in (16, 32) for n in (1024, 2048)
    ]  # fmt: skip
    unprobed = {"k": 64, "n_latents": 1024, "probe_categories": 0}
    assert_png(probe_plot([*rows, unprobed], tmp_path / "probes.png", domain="cs.LG"))
    with pytest.raises(ValueError, match="no cell with category probes"):
        probe_plot([unprobed], tmp_path / "x.png")
