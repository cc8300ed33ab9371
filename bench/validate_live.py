"""Is the simulator right about Accordion itself? Replay a slice of a shared trace on a real Accordion Slurm
cluster, time-compressed (jobs as `sleep`, sizes scaled to the local node set), then simulate the same
compressed jobs with the cluster's measured boot time, and print both side by side: node-hours, mean wait,
node starts, jobs killed (target: node-hours within 10 %, node starts within 15 %, 0 killed in both).

    sudo python bench/validate_live.py [--trace KTH] [--start-day 1] [--hours 2] [--minutes 6] [--nodes 4]

Needs root (it runs `accordion up`). One cluster of `--nodes` 1-CPU nodes, taken down at the end whatever
happens. The live run is bounded: submissions take `--minutes`, and the driver gives up waiting for the
jobs `--grace` seconds after the last submission plus the longest compressed job.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from accordion import policy
from accordion.report import latencies
from accordion.simulator.engine import ClusterModel, simulate
from accordion.simulator.metrics import summarize
from accordion.simulator.traces import TraceJob, read_trace
from accordion.units import percentile

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
DAY = 86400.0


def accordion(*args: str, timeout: float = 180) -> str:
    return subprocess.run([sys.executable, "-m", "accordion", *args], check=True, capture_output=True, text=True, timeout=timeout).stdout


def compressed_jobs(trace: Path, start_day: float, hours: float, factor: float, nodes: int, cap: float) -> list[TraceJob]:
    """Jobs submitted in [start_day, start_day + hours) of the trace, times divided by `factor`, sizes scaled
    from the trace's machine to `nodes` (at least 1 node), run times capped at `cap` compressed seconds.
    The estimate is the Slurm time limit the job gets: whole minutes, at least one more than the run."""
    t = read_trace(trace)
    machine = t.max_nodes or t.max_procs or 1
    per_node = max(1, (t.max_procs or machine) // machine)
    t0 = t.jobs[0].submit + start_day * DAY
    out = []
    for j in t.jobs:
        if not t0 <= j.submit < t0 + hours * 3600:
            continue
        size = max(j.nodes, -(-j.procs // per_node))
        k = min(nodes, max(1, math.ceil(size * nodes / machine)))
        run = min(j.run / factor, cap)
        limit = 60.0 * (math.ceil(max(j.estimate / factor, run) / 60) + 1)
        out.append(TraceJob(j.id, (j.submit - t0) / factor, round(run, 1), k, limit))
    return out


def stamp(path: Path) -> float | None:
    return float(path.read_text()) if path.exists() else None


def live(jobs: list[TraceJob], nodes: int, idle_timeout: float, grace: float) -> dict:
    name = f"val-{uuid.uuid4().hex[:4]}"
    cfg = Path(f"/tmp/{name}.yaml")
    ns = {"name": "compute", "name_base": "n", "max_nodes": nodes, "cpus": 1, "memory_mb": 128, "idle_timeout": idle_timeout}
    cfg.write_text(yaml.safe_dump({"name": name, "nodesets": [ns]}))
    accordion("up", "-f", str(cfg))
    shared = Path("/srv/accordion") / name
    try:
        # Each job records its own start and end on the shared directory (nodes share the host's clock).
        (shared / "job.sh").write_text(f'#!/bin/bash\ndate +%s.%N > {shared}/start.$SLURM_JOB_ID\nsleep "$1"\ndate +%s.%N > {shared}/end.$SLURM_JOB_ID\n')
        submitted: dict[str, float] = {}  # Slurm job id -> host time just before its sbatch
        begin = time.time()
        i = 0
        while i < len(jobs):
            now = time.time() - begin
            if jobs[i].submit > now:
                time.sleep(min(jobs[i].submit - now, 1.0))
                continue
            batch = []
            while i < len(jobs) and jobs[i].submit <= now:
                batch.append(jobs[i])
                i += 1
            lines = [f"sbatch --parsable --exclusive -N {j.procs} -t {int(j.estimate // 60)} -o /dev/null {shared}/job.sh {j.run}" for j in batch]
            at = time.time()
            ids = accordion("shell", "-c", name, "--", "bash", "-c", "; ".join(lines)).split()
            submitted.update((jid.split(";")[0], at) for jid in ids)
        deadline = time.time() + max((j.run for j in jobs), default=0) + grace
        while time.time() < deadline:
            if not accordion("shell", "-c", name, "--", "squeue", "-h").strip():
                break
            time.sleep(2)
        left = accordion("shell", "-c", name, "--", "squeue", "-h", "-o", "%i").split()
        events = [json.loads(line) for line in accordion("events", "-c", name, "--json").splitlines() if line.strip()]
        starts = {jid: stamp(shared / f"start.{jid}") for jid in submitted}  # read before `down` removes them
        ends = {jid: stamp(shared / f"end.{jid}") for jid in submitted}
    finally:
        subprocess.run([sys.executable, "-m", "accordion", "shell", "-c", name, "--", "scancel", "--user=root"], capture_output=True, timeout=60)
        accordion("down", "-c", name)
        cfg.unlink(missing_ok=True)

    first = min(submitted.values())
    last = max((e for e in ends.values() if e is not None), default=time.time())
    # Provisioned: from the request of a node to its removal, clipped to the replay (first submission to last
    # job end), as the simulator counts it.
    up: dict[str, float] = {}
    node_seconds = 0.0
    node_starts = 0
    for e in events:
        if e.get("kind") == "requested":
            up[e["node"]] = e["ts"]
            node_starts += first <= e["ts"] <= last
        elif e.get("kind") in ("removed", "failed", "lost") and e.get("node") in up:
            a = up.pop(e["node"])
            node_seconds += max(0.0, min(e["ts"], last) - max(a, first))
    node_seconds += sum(max(0.0, last - max(a, first)) for a in up.values())
    boot = latencies(events)
    waits = [s - submitted[j] for j, s in starts.items() if s is not None]
    return {
        "jobs": len(submitted),
        "node_hours": node_seconds / 3600,
        "mean_wait": sum(waits) / len(waits) if waits else math.nan,
        "node_starts": node_starts,
        "killed": sum(1 for j in submitted if starts[j] is not None and ends[j] is None),
        "never_started": sum(1 for j in submitted if starts[j] is None),
        "left_in_queue": len(left),
        "boot_time": percentile(boot, 0.5) if boot else math.nan,
        "submit_lag": [submitted[j] - first for j in sorted(submitted, key=int)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default="KTH", help="a shared trace (name prefix) or a path")
    ap.add_argument("--start-day", type=float, default=1.0)
    ap.add_argument("--hours", type=float, default=2.0, help="trace time replayed")
    ap.add_argument("--minutes", type=float, default=6.0, help="wall time it is replayed in")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--idle-timeout", type=float, default=20.0, help="seconds, live and simulated")
    ap.add_argument("--cap", type=float, default=90.0, help="longest compressed run time, seconds")
    ap.add_argument("--grace", type=float, default=120.0)
    args = ap.parse_args()
    path = Path(args.trace) if Path(args.trace).exists() else next(iter(sorted(TRACES.glob(f"{args.trace}*.swf.gz"))))
    factor = args.hours * 60 / args.minutes
    jobs = compressed_jobs(path, args.start_day, args.hours, factor, args.nodes, args.cap)
    print(f"{path.name}: day {args.start_day:g}, {args.hours:g} h in {args.minutes:g} min (x{factor:g}), {len(jobs)} jobs "
          f"on {args.nodes} nodes of 1 CPU, idle timeout {args.idle_timeout:g} s", flush=True)
    measured = live(jobs, args.nodes, args.idle_timeout, args.grace)
    # The simulation sees the jobs when the live cluster did (the driver's submissions lag the plan a little).
    replay = [TraceJob(j.id, lag, j.run, j.procs, j.estimate) for j, lag in zip(jobs, measured["submit_lag"])]
    boot = measured["boot_time"] if not math.isnan(measured["boot_time"]) else 0.8
    cluster = ClusterModel(args.nodes, 1, boot_time=boot)
    m = summarize(simulate(replay, cluster, policy.decide, args.idle_timeout, "accordion"))
    sim = {"jobs": m.jobs, "node_hours": m.node_hours, "mean_wait": m.mean_wait, "node_starts": m.node_starts,
           "killed": m.killed, "never_started": m.never_started}
    print(f"measured boot time (request to registered, median): {boot:.2f} s; jobs left in the live queue: {measured['left_in_queue']}")
    print("| | live | simulated | simulated / live |")
    print("|---|---|---|---|")
    for key, label in [("node_hours", "node-hours"), ("mean_wait", "mean wait (s)"), ("node_starts", "node starts"),
                       ("killed", "jobs killed"), ("never_started", "jobs never started")]:
        a, b = measured[key], sim[key]
        ratio = f"{b / a:.2f}" if a else ""
        print(f"| {label} | {a:,.3f} | {b:,.3f} | {ratio} |" if isinstance(a, float) else f"| {label} | {a} | {b} | {ratio} |")


if __name__ == "__main__":
    main()
