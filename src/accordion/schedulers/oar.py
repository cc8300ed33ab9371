"""OAR adapter: PostgreSQL, the OAR server (Almighty) and sshd-based nodes, as Debian ships them (2.5.9).

OAR's tools read a fixed /etc/oar/oar.conf and the oar user's ~/.ssh, so every OAR process of a cluster
(server, user commands, nodes) runs in a mount namespace where the cluster's own oar.conf, hosts file and
ssh keys are bind-mounted over those paths: the host's files are never modified.

Capacity: every core a node set may have is registered up-front as an OAR resource in state Absent (as
the thesis did), so `oarnodes` shows it and `oarsub` refuses what can never fit; each resource carries its
node set as the `nodeset` property, so `oarsub -p "nodeset='big'"` targets one. Once a node's container
runs, `node_started` waits for its sshd to greet, checked from inside the cluster's network, and sets its
resources Alive. Removal drains it (`oarnodesetting -d on`) and sets it Absent once its jobs are gone.
Resources are never deleted (`oarremoveresource` erases their job history).

The controller runs in the host's network namespace, from which cluster addresses are unreachable on a
real host (and, on some networks, answered by the network itself): every check of a node or of the head
runs inside the cluster's namespace (`provider.enter()`), never as a connect() from this process.

Jobs are read from OAR's database (read-only role): their resource hierarchies as OAR stored them, and
where each may run, by OAR's own semantics: its property expressions evaluated against the resources.

PostgreSQL listens on no TCP port at all: only its socket, with peer authentication mapped from the oar
system user, so there is no database password anywhere to leak.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accordion import daemons
from accordion.config import ClusterConfig, NodeSet
from accordion.errors import SchedulerError
from accordion.model import Job, SchedNode, SchedState, SchedulerView
from accordion.paths import ClusterPaths
from accordion.providers.base import Bind, NodeSpec, Provider
from accordion.sh import CommandError, run, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OAR_SQL = Path("/usr/lib/oar/database")
SERVER_PORT = 6666  # Almighty's; nodes call it back there
SSHD_PORT = 6667

# Whether `address:port` accepts a connection and, given a greeting, starts its answer with it (sshd's
# "SSH-2.0-..."). Run by bash, inside the cluster's network namespace: bash's /dev/tcp is the smallest
# connect there is, and a refused or unreachable address makes it fail.
CONNECT_CHECK = 'exec 3<>"/dev/tcp/$1/$2" || exit 1; [ -z "$3" ] && exit 0; IFS= read -r -t 2 line <&3 && [[ $line == "$3"* ]]'
CONNECT_TIMEOUT = 3.0  # an address with no node behind it fails only at the ARP timeout (~3 s)

# Job states in which a job holds or wants resources.
ACTIVE = ("Waiting", "toLaunch", "Launching", "Running", "Finishing", "toAckReservation")
RUNNING = ("toLaunch", "Launching", "Running", "Finishing")
# Resource hierarchy levels that name whole hosts: `cpu` too, since each node is registered as one cpu.
HOST_LEVELS = frozenset({"host", "network_address", "cpu"})
NO_CONDITION = "'1'"


def _pg_bin() -> Path:
    if PG_BIN.is_dir():
        return PG_BIN
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not versions:
        raise SchedulerError("PostgreSQL server binaries not found; run scripts/setup.sh")
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


# PINGCHECKER_GENERIC_COMMAND: OAR runs it with the hosts to check as arguments and reads the bad ones on
# its stderr, one per line. Run by Almighty's tools, inside the cluster's network namespace.
PINGCHECKER = """#!/bin/bash
# Written by Accordion: a host whose sshd does not take a connection within 5 s is bad.
for host; do
  (timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/{port}"' "$host" 2>/dev/null || echo "$host" >&2) &
done
wait
"""


@dataclass(frozen=True)
class Request:
    """What an OAR resource request asks of nodes, in the terms of `model.Job`."""

    nodes: int  # at least this many hosts
    cpus_per_node: int  # cores on each
    cpus: int = 0  # cores in all when no host level is named (`core=8`: any hosts, 0 otherwise)
    exclusive: bool = False  # whole hosts: no level below the host's (`/host=2`)

    def need(self) -> int:
        """Eligible cores a host must have to take part."""
        return 1 if self.exclusive or self.cpus else self.cpus_per_node

    def fits(self, cores: list[int]) -> bool:
        """Whether hosts with these numbers of eligible cores can hold the request."""
        if self.cpus:
            return sum(cores) >= self.cpus
        return sum(1 for c in cores if c >= self.need()) >= self.nodes


def parse_levels(levels: list[tuple[str, int]]) -> Request:
    """One resource group's hierarchy, outermost level first (`/host=2/core=4`: [("host", 2), ("core", 4)]).
    Counts multiply down the hierarchy: levels down to the innermost host level count hosts, levels below
    it count cores on each. OAR stores ALL as -1 and BEST as -2: both read as at least one."""
    counts = [max(count, 1) for _, count in levels]
    host = max((i for i, (kind, _) in enumerate(levels) if kind in HOST_LEVELS), default=None)
    if host is None:
        return Request(nodes=1, cpus_per_node=1, cpus=math.prod(counts))
    below = counts[host + 1 :]
    return Request(nodes=math.prod(counts[: host + 1]), cpus_per_node=math.prod(below), exclusive=not below)


def combine(requests: list[Request]) -> Request:
    """A request of several groups (`-l "/host=1/core=4+/host=2/core=1"`): all are needed at once, read as
    one shape that holds each (their hosts added up, the largest per-host count)."""
    if len(requests) == 1:
        return requests[0]
    spread = any(r.cpus for r in requests)
    return Request(
        nodes=sum(r.nodes for r in requests),
        cpus_per_node=max(r.cpus_per_node for r in requests),
        cpus=sum(r.cpus or r.nodes * r.cpus_per_node for r in requests) if spread else 0,
        exclusive=any(r.exclusive for r in requests),
    )


# Jobs that hold or want resources, as OAR's scheduler reads them: per alternative request (moldable) its
# resource groups, each a property filter and a hierarchy of counts; whether a job it depends on has yet to
# end (OAR starts it only once they are Terminated or in Error); the hosts of a running job.
JOBS_SQL = f"""
SELECT coalesce(json_agg(job ORDER BY job.id), '[]') FROM (
  SELECT j.job_id AS id, j.state, j.submission_time AS submitted, j.properties, j.assigned_moldable_job AS assigned,
    EXISTS (SELECT 1 FROM job_dependencies d JOIN jobs r ON r.job_id = d.job_id_required
            WHERE d.job_id = j.job_id AND d.job_dependency_index = 'CURRENT' AND r.state NOT IN ('Terminated', 'Error')) AS blocked,
    (SELECT json_agg(json_build_object(
              'moldable', m.moldable_id, 'property', g.res_group_property,
              'levels', (SELECT json_agg(json_build_array(d.res_job_resource_type, d.res_job_value) ORDER BY d.res_job_order)
                         FROM job_resource_descriptions d WHERE d.res_job_group_id = g.res_group_id))
            ORDER BY m.moldable_id, g.res_group_id)
       FROM moldable_job_descriptions m JOIN job_resource_groups g ON g.res_group_moldable_id = m.moldable_id
       WHERE m.moldable_job_id = j.job_id) AS groups,
    (SELECT json_agg(DISTINCT r.host) FROM assigned_resources a JOIN resources r ON r.resource_id = a.resource_id
       WHERE j.assigned_moldable_job > 0 AND a.moldable_job_id = j.assigned_moldable_job) AS hosts
  FROM jobs j WHERE j.state IN ({", ".join(f"'{s}'" for s in ACTIVE)})
) job;
"""


# Each resource as `oarnodes -J` shows it (OAR::IO::get_resources_jobs: the jobs a resource is assigned to,
# in the same states), read in one query: `oarnodes` is Perl that costs ~1 s of CPU per call on this 2-core
# machine, and the controller observes continuously while a node starts.
RESOURCE_JOB_STATES = ("Waiting", "Hold", "toLaunch", "toAckReservation", "Launching", "Running", "Suspended", "Resuming", "Finishing")
# One second past OAR's last scheduling pass (oar_meta_sched's "gantt date", OAR::IO::get_gantt_date).
GANTT_DATE_SQL = "SELECT start_time FROM gantt_jobs_predictions WHERE moldable_job_id = 0;"

NODES_SQL = f"""
SELECT coalesce(json_agg(json_build_object(
    'host', r.host, 'state', r.state, 'drain', r.drain, 'last_job_date', r.last_job_date,
    'jobs', (SELECT string_agg(j.job_id::text, ',' ORDER BY j.job_id)
             FROM assigned_resources a
             JOIN moldable_job_descriptions m ON m.moldable_id = a.moldable_job_id
             JOIN jobs j ON j.job_id = m.moldable_job_id
             WHERE a.resource_id = r.resource_id AND a.assigned_resource_index = 'CURRENT'
               AND m.moldable_index = 'CURRENT' AND j.state IN ({", ".join(f"'{s}'" for s in RESOURCE_JOB_STATES)})))
  ORDER BY r.resource_id), '[]')
FROM resources r;
"""


def job_filter(row: dict, group: dict) -> str:
    """The SQL condition on resources a job's resource group may use, built as OAR's scheduler builds it
    (`'1'` stands for no condition)."""
    return f"'1' AND ( {row['properties'] or NO_CONDITION} AND {group['property'] or NO_CONDITION} )"


def place(groups: list[tuple[Request, dict[str, int] | None]], nodesets: list[NodeSet]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The node sets (in the cluster file's order) able to hold every group of a request alone, given each
    group's eligible cores per host (None: not known, read as every core of every host), and the hosts of
    those node sets that no group can use (excluded by a property, such as `host='...'`)."""
    candidates: list[str] = []
    excluded: list[str] = []
    for ns in nodesets:
        hosts = ns.node_names()
        cores = [[ns.cpus if eligible is None else eligible.get(h, 0) for h in hosts] for _, eligible in groups]
        if all(request.fits(counts) for (request, _), counts in zip(groups, cores)):
            candidates.append(ns.name)
            excluded += [h for i, h in enumerate(hosts) if all(counts[i] < request.need() for (request, _), counts in zip(groups, cores))]
    return tuple(candidates), tuple(excluded)


def host_view(host: str, resources: list[dict]) -> SchedNode:
    """A node from its resources (NODES_SQL, the fields of `oarnodes -J`). Jobs come first: a host with jobs is busy (or draining)
    whatever state its resources are in."""
    states = {r.get("state") for r in resources}
    busy = sum(1 for r in resources if r.get("jobs"))
    drained = all(str(r.get("drain", "NO")).upper() == "YES" for r in resources)
    absent = states == {"Absent"}
    free = sum(1 for r in resources if r.get("state") == "Alive" and not r.get("jobs"))
    since = max((float(r.get("last_job_date") or 0) for r in resources), default=0.0) or None
    if busy:
        return SchedNode(host, SchedState.DRAINING if drained else SchedState.BUSY, free, since, marked_absent=absent)
    if states == {"Alive"}:
        return SchedNode(host, SchedState.DRAINED if drained else SchedState.IDLE, free, since)
    if "Suspected" in states:
        # OAR's own node checker (finaud, from inside the cluster's network) found it unreachable.
        return SchedNode(host, SchedState.UNKNOWN, 0, responding=False)
    if states == {"Dead"}:
        # Set by an administrator (OAR itself only with DEAD_SWITCH_TIME, unset here): theirs, not ours.
        return SchedNode(host, SchedState.HELD, 0, reason="Dead", held=True)
    return SchedNode(host, SchedState.UNKNOWN, 0, marked_absent=absent)


class OarScheduler:
    name = "oar"
    user_commands: tuple[str, ...] = ("oarsub", "oarstat", "oarnodes", "oardel")

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
        return ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script, str(self.conf), str(self.hosts), str(self.ssh)]

    def user_added(self, user: str) -> None:
        """OAR needs nothing: it records every job with its user in its own database (`oarstat --accounting`)."""

    def history(self) -> str:
        raise SchedulerError("replaying an OAR cluster's history is not done yet: export it with `oarstat --accounting` for now")

    def data(self) -> list[Path]:
        # Not kept yet: the next `up` registers OAR's resources again in a fresh database.
        return []

    def _cmd(self, argv: list[str], timeout: float = 30) -> str:
        try:
            return run(self.provider.enter() + self.wrap() + argv, timeout=timeout).stdout
        except (CommandError, subprocess.TimeoutExpired) as exc:
            raise SchedulerError(str(exc)) from None

    def _connects(self, address: str, port: int, greeting: str = "") -> bool:
        """Whether `address:port` answers, checked from inside the cluster's network (see CONNECT_CHECK)."""
        argv = self.provider.enter() + ["bash", "-c", CONNECT_CHECK, "connect-check", address, str(port), greeting]
        try:
            return run(argv, check=False, timeout=CONNECT_TIMEOUT).returncode == 0
        except subprocess.TimeoutExpired:
            return False

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
        # Node host keys are per node and throwaway: known_hosts would only ever hold stale entries. OAR logs
        # into a node twice to start a job and once to end it: OpenSSH 9.2's default key exchange
        # (sntrup761x25519, post-quantum) costs ~90 ms of each login here against ~130 ms for all the rest;
        # x25519 alone is what OpenSSH used until 9.0, and these connections never leave the cluster's network.
        (self.ssh / "config").write_text(
            "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            "  KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org\n"
        )
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
            # Almighty schedules on a submission, a job's end or a node's change only if this many seconds
            # (whole: Perl's time()) passed since its last pass, else at the next command or its 10 s tick
            # (the controller's nudges come at the next second: `nudge`). Not 0: each pass dates OAR's plan a
            # second past the later of the clock and the last pass's date, and a pass finding that date 2 s
            # ahead sleeps 2 s first; with passes back to back, a job waited 3 s beside an idle node.
            "SCHEDULER_MIN_TIME_BETWEEN_2_CALLS": "1",
            # Nodes are containers with their own cgroup: without CPUSET_PATH OAR's resource manager (still run
            # over ssh at each job's start and end) makes no cpuset (jobs are confined by the node container)
            # but installs the job's oarsh keys, and the cpuset field still names each job's cpuset, which
            # oarsh uses to check a connection belongs to the user's job.
            "JOB_RESOURCE_MANAGER_PROPERTY_DB_FIELD": "cpuset",
            "CPUSET_PATH": None,
            "FINAUD_FREQUENCY": "30",
            # OAR checks a job's nodes before launching it, and finaud every node: sentinelle.pl logs in over
            # ssh to run `true` (0.3 s of every job start here); a connection to each node's sshd says the same
            # of a container (a login that then fails fails the launch, and OAR suspects the node then).
            "PINGCHECKER_SENTINELLE_SCRIPT_COMMAND": None,
            "PINGCHECKER_GENERIC_COMMAND": str(self.sched / "pingchecker"),
            "OPENSSH_CMD": f"/usr/bin/ssh -p {SSHD_PORT} -e none -F /var/lib/oar/.ssh/config",
            "OARSH_OPENSSH_DEFAULT_OPTIONS": "-e none -oProxyCommand=none -oPermitLocalCommand=no -F /var/lib/oar/.ssh/config",
        }
        template = Path("/etc/oar/oar.conf").read_text()
        self.conf.write_text(render_oar_conf(template, overrides))
        checker = self.sched / "pingchecker"
        checker.write_text(PINGCHECKER.format(port=SSHD_PORT))
        checker.chmod(0o755)
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
        argv = ["setpriv", f"--reuid={uid.pw_uid}", f"--regid={uid.pw_gid}", "--clear-groups", str(_pg_bin() / "psql"), "-q", "-X", "-v", "ON_ERROR_STOP=1",
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
        # A fresh database: the properties cannot exist yet.
        self._cmd(["oarproperty", "-a", "host", "-c"])
        self._cmd(["oarproperty", "-a", "nodeset", "-c"])
        self._cmd(["oarproperty", "-a", "cpu"])
        self._cmd(["oarproperty", "-a", "core"])
        core = 0
        for i, ns in enumerate(self.config.nodesets):
            for n, node in enumerate(ns.node_names()):
                for _ in range(ns.cpus):
                    self._cmd(
                        ["oarnodesetting", "-a", "-s", "Absent", "-h", node, "-p", f"host={node}", "-p", f"nodeset={ns.name}",
                         "-p", f"cpu={i * 10000 + n}", "-p", f"core={core}"]
                    )
                    core += 1
        self.mark_absent(self.config.all_nodes())

    def _responding(self) -> bool:
        """The database answers OAR's tools and Almighty listens where nodes call it back."""
        try:
            self._cmd(["oarstat", "-J"], timeout=10)
        except SchedulerError:
            return False
        return self._connects(self.provider.head_address(), SERVER_PORT)

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

    def nodes_starting(self, nodes: list[str]) -> None:
        """Nothing to prepare: each node's resources stay Absent until `node_started`."""

    def node_started(self, node: str, given_up: Callable[[], bool]) -> None:
        """Set the node's resources Alive once its sshd greets, which OAR needs to launch jobs there. Waits
        at most the controller's resume_timeout (a node that has not registered by then is given up on),
        and not once the controller gave it up: Alive would undo its Absent, and a job could land there."""
        timeout = self.config.controller.resume_timeout
        deadline = time.monotonic() + timeout
        while not self.sshd_answers(node):
            if time.monotonic() >= deadline:
                raise SchedulerError(f"{node}: sshd did not answer on port {SSHD_PORT} within {timeout:.0f} s")
            if given_up():
                return
            time.sleep(0.05)
        if not given_up():
            self._cmd(["oarnodesetting", "-s", "Alive", "-h", node])

    def sshd_answers(self, node: str) -> bool:
        return self._connects(self.provider.address(node), SSHD_PORT, "SSH-")

    def nudge(self, idle: list[str]) -> float:
        """Tell Almighty what oarsub tells it ("Qsub" on its command port), from inside the cluster's network,
        once a pass would run. Almighty runs at most one pass per second of the clock
        (SCHEDULER_MIN_TIME_BETWEEN_2_CALLS 1, whole seconds), and one asked for sooner only when a command
        comes after that second, or at its 10 s tick. Each pass dates OAR's plan one second past its start
        (oar_meta_sched's "gantt date"): until then, returns the time left, and the controller asks then."""
        dated = self._select(GANTT_DATE_SQL).strip()
        now = time.time()
        if dated and int(dated) > now:
            return int(dated) - now + 0.01
        argv = self.provider.enter() + [
            "bash", "-c", 'exec 3<>"/dev/tcp/$0/$1" && printf "Qsub\\n" >&3', self.provider.head_address(), str(SERVER_PORT),
        ]
        try:
            run(argv, check=False, timeout=CONNECT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass  # Almighty not answering: its own 60 s pass still comes; `running` reports a dead server
        return 0.0

    def release(self, nodes: list[str], reason: str) -> None:
        for node in nodes:
            self._cmd(["oarnodesetting", "-d", "on", "-h", node])

    # ----- observation -----

    def changes(self) -> object:
        # Every oarsub, job start and end is a commit to OAR's database, and each commit writes PostgreSQL's
        # current WAL segment: its mtime is the cheapest sign (oar.log, at LOG_LEVEL 2, logs no oarsub, so a
        # new job waited up to the controller's 2 s resync: cold starts 3.0 s). The log's size stays, for
        # what Almighty logs. Tried before, when each observation ran `oarnodes` (~1 s of Perl), waking on
        # every commit competed with OAR for CPU; an observation is now two queries.
        try:
            wal = max((e.stat().st_mtime_ns for e in os.scandir(self.pgdata / "pg_wal") if e.is_file()), default=0)
            return (wal, (self.paths.logs / "oar.log").stat().st_size)
        except OSError:
            return None

    def observe(self) -> SchedulerView:
        by_host: dict[str, list[dict]] = {}
        for r in json.loads(self._select(NODES_SQL) or "[]"):
            by_host.setdefault(r["host"], []).append(r)
        nodes = {host: host_view(host, rs) for host, rs in by_host.items() if host in self._nodeset_of}
        return SchedulerView(nodes, self._jobs())

    def _select(self, sql: str, keep_going: bool = False) -> str:
        """The rows (`a|b|c` lines) SQL returns, run as OAR's read-only database role. With `keep_going`
        a statement that fails is skipped and the next one runs: the caller tells it by its missing rows."""
        oar = pwd.getpwnam("oar")
        argv = [
            # The server's own psql, not /usr/bin/psql: that is postgresql-common's Perl wrapper choosing a
            # version, 20 ms of each of the two or three queries an observation makes.
            "setpriv", f"--reuid={oar.pw_uid}", f"--regid={oar.pw_gid}", "--clear-groups", str(_pg_bin() / "psql"), "-X", "-q", "-A", "-t",
            "-v", f"ON_ERROR_STOP={0 if keep_going else 1}", "-h", str(self.pgsock), "-U", "oar_ro", "-d", "oar",
        ]
        script = "SET default_transaction_read_only = on;\nSET statement_timeout = '5s';\n" + sql
        try:
            return run(argv, input=script, timeout=30).stdout
        except (CommandError, subprocess.TimeoutExpired) as exc:
            raise SchedulerError(f"cannot read OAR's database: {exc}") from None

    def _jobs(self) -> list[Job]:
        rows = json.loads(self._select(JOBS_SQL) or "[]")
        filters = sorted({job_filter(row, group) for row in rows if row["state"] not in RUNNING for group in row["groups"] or []})
        eligible = self._eligible(filters)
        return [self._job(row, eligible) for row in rows]

    def _eligible(self, filters: list[str]) -> dict[str, dict[str, int]]:
        """For each resource filter, its matching cores per host, as PostgreSQL evaluates it for OAR's own
        scheduler (which never uses Dead resources; Absent ones are the nodes Accordion may start). A filter
        that fails to evaluate (a statement timeout) is left out."""
        if not filters:
            return {}
        # Each statement starts with a marker row, so that a filter matching nothing is told from one that
        # failed; the newline ends any `--` comment in the expression before OAR's own text would.
        sql = "\n".join(
            f"SELECT {k}, '', 0 UNION ALL (SELECT {k}, host, count(*) FROM resources WHERE state <> 'Dead' AND {f}\nGROUP BY host);"
            for k, f in enumerate(filters)
        )
        found: dict[str, dict[str, int]] = {}
        for line in self._select(sql, keep_going=True).splitlines():
            m = re.fullmatch(r"(\d+)\|([^|]*)\|(\d+)", line)
            if m and int(m.group(1)) < len(filters):
                cores = found.setdefault(filters[int(m.group(1))], {})
                if m.group(2):
                    cores[m.group(2)] = int(m.group(3))
        return found

    def _job(self, row: dict, eligible: dict[str, dict[str, int]]) -> Job:
        moldables: dict[int, list[dict]] = {}
        for group in row["groups"] or []:
            moldables.setdefault(group["moldable"], []).append(group)
        default = self.config.nodesets[0].name
        state = row["state"]
        running = state in RUNNING
        hosts = tuple(sorted({h for h in row["hosts"] or [] if h}))
        reason = state
        if running:
            groups = moldables.get(row["assigned"]) or next(iter(moldables.values()), [])
            request = combine([parse_levels(g["levels"] or []) for g in groups] or [Request(1, 1)])
            nodesets = tuple(ns.name for ns in self.config.nodesets if any(self._nodeset_of.get(h) == ns.name for h in hosts))
            excluded: tuple[str, ...] = ()
        else:
            # Its alternative requests (`-l ... -l ...`): the first that some node set can hold.
            options = []
            for groups in moldables.values():
                requests = [parse_levels(g["levels"] or []) for g in groups]
                where = [eligible.get(job_filter(row, g)) for g in groups]
                options.append((combine(requests), *place(list(zip(requests, where)), self.config.nodesets)))
            request, nodesets, excluded = next((o for o in options if o[1]), options[0] if options else (Request(1, 1), (), ()))
            if row["blocked"]:
                reason = f"{state}: dependency on an unfinished job"
            elif not nodesets:
                reason = f"{state}: no node set can hold it"
        return Job(
            id=str(row["id"]),
            nodeset=nodesets[0] if nodesets else default,
            nodes=request.nodes,
            cpus_per_node=request.cpus_per_node,
            running=running,
            submit_time=float(row["submitted"] or 0),
            wants_resources=state == "Waiting" and not row["blocked"] and bool(nodesets),
            node_names=hosts,
            reason=reason,
            exclusive=request.exclusive,
            nodesets=nodesets,
            cpus=request.cpus,
            excluded=excluded,
        )

