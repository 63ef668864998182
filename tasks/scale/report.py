"""The rehearsal's figures as tables, and how each stage's cost grows with N."""

from __future__ import annotations

import math

GIB, MIB = 2**30, 2**20
MEASURES = {"seconds": "time", "peak_rss": "peak memory", "read_bytes": "bytes read",
            "written_bytes": "bytes written"}  # fmt: skip


def size_label(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:g}M"
    return f"{n / 1e3:g}k" if n >= 1000 else str(n)


def exponent(points: list[tuple[int, float]]) -> float | None:
    """The least-squares slope of log(value) on log(N): cost ~ N^a. None with fewer than
    two sizes or a value <= 0."""
    pts = [(math.log(n), math.log(v)) for n, v in points if v > 0]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


def growth(runs: list[dict]) -> dict[int, dict[str, dict[str, float | None]]]:
    """Per d, per stage, per measure: the exponent a of cost ~ N^a over the runs' sizes
    (peak memory as the stage's own growth, peak minus what the process held before)."""
    out: dict[int, dict[str, dict[str, float | None]]] = {}
    for d in sorted({r["d"] for r in runs}):
        same = sorted((r for r in runs if r["d"] == d), key=lambda r: r["n"])
        stages = [s["stage"] for s in same[-1]["stages"]]
        out[d] = {}
        for stage in stages:
            rows = [(r["n"], s) for r in same for s in r["stages"] if s["stage"] == stage]
            out[d][stage] = {m: exponent([(n, _value(s, m)) for n, s in rows]) for m in MEASURES}
    return out


def _value(stage: dict, measure: str) -> float:
    if measure == "peak_rss":
        return max(stage["peak_rss"] - stage["rss_start"], 0)
    return stage[measure]


def table(runs: list[dict]) -> str:
    """Markdown: one row per size and stage, then the growth exponents."""
    lines = [
        "| N x d | stage | seconds | peak RSS GiB | stage's own GiB | read MiB | written MiB "
        "| notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["d"], r["n"])):
        for s in r["stages"]:
            notes = "; ".join(f"{k}={v}" for k, v in s["notes"].items())
            lines.append(
                f"| {size_label(r['n'])} x {r['d']} | {s['stage']} | {s['seconds']:.1f} | "
                f"{s['peak_rss'] / GIB:.2f} | {_value(s, 'peak_rss') / GIB:.2f} | "
                f"{s['read_bytes'] / MIB:.1f} | {s['written_bytes'] / MIB:.1f} | {notes} |"
            )
    lines += ["", "Growth with N (cost ~ N^a, least squares over the sizes run at each d):", "",
              "| d | stage | a time | a own memory | a read | a written |",
              "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for d, stages in growth(runs).items():
        for stage, a in stages.items():
            cells = " | ".join("-" if a[m] is None else f"{a[m]:.2f}" for m in MEASURES)
            lines.append(f"| {d} | {stage} | {cells} |")
    return "\n".join(lines)
