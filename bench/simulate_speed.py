"""Simulation speed on the largest shared trace (most jobs): jobs, seconds, jobs/s per policy.

    .venv/bin/python bench/simulate_speed.py [--limit N] [--policy accordion,static] [--scale K] [TRACE]

The target is 100,000 jobs in under 30 s with the accordion policy (`--limit 100000`), on the trace's own
machine and on one K times as large (`--scale 20`: nodes and every job's size multiplied by K, so the
schedule is the same and only the node count grows; HPC2N's 240 nodes become 4,800).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import time
from pathlib import Path

from accordion.simulator.workload import prepare, run_policy

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


def job_count(path: Path) -> int:
    with gzip.open(path, "rt") as f:
        return sum(1 for line in f if line.strip() and not line.startswith(";"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", nargs="?", type=Path)
    parser.add_argument("--limit", type=int, default=0, help="first N jobs (0: the whole trace)")
    parser.add_argument("--policy", default="accordion,static")
    parser.add_argument("--scale", type=int, default=1, help="multiply nodes and job sizes by K")
    args = parser.parse_args()
    trace = args.trace or max(sorted(TRACES.glob("*.swf.gz")), key=job_count)
    t0 = time.perf_counter()
    work = prepare(trace, limit=args.limit or None)
    if args.scale > 1:
        k, c = args.scale, work.cluster
        work.cluster = dataclasses.replace(c, max_nodes=c.max_nodes * k)
        work.jobs = [dataclasses.replace(j, procs=j.procs * k, nodes=j.nodes * k) for j in work.jobs]
    print(f"{trace.name}: read and prepared {len(work.jobs):,} jobs in {time.perf_counter() - t0:.1f} s "
          f"({work.cluster.max_nodes} nodes x {work.cluster.cpus_per_node} CPUs)")
    print(f"{'policy':<10} {'jobs':>8} {'seconds':>8} {'jobs/s':>8} {'policy calls':>13}")
    for name in args.policy.split(","):
        t0 = time.perf_counter()
        run = run_policy(work, name)
        dt = time.perf_counter() - t0
        print(f"{name:<10} {len(work.jobs):>8,} {dt:>8.1f} {len(work.jobs) / dt:>8,.0f} {run.policy_calls:>13,}")


if __name__ == "__main__":
    main()
