"""Cost of one controller step (observe -> decide -> act -> status) at scale, with the scheduler and
provider stand-ins of tests/test_controller.py, so that only Accordion's own work is timed.

Every node exists and runs a one-node job, and as many jobs again wait (a busy cluster at capacity: the
policy sees every node and every job, and starts nothing). Prints the median and p95 wall time and the
CPU time per step.

With --live N: a real Slurm cluster on this machine with N node containers up and idle (pinned by
`accordion scale`), its controller paused (SIGSTOP) while the same steps run in this process against the
real provider and scheduler; CPU per step then counts the commands the step runs too (squeue, scontrol,
runc). Also prints what one `runc list` of those containers costs, the listing used before.

    python bench/controller_step.py [--nodes 280 4000] [--steps 50]
    python bench/controller_step.py --live 280 [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from accordion.cluster import Cluster  # noqa: E402
from accordion.config import ClusterConfig  # noqa: E402
from accordion.controller import Controller  # noqa: E402
from accordion.events import EventLog  # noqa: E402
from accordion.metrics import Metrics  # noqa: E402
from accordion.model import Job, SchedNode, SchedState  # noqa: E402
from accordion.paths import ClusterPaths  # noqa: E402
from accordion.providers.base import NodeInfo  # noqa: E402
from accordion.units import percentile  # noqa: E402
from tests.test_controller import FakeProvider, FakeScheduler  # noqa: E402

PER_SET = 1000  # the config's largest node set


def bench(nodes: int, steps: int) -> tuple[float, float, float]:
    sets = [min(PER_SET, nodes - i) for i in range(0, nodes, PER_SET)]
    cfg = ClusterConfig.model_validate(
        {"name": f"bench{nodes}", "nodesets": [{"name": f"s{i}", "max_nodes": n, "cpus": 2, "idle_timeout": 600} for i, n in enumerate(sets)]}
    )
    paths = ClusterPaths(cfg.name)
    paths.state.mkdir(parents=True)
    now = time.time()
    prov = FakeProvider(lambda: now)
    sched = FakeScheduler(prov)
    ctl = Controller(cfg, paths, sched, prov, EventLog(paths.events, cfg.name), metrics=Metrics(cfg.name))
    jobs = []
    for ns in cfg.nodesets:
        for i, node in enumerate(ns.node_names()):
            prov.nodes[node] = NodeInfo(node, True, now - 60)
            sched.state[node] = SchedNode(node, SchedState.BUSY, 0, None)
            jobs.append(Job(f"{ns.name}-r{i}", ns.name, 1, 2, True, now - 30, node_names=(node,)))
            jobs.append(Job(f"{ns.name}-p{i}", ns.name, 1, 2, False, now - 10, wants_resources=True, reason="Resources"))
    sched.jobs = jobs
    ctl.step()  # first step: every node's first transition
    wall, cpu = [], []
    for _ in range(steps):
        w0, c0 = time.perf_counter(), time.process_time()
        ctl.step()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    ctl.close()
    assert not ctl.last_plan.start and not ctl.last_plan.stop, "the bench cluster should be steady"
    return percentile(wall, 0.5), percentile(wall, 0.95), percentile(cpu, 0.5)


def cpu_all() -> float:
    """CPU seconds of this process and of the commands it ran and waited for."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def live(nodes: int, steps: int) -> None:
    name = f"step-{uuid.uuid4().hex[:4]}"
    cfg = Path(f"/tmp/{name}.yaml")
    ns = {"name": "compute", "name_base": "n", "max_nodes": nodes, "cpus": 1, "memory_mb": 256, "idle_timeout": 600}
    cfg.write_text(json.dumps({"name": name, "nodesets": [ns]}))
    cli = [sys.executable, "-m", "accordion"]
    subprocess.run([*cli, "up", "-f", str(cfg)], check=True, capture_output=True)
    controller = 0
    try:
        subprocess.run([*cli, "scale", "compute", str(nodes), "-c", name], check=True, capture_output=True, timeout=600)
        cluster = Cluster.load(name)
        deadline = time.monotonic() + 300
        while sum(1 for n in cluster.scheduler.observe().nodes.values() if n.state == SchedState.IDLE) < nodes:
            if time.monotonic() > deadline:
                raise SystemExit(f"{nodes} nodes not idle within 300 s")
            time.sleep(1)
        controller = int((cluster.paths.run / "pids" / "controller.pid").read_text())
        os.kill(controller, signal.SIGSTOP)
        ctl = Controller(cluster.config, cluster.paths, cluster.scheduler, cluster.provider, cluster.events)
        ctl.step()
        wall, cpu = [], []
        for _ in range(steps):
            w0, c0 = time.perf_counter(), cpu_all()
            ctl.step()
            wall.append(time.perf_counter() - w0)
            cpu.append(cpu_all() - c0)
        ctl.close()
        listed = len([n for n in cluster.provider.list().values() if n.running])
        runc = ["runc", "--root", str(cluster.paths.run / "runc"), "list", "--format", "json"]
        lists = []
        for _ in range(10):
            c0 = cpu_all()
            subprocess.run(runc, check=True, capture_output=True)
            lists.append(cpu_all() - c0)
        print(f"live, {listed} node containers up and idle, {steps} steps: median {percentile(wall, 0.5) * 1000:.1f} ms, "
              f"p95 {percentile(wall, 0.95) * 1000:.1f} ms, CPU per step (with its commands) {percentile(cpu, 0.5) * 1000:.1f} ms; "
              f"one `runc list`: {percentile(lists, 0.5) * 1000:.1f} ms of CPU")
    finally:
        if controller:
            os.kill(controller, signal.SIGCONT)
        subprocess.run([*cli, "down", "-c", name], capture_output=True)
        cfg.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[280, 4000])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--live", type=int, metavar="N", help="N real node containers instead of stand-ins (see above)")
    args = ap.parse_args()
    if args.live:
        live(args.live, args.steps)
        return
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ACCORDION_STATE"] = tmp
        print(f"{'nodes':>6} {'jobs':>6} {'median ms':>10} {'p95 ms':>8} {'CPU ms/step':>12}")
        for n in args.nodes:
            med, high, cpu = bench(n, args.steps)
            print(f"{n:>6} {2 * n:>6} {med * 1000:>10.1f} {high * 1000:>8.1f} {cpu * 1000:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
