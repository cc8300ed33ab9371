"""Grid Engine (8.1.9, Debian) through the same controller, policy and provider: Appendix C, Table 10.1
(thesis l.2112-2132, l.4254-4620), a drain that waits for the job, and a queue instance disabled by an
administrator.

One cluster serves the whole module (each test leaves it with no job and its node set on --auto). Every
`accordion` process runs under the network guard: a connection to a cluster address from the host's
network namespace is refused and fails the module.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from accordion.schedulers.gridengine import parse_qstat_f
from tests.live.cluster import EXAMPLES, LiveCluster, accordion, wait_for
from tests.live.oar import GUARD_LOG, GUARD_NETNS, guard_this_process, host_netns, write_sitecustomize

USER = "hpcuser"  # Grid Engine refuses jobs from uids below min_uid (1000): root's included
CONFIG = {
    "scheduler": "gridengine",
    "nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 4, "cpus": 2, "idle_timeout": 4}],
}


class GridEngineCluster(LiveCluster):
    def up(self):
        proc = super().up()
        self.shared.chmod(0o1777)
        return proc

    def as_user(self, command: str, check: bool = True) -> str:
        quoted = command.replace("'", "'\\''")
        return self.sh(f"su {USER} -c 'cd {self.shared} && {quoted}'", check=check)

    def qsub(self, body: str, *options: str, name: str = "job") -> str:
        script = self.shared / f"{name}.sh"
        script.write_text("#!/bin/bash\n" + body + "\n")
        script.chmod(0o755)
        out = self.as_user(f"qsub -terse -cwd -j y -N {name} {' '.join(options)} {script}")
        return out.strip().split(".")[0]

    def queue(self) -> tuple[dict[str, str], dict[str, set[str]], dict[str, str]]:
        """Queue instance states by host, the hosts of each running job, and the state of each pending job."""
        instances, hosts, pending = parse_qstat_f(self.sh("qstat -f -xml -u '*'"))
        waiting = {e.findtext("JB_job_number") or "": e.findtext("state") or "" for e in pending}
        return {i.host: i.state for i in instances}, {j: set(h) for j, h in hosts.items()}, waiting

    def job_state(self, jobid: str) -> str:
        _, running, waiting = self.queue()
        if jobid in running:
            return "RUNNING"
        if jobid in waiting:
            return "PENDING"
        acct = self.sh(f"qacct -j {jobid}", check=False)
        if "exit_status" not in acct:
            return "?"  # ended, not yet in the accounting file
        ok = re.search(r"^exit_status\s+0\s*$", acct, re.M) and re.search(r"^failed\s+0\s*$", acct, re.M)
        return "COMPLETED" if ok else "FAILED"

    def wait_job(self, jobid: str, states: set[str], timeout: float = 60) -> str:
        return wait_for(lambda: (s := self.job_state(jobid)) in states and s, timeout, f"Grid Engine job {jobid} in {states}")

    def job_nodes(self, jobid: str) -> set[str]:
        return self.queue()[1].get(jobid, set())

    def cancel(self, *jobs: str) -> None:
        self.as_user(f"qdel {' '.join(jobs)}", check=False)


@pytest.fixture(scope="module")
def ge(tmp_path_factory):
    work = tmp_path_factory.mktemp("ge")
    log = work / "host-connections.log"
    log.touch()
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", GUARD_LOG, GUARD_NETNS)}
    site = write_sitecustomize(work / "guard")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), saved["PYTHONPATH"]) if p)
    os.environ[GUARD_LOG], os.environ[GUARD_NETNS] = str(log), host_netns()
    guard_this_process()
    c = GridEngineCluster(f"g-{uuid.uuid4().hex[:6]}", CONFIG, work)
    try:
        c.up()
        yield c
    finally:
        c.down()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert log.read_text() == "", f"connections to cluster addresses from the host's network namespace:\n{log.read_text()}"
    # The qmaster (and any helper) went with `accordion down`, and with it the cell and its spool.
    leftovers = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _mentions(p, c.name)]
    assert leftovers == [] and not Path(f"/var/lib/accordion/{c.name}").exists(), leftovers


def _mentions(proc: Path, name: str) -> bool:
    try:
        return f"/accordion/{name}/".encode() in (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
    except OSError:
        return False


@pytest.fixture
def c(ge):
    yield ge
    # Leave the cluster as the next test expects it: no job, no pin, every node gone.
    # Not `qdel -f`: the execds end the jobs and report it, as after a user's qdel.
    ge.sh("qdel -u '*' >/dev/null 2>&1; true")
    wait_for(lambda: not ge.queue()[1] and not ge.queue()[2], 60, "no job left")
    (ge.shared / "release").unlink(missing_ok=True)
    ge.scale("compute", 0)  # every node removed at once, without waiting for the idle timeout
    ge.scale("compute", "auto")


def test_appendix_c_walkthrough_with_gridengine(c):
    # No nodes, the whole capacity declared: every queue instance off by Accordion's calendar (D), no execd (u).
    assert c.containers() == set()
    states, _, _ = c.queue()
    assert states == {f"hpc-node-{i}": "Du" for i in range(4)}, states
    summary = c.sh("qstat -g c").splitlines()[-1].split()  # the cluster queue summary: 8 slots, all off
    assert summary[0] == "compute" and summary[5] == "8" and summary[-1] == "8", summary
    # An impossible request is refused at submission (`-w e`, the cell's default request).
    out = c.as_user(f"qsub -pe mpi2 10 {EXAMPLES / 'pi.c'}", check=False)
    assert "no suitable queues" in out, out

    job1 = c.qsub("sleep infinity", "-pe smp 2", name="infinite1")
    c.wait_job(job1, {"RUNNING"}, 30)
    (node1,) = c.job_nodes(job1)
    assert c.containers() == {node1} and c.queue()[0][node1] == ""

    job2 = c.qsub("sleep infinity", "-pe smp 2", name="infinite2")
    c.wait_job(job2, {"RUNNING"}, 30)
    (node2,) = c.job_nodes(job2)
    assert node2 != node1 and c.containers() == {node1, node2}

    c.cancel(job1)
    wait_for(lambda: c.containers() == {node2}, 30, f"{node1} removed")
    # Off by Accordion's calendar at once (u follows when the qmaster gives up on the execd: max_unheard).
    assert c.job_state(job2) == "RUNNING" and c.queue()[0][node1] in ("D", "Du")
    kinds = [(e["kind"], e.get("node")) for e in c.events()]
    for kind in ("requested", "started", "registered", "busy", "idle", "draining", "removed"):
        assert (kind, node1) in kinds, (kind, kinds)


def test_scale_in_waits_for_the_running_job(c):
    c.scale("compute", 1)
    job = c.qsub("sleep 15; echo done on $(hostname)", name="drainme")
    c.wait_job(job, {"RUNNING"}, 30)
    (node,) = c.job_nodes(job)
    accordion("scale", "-c", c.name, "compute", "0", "--wait", "0")  # waiting would wait for the job to end
    # Disabled (no new job lands), not removed: the job runs on to its end, then the node goes.
    wait_for(lambda: "D" in c.queue()[0][node], 10, f"{node} off (accordion_draining)")
    assert c.containers() == {node} and c.job_state(job) == "RUNNING"
    c.wait_job(job, {"COMPLETED"}, 60)
    wait_for(lambda: c.containers() == set(), 30, f"{node} removed once empty")
    assert "done on hpc-node-" in (c.shared / f"drainme.o{job}").read_text()


def test_nodes_started_together_all_register(c):
    # The controller starts them on its pool, each lifting its own calendar with `qconf -purge`, which
    # rewrites the whole queue: unserialised, one lift undid another and that node never came into service.
    before = len(c.events())
    for _ in range(3):
        c.scale("compute", 4)
        c.scale("compute", 0)
    failed = [e for e in c.events()[before:] if e["kind"] == "failed"]
    assert failed == [], failed


def test_a_queue_instance_disabled_by_an_administrator_is_held(c):
    c.sh("qmod -d compute@hpc-node-0")
    try:
        job = c.qsub("sleep infinity", "-pe mpi2 6", name="three")  # 3 nodes: only 3 names are usable
        c.wait_job(job, {"RUNNING"}, 30)
        assert c.job_nodes(job) == {"hpc-node-1", "hpc-node-2", "hpc-node-3"}
        (compute,) = c.status()["nodesets"]
        assert compute["held"] == {"hpc-node-0": "disabled"}, compute
        assert "hpc-node-0" not in c.containers()
    finally:
        c.sh("qmod -e compute@hpc-node-0")


def test_a_job_asking_for_a_host_by_name_runs_there(c):
    # `qsub -l h=NODE`, the usual way to pin a job to a host: unread, another node was started for the job,
    # which Grid Engine never ran there, and the job waited for ever.
    job = c.qsub("echo ran on $(hostname)", "-l h=hpc-node-2", name="pinned")
    c.wait_job(job, {"COMPLETED"}, 60)
    assert "ran on hpc-node-2" in (c.shared / f"pinned.o{job}").read_text()


class Kind:
    def __init__(self, c: GridEngineCluster, kind: str) -> None:
        self.c, self.kind = c, kind
        self.nodes = 1 if kind == "sleep" else 2
        if kind == "mpi" and not (c.shared / "pi").exists():
            (c.shared / "pi.c").write_text((EXAMPLES / "pi.c").read_text())
            c.as_user("mpicc -O2 -o pi pi.c")

    def submit(self, hold: bool = False, *options: str) -> str:
        """A job that ends at once or, with `hold`, once the test creates the file `release` (a sleep
        could end before a slow scale step does, on a loaded machine)."""
        wait = f"while [ ! -e {self.c.shared}/release ]; do sleep 0.2; done; " if hold else ""
        if self.kind == "sleep":
            return self.c.qsub(f"{wait}echo sleep-done on $(hostname)", "-pe smp 2", *options, name="sleepjob")
        # Tight integration: mpirun reads $PE_HOSTFILE and starts its daemons with `qrsh -inherit`; with
        # `hold`, each rank waits for the release file before it starts pi.
        run = f"bash -c '{wait}exec ./pi 2000000 0'" if hold else "./pi 2000000 0"
        return self.c.qsub(f"mpirun -mca btl_tcp_if_include eth0 {run}", "-pe mpi2 4", *options, name="mpijob")

    def release(self) -> None:
        (self.c.shared / "release").touch()

    def check_completed(self, jobid: str) -> None:
        state = self.c.wait_job(jobid, {"COMPLETED", "FAILED"}, 120)
        out = (self.c.shared / f"{self.kind}job.o{jobid}").read_text()
        assert state == "COMPLETED", (out, self.c.sh(f"qacct -j {jobid}"))
        if self.kind == "sleep":
            assert "sleep-done on hpc-node-" in out, out
        else:
            assert "pi is approximately 3.1" in out, out
            hosts = {line.split(" on ")[1] for line in out.splitlines() if line.startswith("rank ")}
            assert len(hosts) == 2 and out.count("rank ") == 4, out
        # Run once: one accounting record per host it used (no rerun after a lost node).
        records = [r for r in self.c.sh(f"qacct -j {jobid}").split("=" * 62) if "hostname" in r]
        assert len(records) == self.nodes, records


@pytest.fixture(params=["sleep", "mpi"])
def kind(request, c):
    return Kind(c, request.param)


def test_1_pending_job_runs_when_nodes_are_added(kind):
    c = kind.c
    c.scale("compute", 0)
    job = kind.submit()
    wait_for(lambda: c.job_state(job) == "PENDING", 10, "the job to wait")
    assert c.containers() == set()
    c.scale("compute", kind.nodes)
    kind.check_completed(job)


def test_2_pending_job_survives_removal_of_free_nodes(kind):
    c = kind.c
    c.scale("compute", 2)
    blocker = c.qsub("sleep infinity", "-pe smp 2", name="blocker")
    c.wait_job(blocker, {"RUNNING"})
    busy = c.job_nodes(blocker)
    # The MPI job needs two nodes and only one is free; the sleep job waits on the blocker.
    job = kind.submit(False) if kind.kind == "mpi" else kind.submit(False, f"-hold_jid {blocker}")
    wait_for(lambda: c.job_state(job) == "PENDING", 10, "the job to wait")
    c.scale("compute", 1)
    assert c.containers() == busy
    assert c.job_state(job) == "PENDING" and c.job_state(blocker) == "RUNNING"
    if kind.kind == "mpi":
        c.scale("compute", 3)
    else:
        c.cancel(blocker)
    kind.check_completed(job)


def test_3_running_job_survives_nodes_being_added(kind):
    c = kind.c
    c.scale("compute", kind.nodes)
    job = kind.submit(hold=True)
    c.wait_job(job, {"RUNNING"}, 60)
    c.scale("compute", kind.nodes + 2)
    assert len(c.containers()) == kind.nodes + 2 and c.job_state(job) == "RUNNING"
    kind.release()
    kind.check_completed(job)


def test_4_running_job_survives_removal_of_free_nodes(kind):
    c = kind.c
    c.scale("compute", kind.nodes + 2)
    job = kind.submit(hold=True)
    c.wait_job(job, {"RUNNING"}, 60)
    used = c.job_nodes(job)
    c.scale("compute", kind.nodes)
    assert c.containers() == used and c.job_state(job) == "RUNNING"
    kind.release()
    kind.check_completed(job)
