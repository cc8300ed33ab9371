"""Node-hours and waits per policy on every shared trace (a cut of each: see --limit).

    .venv/bin/python bench/simulate_policies.py [--limit 10000] [--policy static,chsc,powersave,accordion]

Each trace runs on its own machine (header MaxNodes, MaxProcs // MaxNodes CPUs per node) with the default
provisioning model (0.8 s node start, 0.2 s stop). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from accordion.simulator.metrics import summarize
from accordion.simulator.report import fmt
from accordion.simulator.workload import DAY, prepare, run_policy

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=10_000, help="first N jobs of each trace (0: all)")
    parser.add_argument("--policy", default="static,chsc,powersave,accordion")
    parser.add_argument("traces", nargs="*", type=Path)
    args = parser.parse_args()
    print("| trace (cut) | policy | node-hours | vs static | mean wait | p95 wait | bounded slowdown | node starts | never started |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.traces or sorted(TRACES.glob("*.swf.gz")):
        work = prepare(path, limit=args.limit or None)
        span = (work.jobs[-1].submit - work.jobs[0].submit) / DAY
        label = f"{path.name.split('-cln')[0].split('.swf')[0]} ({len(work.jobs):,} jobs, {span:.0f} d)"
        static_hours = None
        for name in args.policy.split(","):
            t0 = time.perf_counter()
            m = summarize(run_policy(work, name))
            static_hours = m.node_hours if name == "static" else static_hours
            ratio = f"{m.node_hours / static_hours:.0%}" if static_hours else ""
            print(f"| {label} | {name} | {m.node_hours:,.0f} | {ratio} | {fmt(m.mean_wait, 's')} | "
                  f"{fmt(m.p95_wait, 's')} | {m.mean_bounded_slowdown:,.1f} | {m.node_starts:,} | {m.never_started:,} |",
                  flush=True)
            label = ""
            print(f"<!-- {name}: {time.perf_counter() - t0:.1f} s -->", flush=True)


if __name__ == "__main__":
    main()
