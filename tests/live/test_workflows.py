"""Workflow tools from PyPI, run as they are documented, from the login node as an ordinary user (issue 12).

One elastic cluster for the module, of 1-CPU nodes (two jobs at once take two nodes), with a 3 s idle
timeout so that nodes go soon after each tool is done. Each tool
runs from `accordion shell --user hpcuser` with its own defaults; each test asserts that the work ran on
at least two elastic nodes, as hpcuser, and that the nodes were removed afterwards. The tools' Python is
the test's own (the project's venv, built from Debian's /usr/bin/python3 so that hpcuser can run it).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.live.cluster import ACCORDION, LiveCluster, wait_for

USER = "hpcuser"
CONFIG = {
    "nodesets": [{"name": "compute", "name_base": "wf-node", "max_nodes": 4, "cpus": 1, "memory_mb": 768, "idle_timeout": "3s"}],
}
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LiveCluster(f"wf-{uuid.uuid4().hex[:6]}", CONFIG, tmp_path_factory.mktemp("wf"))
    try:
        c.up()
        yield c
    finally:
        c.down()


def as_user(c: LiveCluster, script: str, timeout: float = 300) -> str:
    """Run a bash script in the login shell as hpcuser, with the venv's tools on the PATH."""
    venv_bin = str(Path(sys.executable).parent)
    proc = subprocess.run(
        [*ACCORDION, "shell", "-c", c.name, "--user", USER, "--", "bash", "-c", f"export PATH={venv_bin}:$PATH; {script}"],
        capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"{script!r} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def nodes_gone(c: LiveCluster) -> None:
    wait_for(lambda: not c.containers(), 90, "the elastic nodes to be removed after the work")


def ran_on(out: str) -> set[str]:
    return {w for line in out.splitlines() if line.startswith("HOST ") for w in line.split()[1:]}


def test_dask_jobqueue_adapts_with_its_defaults(cluster):
    nodes_gone(cluster)
    script = (HERE / "workflows" / "dask_adapt.py")
    out = as_user(cluster, f"python {script}")
    hosts = ran_on(out)
    assert len(hosts) >= 2 and all(h.startswith("wf-node-") for h in hosts), out
    assert f"USER {USER}" in out, out
    nodes_gone(cluster)


def test_snakemake_slurm_executor_runs_six_rules_as_jobs(cluster):
    nodes_gone(cluster)
    work = f"smk-{uuid.uuid4().hex[:6]}"
    # --slurm-init-seconds-before-status-checks: the plugin's documented setting; its default (40 s) only
    # makes a small workflow wait.
    out = as_user(
        cluster,
        f"mkdir {work} && cd {work} && cp {HERE / 'workflows' / 'Snakefile'} . && "
        "python -m snakemake --executor slurm --jobs 4 --slurm-init-seconds-before-status-checks 5 >log 2>&1 || { tail -50 log; exit 1; }; "
        "echo HOST $(cat data/*.txt sq/*.txt gathered.txt count.txt hosts.txt | grep -o 'wf-node-[0-9]*' | sort -u); "
        "stat -c 'OWNER %U' summary.txt; grep -c 'has been submitted with SLURM jobid' log | sed 's/^/JOBS /'",
    )
    hosts = ran_on(out)
    assert len(hosts) >= 2, out
    assert f"OWNER {USER}" in out, out
    # Every rule a job: 2 make + 2 square + gather, count, hosts, summary.
    assert "JOBS 8" in out, out
    assert (cluster.shared / USER / work / "summary.txt").owner() == USER
    nodes_gone(cluster)


def test_submitit_map_of_eight(cluster):
    nodes_gone(cluster)
    out = as_user(cluster, f"python {HERE / 'workflows' / 'submitit_map.py'}")
    hosts = ran_on(out)
    assert len(hosts) >= 2, out
    assert "RESULTS [0, 1, 4, 9, 16, 25, 36, 49]" in out and f"USER {USER}" in out, out
    nodes_gone(cluster)
