"""Node containers on this machine, from Linux primitives driven by an OCI runtime (runc).

Each cluster gets a private network: a network namespace holding a bridge and the head address
(where the scheduler's server listens), so clusters never touch the host's network or each other.
Each node gets its own network namespace (a veth on that bridge), UTS, PID, mount and IPC namespaces
and a cgroup sized from its node set. Its root is layered as in seed 004: the host's root read-only at
the bottom, a small generated per-node layer above it (hostname, hosts, the host's secrets emptied), and a
throwaway tmpfs layer taking all writes, so a node is stateless and costs only what it writes.

runc applies namespaces, cgroups, capabilities and mounts from one declarative spec, which is easier to
audit than a chain of unshare/nsenter/mount calls and matches what a Kubernetes node would run.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

from accordion.config import ClusterConfig
from accordion.errors import ConfigError
from accordion.paths import ClusterPaths, run_root, shared_root, state_root
from accordion.providers.base import NODE_CAPABILITIES, NodeInfo, NodeSpec, ProviderError
from accordion.sh import CommandError, run
from accordion.store import private

log = logging.getLogger("accordion.local")

NETWORK = ipaddress.IPv4Network("10.77.0.0/16")
HEAD = NETWORK.network_address + 1
FIRST_NODE = 10
BRIDGE = "br0"
# Every node is a port of the cluster's one bridge, and a Linux bridge takes at most 1024 ports
# (BR_MAX_PORTS): a larger cluster is refused before anything is made, not at its 1025th start.
MAX_NODES = 1024
# Linux keeps one IPv4 neighbour (ARP) table for all network namespaces, and at its default hard limit
# (gc_thresh3 = 1024 entries) a 280-node cluster overflows it: the head and every node hold an entry per
# peer, `srun -N280` fans out over a tree of slurmds, and new entries are refused ("neighbor table
# overflow!" in dmesg), so connections between nodes time out and Slurm marks nodes not responding.
# Entries per node allowed for: the head, the launch tree's fan-out (TreeWidth, 50) and MPI peers.
NEIGHBOURS_PER_NODE = 64
NEIGHBOUR_SYSCTL = Path("/proc/sys/net/ipv4/neigh/default")
# In a node's directory: the container's init process, "<pid> <start time>" (runc's --pid-file, and the
# start time from /proc: a pid can be reused). `list` reads it instead of running `runc list`.
INIT = "init"
# `runc run --detach` returns in ~0.1 s; one that takes this long is hung.
START_TIMEOUT = 30

# In a node's directory, while it is prepared and not started: the digest of the spec it was made from.
PREPARED = "prepared"

# Where a node on an agent's host finds the node image's entrypoint (see NodeRuntime.entrypoint): on the
# node's /run tmpfs, out of the host's tree.
ENTRYPOINT = "/run/accordion-node-entrypoint"

# OCI spells capabilities with their CAP_ prefix.
CAPABILITIES = [f"CAP_{c}" for c in NODE_CAPABILITIES]


# Syscalls no job or node daemon needs and that widen what a compromised node could do to the host
# kernel (modules, kexec, clocks, swap, keyrings shared with the host, eBPF, perf, new namespaces or
# mounts, handle-based opens that bypass the mount namespace). Refused with EPERM, as Docker's default
# profile does; everything else is allowed so MPI (process_vm_readv for single-copy) and debuggers work.
SECCOMP_DENY = [
    "acct", "add_key", "adjtimex", "bpf", "clock_adjtime", "clock_settime", "delete_module", "finit_module",
    "fsconfig", "fsmount", "fsopen", "init_module", "iopl", "ioperm", "kexec_file_load", "kexec_load", "keyctl",
    "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at", "open_by_handle_at", "open_tree",
    "perf_event_open", "pivot_root", "quotactl", "reboot", "request_key", "setns", "settimeofday", "swapoff",
    "swapon", "syslog", "umount2", "unshare", "userfaultfd", "vhangup",
]


# A node's root is the host's, so what on the host is not the node's is taken out of it: else a root job
# reads the host's credentials and other people's data. These are the places a Debian host keeps them (a
# secret kept elsewhere stays visible); paths the host lacks are skipped.
# Host files replaced by an empty file in the node's layer (with the ssh host keys, see _hidden_files):
# password backups and history, Kerberos keys, the Slurm database password.
HIDDEN_FILES = ["/etc/shadow-", "/etc/gshadow-", "/etc/security/opasswd", "/etc/krb5.keytab", "/etc/slurm/slurmdbd.conf"]
# Host directories covered by an empty tmpfs: root's home, the host's munge key and seed, TLS private
# keys, directory-service credentials (SSSD's configuration and cached passwords), logs (login records),
# backups (Debian copies /etc/shadow there), mail, crontabs, other users' temporary files, databases,
# container images.
HIDDEN_DIRS = [
    "/root", "/etc/munge", "/etc/ssl/private", "/etc/sssd", "/var/lib/sss", "/var/lib/munge", "/var/log",
    "/var/backups", "/var/mail", "/var/spool/cron", "/var/tmp", "/var/lib/postgresql", "/var/lib/mysql",
    "/var/lib/docker", "/var/lib/containers",
]
# /home is replaced too, by fresh homes (see _fresh_homes).
# Kept: /etc/oar/oar_ssh_host_rsa_key, which an OAR node's sshd presents; hiding it needs a per-cluster
# host key from the OAR adapter.


def node_address(index: int) -> str:
    """The cluster address of the node at `index` in its cluster's node list (the same on every host)."""
    return str(NETWORK.network_address + FIRST_NODE + index)


def login_name(config: ClusterConfig) -> str:
    return f"{config.name}-login"


def hosts_file(config: ClusterConfig) -> str:
    # The head's name first, as before the login name existed: what the head address resolves back to.
    lines = ["127.0.0.1\tlocalhost", f"{HEAD}\t{config.name}-head {login_name(config)}"]
    lines += [f"{node_address(i)}\t{n}" for i, n in enumerate(config.all_nodes())]
    return "\n".join(lines) + "\n"


def make_room_for_neighbours(nodes: int) -> None:
    """Raise (never lower) the host's neighbour-table limits so that `nodes` more nodes fit: the table is
    the whole machine's, shared by every cluster and the host itself. Its limits are only visible from the
    machine's first network namespace: an agent run in another (hosts simulated on one machine, whose head
    already raised them) leaves them alone."""
    if not NEIGHBOUR_SYSCTL.is_dir():
        return
    hard = 1024 + NEIGHBOURS_PER_NODE * nodes
    # gc_thresh3 is the hard limit, gc_thresh2 where the kernel starts to evict, gc_thresh1 below which it
    # never does; kept in that order, largest first so that none is ever set above the next.
    for name, value in (("gc_thresh3", hard), ("gc_thresh2", hard // 2), ("gc_thresh1", hard // 8)):
        path = NEIGHBOUR_SYSCTL / name
        if int(path.read_text()) < value:
            path.write_text(f"{value}\n")


def login_prefix(config: ClusterConfig, paths: ClusterPaths, netns: str) -> list[str]:
    """The login node: the cluster's network, and a UTS and mount namespace in which the host name is
    `<cluster>-login` and /etc/hosts is the cluster's, so that it resolves to the head address, which every
    node reaches. Tools that advertise the submit host (dask's scheduler, MPI launchers) then work with
    their defaults instead of advertising the host's name or 127.0.0.1."""
    script = 'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"'
    return enter_netns(netns) + [
        "unshare", "--uts", "--mount", "--propagation", "slave",
        "sh", "-c", script, str(paths.run / "hosts"), login_name(config),
    ]


def enter_netns(netns: str) -> list[str]:
    """A command prefix that runs a program in network namespace `netns` (none if already there)."""
    try:
        here, there = os.stat("/proc/self/ns/net"), os.stat(f"/run/netns/{netns}")
        if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
            return []
    except OSError:
        pass
    # `ip netns exec` would remount /sys and hide the cgroup tree; nsenter only switches the network.
    return ["nsenter", f"--net=/run/netns/{netns}"]



def _in_layer(layer: Path, target: str) -> Path:
    """Where a file the node is given at `target` goes in its layer; a target with ".." would be outside it."""
    relative = Path(target).relative_to("/")
    if ".." in relative.parts:
        raise ProviderError(f"{target}: a node's file must not climb out of its root")
    return layer / relative

class NodeRuntime:
    """One cluster's node containers on one machine: what the local provider runs on its own host and what
    `accordion agent` runs on each host of provider `hosts`.

    `scope` names everything it makes on the machine (network namespaces `acc.<scope>[.<node>]`, cgroups
    `accordion/<scope>/<node>`): the cluster's name for the local provider, `<cluster>.<host>` for an agent,
    so that hosts simulated on one machine, or a node moved between hosts, never collide. `run` holds its
    volatile files (runc state, node roots), `logs` the nodes' output."""

    def __init__(
        self,
        config: ClusterConfig,
        scope: str,
        run: Path,
        logs: Path,
        *,
        bridge_mac: str = "02:ac:00:00:00:01",
        mtu: int | None = None,
        entrypoint: Path | None = None,
    ) -> None:
        self.config = config
        self.scope = scope
        self.run = run
        self.nodes = run / "nodes"
        self.logs = logs
        self.netns = f"acc.{scope}"
        self.bridge_mac = bridge_mac
        self.mtu = mtu
        # Set on a machine that does not share the head's sockets (an agent's host): nodes get the spec's
        # secrets as files instead of the head-only binds, and run their command through this program,
        # which starts what those sockets stood for (munged, from the delivered key): the node image's
        # entrypoint, the same as Pods run.
        self.entrypoint = entrypoint
        self._index = {name: i for i, name in enumerate(config.all_nodes())}

    def _runc(self) -> list[str]:
        return ["runc", "--root", str(self.run / "runc")]

    def address(self, node: str) -> str:
        return node_address(self._index[node])

    def setup(self, address: str | None) -> None:
        """The cluster's bridge in its own network namespace, with `address` (the head's) if given."""
        make_room_for_neighbours(len(self._index))
        if not Path(f"/run/netns/{self.netns}").exists():
            run(["ip", "netns", "add", self.netns])
        ip = ["ip", "-n", self.netns]
        run(ip + ["link", "set", "lo", "up"])
        if run(ip + ["link", "show", BRIDGE], check=False).returncode != 0:
            run(ip + ["link", "add", BRIDGE, "type", "bridge"])
            # A bridge without a fixed MAC takes its lowest port's, so adding a node could change the
            # gateway's MAC and stall every node's connection to the server for seconds.
            run(ip + ["link", "set", BRIDGE, "address", self.bridge_mac])
            if address is not None:
                run(ip + ["addr", "add", f"{address}/{NETWORK.prefixlen}", "dev", BRIDGE])
        run(ip + ["link", "set", BRIDGE, "up"])
        (self.run / "runc").mkdir(parents=True, exist_ok=True, mode=0o700)
        self.nodes.mkdir(parents=True, exist_ok=True, mode=0o700)

    def teardown(self) -> None:
        # Every node is tried, and the cluster's network and cgroups removed, before a node that could not
        # be removed is reported.
        failed: dict[str, ProviderError] = {}
        for name in sorted(self.list()):
            try:
                self.delete(name)
            except ProviderError as exc:
                failed[name] = exc
        if self.nodes.is_dir():
            for leftover in self.nodes.iterdir():
                if leftover.name not in failed:
                    self.delete(leftover.name)
        if Path(f"/run/netns/{self.netns}").exists():
            run(["ip", "netns", "del", self.netns], check=False)
        for top in Path("/sys/fs/cgroup").glob(f"*/accordion/{self.scope}"):
            # Deepest first: a cgroup directory can only be removed once it has no children.
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top, top.parent]:
                try:
                    path.rmdir()
                except OSError:
                    pass
        if failed:
            raise ProviderError("; ".join(map(str, failed.values())))

    def _node_dir(self, name: str) -> Path:
        return self.nodes / name

    def _node_netns(self, name: str) -> str:
        return f"acc.{self.scope}.{name}"

    def _mac(self, name: str) -> str:
        i = self._index[name] + 2
        return f"02:ac:00:00:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"

    def create(self, spec: NodeSpec, secrets: dict[str, bytes] | None = None) -> None:
        """`secrets`: the contents of `spec.secrets` (target path in the node -> bytes), with `entrypoint`."""
        if spec.name not in self._index:
            raise ProviderError(f"{spec.name} is not a node of cluster {self.config.name}")
        try:
            if self._start_prepared(spec, secrets or {}):
                return
        except Exception as exc:  # a preparation is a head start, never a condition of one
            log.warning("could not start the prepared %s (%s): making it afresh", spec.name, exc)
        self._afresh(spec, secrets or {})

    def prepare(self, spec: NodeSpec, secrets: dict[str, bytes] | None = None) -> None:
        """The node made as `create` makes it, but by `runc create`: its network, root, namespaces and cgroups
        exist and runc's init waits to exec the node's program, which `create` then asks for alone (`runc
        start`, ~10 ms of the ~90 ms a whole start takes here). The node directory holds the spec's digest
        (`PREPARED`) until then: a changed spec is prepared again, and `create` of another spec starts afresh."""
        if spec.name not in self._index:
            raise ProviderError(f"{spec.name} is not a node of cluster {self.config.name}")
        digest = _digest(spec, secrets or {})
        if self._prepared(spec.name) != digest:
            self._afresh(spec, secrets or {}, prepared=digest)

    def _afresh(self, spec: NodeSpec, secrets: dict[str, bytes], prepared: str | None = None) -> None:
        """`_create` after removing whatever the name had; on failure, nothing is left behind."""
        self.delete(spec.name)
        try:
            self._create(spec, secrets, prepared)
        except Exception:
            self.delete(spec.name)
            raise

    def _prepared(self, name: str) -> str | None:
        """The digest the node was prepared from; "" while its preparation runs (or was cut short)."""
        try:
            return (self._node_dir(name) / PREPARED).read_text()
        except OSError:
            return None

    def _start_prepared(self, spec: NodeSpec, secrets: dict[str, bytes]) -> bool:
        """Start the node if it is prepared with this spec; False if it is not (or its start failed: then
        `create` makes it afresh, as after any failed start)."""
        node_dir = self._node_dir(spec.name)
        made = self._prepared(spec.name)
        if not made or made != _digest(spec, secrets):
            return False
        # A node's life is counted from its start, not its preparation (the controller times starts from it).
        (node_dir / "created").write_text(f"{time.time()}\n")
        # Unmarked first: from here the listing shows a node, and a controller killed before the start
        # below finds a container that never ran, which it takes out as a failed start.
        (node_dir / PREPARED).unlink()
        return run(self._runc() + ["start", spec.name], check=False, timeout=START_TIMEOUT).returncode == 0

    def _create(self, spec: NodeSpec, secrets: dict[str, bytes], prepared: str | None = None) -> None:
        """Make the node and start it, or with `prepared` (the spec's digest) make it only."""
        name = spec.name
        node_dir = self._node_dir(name)
        node_dir.mkdir(parents=True, mode=0o700)
        if prepared is not None:
            # Marked before anything is made, with its digest only once it is ready: a preparation cut short
            # is listed as a prepared node not ready (which the controller removes), not as a node that
            # exited, and `create` makes such a node afresh.
            (node_dir / PREPARED).write_text("")
        (node_dir / "created").write_text(f"{time.time()}\n")
        self._network(name)
        rootfs = self._rootfs(spec, secrets)
        bundle = node_dir / "bundle"
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(self._oci_spec(spec, rootfs)))
        self.logs.mkdir(parents=True, exist_ok=True)
        launcher = node_dir / "runc.pid"
        verb = ["run", "--detach"] if prepared is None else ["create"]
        with open(self.logs / f"{name}.log", "ab", opener=private) as log:
            # Its own process group, recorded: `delete` (from any process, after a controller restart too)
            # can kill a start that hangs.
            proc = subprocess.Popen(
                self._runc() + [*verb, "--pid-file", str(node_dir / "init.pid"), "--bundle", str(bundle), name],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        launcher.write_text(f"{proc.pid}\n")
        try:
            code = proc.wait(timeout=START_TIMEOUT)
            if code == 0:
                self._record_init(node_dir, (node_dir / "init.pid").read_text().strip())
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            raise ProviderError(f"runc did not start node {name} within {START_TIMEOUT} s") from None
        finally:
            launcher.unlink(missing_ok=True)
        if code != 0:
            tail = (self.logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise ProviderError(f"runc could not start node {name}: {' | '.join(tail)}")
        self._leave_host(name)
        if prepared is not None:
            (node_dir / PREPARED).write_text(prepared)

    @staticmethod
    def _record_init(node_dir: Path, pid: str) -> None:
        """Keep the container's init process (`INIT`). At a start, written before the launcher's record
        goes: a listing in between would ask runc."""
        try:
            (node_dir / "init.new").write_text(f"{pid} {_started(pid)}\n")
            os.replace(node_dir / "init.new", node_dir / INIT)  # whole for readers in other processes (`status`)
        except FileNotFoundError:
            pass  # exited already (runc tells, `_state`), or the node was removed meanwhile

    def _network(self, name: str) -> None:
        ns = self._node_netns(name)
        veth = f"v{self._index[name]}"
        # Two `ip` processes, not eight: each is ~10 ms of a start on a loaded machine. `-batch` stops at
        # the first failing line and exits non-zero, naming it; its `netns add` returns to the namespace
        # it was run in. Namespaces entered by nsenter, not `ip -n`, which copies the host's mount namespace
        # to remount /sys: half of `ip`'s CPU in a 280-node burst. `addrgenmode none`: the cluster speaks
        # IPv4 only, and each new link's IPv6 set-up (a link-local address, its duplicate detection and MLD
        # reports, multicast that the bridge floods to every port) is work for nothing.
        mtu = f" mtu {self.mtu}" if self.mtu is not None else ""  # a VXLAN tunnel's overhead: smaller frames
        run([*enter_netns(self.netns), "ip", "-batch", "-"], input=(
            f"netns add {ns}\n"
            f"link add {veth} type veth peer name eth0 netns {ns}\n"
            f"link set {veth} addrgenmode none master {BRIDGE}{mtu} up\n"
        ))
        run([*enter_netns(ns), "ip", "-batch", "-"], input=(
            "link set lo up\n"
            f"link set eth0 address {self._mac(name)} addrgenmode none{mtu}\n"
            f"addr add {self.address(name)}/{NETWORK.prefixlen} dev eth0\n"
            "link set eth0 up\n"
        ))

    def _rootfs(self, spec: NodeSpec, secrets: dict[str, bytes]) -> Path:
        node_dir = self._node_dir(spec.name)
        scratch = node_dir / "scratch"
        scratch.mkdir()
        size = max(64, min(spec.memory_mb, 2048))
        _mount("tmpfs", scratch, "tmpfs", f"size={size}m,mode=0700")
        layer = scratch / "layer"
        for sub in ("layer/etc", "layer/var/spool/slurmd", "upper", "work"):
            (scratch / sub).mkdir(parents=True)
        (layer / "etc" / "hostname").write_text(spec.name + "\n")
        (layer / "etc" / "hosts").write_text(hosts_file(self.config))
        for target, data in secrets.items():
            # On the node's own tmpfs, root-only: readable by the entrypoint, gone with the node.
            path = _in_layer(layer, target)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(path, "wb", opener=lambda p, f: os.open(p, f, 0o400)) as out:
                out.write(data)
        for target, text in spec.files.items():
            path = _in_layer(layer, target)
            # A directory of this layer hides the attributes of the host's (overlayfs): 0755 whatever the umask,
            # or no user could reach /usr.
            for d in reversed(path.relative_to(layer).parents[:-1]):
                (layer / d).mkdir(exist_ok=True)
                (layer / d).chmod(0o755)
            path.write_text(text)
            path.chmod(0o755)
        # The accounts stay (PAM's account check, as in `su` from root, fails for a user missing from
        # /etc/shadow), their password hashes do not.
        for name in ("/etc/shadow", "/etc/gshadow"):
            if os.path.isfile(name):
                _cover(layer, Path(name), _without_passwords(Path(name).read_text()))
        for path in _hidden_files():
            _cover(layer, path, "")
        if os.path.isdir("/home"):
            _fresh_homes(scratch / "home")
        rootfs = node_dir / "rootfs"
        rootfs.mkdir()
        _mount("overlay", rootfs, "overlay", f"lowerdir={layer}:/,upperdir={scratch / 'upper'},workdir={scratch / 'work'}")
        return rootfs

    def _oci_spec(self, spec: NodeSpec, rootfs: Path) -> dict[str, object]:
        mounts: list[dict[str, object]] = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=256m"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/etc/hosts", "type": "bind", "source": str(self._node_dir(spec.name) / "scratch/layer/etc/hosts"), "options": ["bind", "ro", "nosuid", "nodev"]},
        ]
        # Accordion's state (keys, every cluster's files) and every cluster's shared directory stay out too:
        # the node's own shared directory is bound back on top below. Before the binds, which may land inside
        # these, and writable, so that runc can make their mount points there. runc gives each tmpfs the
        # mode of the directory it covers.
        for path in _hidden_dirs():
            mounts.append({"destination": path, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]})
        if self.entrypoint is not None:
            mounts.append({"destination": ENTRYPOINT, "type": "bind", "source": str(self.entrypoint), "options": ["bind", "ro", "nosuid", "nodev"]})
        homes = self._node_dir(spec.name) / "scratch/home"
        if homes.is_dir():
            mounts.append({"destination": "/home", "type": "bind", "source": str(homes), "options": ["bind", "rw", "nosuid", "nodev"]})
        # Directories from the head bring no set-user-ID program or device node into the node. `bind`, not
        # `rbind`: runc applies these flags to the bind itself only, not to mounts under its source.
        for b in spec.binds:
            if b.head_only and self.entrypoint is not None:
                continue
            options = ["bind", "ro" if b.readonly else "rw", "nosuid", "nodev"]
            mounts.append({"destination": b.target, "type": "bind", "source": b.source, "options": options})
        caps = list(CAPABILITIES)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"} | spec.env
        cgroup = f"/accordion/{self.scope}/{spec.name}"
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": 0, "gid": 0},
                "args": ["/usr/bin/catatonit", "--", *([ENTRYPOINT] if self.entrypoint is not None else []), *spec.command],
                "env": [f"{k}={v}" for k, v in env.items()],
                "cwd": "/",
                "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                "noNewPrivileges": False,
            },
            "root": {"path": str(rootfs), "readonly": False},
            "hostname": spec.name,
            "mounts": mounts,
            "linux": {
                "namespaces": [
                    {"type": "pid"},
                    {"type": "ipc"},
                    {"type": "uts"},
                    {"type": "mount"},
                    {"type": "network", "path": f"/run/netns/{self._node_netns(spec.name)}"},
                ],
                "cgroupsPath": cgroup,
                "resources": {
                    "memory": {"limit": spec.memory_mb * 1024 * 1024},
                    "cpu": {"quota": spec.cpus * 100000, "period": 100000},
                    "pids": {"limit": 4096},
                    "devices": [{"allow": False, "access": "rwm"}]
                    + [
                        {"allow": True, "type": "c", "major": maj, "minor": mi, "access": "rwm"}
                        for maj, mi in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (136, -1))
                    ],
                },
                "seccomp": {
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                    "syscalls": [{"names": SECCOMP_DENY, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
                },
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            },
        }

    def _leave_host(self, name: str) -> None:
        """Take the node's root, scratch and network namespace out of the host's mount table once its
        container runs or waits (`runc create` set up its mounts): the container holds its own references
        to them, and goes with them. Every runc reads the host's table (mountinfo) several times and every
        new container copies it, so three mounts per node made a 280-node burst's starts cost in
        proportion to the nodes already up. Lazily (MNT_DETACH), as `ip netns del` does: nothing here
        uses them any more. `delete` calls it too, for a start cut short."""
        node_dir = self._node_dir(name)
        netns = Path("/run/netns") / self._node_netns(name)
        failed = []
        for mnt in (node_dir / "rootfs", node_dir / "scratch", netns):
            if _libc.umount2(os.fsencode(mnt), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.ENOENT):  # not a mount (any more): nothing to take out
                    failed.append(f"{mnt}: {os.strerror(err)}")
        netns.unlink(missing_ok=True)
        if failed:
            raise ProviderError(f"cannot unmount {', '.join(failed)}")

    def delete(self, name: str) -> None:
        # Any node can be removed, even one the cluster file no longer names; but a name is a directory
        # here, and one with a "/" (a host agent's request) would be another.
        if not name or name in (".", "..") or "/" in name:
            raise ProviderError(f"{name!r} is not a node name")
        self._kill_launcher(name)
        runc = self._runc()
        if (self.run / "runc" / name).exists():
            run(runc + ["kill", name, "KILL"], check=False)
            for _ in range(50):
                if run(runc + ["delete", "--force", name], check=False).returncode == 0:
                    break
                time.sleep(0.1)
        node_dir = self._node_dir(name)
        self._leave_host(name)  # a start cut short left them
        if name in self._index:
            veth = f"v{self._index[name]}"
            # The veth pair disappears asynchronously after its namespace goes; a node re-created with the
            # same name before then would fail to add its veth.
            for _ in range(100):
                if run([*enter_netns(self.netns), "ip", "link", "show", veth], check=False).returncode != 0:
                    break
                time.sleep(0.05)
        shutil.rmtree(node_dir, ignore_errors=True)

    def _kill_launcher(self, name: str) -> None:
        """Kill a `runc run` still starting the node, if any."""
        pid = self._launcher(name)
        if pid is not None:
            _kill_group(pid)

    def _launcher(self, name: str) -> int | None:
        """The `runc run` or `runc create` making the node, if one runs (its pid is checked: pids get reused)."""
        bundle = self._node_dir(name) / "bundle"
        try:
            pid = int((self._node_dir(name) / "runc.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if f"--bundle\0{bundle}\0".encode() in cmdline else None

    def list(self) -> dict[str, NodeInfo]:
        """The nodes in this runtime's directory and the state of their containers, from /proc and files, as
        `runc list` would tell (see `_state`): it costs ~90 ms of CPU at 280 nodes, and the controller lists
        at every step. A listing that cannot be read is an error, never "no containers": the controller
        would delete every node."""
        nodes: dict[str, NodeInfo] = {}
        if not self.nodes.is_dir():
            return nodes
        for node_dir in self.nodes.iterdir():
            try:
                created = float((node_dir / "created").read_text())
            except (OSError, ValueError):
                try:
                    created = node_dir.stat().st_mtime
                except FileNotFoundError:
                    continue  # removed since the directory was read
            state = self._state(node_dir)
            made = self._prepared(node_dir.name)
            # A running container is a node whatever its directory says: never hidden from the controller.
            if made is not None and state != "running":
                ready = bool(made) and state == "created"
                nodes[node_dir.name] = NodeInfo(node_dir.name, False, created, "" if ready else "prepared container not ready", prepared=True)
            else:
                nodes[node_dir.name] = NodeInfo(node_dir.name, state == "running", created)
        return nodes

    def _state(self, node_dir: Path) -> str | None:
        """runc's state of the node's container: "created" while its init waits for `runc start` (runc's own
        test: the container's exec fifo is there), "running" once started, None if it has no container or
        its init is gone (exited, a zombie, or its pid now another process's: the start time differs).
        Without an `INIT` record: nothing yet while runc makes it, else runc tells (a node made before
        Accordion kept one, a record cut short by a crash)."""
        name = node_dir.name
        try:
            pid, started = (node_dir / INIT).read_text().split()
        except (FileNotFoundError, ValueError):
            return None if self._launcher(name) is not None else self._runc_state(node_dir)
        except OSError as exc:
            raise ProviderError(f"cannot list the nodes of {self.config.name}: {exc}") from None
        try:
            if _started(pid) != started:
                return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProviderError(f"cannot list the nodes of {self.config.name}: {exc}") from None
        return "created" if (self.run / "runc" / name / "exec.fifo").exists() else "running"

    def _runc_state(self, node_dir: Path) -> str | None:
        """runc's own answer, recorded (`INIT`) for a live container so that it is asked once: 280 nodes made
        by an earlier version would otherwise be 280 `runc state` at every step."""
        name = node_dir.name
        if not (self.run / "runc" / name).exists():
            return None
        try:
            state = json.loads(run(self._runc() + ["state", name], timeout=20).stdout)
            status, pid = str(state["status"]), int(state["pid"])
            if status in ("created", "running") and pid > 0:
                self._record_init(node_dir, str(pid))
            return status
        except CommandError as exc:
            if "does not exist" in exc.stderr.lower() or "no such file" in exc.stderr.lower():
                return None  # removed meanwhile
            raise ProviderError(f"cannot list the nodes of {self.config.name}: {exc}") from None
        except (subprocess.TimeoutExpired, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"cannot list the nodes of {self.config.name}: {exc}") from None


class LocalProvider:
    """Every node on this machine, on a bridge that also holds the head's address."""

    prepares = True

    def __init__(self, config: ClusterConfig, paths: ClusterPaths) -> None:
        self.config = config
        self.paths = paths
        nodes = len(config.all_nodes())
        if nodes > MAX_NODES:
            sizes = " + ".join(str(ns.max_nodes) for ns in config.nodesets)
            raise ConfigError(
                f"nodesets[].max_nodes: {sizes} = {nodes} nodes; provider 'local' puts every node on one "
                f"Linux bridge, which takes at most {MAX_NODES} ports: at most {MAX_NODES} nodes per cluster"
            )
        self.runtime = NodeRuntime(config, config.name, paths.run, paths.logs)
        self.netns = self.runtime.netns

    def head_address(self) -> str:
        return str(HEAD)

    def address(self, node: str) -> str:
        return self.runtime.address(node)

    def enter(self) -> list[str]:
        return enter_netns(self.netns)

    def login(self) -> list[str]:
        return login_prefix(self.config, self.paths, self.netns)

    def setup(self) -> None:
        self.runtime.setup(str(HEAD))
        (self.paths.run / "hosts").write_text(hosts_file(self.config))

    def teardown(self) -> None:
        self.runtime.teardown()

    def create(self, spec: NodeSpec) -> None:
        self.runtime.create(spec)

    def prepare(self, spec: NodeSpec) -> None:
        self.runtime.prepare(spec)

    def delete(self, name: str) -> None:
        self.runtime.delete(name)

    def list(self) -> dict[str, NodeInfo]:
        return self.runtime.list()


def _hidden_dirs() -> list[str]:
    """The host's directories covered by an empty tmpfs in a node, as present now: the known places
    (HIDDEN_DIRS), Accordion's state, every cluster's shared directory, and its run root outside /run."""
    hidden = [*HIDDEN_DIRS, str(state_root()), str(shared_root())]
    if not run_root().is_relative_to("/run"):
        hidden.append(str(run_root()))
    return [path for path in hidden if os.path.isdir(path)]


def _host_homes() -> list[Path]:
    """The host's homes, as `_fresh_homes` copies them: directories of /home, not links."""
    if not os.path.isdir("/home"):
        return []
    return [h for h in Path("/home").iterdir() if h.is_dir() and not h.is_symlink()]


def _hidden_files() -> list[Path]:
    """The host's files a node must not read, as present now (ssh host keys come and go with their types)."""
    return [p for p in map(Path, HIDDEN_FILES) if p.is_file()] + sorted(Path("/etc/ssh").glob("ssh_host_*_key"))


def _without_passwords(text: str) -> str:
    """A shadow or gshadow file whose password fields are all `*`, or `!` where the account was locked."""
    lines = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > 1:
            fields[1] = "!" if fields[1].startswith("!") else "*"
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"


def _cover(layer: Path, path: Path, text: str) -> None:
    """Put `text` at host `path` in the node's layer, above the host's file.

    The file and the directories made for it take the host's owner and mode: in the merged root, a
    directory shows the layer's attributes, not the host's."""
    for host in reversed(path.parents[:-1]):
        copy = layer / host.relative_to("/")
        if not copy.is_dir():
            copy.mkdir()
            _same_owner_and_mode(host, copy)
    copy = layer / path.relative_to("/")
    copy.write_text(text)
    _same_owner_and_mode(path, copy)


def _fresh_homes(homes: Path) -> None:
    """For each home on the host, an empty one as a new account gets (a copy of /etc/skel), in `homes`.

    Not just an empty /home: OAR's oardodo refuses to run a job whose user has no home, and its batch
    jobs source ~/.bashrc."""
    homes.mkdir()
    for host in _host_homes():
        fresh = homes / host.name
        shutil.copytree("/etc/skel", fresh, symlinks=True)
        st = host.stat()
        for path in [fresh, *fresh.rglob("*")]:
            os.lchown(path, st.st_uid, st.st_gid)
        os.chmod(fresh, st.st_mode & 0o7777)


def _same_owner_and_mode(host: Path, copy: Path) -> None:
    st = host.stat()
    os.chown(copy, st.st_uid, st.st_gid)
    os.chmod(copy, st.st_mode & 0o7777)


# This module's own code: a node prepared by another version of it (another OCI spec, say) is made again.
_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _digest(spec: NodeSpec, secrets: dict[str, bytes]) -> str:
    """What a prepared node was made from: its spec, the secrets' contents, and what of the host its root
    copies or hides (`_rootfs`, `_oci_spec`) as it is now: an account or a home added since (a login node
    user, say) is in a node made now, so a node prepared before is made again. Well under a millisecond."""
    host: list[object] = []
    for name in ("/etc/shadow", "/etc/gshadow", "/etc/skel"):
        try:
            st = os.stat(name)
            host.append([name, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid, st.st_gid])
        except OSError:
            host.append(name)
    homes = []
    for h in _host_homes():
        st = h.stat()
        homes.append((h.name, st.st_uid, st.st_gid, st.st_mode))
    host.append(sorted(homes))
    host += [_CODE, *(str(p) for p in _hidden_files()), *_hidden_dirs()]
    made = json.dumps([asdict(spec), {k: v.hex() for k, v in secrets.items()}, host], sort_keys=True)
    return hashlib.sha256(made.encode()).hexdigest()


# Mounts by the system calls themselves: a `mount` process costs a start more than the mount does.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MNT_DETACH, UMOUNT_NOFOLLOW = 2, 8  # <sys/mount.h>


def _mount(source: str, target: Path, fstype: str, options: str) -> None:
    if _libc.mount(source.encode(), os.fsencode(target), fstype.encode(), 0, options.encode()) != 0:
        raise ProviderError(f"cannot mount {fstype} on {target}: {os.strerror(ctypes.get_errno())}")


def _started(pid: str) -> str:
    """A live process's start time (clock ticks after boot, /proc/PID/stat field 22); FileNotFoundError
    if there is no such process or it is a zombie (its container has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except ProcessLookupError:  # reaped between the open and the read
        raise FileNotFoundError(f"process {pid} has exited") from None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    if fields[0] in ("Z", "X"):
        raise FileNotFoundError(f"process {pid} has exited")
    return fields[19]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except ProcessLookupError:
        pass
