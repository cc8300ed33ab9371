"""Is the scheduler model right? Replay each shared trace on its own static machine (FCFS + EASY backfilling,
requested time as the estimate) and compare the simulated wait of every job with the wait the log recorded.

    .venv/bin/python bench/validate_simulator.py [--limit N] [TRACE ...]

Prints a Markdown table: mean recorded and simulated waits, mean absolute error, Pearson correlation.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from accordion.simulator.metrics import waits
from accordion.simulator.workload import prepare, run_policy

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="first N jobs of each trace (0: all)")
    parser.add_argument("traces", nargs="*", type=Path)
    args = parser.parse_args()
    print("| trace | machine | jobs | with recorded wait | mean recorded wait | mean simulated wait | MAE | Pearson r | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.traces or sorted(TRACES.glob("*.swf.gz")):
        t0 = time.perf_counter()
        work = prepare(path, limit=args.limit or None)
        run = run_policy(work, "static")
        pairs = [(j.recorded_wait, w) for j, w in zip(work.jobs, waits(run)) if j.recorded_wait is not None]
        c = work.cluster
        machine = f"{c.max_nodes} x {c.cpus_per_node}"
        name = path.name.split("-cln")[0].split(".swf")[0]
        if not pairs:
            print(f"| {name} | {machine} | {len(work.jobs):,} | 0 (the log has none) | | | | | {time.perf_counter() - t0:.0f} |")
            continue
        rec, sim = [p[0] for p in pairs], [p[1] for p in pairs]
        mae = sum(abs(a - b) for a, b in pairs) / len(pairs)
        print(f"| {name} | {machine} | {len(work.jobs):,} | {len(pairs):,} | {sum(rec) / len(rec) / 60:,.0f} min | "
              f"{sum(sim) / len(sim) / 60:,.0f} min | {mae / 60:,.0f} min | {pearson(rec, sim):.2f} | {time.perf_counter() - t0:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
