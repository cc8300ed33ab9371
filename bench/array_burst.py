"""A job array against the same number of separate jobs, on a live Accordion Slurm cluster from zero nodes.

For each round, one fresh cluster of N nodes of 1 CPU: submit `--array=1-N` (one squeue record for all its
pending tasks), or N separate 1-CPU jobs, and time from just before `sbatch` until all N tasks run. Prints
the median of each and their ratio (target: array / separate <= 1.2).

    python bench/array_burst.py [--tasks 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from accordion.units import percentile


def accordion(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "accordion", *args], check=True, capture_output=True, text=True).stdout


def in_cluster(name: str, script: str) -> str:
    return accordion("shell", "-c", name, "--", "bash", "-c", script)


def round_trip(tasks: int, array: bool) -> float:
    name = f"arr-{uuid.uuid4().hex[:4]}"
    cfg = Path(f"/tmp/{name}.yaml")
    ns = {"name": "compute", "name_base": "n", "max_nodes": tasks, "cpus": 1, "memory_mb": 128, "idle_timeout": 5}
    cfg.write_text(yaml.safe_dump({"name": name, "nodesets": [ns]}))
    accordion("up", "-f", str(cfg))
    try:
        shared = Path("/srv/accordion") / name
        (shared / "job.sh").write_text("#!/bin/bash\nsleep 300\n")
        submit = (
            f"sbatch -o /dev/null --array=1-{tasks} {shared}/job.sh"
            if array
            else f"for i in $(seq {tasks}); do sbatch -o /dev/null {shared}/job.sh; done"
        )
        t0 = time.monotonic()
        in_cluster(name, submit + " >/dev/null")
        deadline = t0 + 600  # bounded: a run that never gets all its tasks running is reported, not waited on
        while time.monotonic() < deadline:
            running = int(in_cluster(name, "squeue -h -t R -r | wc -l").strip())
            if running >= tasks:
                return time.monotonic() - t0
            time.sleep(0.5)
        raise SystemExit(f"{'array' if array else 'separate'}: only {running} of {tasks} tasks running after 600 s")
    finally:
        in_cluster(name, "scancel --user=root")
        accordion("down", "-c", name)
        cfg.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[float]] = {"array": [], "separate": []}
    for r in range(args.rounds):
        for kind in ("array", "separate"):
            seconds = round_trip(args.tasks, kind == "array")
            results[kind].append(seconds)
            print(f"round {r + 1}: {kind:<8} {args.tasks} tasks running after {seconds:.1f} s", flush=True)
    array, separate = percentile(results["array"], 0.5), percentile(results["separate"], 0.5)
    print(f"median: array {array:.1f} s, separate jobs {separate:.1f} s, ratio {array / separate:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
