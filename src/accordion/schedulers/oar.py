"""OAR adapter: PostgreSQL, the OAR server (Almighty) and sshd-based nodes, as Debian ships them (2.5.9).

OAR's tools read a fixed /etc/oar/oar.conf and the oar user's ~/.ssh, so every OAR process of a cluster
(server, user commands, nodes) runs in a mount namespace where the cluster's own oar.conf, hosts file and
ssh keys are bind-mounted over those paths: the host's files are never modified.

Capacity: every core a node set may have is registered up-front as an OAR resource in state Absent (as
the thesis did), so `oarnodes` shows it and `oarsub` refuses what can never fit. A node whose container is
up and whose sshd answers is set Alive; removal drains it (`oarnodesetting -d on`) and sets it Absent once
its jobs are gone. Resources are never deleted (`oarremoveresource` erases their job history).

PostgreSQL listens on no TCP port at all: only its socket, with peer authentication mapped from the oar
system user, so there is no database password anywhere to leak.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import socket
import subprocess
from pathlib import Path

from accordion import daemons
from accordion.config import ClusterConfig
from accordion.model import Job, SchedNode, SchedState, SchedulerView
from accordion.paths import ClusterPaths
from accordion.providers.base import Bind, NodeSpec, Provider
from accordion.sh import CommandError, run, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OAR_SQL = Path("/usr/lib/oar/database")
SSHD_PORT = 6667
DRAIN = "drain"


def _pg_bin() -> Path:
    if PG_BIN.is_dir():
        return PG_BIN
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not versions:
        raise RuntimeError("PostgreSQL server binaries not found; run scripts/setup.sh")
    return versions[-1]


def render_oar_conf(template: str, overrides: dict[str, str | None]) -> str:
    """The template with each overridden key set once; a None value removes the key (OAR tests presence)."""
    lines, seen = [], set()
    for line in template.splitlines():
        m = re.match(r"^\s*#?\s*([A-Z_0-9]+)\s*=", line)
        if m and m.group(1) in overrides:
            if m.group(1) not in seen and overrides[m.group(1)] is not None:
                lines.append(f'{m.group(1)}="{overrides[m.group(1)]}"')
            seen.add(m.group(1))
            continue
        lines.append(line)
    lines += [f'{k}="{v}"' for k, v in overrides.items() if k not in seen and v is not None]
    return "\n".join(lines) + "\n"


def parse_wanted(description: str) -> tuple[int, int]:
    """(nodes, cores per node) from an OAR resource request such as `/host=2/core=2,walltime=1:0:0`."""
    nodes, cores = 1, 1
    for key, value in re.findall(r"/(\w+)=(\d+)", description):
        if key in ("host", "nodes", "network_address"):
            nodes = int(value)
        elif key in ("core", "cpu", "resource_id"):
            cores = int(value)
    return nodes, cores


class OarScheduler:
    name = "oar"

    def __init__(self, config: ClusterConfig, paths: ClusterPaths, provider: Provider) -> None:
        self.config = config
        self.paths = paths
        self.provider = provider
        self.sched = paths.scheduler
        self.conf = self.sched / "oar.conf"
        self.ssh = self.sched / "ssh"
        self.pgdata = self.sched / "pg"
        self.pgsock = paths.run / "pg"
        self.hosts = paths.run / "hosts"
        self._nodeset_of = {n: ns.name for ns in config.nodesets for n in ns.node_names()}

    def env(self) -> dict[str, str]:
        return {}

    def wrap(self) -> list[str]:
        """Run a command in a mount namespace where OAR finds this cluster's files at its fixed paths."""
        script = (
            'mount --bind "$0" /etc/oar/oar.conf && mount --bind "$1" /etc/hosts && '
            'mount --bind "$2" /var/lib/oar/.ssh && shift 2 && exec "$@"'
        )
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(self.conf), str(self.hosts), str(self.ssh)]

    def _cmd(self, argv: list[str], timeout: float = 30, check: bool = True) -> str:
        return run(self.provider.enter() + self.wrap() + argv, timeout=timeout, check=check).stdout

    # ----- lifecycle -----

    def setup(self) -> None:
        oar, pg = pwd.getpwnam("oar"), pwd.getpwnam("postgres")
        self.sched.mkdir(parents=True, exist_ok=True)
        os.chmod(self.sched, 0o711)
        self._ssh_keys(oar)
        self._write_conf(oar)
        fresh = self._postgres(pg)
        if fresh:
            self._create_database(oar)
            # Before Almighty starts: its node checker would mark the new, still nodeless resources
            # Suspected before they could be set Absent.
            self._register_capacity()
        if daemons.pid_of(self.paths.pids / "almighty.pid") is None:
            daemons.spawn(
                self.provider.enter() + self.wrap() + ["/usr/sbin/Almighty"],
                self.paths.logs / "almighty.out",
                self.paths.pids / "almighty.pid",
            )
        wait_until(self._responding, 30, f"the OAR server did not answer; see {self.paths.logs / 'oar.log'}")

    def _ssh_keys(self, oar: pwd.struct_passwd) -> None:
        self.ssh.mkdir(mode=0o700, exist_ok=True)
        key = self.ssh / "id_ed25519"
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"oar@{self.config.name}", "-f", str(key)])
        # OAR_KEY tells the oar user's login shell (oarsh_shell) that this is the server, not a user's oarsh.
        (self.ssh / "authorized_keys").write_text('environment="OAR_KEY=1" ' + (self.ssh / "id_ed25519.pub").read_text())
        # Node host keys are per node and throwaway: known_hosts would only ever hold stale entries.
        (self.ssh / "config").write_text("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
        for p in [self.ssh, *self.ssh.iterdir()]:
            os.chown(p, oar.pw_uid, oar.pw_gid)
            os.chmod(p, 0o700 if p.is_dir() else 0o600 if p.name in ("id_ed25519", "config", "authorized_keys") else 0o644)

    def _write_conf(self, oar: pwd.struct_passwd) -> None:
        log = self.paths.logs / "oar.log"
        log.touch(mode=0o600)
        os.chown(log, oar.pw_uid, oar.pw_gid)
        overrides: dict[str, str | None] = {
            "DB_TYPE": "Pg",
            "DB_HOSTNAME": str(self.pgsock),
            "DB_PORT": "5432",
            "DB_BASE_NAME": "oar",
            "DB_BASE_LOGIN": "oar",
            "DB_BASE_PASSWD": "",
            "DB_BASE_LOGIN_RO": "oar_ro",
            "DB_BASE_PASSWD_RO": "",
            "SERVER_HOSTNAME": f"{self.config.name}-head",
            "SERVER_PORT": "6666",
            "LOG_FILE": str(log),
            "LOG_LEVEL": "2",
            # Without this OAR waits for Almighty's 10 s tick before scheduling a new job.
            "SCHEDULER_MIN_TIME_BETWEEN_2_CALLS": "1",
            # Nodes are containers with their own cgroup: without CPUSET_PATH OAR runs no cpuset manager
            # (jobs are confined by the node container), while the cpuset field still names each job's
            # cpuset, which oarsh uses to check a connection belongs to the user's job.
            "JOB_RESOURCE_MANAGER_PROPERTY_DB_FIELD": "cpuset",
            "CPUSET_PATH": None,
            "FINAUD_FREQUENCY": "30",
            "OPENSSH_CMD": f"/usr/bin/ssh -p {SSHD_PORT} -e none -F /var/lib/oar/.ssh/config",
            "OARSH_OPENSSH_DEFAULT_OPTIONS": "-e none -oProxyCommand=none -oPermitLocalCommand=no -F /var/lib/oar/.ssh/config",
        }
        template = Path("/etc/oar/oar.conf").read_text()
        self.conf.write_text(render_oar_conf(template, overrides))
        os.chown(self.conf, oar.pw_uid, oar.pw_gid)
        os.chmod(self.conf, 0o644)

    def _postgres(self, pg: pwd.struct_passwd) -> bool:
        as_pg = ["setpriv", f"--reuid={pg.pw_uid}", f"--regid={pg.pw_gid}", "--clear-groups"]
        fresh = not (self.pgdata / "PG_VERSION").exists()
        if fresh:
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            os.chown(self.pgdata, pg.pw_uid, pg.pw_gid)
            run(as_pg + [str(_pg_bin() / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "-A", "peer", "--no-instructions", "-E", "UTF8"], timeout=120)
            (self.pgdata / "pg_hba.conf").write_text(
                "local all postgres peer\nlocal oar oar,oar_ro peer map=oar\n"
            )
            (self.pgdata / "pg_ident.conf").write_text("oar oar oar\noar oar oar_ro\n")
        self.pgsock.mkdir(parents=True, exist_ok=True)
        os.chown(self.pgsock, pg.pw_uid, pg.pw_gid)
        os.chmod(self.pgsock, 0o755)
        if daemons.pid_of(self.paths.pids / "postgres.pid") is None:
            log = self.paths.logs / "postgres.log"
            daemons.spawn(
                as_pg + [str(_pg_bin() / "postgres"), "-D", str(self.pgdata), "-k", str(self.pgsock), "-c", "listen_addresses=", "-c", "fsync=on"],
                log,
                self.paths.pids / "postgres.pid",
            )
        wait_until(lambda: (self.pgsock / ".s.PGSQL.5432").exists(), 30, f"PostgreSQL did not start; see {self.paths.logs / 'postgres.log'}")
        wait_until(lambda: self._psql("postgres", "postgres", "SELECT 1", check=False) is not None, 30, "PostgreSQL does not accept connections")
        return fresh

    def _psql(self, user: str, db: str, sql: str | None = None, file: Path | None = None, check: bool = True) -> str | None:
        uid = pwd.getpwnam("postgres" if user == "postgres" else "oar")
        argv = ["setpriv", f"--reuid={uid.pw_uid}", f"--regid={uid.pw_gid}", "--clear-groups", "psql", "-q", "-X", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.pgsock), "-U", user, "-d", db]
        argv += ["-c", sql] if sql is not None else ["-f", str(file)]
        proc = run(argv, check=False, timeout=120)
        if proc.returncode != 0:
            if check:
                raise CommandError(argv, proc.returncode, proc.stderr)
            return None
        return proc.stdout

    def _create_database(self, oar: pwd.struct_passwd) -> None:
        self._psql("postgres", "postgres", "CREATE ROLE oar LOGIN")
        self._psql("postgres", "postgres", "CREATE ROLE oar_ro LOGIN")
        self._psql("postgres", "postgres", "CREATE DATABASE oar OWNER oar")
        self._psql("postgres", "oar", "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        self._psql("postgres", "oar", "GRANT CREATE ON SCHEMA public TO oar")
        for name in ("pg_structure.sql", "default_data.sql", "pg_default_admission_rules.sql"):
            self._psql("oar", "oar", file=OAR_SQL / name)
        self._psql("oar", "oar", "GRANT SELECT ON ALL TABLES IN SCHEMA public TO oar_ro")
        self._psql("oar", "oar", "GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO oar_ro")

    def _register_capacity(self) -> None:
        self._cmd(["oarproperty", "-a", "host", "-c"], check=False)
        self._cmd(["oarproperty", "-a", "cpu"], check=False)
        self._cmd(["oarproperty", "-a", "core"], check=False)
        core = 0
        for i, ns in enumerate(self.config.nodesets):
            for n, node in enumerate(ns.node_names()):
                for _ in range(ns.cpus):
                    self._cmd(["oarnodesetting", "-a", "-s", "Absent", "-h", node, "-p", f"host={node}", "-p", f"cpu={i * 10000 + n}", "-p", f"core={core}"])
                    core += 1
        self.mark_absent(self.config.all_nodes())

    def _responding(self) -> bool:
        try:
            self._cmd(["oarstat", "-J"], timeout=10)
            with socket.create_connection((self.provider.head_address(), 6666), timeout=1):
                return True
        except (CommandError, OSError, subprocess.TimeoutExpired):
            return False

    def teardown(self) -> None:
        daemons.stop(self.paths.pids / "almighty.pid", timeout=15)
        for proc in Path("/proc").iterdir():
            # Almighty's helpers (bipbip, sarko, ...) outlive it if it is killed.
            if proc.name.isdigit():
                try:
                    cmd = (proc / "cmdline").read_bytes()
                    env = (proc / "environ").read_bytes()
                except OSError:
                    continue
                if b"/usr/lib/oar/" in cmd and str(self.conf).encode() in env:
                    try:
                        os.kill(int(proc.name), 9)
                    except OSError:
                        pass
        daemons.stop(self.paths.pids / "postgres.pid", timeout=30)

    def running(self) -> bool:
        return daemons.pid_of(self.paths.pids / "almighty.pid") is not None

    # ----- nodes -----

    def node_spec(self, node: str) -> NodeSpec:
        ns = self.config.nodeset(self._nodeset_of[node])
        return NodeSpec(
            name=node,
            cpus=ns.cpus,
            memory_mb=ns.memory_mb,
            command=["/bin/sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e -f /etc/oar/sshd_config"],
            binds=[
                Bind(str(self.conf), "/etc/oar/oar.conf"),
                Bind(str(self.ssh), "/var/lib/oar/.ssh"),
                # oarsh on a node asks the database (through oarstat, as the oar user) for its job.
                Bind(str(self.pgsock), str(self.pgsock)),
                Bind(str(self.paths.shared), str(self.paths.shared), readonly=False),
            ],
        )

    def mark_absent(self, nodes: list[str], reason: str = "powered off") -> None:
        for node in nodes:
            self._cmd(["oarnodesetting", "-n", "-s", "Absent", "-h", node])
            self._cmd(["oarnodesetting", "-d", "off", "-h", node])

    def node_starting(self, node: str) -> None:
        """Nothing to prepare: resources come back Alive when the node's sshd answers."""

    def node_started(self, node: str) -> None:
        """Resources come back Alive when the node's sshd answers (see observe)."""

    def release(self, node: str, reason: str) -> None:
        self._cmd(["oarnodesetting", "-d", "on", "-h", node])

    def _sshd_up(self, node: str) -> bool:
        try:
            with socket.create_connection((self.provider.address(node), SSHD_PORT), timeout=0.3):
                return True
        except OSError:
            return False

    # ----- observation -----

    def changes(self) -> object:
        # oarsub and job ends go through Almighty, which logs each: the log growing is the cheapest sign.
        try:
            return (self.paths.logs / "oar.log").stat().st_size
        except OSError:
            return None

    def observe(self) -> SchedulerView:
        resources = json.loads(self._cmd(["oarnodes", "-J"]) or "{}")
        by_host: dict[str, list[dict]] = {}
        for r in (resources.values() if isinstance(resources, dict) else resources):
            by_host.setdefault(r.get("host") or r.get("network_address"), []).append(r)
        containers = self.provider.list()
        nodes: dict[str, SchedNode] = {}
        for host, rs in by_host.items():
            if host not in self._nodeset_of:
                continue
            states = {r.get("state") for r in rs}
            busy_cores = sum(1 for r in rs if r.get("jobs"))
            drained = all(str(r.get("drain", "NO")).upper() == "YES" for r in rs)
            if states == {"Absent"} and host in containers and containers[host].running and self._sshd_up(host):
                # The node's agent (sshd) answers: bring its resources into service.
                self._cmd(["oarnodesetting", "-s", "Alive", "-h", host])
                states = {"Alive"}
            if states != {"Alive"}:
                nodes[host] = SchedNode(host, SchedState.UNKNOWN, 0, None, "", marked_absent=states == {"Absent"})
                continue
            if drained:
                state = SchedState.DRAINING if busy_cores else SchedState.DRAINED
            else:
                state = SchedState.BUSY if busy_cores else SchedState.IDLE
            since = max((float(r.get("last_job_date") or 0) for r in rs), default=0.0) or None
            nodes[host] = SchedNode(host, state, len(rs) - busy_cores, since)
        return SchedulerView(nodes, self._jobs())

    def _jobs(self) -> list[Job]:
        data = json.loads(self._cmd(["oarstat", "-f", "-J"]) or "{}")
        jobs = []
        default = self.config.nodesets[0].name
        for jid, j in (data.items() if isinstance(data, dict) else []):
            state = j.get("state", "")
            if state not in ("Waiting", "toLaunch", "Launching", "Running", "Finishing", "toAckReservation"):
                continue
            nodes, cores = parse_wanted(str(j.get("wanted_resources", "")))
            running = state in ("Launching", "Running", "Finishing", "toLaunch")
            hosts = tuple(sorted({str(h) for h in (j.get("assigned_network_address") or [])}))
            jobs.append(
                Job(
                    id=str(jid),
                    nodeset=default,
                    nodes=nodes,
                    cpus_per_node=cores,
                    running=running,
                    submit_time=float(j.get("submissionTime") or 0),
                    wants_resources=state == "Waiting",
                    node_names=hosts,
                    reason=state,
                )
            )
        return jobs
