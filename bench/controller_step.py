"""Cost of one controller step (observe -> decide -> act -> status) at scale, with the scheduler and
provider stand-ins of tests/test_controller.py, so that only Accordion's own work is timed.

Every node exists and runs a one-node job, and as many jobs again wait (a busy cluster at capacity: the
policy sees every node and every job, and starts nothing). Prints the median and p95 wall time and the
CPU time per step.

    python bench/controller_step.py [--nodes 280 4000] [--steps 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[280, 4000])
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ACCORDION_STATE"] = tmp
        print(f"{'nodes':>6} {'jobs':>6} {'median ms':>10} {'p95 ms':>8} {'CPU ms/step':>12}")
        for n in args.nodes:
            med, high, cpu = bench(n, args.steps)
            print(f"{n:>6} {2 * n:>6} {med * 1000:>10.1f} {high * 1000:>8.1f} {cpu * 1000:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
