"""The OAR side of the live tests: submit, inspect and cancel jobs the way an OAR user does."""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import textwrap
from pathlib import Path

from tests.live.cluster import LiveCluster, wait_for

USER = "hpcuser"  # OAR refuses root's jobs
STATES = {
    "Waiting": "PENDING", "Hold": "PENDING", "toLaunch": "PENDING", "Launching": "PENDING", "toAckReservation": "PENDING",
    "Running": "RUNNING", "Finishing": "RUNNING", "Suspended": "RUNNING", "Resuming": "RUNNING",
    "Terminated": "COMPLETED", "Error": "FAILED", "toError": "FAILED",
}


class OarCluster(LiveCluster):
    def __init__(self, name: str, config: dict, workdir) -> None:
        super().__init__(name, {"scheduler": "oar", **config}, workdir)

    def up(self):
        proc = super().up()
        self.shared.chmod(0o1777)
        return proc

    def as_user(self, command: str, check: bool = True) -> str:
        quoted = command.replace("'", "'\\''")
        return self.sh(f"su {USER} -c 'cd {self.shared} && {quoted}'", check=check)

    def oarsub(self, command: str, resources: str, *options: str) -> str:
        out = self.as_user(f"oarsub -l {resources} {' '.join(options)} \"{command}\"")
        m = re.search(r"OAR_JOB_ID=(\d+)", out)
        assert m, out
        return m.group(1)

    def job(self, jobid: str) -> dict:
        out = self.sh(f"oarstat -f -J -j {jobid}", check=False)
        try:
            return json.loads(out).get(jobid, {})
        except json.JSONDecodeError:
            return {}

    def job_state(self, jobid: str) -> str:
        return STATES.get(self.job(jobid).get("state", ""), "?")

    def job_nodes(self, jobid: str) -> set[str]:
        return set(self.job(jobid).get("assigned_network_address") or [])

    def wait_job(self, jobid: str, states: set[str], timeout: float = 60) -> str:
        return wait_for(lambda: (s := self.job_state(jobid)) in states and s, timeout, f"OAR job {jobid} in {states}")

    def cancel(self, jobid: str) -> None:
        self.as_user(f"oardel {jobid}")

    def capacity(self) -> dict[str, set[str]]:
        """host -> the states of its resources, as `oarnodes` shows them."""
        data = json.loads(self.sh("oarnodes -J"))
        hosts: dict[str, set[str]] = {}
        for r in data.values():
            hosts.setdefault(r["host"], set()).add(r["state"])
        return hosts


# The environment install_network_guard reads (it spells them out itself: it must stand alone).
GUARD_LOG = "ACCORDION_TEST_NETGUARD_LOG"
GUARD_NETNS = "ACCORDION_TEST_HOST_NETNS"


def install_network_guard() -> None:
    """Refuse, and log, every IPv4 connection (or datagram) this Python process sends to 10.0.0.0/8, where
    clusters live, from the host's network namespace. Active while the environment names a log
    (ACCORDION_TEST_NETGUARD_LOG) and the host's namespace (ACCORDION_TEST_HOST_NETNS, "dev:inode").

    The machine's network accepts any outbound connection, so a check that connects from the host's
    namespace passes here and fails on a real host; refusing it makes the mistake fail here too, and keeps
    the packets on the machine. Self-contained (stdlib only): `sitecustomize` runs it in `accordion` processes."""
    import ipaddress
    import os
    import socket
    import sys

    clusters = ipaddress.ip_network("10.0.0.0/8")

    def audit(event: str, args: tuple) -> None:
        if event not in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            return
        log, host = os.environ.get("ACCORDION_TEST_NETGUARD_LOG"), os.environ.get("ACCORDION_TEST_HOST_NETNS")
        sock, address = args[0], args[1]
        if not log or not host or sock.family != socket.AF_INET or not isinstance(address, tuple):
            return
        try:
            outside = ipaddress.ip_address(address[0]) not in clusters
        except ValueError:
            return  # a name: nothing on the host resolves cluster names
        ns = os.stat("/proc/thread-self/ns/net")
        if outside or f"{ns.st_dev}:{ns.st_ino}" != host:
            return
        with open(log, "a") as f:
            f.write(f"pid {os.getpid()} ({' '.join(sys.argv)}): {event} {address[0]}:{address[1]} from the host's network namespace\n")
        raise PermissionError(f"connection to {address[0]}:{address[1]} from the host's network namespace")

    sys.addaudithook(audit)


@functools.cache
def guard_this_process() -> None:
    """The network guard in this (pytest) process, for adapter code the tests run in-process; once."""
    install_network_guard()


def host_netns() -> str:
    ns = os.stat("/proc/thread-self/ns/net")
    return f"{ns.st_dev}:{ns.st_ino}"


def write_sitecustomize(directory: Path) -> Path:
    """A `sitecustomize` that installs the network guard in every Python started with `directory` on its path."""
    directory.mkdir(parents=True, exist_ok=True)
    source = textwrap.dedent(inspect.getsource(install_network_guard))
    (directory / "sitecustomize.py").write_text(f"{source}\n\ninstall_network_guard()\n")
    return directory
