"""Provider `hosts` with three hosts simulated on this machine (see tests/live/hosts.py), one cluster for the
module: Appendix C and a 2-node MPI job across hosts, an agent SIGKILLed under a job, a whole host lost under
a job, and `accordion down` leaving nothing on any host. The TLS door is tested in tests/test_agent.py."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from accordion.providers.agent import vni
from tests.live.cluster import LiveCluster, wait_for
from tests.live.hosts import SimHosts, write_config

DONE = {"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL"}
HOST_TIMEOUT = 5


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hosts")
    name = f"h-{uuid.uuid4().hex[:6]}"
    # h1-h3 in the cluster file; h4 found by DNS-SD (test_a_host_announced_on_the_lan_is_used_once_enrolled).
    sim = SimHosts(name, 4, workdir)
    config = sim.config(
        3,
        host_timeout=HOST_TIMEOUT,
        nodesets=[{"name": "compute", "name_base": "hpc-node", "max_nodes": 4, "cpus": 2, "memory_mb": 512, "idle_timeout": 4}],
    )
    c = LiveCluster(name, config, workdir)
    try:
        sim.make()
        cluster_file = write_config(workdir, name, config)
        for h in sim.hosts[:3]:
            advice = h.enrol(cluster_file)
            assert "accordion enrol" in advice and "--install" in advice
            h.start()
        c.up()
        yield c, sim, cluster_file
    finally:
        # A test that failed half-way may leave a host cut off or its agent dead: `down` needs them all.
        for h in sim.hosts:
            if h.netns_made:
                h.cut(False)
                if h.agent is None and (h.root / "state" / "agent" / name / "host.pem").exists():
                    h.start()
        c.down()
        sim.destroy()


def host_of(c: LiveCluster) -> dict[str, str]:
    """node -> host, as `accordion status` shows it."""
    return {n: h for h, info in c.status()["hosts"].items() for n in info.get("nodes", [])}


def test_appendix_c_across_hosts(lab):
    c, sim, _ = lab
    assert set(c.status()["hosts"]) == {"h1", "h2", "h3"}
    job1 = c.sbatch("sleep infinity", "-N1", "-c2", name="inf1")
    c.wait_job(job1, {"RUNNING"}, timeout=40)
    node1 = c.job(job1)["NodeList"]
    job2 = c.sbatch("sleep infinity", "-N1", "-c2", name="inf2")
    c.wait_job(job2, {"RUNNING"}, timeout=40)
    node2 = c.job(job2)["NodeList"]
    where = host_of(c)
    assert node1 != node2 and where[node1] != where[node2], where
    host1 = sim.hosts[int(where[node1][1:]) - 1]
    assert {node1} <= host1.nodes()
    # Nodes on a host do not share the head's munge socket: each runs its own munged from the delivered key.
    assert "munged" in {Path(f"/proc/{pid}/comm").read_text().strip() for pid in host1.node_pids()}
    c.sh(f"scancel {job1}")
    wait_for(lambda: node1 not in host_of(c), 40, f"{node1} removed after its idle timeout")
    wait_for(lambda: all(node1 not in h.nodes() for h in sim.hosts), 10, f"{node1}'s container gone from its host")
    assert c.job_state(job2) == "RUNNING"
    c.sh(f"scancel {job2}")
    wait_for(lambda: host_of(c) == {}, 40, "every node removed")


def test_mpi_pi_spans_two_hosts(lab):
    c, _, _ = lab
    pi = c.build_pi()
    job = c.sbatch(f"srun --mpi=pmix {pi} 2000000 0", "-N2", "--ntasks-per-node=2", name="mpi")
    state = c.wait_job(job, DONE, 120)
    out = (c.shared / f"slurm-{job}.out").read_text()
    info = c.job(job)
    assert state == "COMPLETED" and info["Restarts"] == "0", (info, out)
    assert "pi is approximately 3.1" in out, out
    ranks = {line.split(" on ")[1] for line in out.splitlines() if line.startswith("rank ")}
    assert len(ranks) == 2 and out.count("rank ") == 4, out
    # Where each node was last created (names are reused across tests).
    created = {line.split(" creating ")[1].split()[0]: line for line in sorted(_agent_logs(lab[1]), key=lambda x: x.split(": ", 1)[1]) if " creating " in line}
    hosts = {created[node].split(":")[0] for node in ranks}
    assert len(hosts) == 2, created


def _agent_logs(sim: SimHosts) -> list[str]:
    return [f"{h.name}: {line}" for h in sim.hosts if h.log.exists() for line in h.log.read_text().splitlines()]


def _started(c: LiveCluster, node: str) -> int:
    return sum(1 for e in c.events() if e["kind"] == "started" and e.get("node") == node)


def test_agent_sigkill_under_a_job_keeps_the_node(lab):
    c, sim, _ = lab
    marker = c.shared / "agent-kill.done"
    job = c.sbatch(f"sleep 10; touch {marker}; echo done on $(hostname)", "-N1", "-c2", name="sigkill")
    c.wait_job(job, {"RUNNING"}, timeout=40)
    node = c.job(job)["NodeList"]
    host = next(h for h in sim.hosts if h.name == host_of(c)[node])
    created = (host.root / "run" / f"{c.name}.{host.name}" / "nodes" / node / "created").read_text()
    starts = _started(c, node)
    host.kill(signal.SIGKILL)
    assert host.node_pids(), "the node must outlive its agent"
    time.sleep(2)
    host.start()
    assert f"nodes kept: {node}" in host.log.read_text().split("agent of host")[-1]
    state = c.wait_job(job, DONE, 60)
    info = c.job(job)
    assert state == "COMPLETED" and info["Restarts"] == "0" and marker.exists(), info
    assert _started(c, node) == starts, "the node was recreated"
    path = host.root / "run" / f"{c.name}.{host.name}" / "nodes" / node / "created"
    assert not path.exists() or path.read_text() == created


def test_host_loss_under_a_job(lab):
    """Agent and nodes killed, link cut: nodes lost within host_timeout, job requeued and completed elsewhere;
    the host's return leaves no stale node."""
    c, sim, _ = lab
    first = c.shared / "loss.first"
    job = c.sbatch(f"if [ -e {first} ]; then echo done on $(hostname); else touch {first}; sleep 600; fi", "-N1", "-c2", name="loss")
    c.wait_job(job, {"RUNNING"}, timeout=40)
    wait_for(first.exists, 20, "the job's first run")
    node = c.job(job)["NodeList"]
    host = next(h for h in sim.hosts if h.name == host_of(c)[node])
    host.kill(signal.SIGKILL)
    for pid in host.node_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # a job step that had just ended
    host.cut()
    cut_at = time.time()
    try:
        wait_for(lambda: any(e["kind"] == "lost" or (e["kind"] == "failed" and "host " + host.name + " lost" in e.get("reason", ""))
                             for e in c.events() if e.get("node") == node and e["ts"] >= cut_at), HOST_TIMEOUT + 20, f"{node} reported lost")
        lost = next(e for e in c.events() if e.get("node") == node and e["ts"] >= cut_at)
        print(f"host loss reported {lost['ts'] - cut_at:.1f} s after the cut (host_timeout {HOST_TIMEOUT} s)")
        # The controller steps at least every 2 s (resync) and waits up to host_timeout/3 for an answer.
        assert lost["ts"] - cut_at < HOST_TIMEOUT + 2 + HOST_TIMEOUT / 3 + 2, lost
        assert c.status()["hosts"][host.name]["state"] == "lost"
        state = c.wait_job(job, DONE, 90)
        info = c.job(job)
        out = (c.shared / f"slurm-{job}.out").read_text()
        assert state == "COMPLETED" and info["Restarts"] == "1" and "done on" in out, (info, out)
        assert host_of(c).get(node, host.name) != host.name or info["NodeList"] != node
    finally:
        host.cut(False)
    assert host.nodes() == {node}, "the stale node is still on the host while it is away"
    host.start()
    wait_for(lambda: host.nodes() == set() and c.status()["hosts"][host.name]["state"] == "up", 30, "the stale node removed on the host's return")
    assert host.node_pids() == []


def test_a_host_announced_on_the_lan_is_used_once_enrolled(lab):
    c, sim, cluster_file = lab
    from zeroconf import ServiceInfo, Zeroconf

    from accordion.providers.agent import SERVICE

    h2, h4 = sim.hosts[1], sim.hosts[3]
    log = Path("/var/lib/accordion") / c.name / "logs" / "controller.log"
    # An announcement of "h4" pointing at another host's agent (enrolled, but as h2) is not taken.
    zc = Zeroconf(interfaces=[f"{sim.prefix}.1"])
    try:
        zc.register_service(ServiceInfo(SERVICE, f"{c.name}-fake.{SERVICE}", port=7471, addresses=[socket.inet_aton(h2.address)],
                                        properties={"cluster": c.name, "host": "h4"}, server="fake.local."))
        wait_for(lambda: "ignored host h4" in log.read_text(), 30, "the head to check the announcement")
        assert "is h2, not host h4" in log.read_text()
        assert "h4" not in c.status()["hosts"]
    finally:
        zc.unregister_all_services()
        zc.close()
    # Enrolled with its address, its agent announces itself: it joins, and takes a node.
    h4.enrol(cluster_file, discovered=True)
    h4.start()
    wait_for(lambda: c.status()["hosts"].get("h4", {}).get("state") == "up", 30, "h4 discovered")
    job = c.sbatch("srun hostname", "-N4", "-c2", name="four")
    state = c.wait_job(job, DONE, 90)
    out = (c.shared / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED" and len(set(out.split())) == 4, out
    assert " creating hpc-node-" in h4.log.read_text()


def test_down_leaves_nothing_on_any_host(lab):
    c, sim, _ = lab
    job = c.sbatch("sleep 300", "-N2", "-c2", name="down")
    c.wait_job(job, {"RUNNING"}, timeout=40)
    key = (Path("/var/lib/accordion") / c.name / "munge" / "munge.key").read_bytes()
    c.down()
    # The cluster's key went to the hosts inside TLS, into the nodes' own tmpfs: in no agent's log or file.
    pieces = {key[i : i + 16] for i in range(0, len(key) - 16, 16)}
    pieces |= {base64.b64encode(key)[i : i + 16] for i in range(0, len(base64.b64encode(key)) - 16, 16)}
    for h in sim.hosts:
        for f in filter(Path.is_file, h.root.rglob("*")):
            data = f.read_bytes()
            assert not any(p in data for p in pieces), f"a piece of the munge key in {f}"
    found = []
    for h in sim.hosts:
        found += [f"{h.name}: node process {p}" for p in h.node_pids()]
        found += [f"{h.name}: node dir {n}" for n in h.nodes()]
        run = h.root / "run" / f"{c.name}.{h.name}"
        found += [f"{h.name}: file {run}"] if run.exists() else []
        state = h.root / "state" / "agent" / c.name / "state.json"
        found += [f"{h.name}: file {state}"] if state.exists() else []
        mounts = subprocess.run(["nsenter", f"--mount={h.mnt}", "cat", "/proc/self/mountinfo"], capture_output=True, text=True).stdout
        found += [f"{h.name}: mount {line}" for line in mounts.splitlines() if c.name in line]
        links = subprocess.run(["ip", "-n", h.netns, "-d", "-j", "link", "show"], capture_output=True, text=True).stdout
        found += [f"{h.name}: link {link['ifname']}" for link in json.loads(links) if link["ifname"] not in ("lo", "eth0")]
    links = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show", "type", "vxlan"], capture_output=True, text=True).stdout or "[]")
    found += [f"head: vxlan {link['ifname']}" for link in links if link.get("linkinfo", {}).get("info_data", {}).get("id") == vni(c.name)]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line}" for line in netns.splitlines() if f"acc.{c.name}" in line]
    found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/accordion/{c.name}*")]
    found += [f"file {p}" for p in (Path("/var/lib/accordion") / c.name, Path("/run/accordion") / c.name, Path("/srv/accordion") / c.name) if p.exists()]
    assert found == []
    # The agents are the hosts' services, not the cluster's: they stay, and stopping them leaves no process.
    for h in sim.hosts:
        h.kill(signal.SIGTERM)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        assert c.name not in cmd, f"process {pid}: {cmd}"
