import json
import re
from pathlib import Path

from accordion.metrics import Metrics, reason_kind
from accordion.model import Job, Node, NodeSetSpec, NodeState, Snapshot

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"


def exported_names() -> set[str]:
    m = Metrics("x")
    m.update(Snapshot(0.0, (NodeSetSpec("c", 0, 2, 2, 60),), (), ()))
    m.provision.labels("x", "c").observe(1.0)
    m.loop.labels("x").observe(0.1)
    m.errors.labels("x").inc()
    m.scale_ups.labels("x", "c", "demand").inc()
    m.scale_downs.labels("x", "c", "idle").inc()
    return {s.name for fam in m.registry.collect() for s in fam.samples}


def test_dashboard_uses_only_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    used = {name for e in exprs for name in re.findall(r"accordion_[a-z_]+", e)}
    exported = exported_names()
    assert used and used <= exported, used - exported
    # Every family the controller exports appears on the dashboard.
    families = {re.sub(r"_(bucket|count|sum|total|created)$", "", n) for n in exported}
    assert families <= {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in used}


def test_gauges_follow_snapshot():
    m = Metrics("x")
    nodes = (Node("c-0", "c", NodeState.BUSY, 0), Node("c-1", "c", NodeState.IDLE, 0), Node("c-2", "c", NodeState.ABSENT, 0))
    jobs = (Job("1", "c", 2, 2, False, 0.0), Job("2", "c", 1, 1, True, 0.0))
    m.update(Snapshot(0.0, (NodeSetSpec("c", 0, 3, 2, 60),), nodes, jobs))
    get = lambda name, **lab: m.registry.get_sample_value(name, {"cluster": "x", "nodeset": "c", **lab})  # noqa: E731
    assert get("accordion_nodes", state="busy") == 1 and get("accordion_nodes", state="absent") == 1
    assert get("accordion_pending_jobs") == 1 and get("accordion_pending_cpus") == 4 and get("accordion_running_jobs") == 1


def test_reason_kinds_are_bounded():
    assert reason_kind("job 42 needs 2 nodes of 2 CPUs") == "demand"
    assert reason_kind("idle 300 s") == "idle"
    assert reason_kind("scaled to 3 by hand") == "by_hand"
    assert reason_kind("did not register within 30 s") == "resume_timeout"
    assert reason_kind("min_nodes is 2") == "min_nodes"


def test_tally_counts_each_node_set_once_for_every_reader():
    """Status samples and metrics read one count per node set: nodes by state, waiting jobs (an array's tasks
    one by one, held jobs not), the CPUs they ask for, running jobs; a node set no longer configured still
    shows."""
    nodes = (
        Node("a-0", "a", NodeState.BUSY, 0), Node("a-1", "a", NodeState.IDLE, 0), Node("a-2", "a", NodeState.IDLE, 0),
        Node("b-0", "b", NodeState.ABSENT, 0), Node("old-0", "old", NodeState.DRAINING, 0),
    )
    jobs = (
        Job("1", "a", 2, 2, False, 0.0),  # 4 CPUs
        Job("2", "a", 1, 1, False, 0.0, count=3, cpus=2),  # an array's 3 tasks of 2 CPUs
        Job("3", "a", 1, 1, False, 0.0, wants_resources=False),  # held: not waiting
        Job("4", "a", 1, 1, True, 0.0),
        Job("5", "b", 1, 4, False, 0.0),
    )
    tally = Snapshot(0.0, (NodeSetSpec("a", 0, 3, 2, 60), NodeSetSpec("b", 0, 1, 4, 60)), nodes, jobs).tally
    assert list(tally) == ["a", "b", "old"]
    a, b, old = tally["a"], tally["b"], tally["old"]
    assert (a.nodes[NodeState.IDLE], a.nodes[NodeState.BUSY], a.nodes[NodeState.ABSENT]) == (2, 1, 0)
    assert (a.waiting_jobs, a.waiting_cpus, a.running_jobs) == (4, 10, 1)
    assert (b.nodes[NodeState.ABSENT], b.waiting_jobs, b.waiting_cpus, b.running_jobs) == (1, 1, 4, 0)
    assert (old.nodes[NodeState.DRAINING], old.waiting_jobs) == (1, 0)
