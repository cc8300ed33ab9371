"""Appendix C of the thesis (l.4254-4620), with Slurm: nodes appear for waiting jobs, idle ones go."""

import re

from tests.live.cluster import accordion, chromium, wait_for

INFINITE = "sleep infinity"


def test_appendix_c_walkthrough(make_cluster, tmp_path):
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 3, "cpus": 2, "idle_timeout": 4}]})

    # No nodes at start, but the whole capacity is visible to users.
    busy = lambda: c.metric("accordion_nodes", nodeset="compute", state="busy")  # noqa: E731
    assert c.containers() == set()
    assert busy() == 0 and c.metric("accordion_nodeset_max_nodes", nodeset="compute") == 3
    assert c.sinfo() == {"hpc-node-0": "drained", "hpc-node-1": "drained", "hpc-node-2": "drained"}

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
    assert c.sinfo()[node1] == "drained" and c.sinfo()[node2] == "allocated"
    wait_for(lambda: busy() == 1 and c.metric("accordion_nodes", nodeset="compute", state="absent") == 2, 10, "metrics: back to 1 busy")
    assert c.metric("accordion_scale_down_total", nodeset="compute", reason="idle") == 1

    kinds = [(e["kind"], e.get("node")) for e in c.events()]
    for kind in ("requested", "started", "registered", "busy", "idle", "draining", "removed"):
        assert (kind, node1) in kinds, (kind, kinds)
    removed = next(e for e in c.events() if e["kind"] == "removed" and e["node"] == node1)
    assert removed["reason"].startswith("idle ")
    c.sh(f"scancel {job2}")

    # The report of this very run renders in a real browser: its script marks the page once both charts
    # are in the DOM, so a script error or a broken page leaves no mark.
    page = tmp_path / "report.html"
    accordion("report", "-c", c.name, "-o", str(page))
    text = page.read_text()
    assert "4 nodes requested" not in text and "<b>2</b> nodes requested" in text and "<b>1</b> removed" in text
    dom = chromium(page, "--dump-dom")
    assert re.search(r'<body[^>]*data-rendered="1"', dom.stdout), dom.stdout[:500] + dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    chromium(page, f"--screenshot={shot}", "--window-size=1000,900")
    assert shot.stat().st_size > 10_000
