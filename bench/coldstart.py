"""Cold and warm start of a job on a live Accordion cluster (Slurm, OAR or Grid Engine).

cold: no node runs when `sbatch` is called (with the local provider the next one is prepared: network,
root and container made, nothing run in it; `--prepared 0` for none); warm: an idle node exists; scheduler alone: an idle node
exists and the controller is paused (SIGSTOP), so the job waits for the scheduler's own pass, as on a
fixed cluster without Accordion. The time is from just before `sbatch` runs to the first line of the job
script running on its node (the job writes its own clock; nodes share the host's clock). Prints medians,
p95 and the ratios of cold to warm and of cold to the scheduler alone.

    python bench/coldstart.py [--scheduler slurm|oar|gridengine] [--runs 10] [--nodes 1] [--provider local|hosts [--hosts 3]] [--prepared N]

With `--provider hosts`, the nodes run on hosts simulated on this machine (tests/live/hosts.py: a network
namespace, mount namespace, state directory and `accordion agent` each), reached over mutual TLS and joined
by VXLAN.
"""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from accordion.units import percentile


def accordion(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "accordion", *args], check=True, capture_output=True, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=1, help="nodes per job (cold start creates all of them)")
    ap.add_argument("--scheduler", choices=["slurm", "oar", "gridengine"], default="slurm")
    ap.add_argument("--provider", choices=["local", "hosts"], default="local")
    ap.add_argument("--hosts", type=int, default=3, help="simulated hosts (--provider hosts)")
    ap.add_argument("--prepared", type=int, default=None,
                    help="controller.prepared_nodes (default: the cluster default, 1; 0: every cold start makes its node whole)")
    args = ap.parse_args()

    name = f"bench-{uuid.uuid4().hex[:4]}"
    cfg = Path(f"/tmp/{name}.yaml")
    ns = {"name": "compute", "name_base": "hpc-node", "max_nodes": max(2, args.nodes), "cpus": 2, "memory_mb": 512, "idle_timeout": 3600}
    cluster_file: dict[str, object] = {"name": name, "scheduler": args.scheduler, "nodesets": [ns]}
    if args.prepared is not None:
        cluster_file["controller"] = {"prepared_nodes": args.prepared}
    sim = None
    if args.provider == "hosts":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.live.hosts import SimHosts

        sim = SimHosts(name, args.hosts, Path("/tmp"))
        sim.make()
        cluster_file |= sim.config()
    cfg.write_text(yaml.safe_dump(cluster_file))
    try:
        for h in sim.hosts if sim else []:
            h.enrol(cfg)
            h.start()
        accordion("up", "-f", str(cfg))
    except BaseException:
        if sim:
            sim.destroy()
        raise
    shared = Path("/srv/accordion") / name
    shared.chmod(0o1777)
    nodes_dir = Path("/run/accordion") / name / "nodes"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from accordion.cluster import Cluster

    cluster = Cluster.load(name)
    env = os.environ | cluster.scheduler.env()
    enter = cluster.provider.enter() + cluster.scheduler.wrap()
    if args.scheduler in ("oar", "gridengine"):
        user = pwd.getpwnam("hpcuser")  # OAR refuses root's jobs, Grid Engine those of uids below 1000
        enter += ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]

    def start_latency(i: int, label: str) -> float:
        stamp = shared / f"{label}-{i}.t"
        script = shared / "stamp.sh"
        script.write_text("#!/bin/bash\ndate +%s.%N > $1\n")
        script.chmod(0o755)
        if args.scheduler == "slurm":
            submit = ["sbatch", "-Q", f"-N{args.nodes}", "-o", "/dev/null", str(script), str(stamp)]
        elif args.scheduler == "gridengine":
            # N nodes: 2N slots in the parallel environment that puts exactly 2 on each host.
            pe = ["-pe", "mpi2", str(2 * args.nodes)] if args.nodes > 1 else []
            submit = ["qsub", "-o", "/dev/null", "-j", "y", *pe, str(script), str(stamp)]
        else:
            submit = ["oarsub", "-q", "default", "-l", f"/host={args.nodes}/core=1", "-O", "/dev/null", "-E", "/dev/null", f"{script} {stamp}"]
        t0 = time.time()
        subprocess.run(enter + submit, env=env, check=True, capture_output=True, cwd=shared)
        deadline = time.monotonic() + 60
        while not (stamp.exists() and stamp.read_text().strip()):
            if time.monotonic() > deadline:
                raise SystemExit(f"{label} run {i}: the job did not start within 60 s")
            time.sleep(0.005)
        return float(stamp.read_text()) - t0

    def node_count() -> int:
        if sim is not None:
            return sum(len(h.nodes()) for h in sim.hosts)
        # Not the node prepared for the next start (providers/local.py, PREPARED): nothing runs in it.
        return sum(1 for d in nodes_dir.iterdir() if not (d / "prepared").exists()) if nodes_dir.exists() else 0

    def wait_nodes(count: int) -> None:
        deadline = time.monotonic() + 60
        while node_count() != count:
            if time.monotonic() > deadline:
                raise SystemExit(f"node count did not reach {count}")
            time.sleep(0.05)

    controller = int((Path("/run/accordion") / name / "pids" / "controller.pid").read_text())
    cold, warm, alone = [], [], []
    try:
        for i in range(args.runs):
            accordion("scale", "-c", name, "compute", "0")
            wait_nodes(0)
            accordion("scale", "-c", name, "compute", "--auto")
            time.sleep(0.5)
            cold.append(start_latency(i, "cold"))
            time.sleep(1.5)  # let the job end: its nodes are now idle
            warm.append(start_latency(i, "warm"))
            time.sleep(1.0)
            os.kill(controller, signal.SIGSTOP)
            try:
                alone.append(start_latency(i, "alone"))
            finally:
                os.kill(controller, signal.SIGCONT)
            time.sleep(1.0)
            print(f"run {i + 1}/{args.runs}: cold {cold[-1]:.3f} s, warm {warm[-1]:.3f} s, scheduler alone {alone[-1]:.3f} s", flush=True)
    finally:
        accordion("down", "-c", name)
        if sim:
            sim.destroy()
        cfg.unlink(missing_ok=True)
    cm, wm = percentile(cold, 0.5), percentile(warm, 0.5)
    where = f"{args.hosts} simulated hosts" if sim else "one machine"
    where += "" if args.prepared is None else f", prepared_nodes {args.prepared}"
    print(f"\n{args.scheduler} on {where}, {args.nodes}-node job, {args.runs} runs each (submission -> job script running)")
    print(f"cold start: median {cm:.3f} s, p95 {percentile(cold, 0.95):.3f} s, min {min(cold):.3f} s, max {max(cold):.3f} s")
    print(f"warm start: median {wm:.3f} s, p95 {percentile(warm, 0.95):.3f} s, min {min(warm):.3f} s, max {max(warm):.3f} s")
    am = percentile(alone, 0.5)
    print(f"warm start, scheduler alone (controller paused): median {am:.3f} s, p95 {percentile(alone, 0.95):.3f} s, min {min(alone):.3f} s, max {max(alone):.3f} s")
    print(f"cold/warm ratio (medians): {cm / wm:.2f}; cold / warm with the scheduler alone: {cm / am:.2f}")


if __name__ == "__main__":
    main()
