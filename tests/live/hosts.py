"""Several hosts simulated on this machine, each running its own `accordion agent`.

A host is a network namespace with its own address on a test bridge (made here, in the machine's network
namespace: traffic to those addresses stays on this machine), its own mount namespace (a slave of the
machine's, so the head's munge socket and the shared directory are visible as a network file system would
make them, and the node roots it mounts stay its own), and its own state and run directories. The head
(`accordion up`, the controller) runs in the machine's namespaces, as on a head machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import yaml

from tests.live.cluster import ACCORDION, accordion, wait_for


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr}")
    return proc


class SimHost:
    def __init__(self, sim: SimHosts, index: int) -> None:
        self.sim = sim
        self.name = f"h{index + 1}"
        self.address = f"{sim.prefix}.{11 + index}"
        self.netns = f"acch-{sim.tag}-{self.name}"
        self.veth = f"ah{sim.tag[:6]}{index}"
        self.root = sim.root / self.name
        self.mnt = sim.root / f"{self.name}.mnt"
        self.env = {**os.environ, "ACCORDION_STATE": str(self.root / "state"), "ACCORDION_RUN": str(self.root / "run")}
        self.agent: subprocess.Popen[bytes] | None = None
        self.netns_made = False
        self.log = self.root / "agent.log"

    def make(self) -> None:
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        self.netns_made = True
        sh("ip", "link", "set", self.veth, "master", self.sim.bridge, "up")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        sh("ip", "-n", self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
        self.root.mkdir(parents=True)
        self.mnt.touch()
        sh("unshare", f"--mount={self.mnt}", "--propagation", "slave", "true")

    def enter(self) -> list[str]:
        return ["nsenter", f"--mount={self.mnt}", f"--net=/run/netns/{self.netns}"]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.enter(), *ACCORDION, *args], capture_output=True, text=True, timeout=60, env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"on {self.name}: accordion {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def agent_args(self) -> list[str]:
        return ["agent", "-c", self.sim.cluster, "--host", self.name, "--address", self.address]

    def enrol(self, cluster_file: Path, discovered: bool = False) -> str:
        first = self.run(*self.agent_args(), check=False)
        assert first.returncode == 2 and "not enrolled" in first.stderr, first.stderr
        csr = self.root / "state" / "agent" / self.sim.cluster / "host.csr"
        where = ["--address", self.address] if discovered else []
        bundle = accordion("enrol", self.name, "-f", str(cluster_file), "--csr", str(csr), *where).stdout
        (self.root / "bundle.pem").write_text(bundle)
        self.run(*self.agent_args(), "--install", str(self.root / "bundle.pem"))
        return first.stderr

    def start(self) -> None:
        before = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.agent = subprocess.Popen([*self.enter(), *ACCORDION, *self.agent_args()], env=self.env, stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: b"listening on" in self.log.read_bytes()[before:], 20, f"agent of {self.name} to listen")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.agent is not None and self.agent.poll() is None:
            os.killpg(self.agent.pid, sig)
            self.agent.wait(timeout=30)
        self.agent = None

    def cut(self, down: bool = True) -> None:
        sh("ip", "link", "set", self.veth, "down" if down else "up")

    def node_pids(self) -> list[int]:
        """Processes of this host's node containers (their cgroups are named after cluster and host)."""
        pids: list[int] = []
        for procs in Path("/sys/fs/cgroup").glob(f"*/accordion/{self.sim.cluster}.{self.name}/*/cgroup.procs"):
            pids += [int(p) for p in procs.read_text().split()]
        return sorted(set(pids))

    def nodes(self) -> set[str]:
        d = self.root / "run" / f"{self.sim.cluster}.{self.name}" / "nodes"
        return {p.name for p in d.iterdir()} if d.is_dir() else set()

    def destroy(self) -> None:
        """Remove the host, and whatever a failed test left of the cluster's nodes on it."""
        self.kill(signal.SIGTERM)
        for pid in self.node_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        scope = f"acc.{self.sim.cluster}.{self.name}"
        if self.mnt.exists() and Path("/run/netns").is_dir():
            for ns in Path("/run/netns").glob(f"{scope}*"):
                sh(*self.enter(), "ip", "netns", "del", ns.name, check=False)
                ns.unlink(missing_ok=True)
        for top in Path("/sys/fs/cgroup").glob(f"*/accordion/{self.sim.cluster}.{self.name}"):
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
                try:
                    d.rmdir()
                except OSError:
                    pass
        sh("ip", "netns", "del", self.netns, check=False)
        sh("ip", "link", "del", self.veth, check=False)
        if self.mnt.exists():
            sh("umount", str(self.mnt), check=False)


class SimHosts:
    def __init__(self, cluster: str, count: int, workdir: Path) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.cluster = cluster
        self.prefix = f"172.29.{int(self.tag, 16) % 250}"
        self.bridge = f"acchb{self.tag}"
        self.root = Path(f"/run/acch-{self.tag}")
        self.workdir = workdir
        self.hosts = [SimHost(self, i) for i in range(count)]

    def make(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.prefix}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        self.root.mkdir()
        # The hosts' mount namespaces are kept as files here, which must be on a private mount.
        sh("mount", "--bind", str(self.root), str(self.root))
        sh("mount", "--make-private", str(self.root))
        for h in self.hosts:
            h.make()

    def config(self, static: int | None = None, **extra: object) -> dict:
        """The cluster file's part for these hosts: the first `static` listed (default all), the others to be
        discovered (DNS-SD on the test bridge)."""
        listed = self.hosts[:static]
        found = {"discover": f"{self.prefix}.1"} if len(listed) < len(self.hosts) else {}
        return {"provider": "hosts", "hosts": [{"name": h.name, "address": h.address} for h in listed], **found, **extra}

    def destroy(self) -> None:
        for h in self.hosts:
            h.destroy()
        sh("ip", "link", "del", self.bridge, check=False)
        if self.root.exists():
            sh("umount", "-l", str(self.root), check=False)
            sh("rm", "-rf", str(self.root), check=False)
        sh("rm", "-rf", f"/var/lib/accordion/pki/{self.cluster}", check=False)
        for d in (Path("/var/lib/accordion/pki"), Path("/var/lib/accordion")):
            try:
                d.rmdir()
            except OSError:
                pass


def write_config(workdir: Path, name: str, config: dict) -> Path:
    f = workdir / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"name": name, **config}))
    return f



