"""A self-contained HTML report: summary table and inline SVG charts drawn here (no plotting library)."""

from __future__ import annotations

import html
import math
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from operator import mul, sub
from pathlib import Path

from accordion.simulator.engine import Run
from accordion.simulator.metrics import Metrics, waits
from accordion.simulator.policies import POLICIES
from accordion.simulator.workload import DAY, Workload

COLORS = {"static": "#6b7280", "chsc": "#d97706", "powersave": "#2563eb", "accordion": "#059669"}
OTHER = ("#9333ea", "#dc2626", "#0891b2", "#65a30d")
W, H, LEFT, RIGHT, TOP, BOTTOM = 920, 250, 64, 16, 42, 34
BINS = 600


def color(name: str, i: int) -> str:
    return COLORS.get(name, OTHER[i % len(OTHER)])


def binned(t: Sequence[float], v: Sequence[float], begin: float, end: float, bins: int = BINS) -> list[float]:
    """Time-weighted mean of a step function (value v[i] from t[i] to t[i+1]) over equal bins."""
    if not t or end <= begin:
        return [0.0] * bins
    area = list(accumulate(map(mul, v[:-1], map(sub, t[1:], t[:-1])), initial=0.0))

    def integral(x: float) -> float:  # of the step function from t[0] to x
        i = max(0, bisect_right(t, x) - 1)
        return area[i] + v[i] * (x - t[i]) if x >= t[0] else 0.0

    width = (end - begin) / bins
    edges = [integral(begin + k * width) for k in range(bins + 1)]
    return [(b - a) / width for a, b in zip(edges, edges[1:])]


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 10 or x == int(x) else f"{x:.1f}"


def _chart(title: str, xlabel: str, series: list[tuple[str, str, list[float], list[float]]],
           x0: float, x1: float, log_x: bool = False, y1: float | None = None, ylabels: str = "") -> str:
    fx = (lambda x: math.log10(max(x, 1.0))) if log_x else (lambda x: x)
    a, b = fx(x0), fx(x1)
    if b <= a:
        b = a + 1
    top = y1 if y1 is not None else max((max(ys, default=0) for *_, ys in series), default=1.0) * 1.05 or 1.0
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (fx(x) - a) / (b - a) * pw

    def py(y: float) -> float:
        return TOP + ph - y / top * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">',
           f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for y in _ticks(0, top):
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#e5e7eb"/>'
                   f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{ylabels or ""}{_num(y)}</text>')
    for x in LOG_TICKS if log_x else _ticks(x0, x1):
        if x0 <= x <= x1:
            label = _duration(x) if log_x else _num(x)
            out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="#f3f4f6"/>'
                       f'<text x="{px(x):.1f}" y="{TOP + ph + 14}" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 4}" text-anchor="middle">{html.escape(xlabel)}</text>')
    for i, (name, col, xs, ys) in enumerate(series):
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        out.append(f'<polyline fill="none" stroke="{col}" stroke-width="1.4" points="{points}"/>')
        lx = LEFT + 100 * i
        out.append(f'<rect x="{lx}" y="23" width="10" height="10" fill="{col}"/><text x="{lx + 14}" y="32">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


LOG_TICKS = (1, 10, 60, 600, 3600, 36000, 86400, 864000, 8640000)


def _duration(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:g} {unit}"
    return f"{s:g} s"


def _cdf(values: list[float], points: int = 300) -> tuple[list[float], list[float]]:
    """Wait-time CDF sampled at `points` quantiles, waits clamped to 1 s for the log axis."""
    ws = sorted(max(1.0, w) for w in values if not math.isnan(w))
    if not ws:
        return [], []
    idx = sorted({min(len(ws) - 1, round(q * (len(ws) - 1) / points)) for q in range(points + 1)})
    return [ws[i] for i in idx], [(i + 1) / len(ws) for i in idx]


ROWS: list[tuple[str, str, str]] = [
    ("mean_wait", "mean wait", "s"),
    ("p95_wait", "p95 wait", "s"),
    ("mean_bounded_slowdown", "mean bounded slowdown", ""),
    ("node_hours", "provisioned node-hours", ""),
    ("ideal_node_hours", "node-hours used by jobs (lower bound)", ""),
    ("utilization", "utilization", "%"),
    ("node_starts", "node starts", ""),
    ("killed", "jobs killed by scale-in", ""),
    ("never_started", "jobs never started", ""),
]


def fmt(value: float, unit: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if unit == "%":
        return f"{value * 100:.1f} %"
    if unit == "s":
        return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min" if value < 3600 else f"{value / 3600:,.1f} h"
    return f"{value:,.2f}" if isinstance(value, float) and value < 10 else f"{value:,.0f}"


def workload_lines(w: Workload) -> list[str]:
    c, tr = w.cluster, w.trace
    lines = [
        f"{len(w.jobs):,} jobs replayed from {tr.path.name} ({tr.format})",
        f"cluster: {c.max_nodes} nodes x {c.cpus_per_node} CPU{'s' if c.cpus_per_node > 1 else ''}, min {c.min_nodes}; "
        f"node start {c.boot_time:g} s, stop {c.stop_time:g} s",
    ]
    if w.cut:
        lines.append(f"{w.cut:,} jobs outside --start-day/--days/--limit")
    if w.too_big:
        lines.append(f"{len(w.too_big):,} jobs larger than the cluster dropped")
    for reason, count in sorted(tr.unusable.items()):
        lines.append(f"{count:,} jobs skipped: {reason}")
    if tr.bad_lines:
        lines.append(f"{len(tr.bad_lines):,} bad lines skipped (first: {tr.bad_lines[0]})")
    return lines


def write_report(path: Path, workload: Workload, runs: list[Run], metrics: list[Metrics]) -> None:
    begin = min(r.begin for r in runs)
    end = max(r.end for r in runs)
    days = [(begin + (k + 0.5) * (end - begin) / BINS - begin) / DAY for k in range(BINS)]
    charts = []
    for key, title in ((0, "Demand: cores of queued and running jobs"), (1, "Provisioned nodes"), (2, "Busy nodes")):
        series = []
        for i, r in enumerate(runs):
            t, *values = r.timeline
            series.append((r.policy, color(r.policy, i), days, binned(t, values[key], begin, end)))
        y1 = workload.cluster.max_nodes * 1.05 if key else None
        charts.append(_chart(title + " (time-weighted mean per bin)", "days since the first job", series, 0, (end - begin) / DAY, y1=y1))
    cdfs = [(r.policy, color(r.policy, i), *_cdf(waits(r))) for i, r in enumerate(runs)]
    top = max((max(xs) for *_, xs, _ in cdfs if xs), default=10.0)
    charts.append(_chart("Wait-time distribution (fraction of jobs waiting at most x; waits under 1 s at 1 s)",
                         "wait", cdfs, 1.0, max(top, 10.0), log_x=True, y1=1.0))
    head = "".join(f"<th>{html.escape(m.policy)}</th>" for m in metrics)
    body = "".join(
        f"<tr><td>{label}</td>" + "".join(f"<td>{fmt(getattr(m, key), unit)}</td>" for m in metrics) + "</tr>"
        for key, label, unit in ROWS
    )
    info = "".join(f"<li>{html.escape(line)}</li>" for line in workload_lines(workload))
    info += "".join(f"<li><b>{html.escape(r.policy)}</b>: {html.escape(POLICIES[r.policy].about)}</li>" for r in runs if r.policy in POLICIES)
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>accordion simulate: {html.escape(workload.trace.path.name)}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#111}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:4px 10px;text-align:right}} td:first-child{{text-align:left}}
svg{{display:block;margin:18px 0}}</style></head><body>
<h1>What-if simulation: {html.escape(workload.trace.path.name)}</h1>
<ul>{info}</ul>
<table><tr><th></th>{head}</tr>{body}</table>
{"".join(charts)}
<p>FCFS with EASY backfilling over whole nodes; policies are called at every job and node event.
Generated by <code>accordion simulate</code>.</p>
</body></html>
""")
