"""`accordion report`: what the cluster did, as one self-contained HTML page (inline SVG, no network).

Reads the controller's time series (samples.jsonl, one line per change) and event log. For each node set:
pending demand (CPUs waiting), provisioned and busy nodes over time as step lines, scale events marked as
ticks; then provisioning latency (request -> registered) statistics.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from accordion.events import read_events
from accordion.units import percentile

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 900, 260, 50, 40, 20, 40
SERIES = (("pending_cpus", "CPUs waiting", "#d62728"), ("provisioned", "nodes provisioned", "#1f77b4"), ("busy", "nodes busy", "#2ca02c"))


def latencies(events: list[dict]) -> list[float]:
    asked: dict[str, float] = {}
    out = []
    for e in events:
        if e["kind"] == "requested":
            asked[e["node"]] = e["ts"]
        elif e["kind"] == "registered" and e.get("node") in asked:
            out.append(e["ts"] - asked.pop(e["node"]))
    return out


def _chart(name: str, samples: list[dict], events: list[dict], t0: float, t1: float) -> str:
    span = max(t1 - t0, 1.0)
    top = max([1] + [max(s["nodesets"][name]["pending_cpus"], s["nodesets"][name]["max"]) for s in samples if name in s["nodesets"]])
    x = lambda t: PAD_L + (t - t0) / span * (W - PAD_L - PAD_R)  # noqa: E731
    y = lambda v: H - PAD_B - v / top * (H - PAD_T - PAD_B)  # noqa: E731
    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="node set {html.escape(name)}">']
    for v in range(0, top + 1, max(1, top // 5)):
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{v}</text>')
    for k in range(6):
        t = t0 + span * k / 5
        parts.append(f'<text x="{x(t):.1f}" y="{H - PAD_B + 16}" text-anchor="middle" font-size="11">{time.strftime("%H:%M:%S", time.localtime(t))}</text>')
    for e in events:
        if e.get("nodeset") == name and e["kind"] in ("requested", "removed", "failed", "lost"):
            color = {"requested": "#1f77b4", "removed": "#7f7f7f"}.get(e["kind"], "#d62728")
            parts.append(
                f'<line x1="{x(e["ts"]):.1f}" x2="{x(e["ts"]):.1f}" y1="{H - PAD_B}" y2="{H - PAD_B + 6}" stroke="{color}" stroke-width="2">'
                f'<title>{html.escape(e["kind"])} {html.escape(e.get("node", ""))} {html.escape(e.get("reason", ""))}</title></line>'
            )
    for key, label, color in SERIES:
        pts, last = [], None
        for s in samples:
            if name not in s["nodesets"]:
                continue
            v = s["nodesets"][name][key]
            if last is not None:
                pts.append(f"{x(s['ts']):.1f},{y(last):.1f}")
            pts.append(f"{x(s['ts']):.1f},{y(v):.1f}")
            last = v
        if last is not None:
            pts.append(f"{x(t1):.1f},{y(last):.1f}")
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(pts)}"><title>{label}</title></polyline>')
    parts.append("</svg>")
    return "".join(parts)


def render(cluster: str, nodesets: list[str], samples: list[dict], events: list[dict], now: float) -> str:
    t0 = min([s["ts"] for s in samples] + [e["ts"] for e in events] + [now])
    lat = latencies(events)
    starts = sum(1 for e in events if e["kind"] == "requested")
    removals = sum(1 for e in events if e["kind"] == "removed")
    failures = sum(1 for e in events if e["kind"] in ("failed", "lost"))
    if lat:
        lat_line = f"median {percentile(lat, 0.5):.2f} s, p95 {percentile(lat, 0.95):.2f} s, max {max(lat):.2f} s over {len(lat)} nodes"
    else:
        lat_line = "no node was provisioned in this period"
    legend = " ".join(f'<span style="color:{c}">&#9632; {label}</span>' for _, label, c in SERIES)
    body = [
        f"<h1>Accordion cluster <code>{html.escape(cluster)}</code></h1>",
        f'<p class="summary">{time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0))} to '
        f'{time.strftime("%H:%M:%S", time.localtime(now))}: <b>{starts}</b> nodes requested, <b>{removals}</b> removed, '
        f"<b>{failures}</b> failed or lost. Provisioning (request to registered): {lat_line}.</p>",
        f'<p class="legend">{legend} &nbsp; ticks: <span style="color:#1f77b4">requested</span>, '
        '<span style="color:#7f7f7f">removed</span>, <span style="color:#d62728">failed/lost</span></p>',
    ]
    for name in nodesets:
        body.append(f"<h2>node set {html.escape(name)}</h2>")
        body.append(_chart(name, samples, events, t0, now))
    rows = "".join(
        f"<tr><td>{time.strftime('%H:%M:%S', time.localtime(e['ts']))}</td><td>{html.escape(e['kind'])}</td>"
        f"<td>{html.escape(e.get('node', ''))}</td><td>{html.escape(e.get('reason', ''))}</td></tr>"
        for e in events[-200:]
    )
    body.append(f"<h2>events</h2><table><tr><th>time</th><th>event</th><th>node</th><th>reason</th></tr>{rows}</table>")
    # The page marks itself rendered once its charts are in the DOM: a headless browser test reads it.
    script = "document.body.dataset.rendered = String(document.querySelectorAll('svg.chart').length);"
    style = (
        "body{font-family:sans-serif;margin:24px;color:#222}code{background:#f4f4f4;padding:2px 4px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left}"
        ".summary{font-size:15px}"
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>Accordion report: {html.escape(cluster)}</title>'
        f"<style>{style}</style></head><body>{''.join(body)}<script>{script}</script></body></html>"
    )


def build(cluster: str, nodesets: list[str], state_dir: Path, since: float) -> str:
    samples = list(read_events(state_dir / "samples.jsonl", since))
    events = list(read_events(state_dir / "events.jsonl", since))
    return render(cluster, nodesets, samples, events, time.time())
