"""Appendix C of the thesis (l.4254-4620), with Slurm: nodes appear for waiting jobs, idle ones go."""

from tests.live.cluster import wait_for

INFINITE = "sleep infinity"


def test_appendix_c_walkthrough(make_cluster):
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 3, "cpus": 2, "idle_timeout": 4}]})

    # No nodes at start, but the whole capacity is visible to users.
    busy = lambda: c.metric("accordion_nodes", nodeset="compute", state="busy")  # noqa: E731
    assert c.containers() == set()
    assert busy() == 0 and c.metric("accordion_nodeset_max_nodes", nodeset="compute") == 3
    assert c.sinfo() == {"hpc-node-0": "down", "hpc-node-1": "down", "hpc-node-2": "down"}

    # A job waits, a node appears, the job runs on it.
    job1 = c.sbatch(INFINITE, "-N1", "-c2", name="infinite1")
    c.wait_job(job1, {"RUNNING"}, timeout=30)
    node1 = c.job(job1)["NodeList"]
    assert c.containers() == {node1}
    assert c.sinfo()[node1] == "allocated"
    wait_for(lambda: busy() == 1, 10, "metrics: 1 busy node")

    # A second job: a second node.
    job2 = c.sbatch(INFINITE, "-N1", "-c2", name="infinite2")
    c.wait_job(job2, {"RUNNING"}, timeout=30)
    node2 = c.job(job2)["NodeList"]
    assert node2 != node1
    assert c.containers() == {node1, node2}
    wait_for(lambda: busy() == 2, 10, "metrics: 2 busy nodes")
    assert c.metric("accordion_scale_up_total", nodeset="compute", reason="demand") == 2
    assert c.metric("accordion_provision_seconds_count", nodeset="compute") == 2

    # Cancel job 1: its node is removed after the idle timeout; job 2 keeps running.
    c.sh(f"scancel {job1}")
    wait_for(lambda: c.containers() == {node2}, 30, f"{node1} removed")
    assert c.job_state(job2) == "RUNNING"
    assert c.sinfo()[node1] == "down" and c.sinfo()[node2] == "allocated"
    wait_for(lambda: busy() == 1 and c.metric("accordion_nodes", nodeset="compute", state="absent") == 2, 10, "metrics: back to 1 busy")
    assert c.metric("accordion_scale_down_total", nodeset="compute", reason="idle") == 1

    kinds = [(e["kind"], e.get("node")) for e in c.events()]
    for kind in ("requested", "started", "registered", "busy", "idle", "draining", "removed"):
        assert (kind, node1) in kinds, (kind, kinds)
    removed = next(e for e in c.events() if e["kind"] == "removed" and e["node"] == node1)
    assert removed["reason"].startswith("idle ")
    c.sh(f"scancel {job2}")
