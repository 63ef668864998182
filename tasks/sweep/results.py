"""The one results table: `sae sweep`, `sae train` and `sae runs` print it, the sweep's
Prefect artifact and its MLflow parent run carry it. A row is a dict of a cell's
fields (``k``, ``n_latents``, the held-out metrics, ...); each caller picks columns."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sae.metrics import METRIC_NAMES

Row = Mapping[str, Any]


def _number(fmt: str) -> Callable[[Any], str]:
    def show(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return fmt.format(value)

    return show


def _text(value: Any) -> str:
    return "-" if value is None else str(value).replace("|", "\\|")


# name -> (header, formatter, right-aligned)
METRIC_COLUMNS: dict[str, tuple[str, Callable[[Any], str], bool]] = {
    "nmse": ("nmse", _number("{:.4f}"), True),
    "log_feature_density": ("log FD", _number("{:.3f}"), True),
    "act_mean": ("act mean", _number("{:.4f}"), True),
    "dead_fraction": ("dead", _number("{:.3f}"), True),
    "l0": ("L0", _number("{:.2f}"), True),
    "auxk_loss": ("auxk", _number("{:.4f}"), True),
}
COLUMNS = {
    "domain": ("domain", _text, False),
    "sweep_id": ("sweep", lambda v: _text(v if v is None else str(v)[:12]), False),
    "cell": ("cell", _text, False),
    "k": ("k", _text, True),
    "n_latents": ("n", _text, True),
    **METRIC_COLUMNS,
    # Not a held-out EvalMetrics field: retrieval.json's, search with the reconstruction
    # against search with the embedding (top 10).
    "retrieval_recall_at_10": ("R@10", _number("{:.3f}"), True),
    "seconds": ("s", _number("{:.1f}"), True),
    "status": ("status", _text, False),
    "model": ("model", _text, False),
    "champion": ("champion", lambda v: "*" if v else "", False),
}


def results_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """A markdown table, one line per row: names left-aligned, numbers right-aligned
    (also in a renderer: the rule carries the alignment); a missing value is ``-``."""
    specs = [COLUMNS.get(c, (c, _number("{:.4g}"), True)) for c in columns]
    body = [[show(r.get(c)) for c, (_, show, _) in zip(columns, specs, strict=True)] for r in rows]
    heads = [h for h, _, _ in specs]
    widths = [max([len(h), *(len(b[i]) for b in body)]) for i, h in enumerate(heads)]
    right = [r for _, _, r in specs]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join("-" * (w + 1) + (":" if r else "-") for w, r in zip(widths, right, strict=True))
        + "|"
    )
    return "\n".join([line(heads), rule, *(line(b) for b in body)])


SWEEP_COLUMNS = (
    "k", "n_latents", *METRIC_NAMES, "retrieval_recall_at_10", "seconds", "model", "champion"
)  # fmt: skip
TRAIN_COLUMNS = ("cell", "k", "n_latents", *METRIC_NAMES, "seconds")
