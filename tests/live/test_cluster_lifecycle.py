"""Submission limits, clean teardown, bad cluster files, side-by-side clusters, controller restarts."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.live.cluster import accordion, wait_for

DONE = {"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}

SMALL = {"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 2, "cpus": 1, "memory_mb": 256, "idle_timeout": 600}]}


def test_job_larger_than_nodeset_is_refused_at_submission(make_cluster):
    c = make_cluster(SMALL)
    script = c.shared / "big.sh"
    script.write_text("#!/bin/bash\nhostname\n")
    out = c.sh(f"sbatch -N3 {script}", check=False)
    assert re.search(r"Batch job submission failed: (Node count specification invalid|More processors requested than permitted)", out), out
    out = c.sh(f"sbatch -n3 {script}", check=False)
    assert "Batch job submission failed: More processors requested than permitted" in out, out
    assert c.sh("squeue -h") == ""
    assert c.containers() == set()
    # Nodes are declared one line per node set (`NodeName=hpc-node-[0-1] NodeAddr=...`): each name got its address.
    from accordion.cluster import Cluster

    provider = Cluster.load(c.name).provider
    declared = dict(re.findall(r"NodeName=(\S+) .*?NodeAddr=(\S+)", c.sh("scontrol show node -o")))
    assert declared == {n: provider.address(n) for n in ("hpc-node-0", "hpc-node-1")}, declared


def _leftovers(name: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if f"/{name}/" in cmd or f"acc.{name}" in cmd or f"--cluster {name}" in cmd:
                    if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                        found.append(f"process {pid}: {cmd}")
            except OSError:
                pass
    found += [f"mount {line}" for line in Path("/proc/self/mountinfo").read_text().splitlines() if f"/{name}/" in line or line.split()[4].endswith(f"/{name}")]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line}" for line in netns.splitlines() if f"acc.{name}" in line]
    found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/accordion/{name}")]
    found += [f"file {p}" for p in (Path("/var/lib/accordion") / name, Path("/run/accordion") / name, Path("/srv/accordion") / name) if p.exists()]
    found += [f"runc state {p}" for p in Path("/run/runc").glob(f"*{name}*")] if Path("/run/runc").exists() else []
    return found


def test_down_leaves_nothing_behind(make_cluster):
    c = make_cluster(SMALL)
    job = c.sbatch("srun hostname; sleep 300", "-N2", name="long")
    c.wait_job(job, {"RUNNING"}, 30)
    assert len(c.containers()) == 2
    running = _leftovers(c.name)
    for daemon in ("accordion supervise", "accordion controller", "slurmctld"):
        assert any(daemon in line for line in running), f"the probe should see {daemon}: {running}"
    # A started node's root, scratch and network namespace are its container's alone: the host's mount
    # table, which every runc reads and every new container copies, holds none of them.
    assert [line for line in running if line.startswith(("mount", "netns")) and "hpc-node" in line] == []
    c.down()
    assert _leftovers(c.name) == []


def test_down_while_the_controller_restarts_leaves_nothing_behind(make_cluster):
    c = make_cluster(SMALL)
    os.kill(int((Path("/run/accordion") / c.name / "pids" / "controller.pid").read_text()), signal.SIGKILL)
    c.down()  # the supervisor is stopped first: nothing starts the controller again
    assert _leftovers(c.name) == []
    time.sleep(6)  # longer than the supervisor's longest wait between restarts
    assert _leftovers(c.name) == []


def test_malformed_cluster_file_starts_nothing(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: t-bad\nnodesets:\n  - name: compute\n    max_nodes: -1\n")
    proc = accordion("up", "-f", str(f), check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nodesets[0].max_nodes" in lines[0] and "greater than or equal to 1" in lines[0]
    assert _leftovers("t-bad") == []
    proc = accordion("up", "-f", str(tmp_path / "missing.yaml"), check=False)
    assert proc.returncode == 2 and "cannot read the cluster file" in proc.stderr


def test_two_clusters_side_by_side(make_cluster):
    a = make_cluster(SMALL, prefix="a")
    b = make_cluster(SMALL, prefix="b")
    ja = a.sbatch("srun hostname; sleep 300", "-N2", name="ja")
    jb = b.sbatch("srun hostname; sleep 300", "-N1", name="jb")
    a.wait_job(ja, {"RUNNING"}, 30)
    b.wait_job(jb, {"RUNNING"}, 30)
    assert len(a.containers()) == 2 and len(b.containers()) == 1
    # Same node names, separate clusters: each sees only its own jobs.
    assert a.sh("squeue -h -o %i").split() == [ja]
    assert b.sh("squeue -h -o %i").split() == [jb]
    a.down()
    assert b.job_state(jb) == "RUNNING" and len(b.containers()) == 1


def _created(c) -> dict[str, str]:
    nodes = Path("/run/accordion") / c.name / "nodes"
    return {n: (nodes / n / "created").read_text() for n in c.containers()}


def test_controller_killed_and_restarted_keeps_nodes(make_cluster):
    # A short resume_timeout: a restarted controller that took the running nodes for nodes still starting
    # (it forgot they had registered) would give them up, and replace them, within the watch below.
    resume_timeout = 3
    c = make_cluster({**SMALL, "controller": {"resume_timeout": resume_timeout}})
    job = c.sbatch("sleep 300", "-N1", name="keep")
    c.wait_job(job, {"RUNNING"}, 30)
    short = c.sbatch("true", "-N1", name="short")  # leaves a second node idle (idle_timeout: 600)
    assert c.wait_job(short, DONE, 30) == "COMPLETED"
    wait_for(lambda: sorted(c.node_states().values()) == ["busy", "idle"], 30, "one busy and one idle node")
    nodes, created, states, before = c.containers(), _created(c), c.node_states(), c.job(job)
    assert len(nodes) == 2 and int(before["Restarts"]) == 0
    pids = Path("/run/accordion") / c.name / "pids"
    old = int((pids / "controller.pid").read_text())
    killed = time.time()
    os.kill(old, signal.SIGKILL)
    # No command: its supervisor starts it again.
    wait_for(lambda: (st := c.status())["controller"] == "running" and st["updated"] > killed, 5, "controller restarted")
    new = int((pids / "controller.pid").read_text())
    assert new != old
    # Watched for three resume timeouts: the restarted controller keeps the nodes it did not start.
    watch_end = time.monotonic() + 3 * resume_timeout
    while time.monotonic() < watch_end:
        assert _created(c) == created, "a node was deleted or created again"
        time.sleep(0.3)
    after = c.job(job)
    assert {k: after[k] for k in ("JobId", "JobState", "NodeList", "StartTime", "Restarts")} == {
        "JobId": job, "JobState": "RUNNING", "NodeList": before["NodeList"], "StartTime": before["StartTime"], "Restarts": "0"
    }, after
    assert c.node_states() == states
    node_events = [e for e in c.events() if e["ts"] >= killed and e["kind"] != "controller"]
    assert node_events == [], node_events
    # ... and it was at work all along: running, the same process, its figures fresh.
    st = c.status()
    assert (st["controller"], st["stale"]) == ("running", False) and st["age"] < 3, st
    assert int((pids / "controller.pid").read_text()) == new


def _prepared(c) -> dict[str, int]:
    """Prepared node containers: name -> pid of the runc init waiting in each (runc's state "created")."""
    out = subprocess.run(["runc", "--root", f"/run/accordion/{c.name}/runc", "list", "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    nodes = Path("/run/accordion") / c.name / "nodes"
    return {x["id"]: x["pid"] for x in json.loads(out or "null") or [] if x["status"] == "created" and (nodes / x["id"] / "prepared").exists()}


def test_a_cold_start_starts_the_prepared_node(make_cluster):
    """The node set's next node is made ahead with nothing run in it (no node to Slurm, no slurmd); a job's
    cold start starts that very container, and the next name is prepared once the node is in service."""
    c = make_cluster(SMALL)
    wait_for(lambda: len(_prepared(c)) == 1, 30, "the next node prepared")
    [(name, pid)] = _prepared(c).items()
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"runc", b"init"]
    assert c.containers() == set() and c.sinfo()[name] != "idle"
    job = c.sbatch("hostname", "-N1", name="cold")
    assert c.wait_job(job, DONE, 30) == "COMPLETED"
    assert c.job(job)["NodeList"] == name
    # Started, not made again: runc's init became the node's first process.
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"catatonit")
    [other] = {"hpc-node-0", "hpc-node-1"} - {name}
    wait_for(lambda: set(_prepared(c)) == {other}, 30, f"{other} prepared next")
    assert [e for e in c.events() if e["kind"] in ("failed", "lost")] == []
