"""Fingerprints of simulation results, to diff before and after a change that must not change them (a speed-up).

    PYTHONPATH=src .venv/bin/python bench/simulate_digest.py > after.txt    # and the same on the commit before

For fixed slices of the shared traces, some scaled as `simulate_speed.py --scale K` scales them, and each policy:
node starts, node-seconds, policy calls, kills, end time, and hashes of every job's start time and of the
timeline. Identical output means identical runs. About a minute on a quiet machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from accordion.simulator.workload import prepare, run_policy

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
ALL = ["accordion", "static", "powersave", "chsc"]
SLICES = [  # trace, first jobs, scale, policies
    ("SDSC-SP2-1998-4.2-cln.swf.gz", 5000, 1, ALL),
    ("HPC2N-2002-2.2-cln.swf.gz", 2000, 5, ALL),
    ("HPC2N-2002-2.2-cln.swf.gz", 2000, 20, ["accordion"]),
    ("KTH-SP2-1996-2.1-cln.swf.gz", 3000, 3, ["accordion", "powersave"]),
    ("LLNL-Thunder-2007-1.1-cln.swf.gz", 5000, 2, ["accordion", "chsc"]),
    ("lublin_256-synthetic.swf.gz", 5000, 1, ["accordion"]),
]


def main() -> None:
    for trace, limit, k, policies in SLICES:
        work = prepare(TRACES / trace, limit=limit)
        if k > 1:
            work.cluster = dataclasses.replace(work.cluster, max_nodes=work.cluster.max_nodes * k)
            work.jobs = [dataclasses.replace(j, procs=j.procs * k, nodes=j.nodes * k) for j in work.jobs]
        for name in policies:
            r = run_policy(work, name)
            starts = hashlib.sha1(" ".join(map(repr, r.start)).encode()).hexdigest()[:16]
            timeline = hashlib.sha1(b"".join(a.tobytes() for a in r.timeline)).hexdigest()[:16]
            print(f"{trace} first {limit} x{k} {name}: node starts {r.node_starts}, node-seconds {r.node_seconds!r}, "
                  f"policy calls {r.policy_calls}, killed {r.killed}, end {r.end!r}, job starts {starts}, timeline {timeline}",
                  flush=True)


if __name__ == "__main__":
    main()
