"""OAR checks nodes and the head from inside the cluster's network, never from the controller's.

The controller runs in the host's network namespace, from which cluster addresses (10.77.x) are
unreachable on a real host, and on this machine's network every connect() succeeds whatever the address.
So the adapter is run here against stand-ins for OAR's commands and for the provider, under a guard that
refuses (and logs) any connection this process opens to 10.0.0.0/8 from the host's namespace.
"""

import json
import socket
import subprocess
from pathlib import Path

import pytest

from accordion.config import ClusterConfig
from accordion.errors import SchedulerError
from accordion.paths import ClusterPaths
from accordion.providers.base import NodeInfo
from accordion.schedulers import oar
from tests.live.oar import GUARD_LOG, GUARD_NETNS, guard_this_process, host_netns

ENTER = ["nsenter", "--net=/run/netns/acc.t"]
NODE = "hpc-node-0"
CONFIG = ClusterConfig.model_validate(
    {
        "name": "t",
        "scheduler": "oar",
        "nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 2, "cpus": 2}],
        "controller": {"resume_timeout": 0.5},
    }
)


class Provider:
    """The local provider's addresses and namespace; every node's container runs."""

    def enter(self):
        return ENTER

    def head_address(self):
        return "10.77.0.1"

    def address(self, node):
        return f"10.77.0.{10 + int(node.rsplit('-', 1)[1])}"

    def list(self):
        return {n: NodeInfo(n, True, 0.0) for n in CONFIG.all_nodes()}


class Commands:
    """Stands in for `sh.run`: OAR's tools, psql and the connect check; records every command line."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.listening: set[tuple[str, str]] = set()  # (address, port) where something accepts

    def __call__(self, argv, *, check=True, input=None, timeout=60, env=None):
        argv = list(argv)
        self.calls.append(argv)
        code, out = 0, ""
        psql = any(Path(a).name == "psql" for a in argv)  # the server's own, by its full path
        if "oarstat" in argv:
            out = "{}"
        elif psql and input and "FROM resources r;" in input:  # NODES_SQL
            out = json.dumps([{"host": n, "state": "Absent", "jobs": None, "drain": "NO", "last_job_date": 0} for n in CONFIG.all_nodes()])
        elif psql:
            out = "[]" if input and "json_agg(job" in input else ""
        elif "bash" in argv:
            address, port = argv[-3], argv[-2]
            code = 0 if (address, port) in self.listening else 1
        return subprocess.CompletedProcess(argv, code, out, "")

    def alive(self) -> list[list[str]]:
        return [c for c in self.calls if "oarnodesetting" in c and "Alive" in c]


@pytest.fixture
def guard(tmp_path, monkeypatch):
    log = tmp_path / "host-connections.log"
    log.touch()
    monkeypatch.setenv(GUARD_LOG, str(log))
    monkeypatch.setenv(GUARD_NETNS, host_netns())
    guard_this_process()
    return log


@pytest.fixture
def commands(monkeypatch):
    fake = Commands()
    monkeypatch.setattr(oar, "run", fake)
    return fake


@pytest.fixture
def sched():
    return oar.OarScheduler(CONFIG, ClusterPaths("t"), Provider())


def test_the_guard_refuses_a_cluster_address_from_the_host_namespace(guard):
    with pytest.raises(PermissionError):
        socket.create_connection(("10.77.0.10", oar.SSHD_PORT), timeout=1)
    assert "10.77.0.10:6667 from the host's network namespace" in guard.read_text()
    # Not a cluster address: not its business (a closed port on loopback refuses at once).
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    assert len(guard.read_text().splitlines()) == 1


def test_no_connection_to_a_cluster_address_from_the_host_namespace(guard, commands, sched):
    commands.listening = {("10.77.0.1", str(oar.SERVER_PORT)), ("10.77.0.10", str(oar.SSHD_PORT))}
    assert sched._responding()
    sched.node_started(NODE, lambda: False)
    sched.observe()
    assert guard.read_text() == ""
    cluster = [c for c in commands.calls if any(a.startswith("10.77.") for a in c)]
    assert cluster and all(c[: len(ENTER)] == ENTER for c in cluster), cluster


def test_a_node_whose_sshd_does_not_listen_is_not_set_alive(guard, commands, sched):
    commands.listening = {("10.77.0.1", str(oar.SERVER_PORT))}
    with pytest.raises(SchedulerError, match="sshd did not answer"):
        sched.node_started(NODE, lambda: False)
    assert commands.alive() == []
    commands.listening.add(("10.77.0.10", str(oar.SSHD_PORT)))
    sched.node_started(NODE, lambda: False)
    assert commands.alive() == [ENTER + sched.wrap() + ["oarnodesetting", "-s", "Alive", "-h", NODE]]


def test_a_node_given_up_is_not_set_alive(guard, commands, sched):
    # The controller gave the start up and set the node Absent: Alive now would let a job land on a node
    # about to be removed.
    commands.listening = {("10.77.0.1", str(oar.SERVER_PORT))}
    sched.node_started(NODE, lambda: True)  # stops waiting for an sshd that does not answer
    commands.listening.add(("10.77.0.10", str(oar.SSHD_PORT)))
    sched.node_started(NODE, lambda: True)
    assert commands.alive() == []


def test_observing_changes_nothing(guard, commands, sched):
    # An Absent node whose container runs and whose sshd answers: bringing it Alive is node_started's.
    commands.listening = {("10.77.0.10", str(oar.SSHD_PORT))}
    view = sched.observe()
    assert view.nodes[NODE].marked_absent  # the stand-in's answer was read
    assert not [c for c in commands.calls if "oarnodesetting" in c or "bash" in c]
    assert guard.read_text() == ""
