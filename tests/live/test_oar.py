"""OAR through the same controller, policy and provider: Appendix C and Table 10.1 (thesis l.2112-2132, l.4254-4620).

Every test runs under the network guard: an `accordion` process (CLI or controller) or adapter code run
here that connects to a cluster address from the host's network namespace is refused, and the test fails.
"""

import dataclasses
import json
import os
import signal
import subprocess
import time

import pytest

from accordion.cluster import Cluster
from accordion.errors import SchedulerError
from accordion.schedulers.oar import SERVER_PORT, SSHD_PORT, OarScheduler, host_view
from tests.live.cluster import EXAMPLES, wait_for
from tests.live.oar import GUARD_LOG, GUARD_NETNS, OarCluster, guard_this_process, host_netns, write_sitecustomize

CONFIG = {"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 3, "cpus": 2, "idle_timeout": 4}]}
PINNED = {"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 4, "cpus": 2, "idle_timeout": 600}]}
TWO_SETS = {
    "nodesets": [
        {"name": "compute", "name_base": "hpc-node", "max_nodes": 3, "cpus": 2, "idle_timeout": 600},
        {"name": "big", "name_base": "big-node", "max_nodes": 1, "cpus": 4, "idle_timeout": 600},
    ]
}


@pytest.fixture
def network_guard(tmp_path, monkeypatch):
    log = tmp_path / "host-connections.log"
    log.touch()
    site = write_sitecustomize(tmp_path / "guard")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv(GUARD_LOG, str(log))
    monkeypatch.setenv(GUARD_NETNS, host_netns())
    guard_this_process()
    yield log
    assert log.read_text() == "", f"connections to cluster addresses from the host's network namespace:\n{log.read_text()}"


@pytest.fixture
def make_oar(network_guard, make_cluster):
    # network_guard first: it is torn down last, after `accordion down` ran under it.
    return lambda config: make_cluster(config, prefix="o", kind=OarCluster)


def assert_nodes_read_as_oarnodes_shows_them(c: OarCluster) -> None:
    """The adapter reads resources from OAR's database in one query (NODES_SQL) instead of `oarnodes -J`:
    every node must read the same from both."""
    by_host: dict[str, list[dict]] = {}
    for r in json.loads(c.sh("oarnodes -J")).values():
        by_host.setdefault(r["host"], []).append(r)
    observed = Cluster.load(c.name).scheduler.observe().nodes
    assert set(observed) == set(by_host)
    for host, resources in by_host.items():
        assert observed[host] == host_view(host, resources), (host, resources)


def test_appendix_c_walkthrough_with_oar(make_oar):
    c = make_oar(CONFIG)
    assert c.containers() == set()
    assert c.capacity() == {f"hpc-node-{i}": {"Absent"} for i in range(3)}
    # An impossible request is refused at submission, since the whole capacity is registered.
    out = c.as_user('oarsub -l /host=4/core=1 "true"', check=False)
    assert "There are not enough resources for your request" in out and "OAR_JOB_ID=-5" in out, out

    job1 = c.oarsub("sleep infinity", "/host=1/core=2")
    c.wait_job(job1, {"RUNNING"}, 60)
    (node1,) = c.job_nodes(job1)
    assert c.containers() == {node1} and c.capacity()[node1] == {"Alive"}

    job2 = c.oarsub("sleep infinity", "/host=1/core=2")
    c.wait_job(job2, {"RUNNING"}, 60)
    (node2,) = c.job_nodes(job2)
    assert node2 != node1 and c.containers() == {node1, node2}
    assert_nodes_read_as_oarnodes_shows_them(c)  # two busy, one absent

    c.cancel(job1)
    wait_for(lambda: c.containers() == {node2}, 60, f"{node1} removed")
    assert c.job_state(job2) == "RUNNING"
    assert c.capacity()[node1] == {"Absent"}
    assert_nodes_read_as_oarnodes_shows_them(c)  # a busy one, absent ones
    kinds = [(e["kind"], e.get("node")) for e in c.events()]
    for kind in ("requested", "started", "registered", "busy", "draining", "removed"):
        assert (kind, node1) in kinds, (kind, kinds)
    c.cancel(job2)


def test_a_large_job_waiting_for_busy_nodes_is_not_passed_by_a_longer_one(make_oar):
    """OAR, like Slurm, plans a waiting job only on Alive resources: Accordion keeps as many nodes up as the
    oldest job that cannot start now needs, or a later, longer job passes it (as on Slurm: test_never_kill)."""
    c = make_oar({"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 4, "cpus": 1, "idle_timeout": 60}]})
    first = c.oarsub("sleep 15", "/host=2,walltime=0:01:00")
    c.wait_job(first, {"RUNNING"}, 60)
    large = c.oarsub("true", "/host=4,walltime=0:01:00")
    wait_for(lambda: len(c.containers()) == 4, 30, "4 nodes in service for the large job")
    later = c.oarsub("sleep 30", "/host=1,walltime=0:05:00")
    assert c.wait_job(large, {"COMPLETED"}, 120) == "COMPLETED"
    # Before, the later job ran at once on a node started for it, and the large one waited for it to end.
    assert c.job_state(later) in {"PENDING", "RUNNING"}, c.job(later)
    assert c.job_state(later) == "PENDING" or c.job(later)["startTime"] >= c.job(large)["startTime"], (c.job(large), c.job(later))
    assert c.wait_job(later, {"COMPLETED"}, 90) == "COMPLETED"


def test_a_node_whose_sshd_does_not_listen_is_not_set_alive(make_oar):
    # The controller leaves a container it did not start alone for resume_timeout: long enough for this test.
    c = make_oar({**CONFIG, "controller": {"resume_timeout": 300}})
    cluster = Cluster.load(c.name)
    config = cluster.config.model_copy(update={"controller": cluster.config.controller.model_copy(update={"resume_timeout": 3})})
    sched = OarScheduler(config, cluster.paths, cluster.provider)
    head = cluster.provider.head_address()
    # Checks from inside the cluster's network, each seen to fail against a closed port.
    assert sched._connects(head, SERVER_PORT) and not sched._connects(head, SSHD_PORT)

    node = "hpc-node-2"
    # This test makes containers behind the controller's back, and the controller takes one it lists half
    # made (its directory there, runc's state not yet) for one that exited: paused meanwhile.
    controller = int((cluster.paths.run / "pids" / "controller.pid").read_text())
    os.kill(controller, signal.SIGSTOP)
    try:
        _start_without_then_with_sshd(c, cluster, sched, node)
    finally:
        os.kill(controller, signal.SIGCONT)


def _start_without_then_with_sshd(c: OarCluster, cluster: Cluster, sched: OarScheduler, node: str) -> None:
    cluster.provider.create(dataclasses.replace(sched.node_spec(node), command=["sleep", "infinity"]))
    # Its network is up (a refusal, not an unreachable address: well under the ARP timeout), sshd is not.
    t0 = time.monotonic()
    assert not sched.sshd_answers(node)
    assert time.monotonic() - t0 < 2
    with pytest.raises(SchedulerError, match="sshd did not answer"):
        sched.node_started(node, lambda: False)
    assert c.capacity()[node] == {"Absent"}
    # OAR's own node check (its PINGCHECKER_GENERIC_COMMAND, as Almighty's tools run it) says so too.
    check = cluster.provider.enter() + sched.wrap() + [str(sched.sched / "pingchecker")]
    assert subprocess.run([*check, node], capture_output=True, text=True).stderr.split() == [node]

    # The same node with its sshd: the check passes and the node comes into service.
    cluster.provider.create(sched.node_spec(node))
    sched.node_started(node, lambda: False)
    wait_for(lambda: c.capacity()[node] == {"Alive"}, 10, f"{node} Alive")
    assert subprocess.run([*check, node], capture_output=True, text=True).stderr.split() == []


def test_two_node_sets_with_different_core_counts_each_get_their_own_jobs(make_oar):
    c = make_oar(TWO_SETS)
    sets = {r["host"]: r["nodeset"] for r in json.loads(c.sh("oarnodes -J")).values()}
    assert sets["big-node-0"] == "big" and sets["hpc-node-2"] == "compute"

    big = c.oarsub("sleep infinity", "/host=1/core=4", "-p \"nodeset='big'\"")
    c.wait_job(big, {"RUNNING"}, 60)
    assert c.job_nodes(big) == {"big-node-0"} and c.containers() == {"big-node-0"}

    # No property: any node set; the big node is full, so a compute node.
    small = c.oarsub("sleep infinity", "/host=1/core=2")
    c.wait_job(small, {"RUNNING"}, 60)
    (node,) = c.job_nodes(small)
    assert node.startswith("hpc-node-") and c.containers() == {"big-node-0", node}

    # Core-only, targeted by a property inside the resource request.
    cores = c.oarsub("sleep infinity", "\"{nodeset='compute'}/core=2\"")
    c.wait_job(cores, {"RUNNING"}, 60)
    assert {n.split("-")[0] for n in c.job_nodes(cores)} == {"hpc"} and len(c.containers()) == 3
    for job in (big, small, cores):
        c.cancel(job)


def test_core_only_job_gets_as_many_nodes_as_its_cores_need(make_oar):
    c = make_oar(TWO_SETS)
    job = c.oarsub("sleep infinity", "core=6", "-p \"nodeset='compute'\"")
    c.wait_job(job, {"RUNNING"}, 90)
    assert len(c.job_nodes(job)) == 3 and {n.split("-")[0] for n in c.containers()} == {"hpc"}
    c.cancel(job)


class Kind:
    def __init__(self, c: OarCluster, kind: str) -> None:
        self.c, self.kind = c, kind
        self.nodes = 1 if kind == "sleep" else 2
        if kind == "mpi":
            (c.shared / "pi.c").write_text((EXAMPLES / "pi.c").read_text())
            c.as_user("mpicc -O2 -o pi pi.c")

    def submit(self, hold: int = 0, *options: str) -> str:
        if self.kind == "sleep":
            return self.c.oarsub(f"sleep {hold}; echo sleep-done on \\$(hostname)", "/host=1/core=2", *options)
        # The OAR way: mpirun over the job's node file, with oarsh as the remote shell.
        cmd = f"mpirun -machinefile \\$OAR_NODEFILE -mca plm_rsh_agent oarsh -mca btl_tcp_if_include eth0 ./pi 2000000 {hold}"
        return self.c.oarsub(cmd, "/host=2/core=2", *options)

    def check_completed(self, jobid: str) -> None:
        state = self.c.wait_job(jobid, {"COMPLETED", "FAILED"}, 120)
        out = (self.c.shared / f"OAR.{jobid}.stdout").read_text()
        info = self.c.job(jobid)
        assert state == "COMPLETED" and str(info.get("exit_code")) == "0", (info, out)
        if self.kind == "sleep":
            assert "sleep-done on hpc-node-" in out
        else:
            assert "pi is approximately 3.1" in out, out
            assert len({line.split(" on ")[1] for line in out.splitlines() if line.startswith("rank ")}) == 2, out


@pytest.fixture(params=["sleep", "mpi"])
def kind(request, make_oar):
    return Kind(make_oar(PINNED), request.param)


def test_1_pending_job_runs_when_nodes_are_added(kind):
    c = kind.c
    c.scale("compute", 0)
    job = kind.submit(0)
    wait_for(lambda: c.job(job).get("state") == "Waiting", 10, "the job to wait")
    assert c.containers() == set()
    c.scale("compute", kind.nodes)
    kind.check_completed(job)


def test_2_pending_job_survives_removal_of_free_nodes(kind):
    c = kind.c
    c.scale("compute", 2)
    blocker = c.oarsub("sleep infinity", "/host=1/core=2")
    c.wait_job(blocker, {"RUNNING"})
    busy = c.job_nodes(blocker)
    job = kind.submit(0) if kind.kind == "mpi" else kind.submit(0, f"-a {blocker}")
    wait_for(lambda: c.job(job).get("state") == "Waiting", 10, "the job to wait")
    c.scale("compute", 1)
    assert c.containers() == busy
    assert c.job(job).get("state") == "Waiting" and c.job_state(blocker) == "RUNNING"
    if kind.kind == "mpi":
        c.scale("compute", 3)
    else:
        c.cancel(blocker)
    kind.check_completed(job)
    c.cancel(blocker) if c.job_state(blocker) == "RUNNING" else None


def test_3_running_job_survives_nodes_being_added(kind):
    c = kind.c
    c.scale("compute", kind.nodes)
    job = kind.submit(8)
    c.wait_job(job, {"RUNNING"}, 60)
    c.scale("compute", kind.nodes + 2)
    assert len(c.containers()) == kind.nodes + 2 and c.job_state(job) == "RUNNING"
    kind.check_completed(job)


def test_4_running_job_survives_removal_of_free_nodes(kind):
    c = kind.c
    c.scale("compute", kind.nodes + 2)
    job = kind.submit(8)
    c.wait_job(job, {"RUNNING"}, 60)
    used = c.job_nodes(job)
    c.scale("compute", kind.nodes)
    assert c.containers() == used and c.job_state(job) == "RUNNING"
    kind.check_completed(job)
