"""Submission limits, clean teardown, bad cluster files, side-by-side clusters, controller restarts."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.live.cluster import accordion, wait_for

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
    assert _leftovers(c.name), "the probe should see a running cluster"
    c.down()
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


def test_controller_killed_and_restarted_keeps_nodes(make_cluster):
    c = make_cluster(SMALL)
    job = c.sbatch("sleep 300", "-N2", name="keep")
    c.wait_job(job, {"RUNNING"}, 30)
    before = c.containers()
    created = {n: (Path("/run/accordion") / c.name / "nodes" / n / "created").read_text() for n in before}
    pid = int((Path("/run/accordion") / c.name / "pids" / "controller.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    assert c.status()["controller"] == "stopped"
    c.up()  # restarts the controller only
    wait_for(lambda: c.status()["controller"] == "running", 10, "controller restarted")
    time.sleep(2)
    assert c.containers() == before
    assert {n: (Path("/run/accordion") / c.name / "nodes" / n / "created").read_text() for n in before} == created
    assert c.job_state(job) == "RUNNING"
