"""Cost, service and churn per policy on every shared trace, whole (see --limit), as one Markdown table:
node-hours / ideal (what the jobs used), mean bounded slowdown / static's, node starts per job, and the
mean and longest waits of the large jobs (over half the machine), those a scheduler can let others pass.

    .venv/bin/python bench/simulate_policies.py [--limit 0] [--policy static,powersave,accordion] [TRACE ...]

Each trace runs on its own machine (header MaxNodes, MaxProcs // MaxNodes CPUs per node) with the default
provisioning model (ClusterModel: node start 0.15 s, the measured cold start; stop 0.2 s). `static` comes first: the slowdown ratio needs it. The
last column checks Accordion's goals against `powersave` (no more node-hours, slowdown or starts per job;
node-hours <= 1.15 x ideal; slowdown <= 1.1 x static) and names the ones missed. `chsc` can be added, on
cuts only: it leaves so many jobs waiting that its queue, and the run time, explode on whole traces.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from accordion.simulator.engine import Run
from accordion.simulator.metrics import Metrics, summarize, waits
from accordion.simulator.report import fmt
from accordion.simulator.workload import DAY, prepare, run_policy

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


def missed(m: Metrics, static: Metrics, powersave: Metrics | None) -> str:
    """Accordion's goals this run misses ("" when it meets all of them)."""
    out = []
    if m.node_hours > 1.15 * m.ideal_node_hours:
        out.append("node-hours > 1.15 x ideal")
    if m.mean_bounded_slowdown > 1.1 * static.mean_bounded_slowdown:
        out.append("slowdown > 1.1 x static")
    if powersave is not None:
        out += [f"{what} > powersave" for what, a, b in [
            ("node-hours", m.node_hours, powersave.node_hours),
            ("slowdown", m.mean_bounded_slowdown, powersave.mean_bounded_slowdown),
            ("starts/job", m.node_starts, powersave.node_starts),
        ] if a > b]
    return ", ".join(out) or "all met"


def large_waits(run: Run) -> str:
    """Mean and longest wait of the jobs that need over half the machine, in hours."""
    half = run.cluster.max_nodes / 2
    ws = [w for w, k in zip(waits(run), run.nodes) if k > half and not math.isnan(w)]
    return f"{sum(ws) / len(ws) / 3600:,.1f} / {max(ws) / 3600:,.1f} h" if ws else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="first N jobs of each trace (0: all)")
    parser.add_argument("--policy", default="static,powersave,accordion")
    parser.add_argument("traces", nargs="*", type=Path)
    args = parser.parse_args()
    names = args.policy.split(",")
    if names[0] != "static":
        parser.error("--policy: static must come first (the slowdown ratio is to static's)")
    print("| trace | policy | node-hours | / ideal | mean wait | bounded slowdown | / static | starts per job | large jobs' wait | never started | goals |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.traces or sorted(TRACES.glob("*.swf.gz")):
        work = prepare(path, limit=args.limit or None)
        span = (work.jobs[-1].submit - work.jobs[0].submit) / DAY
        label = f"{path.name.split('-cln')[0].split('.swf')[0]} ({len(work.jobs):,} jobs, {span:.0f} d)"
        seen: dict[str, Metrics] = {}
        for name in names:
            t0 = time.perf_counter()
            run = run_policy(work, name)
            m = seen[name] = summarize(run)
            static = seen["static"]
            goals = missed(m, static, seen.get("powersave")) if name == "accordion" else ""
            print(f"| {label} | {name} | {m.node_hours:,.0f} | {m.node_hours / m.ideal_node_hours:.3f} | {fmt(m.mean_wait, 's')} | "
                  f"{m.mean_bounded_slowdown:,.1f} | {m.mean_bounded_slowdown / static.mean_bounded_slowdown:.3f} | "
                  f"{m.node_starts / m.jobs:.2f} | {large_waits(run)} | {m.never_started:,} | {goals} |", flush=True)
            label = ""
            print(f"<!-- {name}: {time.perf_counter() - t0:.1f} s -->", flush=True)


if __name__ == "__main__":
    main()
