"""Plots of a sweep's results, written as PNG files.

Every function builds its own ``matplotlib.figure.Figure`` on an Agg canvas: no
pyplot, no global backend state, so they are safe to call from worker threads and
importing this module does not import matplotlib at all.

Non-finite values (NaN, and -inf for a log feature density with every latent dead)
are left out of lines and histograms rather than failing the plot; empty input
raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_DPI = 120


# --------------------------------------------------------------------- helpers
def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.8):
    """A Figure with its own Agg canvas and ``ncols`` axes side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def _float(value: Any) -> float:
    """``value`` as a finite float, or NaN (None, strings that are not numbers, ±inf)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _colours(count: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    if count == 1:
        return [cmap(0.35)]
    return [cmap(0.9 * i / (count - 1)) for i in range(count)]


# ------------------------------------------------------------------ the plots
def pareto_plot(
    rows: Iterable[Mapping[str, Any]], path: str | Path, *, domain: str | None = None
) -> Path:
    """NMSE against k (one line per n) and NMSE against log feature density.

    ``rows`` are mappings with at least ``k``, ``n_latents``, ``nmse`` and
    ``log_feature_density`` (e.g. :func:`tasks.sweep.compare.cell_rows`, or
    ``EvalMetrics.as_dict()`` plus the cell's shape). Left: NMSE vs k on a log2 axis
    with the grid's k values as ticks. Right: the sparsity/fidelity trade-off, NMSE
    vs mean log10 feature density, one colour per n, each point labelled with its k.
    Returns ``path``.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("pareto_plot: no rows to plot (the sweep has no finished cells)")
    required = ("k", "n_latents", "nmse", "log_feature_density")
    points: dict[int, list[tuple[int, float, float]]] = {}
    for i, row in enumerate(rows):
        missing = [key for key in required if key not in row]
        if missing:
            raise ValueError(f"pareto_plot: row {i} lacks {missing}: {dict(row)!r}")
        try:
            k, n = int(row["k"]), int(row["n_latents"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"pareto_plot: row {i} has a non-integer k or n_latents") from exc
        points.setdefault(n, []).append(
            (k, _float(row["nmse"]), _float(row["log_feature_density"]))
        )

    fig, (ax_k, ax_fd) = _figure(ncols=2, width=5.6, height=4.4)
    ns = sorted(points)
    ks = sorted({k for pts in points.values() for k, _, _ in pts})
    for colour, n in zip(_colours(len(ns)), ns, strict=True):
        pts = sorted(points[n])
        k_arr = np.array([p[0] for p in pts], dtype=float)
        nmse = np.array([p[1] for p in pts])
        log_fd = np.array([p[2] for p in pts])
        ax_k.plot(k_arr, nmse, marker="o", color=colour, label=f"n={n}")
        ax_fd.plot(log_fd, nmse, marker="o", color=colour, label=f"n={n}")
        for k, y, x in pts:
            if math.isfinite(x) and math.isfinite(y):
                ax_fd.annotate(
                    f"k={k}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=colour,
                )

    _log2_axis(ax_k, ks)
    ax_k.set_xlabel("k (active latents)")
    ax_k.set_ylabel("NMSE (held out)")
    ax_k.set_title("NMSE vs k")
    ax_fd.set_xlabel("mean log10 feature density (live latents)")
    ax_fd.set_ylabel("NMSE (held out)")
    ax_fd.set_title("NMSE vs feature density")
    for ax in (ax_k, ax_fd):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title="latents")
    fig.suptitle(f"TopK SAE sweep: {domain}" if domain else "TopK SAE sweep")
    return _save(fig, path)


def density_histograms(
    densities: Mapping[str, Any], path: str | Path, *, bins: int = 50, title: str | None = None
) -> Path:
    """Overlaid step histograms of log10(feature density) of the live latents per cell.

    ``densities`` maps a cell label to per-latent densities (fractions in [0, 1], as
    in :class:`sae.metrics.Evaluation` and a cell's feature_density.npy); zeros are dead
    latents, counted in the legend label instead of the histogram. NaN entries are
    ignored. Returns ``path``.
    """
    if not densities:
        raise ValueError("density_histograms: no cells to plot (empty mapping)")
    cells: list[tuple[str, np.ndarray, int, int]] = []
    for label, values in densities.items():
        d = np.asarray(values, dtype=np.float64).reshape(-1)
        known = d[~np.isnan(d)]
        live = known[known > 0]
        dead = int((known == 0).sum())
        cells.append((str(label), np.log10(live), dead, known.size))

    all_live = np.concatenate([c[1] for c in cells])
    if all_live.size:
        lo, hi = float(all_live.min()), float(all_live.max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    else:  # every latent of every cell is dead: empty axes with the legend
        edges = np.linspace(-6.0, 0.0, bins + 1)

    fig, (ax,) = _figure(width=7.2, height=4.8)
    for colour, (label, log_d, dead, total) in zip(_colours(len(cells)), cells, strict=True):
        legend = f"{label} (dead {dead}/{total})"
        if log_d.size:
            ax.hist(log_d, bins=edges, histtype="step", linewidth=1.4, color=colour, label=legend)
        else:
            ax.plot([], [], color=colour, label=legend)
    ax.set_xlabel("log10 feature density (live latents)")
    ax.set_ylabel("latents")
    ax.set_title(title or "Feature density per cell")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def training_curves(
    histories: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    metric: str = "train_nmse",
    *,
    title: str | None = None,
) -> Path:
    """One line per cell of ``metric`` against the step, log y axis.

    ``histories`` maps a cell label to ``(step, value)`` pairs (any order; e.g. from
    ``MlflowClient.get_metric_history``). Non-finite values break the line; the y
    axis falls back to linear when no value is positive. Returns ``path``.
    """
    if not histories or not any(len(h) for h in histories.values()):
        raise ValueError(f"training_curves: no {metric} history to plot (empty input)")
    fig, (ax,) = _figure(width=7.2, height=4.8)
    any_positive = False
    for colour, (label, history) in zip(_colours(len(histories)), histories.items(), strict=True):
        if not len(history):
            continue
        pts = sorted((float(s), _float(v)) for s, v in history)
        steps = np.array([p[0] for p in pts])
        values = np.array([p[1] for p in pts])
        any_positive |= bool((values > 0).any())
        ax.plot(steps, values, color=colour, linewidth=1.2, label=str(label))
    if any_positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} per cell")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def importance_plot(
    importances: Mapping[str, Any], path: str | Path, *, title: str | None = None
) -> Path:
    """Per cell, latent importance sorted descending against its rank, log-log.

    ``importances`` maps a cell label to per-latent importances (a cell's importance.npy,
    :func:`sae.importance.latent_importance`); only positive entries can be drawn on a
    log axis, so the others are left out, as they are of the power-law fit whose
    exponent and R^2 the legend gives. Returns ``path``.
    """
    from sae.importance import power_law_fit

    if not importances:
        raise ValueError("importance_plot: no cells to plot (empty mapping)")
    fig, (ax,) = _figure(width=7.2, height=4.8)
    drawn = False
    for colour, (label, values) in zip(
        _colours(len(importances)), importances.items(), strict=True
    ):
        imp = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))[::-1]
        rank = np.arange(1, imp.size + 1)
        keep = imp > 0  # also drops NaN
        if not keep.any():  # e.g. a toy sweep whose every removal lowers the NMSE
            ax.plot([], [], color=colour, label=f"{label} (no latent with importance > 0)")
            continue
        fit = power_law_fit(imp)
        legend = f"{label} (exponent {fit.exponent:.2f}, R² {fit.r2:.2f})"
        ax.plot(rank[keep], imp[keep], color=colour, linewidth=1.2, label=legend)
        drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("rank (by importance)")
    ax.set_ylabel("importance: NMSE rise when removed alone")
    ax.set_title(title or "Latent importance per cell")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


_SERIES_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def pruning_plot(
    series_by_k: Mapping[int, Mapping[str, Mapping[int, float]]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """NMSE against the number of latents n, per k, one line per series.

    ``series_by_k`` maps k to ``{series name: {n: NMSE}}``, e.g. ``"dedicated"`` (the
    cells trained at each n), ``"pruned"`` (the largest cell cut to each n by
    importance) and later a Matryoshka model's prefixes. Colour marks k; line style and
    marker mark the series, in the order the names first appear. Returns ``path``.
    """
    series_by_k = {k: s for k, s in series_by_k.items() if any(len(v) for v in s.values())}
    if not series_by_k:
        raise ValueError("pruning_plot: no series to plot (empty input)")
    names = list(dict.fromkeys(name for s in series_by_k.values() for name in s))
    styles = {name: _SERIES_STYLES[i % len(_SERIES_STYLES)] for i, name in enumerate(names)}
    ks = sorted(series_by_k)
    ns = sorted({int(n) for s in series_by_k.values() for v in s.values() for n in v})
    fig, (ax,) = _figure(width=7.2, height=4.8)
    for colour, k in zip(_colours(len(ks)), ks, strict=True):
        for name, points in series_by_k[k].items():
            if not points:
                continue
            pts = sorted((int(n), _float(v)) for n, v in points.items())
            linestyle, marker = styles[name]
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                color=colour,
                linestyle=linestyle,
                marker=marker,
                markersize=4,
                label=f"k={k} {name}",
            )
    _log2_axis(ax, ns)
    ax.set_xlabel("n (latents kept)")
    ax.set_ylabel("NMSE (held out)")
    ax.set_title(title or "Pruned by importance vs trained at each n")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncols=2 if len(ks) * len(names) > 6 else 1)
    return _save(fig, path)


def retrieval_plot(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Retrieval fidelity against k, one line per n: recall@10 of search with each held-out
    query's reconstruction (solid) and with the codes alone (dashed), against search with
    the original embedding; ``rows`` hold ``k``, ``n_latents`` and the metrics of
    :class:`sae.retrieval.RetrievalFidelity`."""
    points: dict[int, list[tuple[int, float, float]]] = {}
    for row in rows:
        points.setdefault(int(row["n_latents"]), []).append(
            (
                int(row["k"]),
                _float(row.get("retrieval_recall_at_10")),
                _float(row.get("sparse_recall_at_10")),
            )
        )
    if not points:
        raise ValueError("retrieval_plot: no rows to plot")
    fig, (ax,) = _figure(width=6.4, height=4.4)
    ks = sorted({k for pts in points.values() for k, _, _ in pts})
    for colour, n in zip(_colours(len(points)), sorted(points), strict=True):
        pts = sorted(points[n])
        k_arr = [p[0] for p in pts]
        ax.plot(k_arr, [p[1] for p in pts], marker="o", color=colour, label=f"n={n}")
        ax.plot(k_arr, [p[2] for p in pts], marker="x", ls="--", color=colour, alpha=0.6)
    _log2_axis(ax, ks)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k (active latents per abstract)")
    ax.set_ylabel("recall@10 against search with the embedding")
    ax.set_title("Retrieval fidelity (solid: reconstruction; dashed: codes alone)")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def probe_plot(
    rows: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    probe_ks: Sequence[int] = (1, 4, 16),
    domain: str | None = None,
) -> Path:
    """Held-out F1 of the arXiv category probes against the probe's k, one line per cell
    (colour: n; marker: the SAE's k): k latents of the codes (solid), k coordinates of the
    embedding (dashed, grey: the same for every cell of one snapshot) and the logistic
    probe on the whole embedding (dotted, the ceiling). ``rows`` hold ``k``,
    ``n_latents`` and the features summary's ``probe_f1_k{k}_mean``,
    ``dense_probe_f1_k{k}_mean`` and ``dense_probe_f1_mean``
    (:mod:`tasks.features.probing`); rows without probes are left out."""
    rows = [r for r in rows if math.isfinite(_float(r.get(f"probe_f1_k{probe_ks[0]}_mean")))]
    if not rows:
        raise ValueError("probe_plot: no cell with category probes to plot")
    fig, (ax,) = _figure(width=6.4, height=4.6)
    ns = sorted({int(r["n_latents"]) for r in rows})
    sae_ks = sorted({int(r["k"]) for r in rows})
    markers = dict(zip(sae_ks, "os^Dvp*h" * len(sae_ks), strict=False))
    colour = dict(zip(ns, _colours(len(ns)), strict=True))
    for r in sorted(rows, key=lambda r: (int(r["n_latents"]), int(r["k"]))):
        n, k = int(r["n_latents"]), int(r["k"])
        f1 = [_float(r.get(f"probe_f1_k{p}_mean")) for p in probe_ks]
        ax.plot(probe_ks, f1, marker=markers[k], color=colour[n], label=f"k={k}, n={n}")
    dense = [_float(rows[0].get(f"dense_probe_f1_k{p}_mean")) for p in probe_ks]
    ax.plot(probe_ks, dense, ls="--", marker="x", color="0.45", label="embedding, k coords")
    ceiling = _float(rows[0].get("dense_probe_f1_mean"))
    if math.isfinite(ceiling):
        ax.axhline(ceiling, ls=":", color="0.3", label="embedding, all coords")
    _log2_axis(ax, list(probe_ks))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k (latents or coordinates the probe reads)")
    ax.set_ylabel("mean held-out F1 over arXiv categories")
    cats = _float(rows[0].get("probe_categories"))
    of = f" ({int(cats)} categories)" if math.isfinite(cats) else ""
    ax.set_title(f"Sparse probing{of}" + (f": {domain}" if domain else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _log2_axis(ax, values: list[int]) -> None:
    """A log2 x axis labelled at exactly the grid's values (k or n), with room around a
    single value."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.minorticks_off()
    if len(values) == 1:
        ax.set_xlim(values[0] / 2, values[0] * 2)


__all__ = [
    "density_histograms",
    "importance_plot",
    "pareto_plot",
    "probe_plot",
    "pruning_plot",
    "training_curves",
]
