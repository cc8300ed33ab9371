"""The login node, ordinary users and accounting (issue 12), on one Slurm cluster shared by the module.

- `accordion shell` has a host name of its own, `<cluster>-login`, resolving to the head address in the
  shell and on every node (so tools that advertise the submit host work with their defaults);
- a job of `hpcuser` (`accordion shell --user hpcuser`) runs as hpcuser on an elastic node, writes files
  that are theirs, cannot read a root-only file of the cluster, and hpcuser cannot act as root or as
  another user (Slurm refuses them root's job and node changes);
- accounting: `sacct -j` shows a finished job's state, nodes and elapsed time; `accordion simulate
  --cluster` replays the cluster's own history; no accounting credential is readable by hpcuser and
  MariaDB listens on no TCP port; `accordion down --keep-data` keeps the history for the next `up`.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.live.cluster import ACCORDION, LiveCluster, accordion, wait_for

USER = "hpcuser"
CONFIG = {"nodesets": [{"name": "compute", "name_base": "lg-node", "max_nodes": 2, "cpus": 1, "memory_mb": 256, "idle_timeout": 600}]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LiveCluster(f"lg-{uuid.uuid4().hex[:6]}", CONFIG, tmp_path_factory.mktemp("login"))
    try:
        c.up()
        yield c
    finally:
        c.down()


def as_user(c: LiveCluster, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*ACCORDION, "shell", "-c", c.name, "--user", USER, "--", "bash", "-c", script], capture_output=True, text=True, timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, f"{script!r} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_login_name_resolves_to_the_head_in_the_shell_and_on_nodes(cluster):
    login = f"{cluster.name}-login"
    out = cluster.sh("hostname; getent hosts $(hostname)").split()
    assert out[:2] == [login, "10.77.0.1"], out
    job = cluster.sbatch(f"getent hosts {login} > {cluster.shared}/resolved", name="resolve")
    cluster.wait_job(job, {"COMPLETED"})
    assert (cluster.shared / "resolved").read_text().split()[0] == "10.77.0.1"
    # The host's own name and hosts file are untouched.
    assert login not in Path("/etc/hosts").read_text() and os.uname().nodename != login


def test_hpcuser_job_runs_as_hpcuser_and_cannot_read_root_files(cluster):
    secret = cluster.shared / "root-only"
    secret.write_text("not for users\n")
    secret.chmod(0o600)
    held = cluster.sh("sbatch --parsable -H --wrap true").strip()
    try:
        out = as_user(
            cluster,
            f"sbatch --wait --parsable -o job.out --wrap 'id -un; hostname; cat {secret}; echo read=$?; touch made-by-job' >/dev/null; "
            "cat job.out; stat -c 'owner %U' job.out made-by-job; id -u; "
            # Not root, not another user: su needs root's password; Slurm refuses root's job and its nodes.
            "su -c id root </dev/null >/dev/null 2>&1; echo su=$?; "
            f"scancel {held} 2>&1; echo scancel=$?; "
            "scontrol update nodename=lg-node-1 state=drain reason=mine 2>&1; echo scontrol=$?; "
            f"cat /var/lib/accordion/{cluster.name}/munge/munge.key >/dev/null 2>&1; echo key=$?",
        ).stdout
        lines = out.splitlines()
        assert lines[0] == USER and lines[1].startswith("lg-node-"), out
        assert "Permission denied" in out and "read=1" in out and "not for users" not in out, out
        assert lines.count(f"owner {USER}") == 2, out
        assert str(pwd.getpwnam(USER).pw_uid) in lines, out
        for refused in ("su", "scancel", "scontrol", "key"):
            assert any(line.startswith(f"{refused}=") and line != f"{refused}=0" for line in lines), (refused, out)
        assert cluster.job_state(held) == "PENDING"
        assert (cluster.shared / USER / "made-by-job").owner() == USER
    finally:
        cluster.sh(f"scancel {held}")


def test_sacct_shows_a_finished_job_and_simulate_replays_the_history(cluster):
    job = cluster.sbatch("sleep 2", "-N1", name="acct")
    cluster.wait_job(job, {"COMPLETED"})

    def record():
        out = cluster.sh(f"sacct -j {job} -X -n -P --format State,NodeList,Elapsed").strip()
        return out if out.startswith("COMPLETED") else None

    state, nodes, elapsed = wait_for(record, 30, f"sacct to record job {job}").split("|")
    assert nodes.startswith("lg-node-") and elapsed >= "00:00:02", (nodes, elapsed)
    assert USER in cluster.sh("sshare -a -n -P -o User")
    doc = json.loads(accordion("simulate", "--cluster", cluster.name, "--json", "--policy", "static,accordion").stdout)
    assert doc["policies"]["accordion"]["jobs"] >= 2 and doc["policies"]["static"]["jobs"] == doc["policies"]["accordion"]["jobs"], doc
    assert "cluster: 2 nodes x 1 CPU," in " ".join(doc["workload"]), doc


def test_nudges_are_root_only_hidden_and_left_out_of_the_history(cluster):
    """The controller's nudge (an empty job of a hidden partition, ended at once: its epilog's end makes
    slurmctld schedule now instead of at its next tick) ran, left nothing behind, is root's only, and is
    not part of the history `simulate --cluster` replays."""
    nudges = "sacct -X -n -P -a --starttime 1970-01-02 -r accordion-nudge --format JobID,State"
    for attempt in range(5):  # a job the scheduler starts before the controller sees it needs no nudge
        job = cluster.sbatch("true", name=f"nudged{attempt}")
        cluster.wait_job(job, {"COMPLETED"})
        if cluster.sh(nudges).strip():
            break
    seen = wait_for(lambda: cluster.sh(nudges).splitlines(), 30, "a nudge in sacct")
    assert all(line.split("|")[1] == "COMPLETED" for line in seen), seen
    assert cluster.sh("squeue -a -h -p accordion-nudge") == ""
    assert "accordion-nudge" not in as_user(cluster, "sinfo; scontrol show partition").stdout
    refused = as_user(cluster, "sbatch -p accordion-nudge --wrap true", check=False)
    assert refused.returncode != 0 and "denied" in refused.stderr.lower(), refused.stderr
    from accordion.cluster import Cluster

    scheduler = Cluster.load(cluster.name).scheduler
    history = wait_for(lambda: (h := scheduler.history()) and f"\n{job}|" in h and h, 30, f"job {job} in the history")
    assert "accordion-nudge" not in history, history


def test_no_accounting_credential_readable_by_a_user_and_no_tcp_port(cluster):
    state = Path("/var/lib/accordion") / cluster.name
    dbd = state / "scheduler" / "slurmdbd.conf"
    st = dbd.stat()
    assert st.st_mode & 0o777 == 0o600 and pwd.getpwuid(st.st_uid).pw_name == "slurm"
    assert "StoragePass" not in dbd.read_text()
    # Every file of the cluster that hpcuser can open: none may be a credential or the database.
    # (Not the node roots under nodes/: each is an overlay of the host's whole root.)
    run = Path("/run/accordion") / cluster.name
    files = []
    for root in (state, run):
        for top, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if Path(top, d) != run / "nodes"]
            files += [os.path.join(top, n) for n in names if os.path.isfile(os.path.join(top, n))]
    listing = cluster.shared / "files-to-try"
    listing.write_text("\n".join(files) + "\n")
    out = as_user(cluster, f"while read -r f; do cat \"$f\" >/dev/null 2>&1 && echo \"$f\"; done < {listing}; true").stdout
    readable = set(out.split())
    assert readable and len(readable) < len(files)  # the probe reads what it may, and not all
    assert not {f for f in readable if "/accounting/" in f or "/munge/" in f or f.endswith("slurmdbd.conf")}, readable
    # MariaDB's socket: hpcuser cannot even connect, whatever the user name it claims.
    sock = Path("/run/accordion") / cluster.name / "mysql" / "mysqld.sock"
    for who in ("root", "slurm"):
        proc = as_user(cluster, f"mariadb --no-defaults --socket={sock} -u {who} -e 'select 1'", check=False)
        assert proc.returncode != 0, proc.stdout
    # No TCP socket at all among MariaDB's open files, in whichever network namespace it runs.
    pid = int((Path("/run/accordion") / cluster.name / "pids" / "mariadbd.pid").read_text())
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    tcp = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            tcp.add(f"socket:[{line.split()[9]}]")
    assert not inodes & tcp, inodes & tcp
    assert any(i.startswith("socket:") for i in inodes)  # it does listen: on its UNIX socket


def test_down_keep_data_keeps_the_history_for_the_next_up(cluster):
    job = cluster.sbatch("true", name="kept")
    cluster.wait_job(job, {"COMPLETED"})
    history = "sacct -X -n -P -a --starttime 1970-01-02 --format JobID,State"
    jobs = wait_for(lambda: (out := cluster.sh(history).split()) and f"{job}|COMPLETED" in out and out, 30, f"job {job} in sacct")
    accordion("down", "-c", cluster.name, "--keep-data")
    kept = Path("/var/lib/accordion") / cluster.name / "accounting"
    # Gone as a cluster (what `accordion list` reads), kept as records.
    assert kept.is_dir() and not (kept.parent / "cluster.json").exists()
    assert not (Path("/run/accordion") / cluster.name).exists()
    cluster.up()
    again = wait_for(lambda: cluster.sh(history).split(), 30, "the kept history")
    assert set(jobs) <= set(again), (jobs, again)
    accordion("down", "-c", cluster.name)
    assert not (Path("/var/lib/accordion") / cluster.name).exists()
    # Records kept by a cluster that is down are deleted by a plain `down` of that name.
    cluster.up()
    accordion("down", "-c", cluster.name, "--keep-data")
    accordion("down", "-c", cluster.name)
    assert not (Path("/var/lib/accordion") / cluster.name).exists()
