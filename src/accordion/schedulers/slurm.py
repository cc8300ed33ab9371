"""Slurm adapter: configuration, daemons, node registration and removal, queue and node state.

How nodes come and go (see the README for the measurements behind this choice):
every node a node set may ever have is declared in slurm.conf, so `sinfo` shows the full capacity and
`sbatch` refuses a job larger than a node set at submission (`EnforcePartLimits=ALL`, partition
`MaxNodes`). A node without a container is DOWN with reason "accordion: powered off". When jobs pend for
resources, the controller starts exactly the nodes their shapes need; slurmd registers in well under a
second, `ReturnToService=2` puts the node back in service, and the controller's nudge (an epilog's end,
see `SlurmScheduler.nudge`) makes slurmctld schedule at once rather than at its next once-a-second tick.
Slurm's own power saving (CLOUD nodes, ResumeProgram) was measured on 22.05 to hold jobs in CONFIGURING
for 10-30 s after their nodes are up, which misses the cold-start target by an order of magnitude.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from accordion import daemons
from accordion.config import ClusterConfig
from accordion.errors import SchedulerError
from accordion.model import Job, SchedNode, SchedState, SchedulerView
from accordion.paths import ClusterPaths
from accordion.providers.base import Bind, NodeSpec, Provider
from accordion.sh import CommandError, run, wait_until

REASON_PREFIX = "accordion:"

# Pending reasons that more nodes would cure. Anything else (Dependency, BeginTime, JobHeldUser,
# PartitionDown, ...) is not demand for nodes.
RESOURCE_REASONS = {
    "Resources",
    "Priority",
    "None",
    "ReqNodeNotAvail",
    "NodeDown",
    "PartitionNodes",
    "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions",
    "BadConstraints",
}


def ordered_hostlist(names: list[str]) -> str:
    """`names` as a Slurm host list that expands to them in this order: runs of consecutive numbers ending
    names of one prefix become `prefix[a-b]`, anything else stays as it is. Slurm pairs NodeName's and
    NodeAddr's entries by position and parses no suffix after a range (`n-[0-2].svc`), so ClusterShell's
    NodeSet, which sorts and folds suffixes, cannot write these."""
    runs: list[list[str | int]] = []  # [prefix, first, last], or [name] for a name kept as it is
    for name in names:
        m = re.fullmatch(r"(.*\D)?(0|[1-9]\d*)", name)
        if m is None:
            runs.append([name])
            continue
        prefix, number = m.group(1) or "", int(m.group(2))
        if runs and len(runs[-1]) == 3 and runs[-1][0] == prefix and runs[-1][2] == number - 1:
            runs[-1][2] = number
        else:
            runs.append([prefix, number, number])
    return ",".join(
        str(r[0]) if len(r) == 1 else f"{r[0]}{r[1]}" if r[1] == r[2] else f"{r[0]}[{r[1]}-{r[2]}]" for r in runs
    )


# A partition of every node, hidden and root's only, that `SlurmScheduler.nudge` allocates from; its name
# has a `-`, which node set names cannot (config.NODESET_NAME), so it never meets one.
NUDGE_PARTITION = "accordion-nudge"
# How long after a nudge its node is read as not busy for the nudge's empty job: the job is cancelled at once
# and its epilog ends within tens of milliseconds, seconds on a loaded machine.
NUDGE_GRACE = 5.0
# Waits between the looks of a nudge at a node that has not registered yet (the controller nudges right after
# starting a few nodes for waiting jobs, and runc returns 20-60 ms before slurmd registers): 0.3 s in all, at
# most eight `scontrol show node` (~5 ms of CPU each) per node started.
NUDGE_WAITS = (0.01, 0.01, 0.02, 0.02, 0.04, 0.08, 0.12)
# hwloc plugins slurmd never needs (see `node_spec`).
HWLOC_UNUSED = "hwloc_gl,hwloc_opencl,hwloc_xml_libxml"


def render_slurm_conf(config: ClusterConfig, provider: Provider, paths: ClusterPaths, host: str, accounting: bool = False) -> str:
    sched = paths.scheduler
    if accounting:
        # slurmdbd listens on the head address inside the cluster's network only; the job records are what
        # sacct, sreport and `accordion simulate --cluster` read.
        storage = [
            "AccountingStorageType=accounting_storage/slurmdbd",
            f"AccountingStorageHost={provider.head_address()}",
            f"AccountingStoragePort={DBD_PORT}",
            # For auth/munge this is not a password but the munge socket to sign with (the cluster's own).
            f"AccountingStoragePass={munge_socket(paths)}",
            # Fair share on by default: with several users on a login node, whoever used the cluster least
            # goes first among waiting jobs (sshare shows the shares); age keeps old jobs from starving.
            "PriorityType=priority/multifactor",
            "PriorityWeightFairshare=10000",
            "PriorityWeightAge=1000",
            "PriorityMaxAge=1-0",
        ]
    else:
        storage = ["AccountingStorageType=accounting_storage/none"]
    lines = [
        "# Generated by Accordion from the cluster file; edits are overwritten by `accordion up`.",
        f"ClusterName={config.name}",
        f"SlurmctldHost={host}({provider.head_address()})",
        "SlurmUser=slurm",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket(paths)}",
        f"StateSaveLocation={sched / 'state'}",
        "SlurmdSpoolDir=/var/spool/slurmd",
        f"SlurmctldPidFile={paths.run / 'slurmctld.pid'}",
        "SlurmdPidFile=/run/slurmd.pid",
        f"SlurmctldLogFile={paths.logs / 'slurmctld.log'}",
        "SlurmctldParameters=enable_configless",
        # A node's address is looked up on each connection, not kept from the first: a Pod recreated under
        # the same name (Kubernetes provider, a restarted head) has a new IP.
        "CommunicationParameters=NoAddrCache",
        # Node sizes come from the node set, not from the machine the container runs on.
        "SlurmdParameters=config_overrides",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU_Memory",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        # Slurm never allocates a batch job at submission: its main and backfill loops start it at their
        # next pass. bf_interval=1 (the minimum) and batch_sched_delay=0 make that within a second, which
        # is what bounds warm starts (~0.5 s median here) and most of a cold start.
        "SchedulerParameters=bf_interval=1,batch_sched_delay=0",
        "EnforcePartLimits=ALL",
        # With an epilog, a slurmd reports each job's end once the epilog ran, and that report is what
        # makes slurmctld schedule at once (see SlurmScheduler.nudge); without one it only queues a pass.
        "Epilog=/bin/true",
        "SlurmdTimeout=30",
        "MessageTimeout=10",
        "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none",
        *storage,
        "JobCompType=jobcomp/none",
        # Root here may lack CAP_SYS_RESOURCE: do not try to copy the submitter's limits.
        "PropagateResourceLimits=NONE",
        "MailProg=/bin/true",
        "KillWait=5",
        "MinJobAge=300",
        "",
    ]
    for i, ns in enumerate(config.nodesets):
        # One line per node set, not per node: every Slurm command, slurmd and slurmstepd parses this file,
        # and 280 node lines cost each ~8 ms of CPU more than one (`squeue` 10.6 -> 2.9 ms).
        names = ns.node_names()
        lines.append(
            f"NodeName={ordered_hostlist(names)} NodeAddr={ordered_hostlist([provider.address(n) for n in names])} "
            f"CPUs={ns.cpus} RealMemory={ns.memory_mb} State=UNKNOWN"
        )
        lines.append(
            f"PartitionName={ns.name} Nodes={ordered_hostlist(names)} MaxNodes={ns.max_nodes} "
            f"Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP OverSubscribe=NO "
            # Without a default, a job that names no memory takes the whole node and 1-CPU jobs cannot share.
            f"DefMemPerCPU={ns.memory_mb // ns.cpus}"
        )
    # Above every node set's tier, so that its allocation is granted in the RPC ahead of waiting jobs.
    lines.append(
        f"PartitionName={NUDGE_PARTITION} Nodes=ALL Hidden=YES RootOnly=YES PriorityTier=65533 MaxTime=1 "
        "State=UP OverSubscribe=NO"
    )
    return "\n".join(lines) + "\n"


DBD_PORT = 6819
# Accounts every user's jobs are recorded under (sshare, sreport); `accordion shell --user` adds the user.
DEFAULT_ACCOUNT = "users"


def render_slurmdbd_conf(config: ClusterConfig, provider: Provider, paths: ClusterPaths) -> str:
    """slurmdbd's configuration. No StoragePass: slurmdbd runs as the slurm user and MariaDB authenticates
    it by its socket peer (unix_socket), so there is no database password anywhere."""
    acct = accounting_dir(paths)
    return "\n".join(
        [
            "# Generated by Accordion; edits are overwritten by `accordion up`.",
            "AuthType=auth/munge",
            f"AuthInfo=socket={munge_socket(paths)}",
            # slurmdbd refuses to run unless DbdHost is its host name or localhost; DbdAddr is where it listens.
            "DbdHost=localhost",
            f"DbdAddr={provider.head_address()}",
            f"DbdPort={DBD_PORT}",
            "SlurmUser=slurm",
            f"LogFile={paths.logs / 'slurmdbd.log'}",
            f"PidFile={paths.run / 'slurmdbd.pid'}",
            "StorageType=accounting_storage/mysql",
            # `localhost` makes the MySQL client use its UNIX socket (MYSQL_UNIX_PORT): MariaDB listens on no port.
            "StorageHost=localhost",
            "StorageUser=slurm",
            f"StorageLoc={config.name.replace('-', '_')}_acct_db",
            f"# MariaDB data directory: {acct / 'db'}",
            "",
        ]
    )


def accounting_dir(paths: ClusterPaths) -> Path:
    """The accounting database: kept by `accordion down --keep-data`, reused by the next `up` of that name."""
    return paths.state / "accounting"


def accounting_available() -> bool:
    """slurmdbd and MariaDB come with scripts/setup.sh; a head without them (the Kubernetes controller
    image) runs without accounting, and sacct says so."""
    return all(shutil.which(p, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") for p in ("slurmdbd", "mariadbd", "mariadb-install-db"))


def _tail(log: Path, lines: int = 2) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def munge_socket(paths: ClusterPaths) -> Path:
    return paths.run / "munge" / "munge.socket.2"


def _parse_time(value: str) -> float | None:
    if not value or value in ("None", "Unknown", "N/A"):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


_FIELD = re.compile(r"(\w+)=")


def parse_scontrol_oneliner(line: str) -> dict[str, str]:
    """`scontrol show node -o` lines are `Key=value Key=value ...`; values (Reason) may hold spaces."""
    fields: dict[str, str] = {}
    matches = [m for m in _FIELD.finditer(line) if m.start() == 0 or line[m.start() - 1] == " "]
    for m, nxt in zip(matches, matches[1:] + [None]):
        end = nxt.start() - 1 if nxt is not None else len(line)
        fields[m.group(1)] = line[m.end() : end].strip()
    return fields


def node_view(fields: dict[str, str], has_jobs: bool = False, nudged: bool = False) -> SchedNode:
    """One node's facts from `scontrol show node -o`. Jobs come first: a node with jobs or allocated CPUs
    on it is BUSY (or DRAINING, if Accordion drained it) whatever its other flags say: `*` (a missed ping),
    UNKNOWN (slurmctld just restarted, slurmd not re-registered yet) or DOWN (jobs not requeued yet).
    `nudged`: the controller's nudge (an empty job) was just on it; without a job of its node set (`has_jobs`)
    it is not busy, else the policy would start another node for the job the nudge was for."""
    flags = fields.get("State", "UNKNOWN").upper().split("+")
    base = flags[0].rstrip("*~#!%$@^-")
    responding = "*" not in flags[0] and "NOT_RESPONDING" not in flags and base not in ("DOWN", "UNKNOWN", "FUTURE")
    reason = fields.get("Reason", "")
    ours = reason.startswith(REASON_PREFIX)
    cpus = int(fields.get("CPUTot", "0") or 0)
    alloc = int(fields.get("CPUAlloc", "0") or 0)
    memory = int(fields.get("RealMemory", "0") or 0)
    alloc_mem = int(fields.get("AllocMem", "0") or 0)
    in_use = has_jobs or (not nudged and (alloc > 0 or base in ("ALLOCATED", "MIXED", "COMPLETING") or "COMPLETING" in flags))
    drain = "DRAIN" in flags or base in ("DRAINED", "DRAINING")
    down = base == "DOWN"
    held = (drain or down) and not ours
    if in_use:
        state = SchedState.DRAINING if drain and ours else SchedState.BUSY
    elif drain and not ours:
        state = SchedState.HELD  # an administrator's or Slurm's own drain: theirs to lift
    elif down and not ours:
        state = SchedState.DOWN
    elif drain and not down:
        state = SchedState.DRAINED  # drained by Accordion and empty: ready to remove
    elif responding:
        state = SchedState.IDLE
    else:
        state = SchedState.UNKNOWN
    idle_since = _parse_time(fields.get("LastBusyTime", "")) if state == SchedState.IDLE else None
    marked_absent = down and ours
    stamp = re.search(r"\[[^@\]]*@([0-9T:-]+)\]$", reason)
    absent_since = _parse_time(stamp.group(1)) if marked_absent and stamp else None
    reason = re.sub(r"\s*\[[^\]]*\]$", "", reason).removeprefix(REASON_PREFIX).strip()
    return SchedNode(
        fields.get("NodeName", ""), state, max(0, cpus - alloc), idle_since, reason, marked_absent, absent_since,
        free_mem=max(0, memory - alloc_mem), responding=responding, held=held,
    )


class SlurmScheduler:
    name = "slurm"
    user_commands: tuple[str, ...] = ("sbatch", "srun", "squeue", "sinfo", "sacct")

    def __init__(self, config: ClusterConfig, paths: ClusterPaths, provider: Provider) -> None:
        self.config = config
        self.paths = paths
        self.provider = provider
        self.conf = paths.scheduler / "slurm.conf"
        self._nodeset_of = {n: ns.name for ns in config.nodesets for n in ns.node_names()}
        self._nudged: dict[str, float] = {}  # node -> when `nudge` put its empty job on it (monotonic)
        self._nudged_lock = threading.Lock()  # `nudge` also runs on the start pool, beside `observe`
        # Local clusters only: the Kubernetes head image has no MariaDB (and accounting there is not tested).
        self.accounting = config.provider == "local" and accounting_available()

    # ----- environment for users and for the controller's own calls -----

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def wrap(self) -> list[str]:
        return []

    def _cmd(self, argv: list[str], timeout: float = 20, check: bool = True) -> str:
        env = os.environ | self.env()
        return run(self.provider.enter() + argv, timeout=timeout, env=env, check=check).stdout

    # ----- lifecycle -----

    def setup(self) -> None:
        munge = pwd.getpwnam("munge")
        slurm = pwd.getpwnam("slurm")
        mdir = self.paths.state / "munge"
        mdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = mdir / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(1024))
        for p in (mdir, key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o400)
        sock_dir = munge_socket(self.paths).parent
        sock_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(sock_dir, 0o755)
        os.chown(sock_dir, munge.pw_uid, munge.pw_gid)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        mlog = self._daemon_log("munged.log", munge)
        if daemons.pid_of(self.paths.pids / "munged.pid") is None:
            daemons.spawn(
                [
                    "setpriv", f"--reuid={munge.pw_uid}", f"--regid={munge.pw_gid}", "--clear-groups",
                    "munged", "--foreground", f"--key-file={key}", f"--socket={munge_socket(self.paths)}",
                    f"--pid-file={mdir / 'munged.pid'}", f"--seed-file={mdir / 'munged.seed'}",
                    f"--log-file={mlog}", "--num-threads=2",
                ],
                self.paths.logs / "munged.out",
                self.paths.pids / "munged.pid",
            )
        wait_until(lambda: munge_socket(self.paths).exists(), 10, f"munged did not create its socket; see {mlog}")

        sched = self.paths.scheduler
        (sched / "state").mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(sched, 0o711)
        os.chown(sched / "state", slurm.pw_uid, slurm.pw_gid)
        ctl_log = self._daemon_log("slurmctld.log", slurm)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(render_slurm_conf(self.config, self.provider, self.paths, host, self.accounting))
        if self.accounting:
            self._accounting(slurm)
        if daemons.pid_of(self.paths.pids / "slurmctld.pid") is None:
            daemons.spawn(
                self.provider.enter() + ["slurmctld", "-D", "-f", str(self.conf)],
                self.paths.logs / "slurmctld.out",
                self.paths.pids / "slurmctld.pid",
            )
        # slurmctld resolves every node's address at startup and, in 22.05, retries ~10 s on a name that
        # does not resolve: Pods' DNS names exist only while their Pod does (Kubernetes provider).
        wait_until(self._responding, 30 + 10 * len(self.config.all_nodes()), f"slurmctld did not answer; see {ctl_log}")

    # ----- accounting: MariaDB (UNIX socket only) and slurmdbd, per cluster -----

    @property
    def _mysql_socket(self) -> Path:
        return self.paths.run / "mysql" / "mysqld.sock"

    def _mariadb_args(self) -> list[str]:
        # Small InnoDB files: a cluster's job records are a few MB, and every cluster has its own server.
        return ["--innodb-log-file-size=4M", "--innodb-buffer-pool-size=32M", "--innodb-lock-wait-timeout=900", "--skip-name-resolve"]

    def _sql(self, statement: str) -> str:
        # As root over the socket: root is authenticated by its uid (unix_socket), no password.
        return run(["mariadb", "--no-defaults", f"--socket={self._mysql_socket}", "-u", "root", "-N", "-B", "-e", statement], timeout=30).stdout

    def _accounting(self, slurm: pwd.struct_passwd) -> None:
        mysql = pwd.getpwnam("mysql")
        acct = accounting_dir(self.paths)
        db = acct / "db"
        acct.mkdir(mode=0o700, exist_ok=True)
        # mysqld runs as mysql and must reach its data: the directory above stays root's and traverse-only.
        os.chmod(acct, 0o711)
        if not (db / "mysql").is_dir():
            shutil.rmtree(db, ignore_errors=True)  # a half-made one from an interrupted `up`
            db.mkdir(mode=0o700)
            os.chown(db, mysql.pw_uid, mysql.pw_gid)
            run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={db}", "--user=mysql", "--auth-root-authentication-method=socket",
                 "--skip-test-db", *self._mariadb_args()],
                timeout=120,
            )
        sock_dir = self._mysql_socket.parent
        sock_dir.mkdir(exist_ok=True)
        # Only the slurm user (slurmdbd) and root may even connect.
        os.chown(sock_dir, mysql.pw_uid, slurm.pw_gid)
        os.chmod(sock_dir, 0o750)
        log = self._daemon_log("mariadb.log", mysql)
        if daemons.pid_of(self.paths.pids / "mariadbd.pid") is None:
            daemons.spawn(
                ["mariadbd", "--no-defaults", f"--datadir={db}", f"--socket={self._mysql_socket}", "--skip-networking",
                 "--user=mysql", f"--log-error={log}", f"--pid-file={sock_dir / 'mariadbd.pid'}", *self._mariadb_args()],
                self.paths.logs / "mariadb.out",
                self.paths.pids / "mariadbd.pid",
            )

        def answers() -> bool:
            try:
                self._sql("SELECT 1")
                return True
            except (CommandError, subprocess.TimeoutExpired):
                return False

        try:
            wait_until(answers, 60, "")
        except RuntimeError:
            raise SchedulerError(f"MariaDB did not answer on its socket within 60 s: {_tail(log)}") from None
        database = f"{self.config.name.replace('-', '_')}_acct_db"
        self._sql(
            "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket; "
            f"GRANT ALL ON `{database}`.* TO 'slurm'@'localhost'"
        )
        dbd_conf = self.paths.scheduler / "slurmdbd.conf"
        fd = os.open(dbd_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(render_slurmdbd_conf(self.config, self.provider, self.paths))
        os.chown(dbd_conf, slurm.pw_uid, slurm.pw_gid)
        os.chmod(dbd_conf, 0o600)
        dbd_log = self._daemon_log("slurmdbd.log", slurm)
        if daemons.pid_of(self.paths.pids / "slurmdbd.pid") is None:
            # slurmdbd finds slurmdbd.conf beside SLURM_CONF, and MariaDB's socket through MYSQL_UNIX_PORT.
            daemons.spawn(
                self.provider.enter() + ["slurmdbd", "-D"],
                self.paths.logs / "slurmdbd.out",
                self.paths.pids / "slurmdbd.pid",
                env=os.environ | self.env() | {"MYSQL_UNIX_PORT": str(self._mysql_socket)},
            )

        def clusters() -> str | None:
            try:
                return self._cmd(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"], timeout=10)
            except (CommandError, subprocess.TimeoutExpired):
                return None

        try:
            wait_until(lambda: clusters() is not None, 60, "")
        except RuntimeError:
            # Quoted: a failed `up` removes the cluster's files, its logs included.
            raise SchedulerError(f"slurmdbd did not answer within 60 s: {_tail(dbd_log)} {_tail(self.paths.logs / 'slurmdbd.out')}") from None
        if self.config.name not in (clusters() or "").split():
            self._cmd(["sacctmgr", "-i", "add", "cluster", self.config.name])
        if DEFAULT_ACCOUNT not in self._cmd(["sacctmgr", "-n", "-P", "list", "account", "format=account"]).split():
            self._cmd(["sacctmgr", "-i", "add", "account", DEFAULT_ACCOUNT, "Description=cluster users", "Organization=accordion"])
        self.user_added("root")

    def user_added(self, user: str) -> None:
        """A user of the login node gets an association, so that sshare shows their fair share."""
        if not (self.paths.scheduler / "slurmdbd.conf").is_file():
            return  # a cluster started without accounting
        have = self._cmd(["sacctmgr", "-n", "-P", "list", "user", user, "format=user"]).split()
        if user not in have:
            self._cmd(["sacctmgr", "-i", "add", "user", user, f"account={DEFAULT_ACCOUNT}"])

    def data(self) -> list[Path]:
        return [accounting_dir(self.paths)]

    def history(self) -> str:
        if not (self.paths.scheduler / "slurmdbd.conf").is_file():
            raise SchedulerError(f"cluster {self.config.name!r} runs without accounting (slurmdbd and mariadb-server were not installed)")
        # Every user's allocations since the cluster's first day, in the columns simulator/traces.py reads.
        return self._cmd(
            ["sacct", "--allusers", "--allocations", "--parsable2", "--starttime", "1970-01-02",
             "--partition", ",".join(ns.name for ns in self.config.nodesets),
             "--format", "JobID,Submit,Start,End,Elapsed,NNodes,NCPUS,Timelimit,Partition,State"],
            timeout=60,
        )

    def _daemon_log(self, name: str, owner: pwd.struct_passwd) -> Path:
        """A log file a daemon that drops root writes itself: private (0600) and its own."""
        log = self.paths.logs / name
        log.touch(mode=0o600)
        os.chown(log, owner.pw_uid, owner.pw_gid)
        return log

    def _responding(self) -> bool:
        try:
            self._cmd(["scontrol", "ping"], timeout=5)
            return True
        except (CommandError, OSError, subprocess.TimeoutExpired):
            return False

    def teardown(self) -> None:
        daemons.stop(self.paths.pids / "slurmctld.pid", timeout=15)
        daemons.stop(self.paths.pids / "slurmdbd.pid", timeout=15)
        daemons.stop(self.paths.pids / "mariadbd.pid", timeout=30)
        daemons.stop(self.paths.pids / "munged.pid", timeout=10)

    def running(self) -> bool:
        return daemons.pid_of(self.paths.pids / "slurmctld.pid") is not None

    # ----- nodes -----

    def node_spec(self, node: str) -> NodeSpec:
        ns = self.config.nodeset(self._nodeset_of[node])
        sock_dir = str(munge_socket(self.paths).parent)
        return NodeSpec(
            name=node,
            cpus=ns.cpus,
            memory_mb=ns.memory_mb,
            # -b: report the node as just booted, else slurmctld may wait for a reboot that never comes.
            command=["/usr/sbin/slurmd", "-D", "-b", "-N", node, "--conf-server", self.provider.head_address()],
            # slurmd fetches its configuration (and so AuthInfo) with munge's default socket path.
            binds=[
                Bind(sock_dir, sock_dir, readonly=True, head_only=True),
                Bind(sock_dir, "/run/munge", readonly=True, head_only=True),
                Bind(str(self.paths.shared), str(self.paths.shared), readonly=False),
            ],
            # Nodes that cannot share the head's munged socket run their own with the cluster's key,
            # reachable at the path slurm.conf's AuthInfo names (the node image's entrypoint links it).
            secrets={"/etc/munge-key/munge.key": str(self.paths.state / "munge" / "munge.key")},
            # hwloc's plugins for OpenGL and OpenCL devices and libxml2 XML export load X11, OpenCL, libxml2 and
            # ICU into slurmd (and its job steps), which uses hwloc for CPUs only: 8 of a start's ~13 ms of
            # topology (`slurmd -C`, measured here) and ~3 MB of each node's memory.
            env={"SLURM_AUTH_SOCKET": str(munge_socket(self.paths)), "HWLOC_PLUGINS_BLACKLIST": HWLOC_UNUSED},
        )

    def _update(self, nodes: list[str], *args: str) -> None:
        if nodes:
            self._cmd(["scontrol", "update", f"NodeName={','.join(nodes)}", *args])

    def mark_absent(self, nodes: list[str], reason: str = "powered off") -> None:
        """Tell Slurm these nodes have no container; any job on them is requeued per its policy."""
        if not nodes:
            return
        from ClusterShell.NodeSet import NodeSet as HostList

        # Filtered here, not with `squeue -w`: that resolves the names, and a node whose Pod never got an
        # address (no DNS name) would make it fail.
        gone = set(nodes)
        victims = [
            job
            for job, _, hosts in (line.partition(" ") for line in self._cmd(["squeue", "-h", "-t", "R,CF,CG", "-o", "%i %N"]).splitlines())
            if hosts.strip() and gone & set(HostList(hosts.strip()))
        ]
        # Drained as well as down: with ReturnToService=2 a reply from the dead slurmd still in flight (a
        # ping answered just before it died) would otherwise put the node back in service with no container
        # behind it. The drain flag is lifted only when a new container starts (nodes_starting).
        self._update(nodes, "State=DRAIN", f"Reason={REASON_PREFIX} {reason}")
        self._update(nodes, "State=DOWN", f"Reason={REASON_PREFIX} {reason}")
        # Slurm holds a requeued job back ~2 minutes (BeginTime); its node died, not the job, and a
        # replacement node comes in under a second, so let it run again at once.
        for job in victims:
            if self._cmd(["squeue", "-h", "-j", job, "-t", "PD", "-o", "%i"]).strip():
                self._cmd(["scontrol", "update", f"JobId={job}", "StartTime=now"])

    def nodes_starting(self, nodes: list[str]) -> None:
        self._update(nodes, "State=UNDRAIN")  # one command for all: 280 of them were ~5 % of a burst's CPU

    def node_started(self, node: str) -> None:
        """Nothing to do: slurmd registers itself and ReturnToService=2 puts the node in service."""

    def nudge(self, idle: list[str]) -> float:
        """A scheduling pass now. In Slurm 22.05 a submission, a node registering and every update only
        queue a pass for slurmctld's next once-a-second tick; one event schedules at once: a slurmd reporting
        that a job's epilog finished (`_slurm_rpc_epilog_complete` calls `schedule()`). So: allocate an idle
        node beside the waiting jobs to an empty job of the hidden partition (granted in the RPC; salloc
        runs `true` and ends the job), and its epilog's end starts the waiting jobs ~0.05 s later instead of
        0-1 s (README, "What a cold start waits for"). That node, not any idle one: the empty job resets the
        node's LastBusyTime, which is where its idle timeout counts from, and a job wants this one."""
        node = idle[0]
        for wait in (*NUDGE_WAITS, None):
            # A node just started has not registered yet; it does within tens of milliseconds. Asked of such a
            # node, salloc would be refused, and each refusal stays in the accounting as a FAILED job.
            state = node_view(parse_scontrol_oneliner(self._cmd(["scontrol", "show", "node", "-o", node]))).state
            if state == SchedState.IDLE:
                break
            if state == SchedState.BUSY:
                return 0.0  # it took a job meanwhile: what the nudge was for
            if wait is None:
                return 0.0  # not in service yet: the loop nudges once it sees the node idle
            time.sleep(wait)
        with self._nudged_lock:
            self._nudged[node] = time.monotonic()
        # Not granted (check=False): the node took a job meanwhile, which is what the nudge was for.
        self._cmd(["salloc", "-p", NUDGE_PARTITION, "-w", node, "-t", "1", "--immediate=1", "-J", NUDGE_PARTITION,
                   "--quiet", "true"], timeout=10, check=False)
        return 0.0

    def release(self, nodes: list[str], reason: str) -> None:
        """Stop new jobs landing on the nodes (one command for all); each is removed once `observe` reports
        it DRAINED."""
        self._update(nodes, "State=DRAIN", f"Reason={REASON_PREFIX} {reason}")

    # ----- observation -----

    def changes(self) -> object:
        # slurmctld writes each submitted job's script into StateSaveLocation/hash.N/ during the submit
        # RPC itself, while job_state is only rewritten seconds later: the hash directories' mtimes are
        # the earliest sign of a new or purged job, for a few stat calls instead of two commands.
        state = self.paths.scheduler / "state"
        try:
            return tuple(sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(state) if e.name.startswith(("hash.", "node_state"))))
        except OSError:
            return None

    def observe(self) -> SchedulerView:
        # Both commands at once: each is tens of milliseconds of a job's wait for its first node.
        with ThreadPoolExecutor(max_workers=1) as side:
            node_lines = side.submit(self._cmd, ["scontrol", "show", "node", "-o"])
            jobs = parse_squeue_json(self._cmd(["squeue", "--json"]), [ns.name for ns in self.config.nodesets])
            node_text = node_lines.result()
        with_jobs = {n for j in jobs if j.running for n in j.node_names}
        now = time.monotonic()
        with self._nudged_lock:
            self._nudged = nudged = {n: t for n, t in self._nudged.items() if now - t < NUDGE_GRACE}
        nodes: dict[str, SchedNode] = {}
        for line in node_text.splitlines():
            if line.strip():
                fields = parse_scontrol_oneliner(line)
                name = fields.get("NodeName", "")
                view = node_view(fields, name in with_jobs, name in nudged)
                nodes[view.name] = view
        return SchedulerView(nodes, jobs)


# Job states in which a job holds its nodes.
HOLDING = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING"}


def array_tasks(spec: str) -> int:
    """How many tasks an array's pending record stands for: `1-100%10`, `3,5-9:2`, `7`."""
    count = 0
    for part in spec.split("%")[0].split(","):
        if not part:
            continue
        bounds, _, step = part.partition(":")
        first, _, last = bounds.partition("-")
        count += (int(last) - int(first)) // int(step or 1) + 1 if last else 1
    return count


def _wants_nodes(r: dict[str, object], reason: str, now: float) -> bool:
    """Pending for lack of nodes. Read from the job itself too, not only from its reason: Slurm sets the
    reason at its next scheduling pass, and until then a held job, one with a future begin time or an unmet
    dependency reads like any other (ReqNodeNotAvail, None)."""
    if r.get("priority") == 0:  # held (sbatch -H, scontrol hold)
        return False
    if float(str(r.get("eligible_time") or 0)) > now:  # --begin in the future
        return False
    if "unfulfilled" in str(r.get("dependency") or ""):
        return False
    return reason in RESOURCE_REASONS or reason.split(",")[0] in RESOURCE_REASONS


def parse_squeue_json(text: str, nodesets: list[str]) -> list[Job]:
    """Every job of the node sets Accordion manages, with its shape read in full (squeue --json, OpenAPI
    v0.0.38 on Slurm 22.05): node and CPU counts, memory per node or per CPU, required and excluded nodes,
    every partition it may run in, the pending tasks of an array (one record for all of them) and its
    array throttle (`%N`), and `--exclusive`."""
    from ClusterShell.NodeSet import NodeSet as HostList

    data = json.loads(text)
    records = data.get("jobs", [])
    now = time.time()
    # An array's tasks run as records of their own; its throttle counts them.
    running_tasks: dict[int, int] = {}
    for r in records:
        if r.get("array_job_id") and r.get("array_task_id") is not None and r.get("job_state") in HOLDING:
            running_tasks[r["array_job_id"]] = running_tasks.get(r["array_job_id"], 0) + 1
    jobs = []
    for r in records:
        state = r.get("job_state", "")
        running = state in HOLDING
        if not running and state != "PENDING":
            continue
        mine = tuple(p for p in str(r.get("partition") or "").split(",") if p in nodesets)
        if not mine:
            continue
        reason = str(r.get("state_reason") or "")
        count = 1
        if not running and r.get("array_task_string"):
            count = array_tasks(str(r["array_task_string"]))
            if r.get("array_max_tasks"):
                count = max(0, min(count, int(r["array_max_tasks"]) - running_tasks.get(r["array_job_id"], 0)))
        jobs.append(
            Job(
                id=str(r["job_id"]),
                nodeset=mine[0],
                nodes=max(1, int(r.get("node_count") or 1)),
                cpus_per_node=max(1, int(r.get("minimum_cpus_per_node") or 1), int(r.get("cpus_per_task") or 1)),
                running=running,
                submit_time=float(r.get("submit_time") or 0),
                wants_resources=not running and _wants_nodes(r, reason, now),
                node_names=tuple(HostList(r["nodes"])) if running and r.get("nodes") else (),
                reason=reason,
                exclusive=r.get("shared") == "none",
                nodesets=mine,
                cpus=max(1, int(r.get("cpus") or 1)),
                mem_per_node=int(r.get("memory_per_node") or 0),
                mem_per_cpu=int(r.get("memory_per_cpu") or 0),
                required=tuple(HostList(r["required_nodes"])) if r.get("required_nodes") else (),
                excluded=tuple(HostList(r["excluded_nodes"])) if r.get("excluded_nodes") else (),
                count=count,
            )
        )
    return jobs
