"""Never kill a job, never strand one: real Slurm in the states production produces (issue 11).

Each test here failed on the code before the fix (see the issue): busy nodes deleted after a slurmctld restart
or a missed ping, drains by others counted as capacity, arrays scaled one node per step, job shapes read in
part, failed names never retried, a failed listing read as "no containers".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.live.cluster import node_dirs, runtime_wrapper, wait_for

SPOOL = "/var/spool/slurmd"
BATCH_STEP = 4294967291  # Slurm's step id of a batch script (SLURM_BATCH_SCRIPT)
DONE = {"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def created(c) -> dict[str, float]:
    """node -> creation time of its container (a recreated node has a new one)."""
    return {p.name: float((p / "created").read_text()) for p in node_dirs(c.name) if (p / "created").exists()}


def requested(c, after: float = 0.0) -> list[str]:
    return [e["node"] for e in c.events() if e["kind"] == "requested" and e["ts"] >= after]


def gone_events(c, node: str) -> list[dict]:
    return [e for e in c.events() if e.get("node") == node and e["kind"] in ("removed", "failed", "lost", "draining")]


def run_long_enough(c, job: str, seconds: float) -> str:
    """Wait until the job has run `seconds` and slurmctld has saved it as running; its node."""
    c.wait_job(job, {"RUNNING"}, 30)
    running_at = time.time()
    state = Path("/var/lib/accordion") / c.name / "scheduler" / "state" / "job_state"
    wait_for(lambda: state.exists() and state.stat().st_mtime > running_at, 20, "slurmctld to save the running job")
    time.sleep(max(0.0, seconds - (time.time() - running_at)))
    return c.job(job)["NodeList"]


def slurmd_pid(c, node: str) -> int:
    """The node's slurmd, found through its own container (other clusters may have a node of the same name)."""
    in_node = subprocess.run(["runc", "--root", f"/run/accordion/{c.name}/runc", "ps", "--format", "json", node],
                             capture_output=True, text=True, check=True).stdout
    pids = [p for p in json.loads(in_node) if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"/usr/sbin/slurmd\0")]
    assert len(pids) == 1, pids
    return int(pids[0])


ONE_SET = {"nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 2, "cpus": 1, "memory_mb": 256, "idle_timeout": 60}],
           "controller": {"resume_timeout": 4}}


def test_slurmctld_killed_under_a_job_older_than_resume_timeout(make_cluster):
    c = make_cluster(ONE_SET)
    job = c.sbatch("sleep 25; echo survived", "-N1", name="long")
    node = run_long_enough(c, job, 8)  # twice resume_timeout: a node judged by its age would be given up
    before = created(c)[node]
    pid = int((Path("/run/accordion") / c.name / "pids" / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: any("server restarted" in e.get("reason", "") for e in c.events()), 30, "slurmctld restarted")
    assert c.wait_job(job, DONE, 60) == "COMPLETED"
    info = c.job(job)
    assert info["JobId"] == job and info["Restarts"] == "0" and info["NodeList"] == node
    assert "survived" in (c.shared / f"slurm-{job}.out").read_text()
    assert created(c)[node] == before and gone_events(c, node) == []


def test_slurmd_stopped_15_s_under_a_job(make_cluster):
    c = make_cluster(ONE_SET)
    job = c.sbatch("sleep 60; echo survived", "-N1", name="paused")
    node = run_long_enough(c, job, 6)
    before = created(c)[node]
    slurmd = slurmd_pid(c, node)
    os.kill(slurmd, signal.SIGSTOP)
    flags = set()
    try:
        # At least 15 s, and until Slurm has missed a ping (`*`), then at once. With SlurmdTimeout=30 and
        # MessageTimeout=10, slurmctld pings a node silent for 10 s at its next cycle (every 10 s) and marks it
        # `*` when the ping times out: 20-30 s after the node's last message, which came before the stop. It
        # sets it down (and would requeue the job) 40 s or more after that message, so `*` always comes first;
        # the bound of 40 s from the stop only keeps a broken cluster from hanging the test.
        stopped = time.monotonic()
        while time.monotonic() - stopped < 15 or (not any(f.endswith("*") for f in flags) and time.monotonic() - stopped < 40):
            flags.add(c.sh(f"sinfo -h -n {node} -o %t").strip())
            time.sleep(0.5)
    finally:
        os.kill(slurmd, signal.SIGCONT)
    assert any(f.endswith("*") for f in flags), f"slurmd was never reported not responding: {flags}"
    assert c.wait_job(job, DONE, 60) == "COMPLETED"
    assert c.job(job)["Restarts"] == "0"
    assert created(c)[node] == before and gone_events(c, node) == []


def test_a_job_whose_script_slurmd_deletes_as_it_starts_runs_again(make_cluster):
    """Slurm 22.05's slurmd deletes a batch job's script when it lists its steps (slurmctld's periodic
    registration request, `scontrol show slurmd`) while that job's step has bound its socket and does not
    listen yet; the job failed with exit code 2 without having run (1 in ~8,000 starts of a 280-node burst).
    Made certain here: the steps' listen() is held 10 s (strace's fault injection on slurmd and what it
    starts), and the node lists its steps within those 10 s."""
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "n", "min_nodes": 1, "max_nodes": 1, "cpus": 1,
                                    "memory_mb": 256, "idle_timeout": 600}]})
    node = "n-0"
    wait_for(lambda: c.node_states().get(node) == "idle", 30, "the node idle")
    runc = ["runc", "--root", f"/run/accordion/{c.name}/runc"]
    slurmd = slurmd_pid(c, node)
    strace = subprocess.Popen(["timeout", "90", "strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=listen",
                               "-e", "inject=listen:delay_enter=10s", "-p", str(slurmd)])
    try:
        traced = Path(f"/proc/{slurmd}/status")
        wait_for(lambda: "TracerPid:\t0\n" not in traced.read_text(), 10, "strace attached to slurmd")
        out = c.shared / "lost.out"
        # As a user, not root: the guard requeues the job with the owner's own rights.
        job = c.sh(f"su nobody -s /bin/sh -c 'sbatch --parsable -o {out} --wrap=\"echo ran; id -un\"'").strip()
        socket = Path(f"/proc/{slurmd}/root{SPOOL}/{node}_{job}.{BATCH_STEP}")
        wait_for(socket.exists, 20, "the batch step's socket")
        subprocess.run([*runc, "exec", node, "scontrol", "show", "slurmd"], capture_output=True, check=True, timeout=20)
        assert strace.poll() is None, "strace ended before the node listed its steps"
    finally:
        strace.terminate()
        try:
            strace.wait(10)
        except subprocess.TimeoutExpired:
            strace.kill()
            strace.wait()
    log = Path("/var/lib/accordion") / c.name / "logs" / f"{node}.log"
    assert f"Purging vestigial job script {SPOOL}/job{int(job):05d}/slurm_script" in log.read_text(), log.read_text()[-2000:]
    # Requeued by the guard, not failed; Slurm holds a requeued job for its credential lifetime (120 s), which
    # is not what this test is about.
    wait_for(lambda: c.job(job).get("Restarts") == "1" and c.job_state(job) == "PENDING", 30, "the job requeued")
    # The guard's word, in the job's output until its second run replaces it.
    assert "accordion: slurmd deleted this job's script before it ran (a Slurm 22.05 race): requeued" in out.read_text()
    c.sh(f"scontrol update jobid={job} StartTime=now")
    assert c.wait_job(job, DONE, 60) == "COMPLETED"
    assert out.read_text().split() == ["ran", "nobody"]


def test_drains_by_an_administrator_are_theirs(make_cluster):
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 3, "cpus": 1, "memory_mb": 256, "idle_timeout": 600}]})
    busy_job = c.sbatch("sleep 15", "-N1", name="busy")
    idle_job = c.sbatch("true", "-N1", name="short")
    c.wait_job(busy_job, {"RUNNING"}, 30)
    c.wait_job(idle_job, DONE, 30)
    busy, idle = c.job(busy_job)["NodeList"], c.job(idle_job)["NodeList"]
    assert busy != idle and wait_for(lambda: c.node_states().get(idle) == "idle", 10, "the idle node")
    # A drain, and `state=fail` (no new job, the running one goes on; read as idle capacity before).
    c.sh(f"scontrol update nodename={idle} state=drain reason='maintenance by admin'")
    c.sh(f"scontrol update nodename={busy} state=fail reason='maintenance by admin'")
    t0 = time.time()
    job = c.sbatch("hostname", "-N1", name="after")
    # Neither drained node is capacity: a third node starts for the new job, which runs there.
    assert c.wait_job(job, DONE, 30) == "COMPLETED"
    third = c.job(job)["NodeList"]
    assert third not in (busy, idle) and requested(c, t0) == [third]
    # The idle one's container goes at once, the busy one's once its job has ended; the names stay drained.
    wait_for(lambda: idle not in c.containers(), 15, "the drained idle node's container removed")
    assert busy in c.containers() and c.job_state(busy_job) == "RUNNING"
    assert c.wait_job(busy_job, DONE, 30) == "COMPLETED"
    wait_for(lambda: busy not in c.containers(), 15, "the drained busy node's container removed")
    reasons = c.sh("sinfo -R -h -o '%n|%E'")
    for node in (busy, idle):
        assert f"{node}|maintenance by admin" in reasons, reasons
    st = c.status()
    compute = st["nodesets"][0]
    assert compute["node_states"][busy] == compute["node_states"][idle] == "held"
    assert compute["held"] == {busy: "maintenance by admin", idle: "maintenance by admin"}
    # Resumed by the administrator: the names are usable again.
    c.sh(f"scontrol update nodename={busy},{idle} state=resume")
    c.sh(f"scancel --quiet --nodelist={third} || true")
    t1 = time.time()
    wide = c.sbatch("hostname", "-N3", name="wide")
    assert c.wait_job(wide, DONE, 60) == "COMPLETED"
    assert {busy, idle} <= set(requested(c, t1))


def test_a_reservations_nodes_are_its_jobs_only(make_cluster):
    # A maintenance reservation on absent nodes: a job outside it had them started, and waited while they
    # idled (Slurm flags a node RESERVED only once it is up); a job of the reservation may have only them.
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 3, "cpus": 1, "memory_mb": 128, "idle_timeout": 60}]})
    c.sh("scontrol create reservation reservationname=maint starttime=now duration=60 nodes=n-1,n-2 users=root flags=maint,ignore_jobs")
    t0 = time.time()
    outside = c.sbatch("hostname", "-N2", name="outside")  # n-0 alone is left to it: it waits for the end
    inside = c.sbatch("hostname", "--reservation=maint", name="inside")
    assert c.wait_job(inside, DONE, 30) == "COMPLETED"
    assert c.job(inside)["NodeList"] in ("n-1", "n-2") and requested(c, t0) == [c.job(inside)["NodeList"]]
    assert c.job_state(outside) == "PENDING"
    c.sh(f"scancel {outside}; scontrol delete reservation=maint")


def test_a_reservation_to_come_keeps_off_its_nodes_the_jobs_that_would_run_into_it(make_cluster):
    # A maintenance on n-0 in 10 minutes: Slurm starts no 30-minute job there. Accordion started n-0 for one,
    # fitted the job onto it while it idled, and started nothing else: the job waited for the maintenance.
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 2, "cpus": 1, "memory_mb": 128, "idle_timeout": 60}]})
    c.sh("scontrol create reservation reservationname=later starttime=now+10minutes duration=60 nodes=n-0 users=root flags=maint")
    t0 = time.time()
    long = c.sbatch("hostname", "-t", "30", name="long")
    assert c.wait_job(long, DONE, 30) == "COMPLETED"
    assert c.job(long)["NodeList"] == "n-1" and requested(c, t0) == ["n-1"]
    c.sh("scontrol delete reservation=later")


def test_array_asks_for_all_its_nodes_at_once(make_cluster):
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 8, "cpus": 1, "memory_mb": 128, "idle_timeout": 2}]})
    t0 = time.time()
    array = c.sbatch("sleep 4", "--array=1-8", "-o", "/dev/null", name="array")
    wait_for(lambda: len(requested(c, t0)) == 8, 15, "8 nodes requested")
    first = [e["ts"] for e in c.events() if e["kind"] == "requested" and e["ts"] >= t0]
    # One plan asked for all of them (before, one node per step: 114 of 280 after 214 s).
    assert max(first) - min(first) < 1.0, first
    running = wait_for(lambda: (n := c.sh(f"squeue -h -j {array} -t R | wc -l").strip()) == "8" and n, 30, "8 tasks running")
    assert running == "8"


def test_a_large_job_waiting_for_busy_nodes_is_not_passed_by_a_longer_one(make_cluster):
    """Slurm reserves nodes for the oldest job that cannot start only among nodes in service (absent ones are
    down to it): with too few up it reserves none, and a later job too long to finish before the large one
    could start is let pass it, on a node started for it, for as long as such jobs come (on the shared traces
    jobs of over half the machine waited 1.5 to 3.4 times as long as with every node up; README, "Policies
    compared"). The policy keeps as many nodes in service as that job needs, so Slurm reserves them."""
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 4, "cpus": 1, "memory_mb": 128, "idle_timeout": 60}]})
    first = c.sbatch("sleep 15", "-N2", "-t", "1", name="first")
    c.wait_job(first, {"RUNNING"}, 30)
    large = c.sbatch("true", "-N4", "-t", "1", name="large")
    # Its nodes up first: while some still start, Slurm reads the large job's nodes as "not available" rather
    # than busy and may start a later job in the meantime (a window left open: see the README).
    wait_for(lambda: len(c.containers()) == 4, 20, "4 nodes in service for the large job")
    later = c.sbatch("sleep 30", "-N1", "-t", "5", name="later")
    assert c.wait_job(large, DONE, 90) == "COMPLETED"
    # Before, the later job ran at once on a node started for it, and the large one waited for it to end.
    assert c.job_state(later) in {"PENDING", "CONFIGURING", "RUNNING"}, c.job(later)
    assert c.job(large)["StartTime"] <= c.job(later).get("StartTime", ""), (c.job(large), c.job(later))
    assert c.wait_job(later, DONE, 60) == "COMPLETED"


# ----- job shapes, each asserting exactly which nodes start -----

SHAPES = {
    "nodesets": [
        {"name": "small", "name_base": "s", "max_nodes": 4, "cpus": 1, "memory_mb": 256, "idle_timeout": 1},
        {"name": "big", "name_base": "b", "max_nodes": 2, "cpus": 4, "memory_mb": 1024, "idle_timeout": 1},
        {"name": "wide", "name_base": "w", "max_nodes": 2, "cpus": 2, "memory_mb": 1024, "idle_timeout": 1},
    ],
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    import uuid

    from tests.live.cluster import LiveCluster

    c = LiveCluster(f"sh-{uuid.uuid4().hex[:6]}", SHAPES, tmp_path_factory.mktemp("shapes"))
    c.up()
    yield c
    c.down()


def quiet(c) -> float:
    """No job and no node left from the previous test; the time from which to count requests."""
    c.sh("scancel --quiet --user=root || true")
    wait_for(lambda: not c.containers(), 30, "every node removed")
    return time.time()


def starts_for(c, t0: float, expect: set[str], settle: float = 3.0) -> set[str]:
    wait_for(lambda: set(requested(c, t0)) >= expect, 20, f"{sorted(expect)} requested")
    time.sleep(settle)  # and nothing else is asked for
    return set(requested(c, t0))


def test_memory_is_fitted(shapes):
    c = shapes
    t0 = quiet(c)
    first = c.sbatch("sleep 20", "-p", "wide", "-c1", "--mem=800", name="mem1")
    c.wait_job(first, {"RUNNING"}, 30)
    assert set(requested(c, t0)) == {"w-0"}
    t1 = time.time()
    # A CPU is free on w-0, but not 500 MB: a second node starts at once.
    second = c.sbatch("sleep 1", "-p", "wide", "-c1", "--mem=500", name="mem2")
    assert starts_for(c, t1, {"w-1"}) == {"w-1"}
    c.wait_job(second, {"RUNNING", "COMPLETED"}, 30)
    assert c.job(second)["NodeList"] == "w-1"


def test_required_node_is_started_by_name(shapes):
    c = shapes
    t0 = quiet(c)
    job = c.sbatch("hostname", "-p", "small", "-w", "s-2", name="named")
    assert starts_for(c, t0, {"s-2"}) == {"s-2"}
    assert c.wait_job(job, DONE, 30) == "COMPLETED" and c.job(job)["NodeList"] == "s-2"


def test_excluded_nodes_are_never_started_for_it(shapes):
    c = shapes
    t0 = quiet(c)
    job = c.sbatch("hostname", "-p", "small", "-N2", "--exclude=s-0,s-1", name="excl")
    assert starts_for(c, t0, {"s-2", "s-3"}) == {"s-2", "s-3"}
    assert c.wait_job(job, DONE, 30) == "COMPLETED"


def test_excluded_idle_node_is_not_capacity(shapes):
    c = shapes
    t0 = quiet(c)
    warm = c.sbatch("true", "-p", "big", name="warm")
    c.wait_job(warm, DONE, 30)
    (idle,) = requested(c, t0)
    other = {"b-0": "b-1", "b-1": "b-0"}[idle]
    t1 = time.time()
    job = c.sbatch("hostname", "-p", "big", f"--exclude={idle}", name="notidle")
    assert starts_for(c, t1, {other}) == {other}
    assert c.wait_job(job, DONE, 30) == "COMPLETED" and c.job(job)["NodeList"] == other


def one_started(c, t0: float, prefix: str) -> str:
    """The one node requested since t0 (waiting until there is one), which must start with `prefix`."""
    wait_for(lambda: requested(c, t0), 20, "a node requested")
    time.sleep(3.0)  # and nothing else is asked for
    started = requested(c, t0)
    assert len(started) == 1 and started[0].startswith(prefix), started
    return started[0]


def test_several_partitions_take_nodes_from_one(shapes):
    c = shapes
    t0 = quiet(c)
    hold = c.sbatch("sleep 20", "-p", "wide", "-N2", "--exclusive", name="fill")
    c.wait_job(hold, {"RUNNING"}, 30)
    t1 = time.time()
    # wide is full: the job takes its node from big, the other partition it names.
    job = c.sbatch("hostname", "-p", "wide,big", "-c2", name="either")
    big = one_started(c, t1, "b-")
    assert c.wait_job(job, DONE, 30) == "COMPLETED" and c.job(job)["NodeList"] == big
    assert set(requested(c, t0)) == {"w-0", "w-1", big}


def test_tasks_spread_by_node_size(shapes):
    c = shapes
    t0 = quiet(c)
    on_small = c.sbatch("srun hostname", "-p", "small", "-n4", name="n4small")
    assert starts_for(c, t0, {"s-0", "s-1", "s-2", "s-3"}) == {"s-0", "s-1", "s-2", "s-3"}
    assert c.wait_job(on_small, DONE, 30) == "COMPLETED"
    t1 = quiet(c)
    on_big = c.sbatch("srun hostname", "-p", "small,big", "-n4", "--exclude=s-0", name="n4either")
    # Only 3 small nodes may take it: 1 big node of 4 CPUs does.
    one_started(c, t1, "b-")
    assert c.wait_job(on_big, DONE, 30) == "COMPLETED"


def test_jobs_not_waiting_for_nodes_start_nothing(shapes):
    c = shapes
    t0 = quiet(c)
    held = c.sbatch("true", "-p", "small", "-H", name="held")
    later = c.sbatch("true", "-p", "small", "--begin=now+1hour", name="later")
    blocker = c.sbatch("true", "-p", "small", "-H", name="blocker")
    dependent = c.sbatch("true", "-p", "small", f"--dependency=afterok:{blocker}", name="dep")
    time.sleep(4)
    assert requested(c, t0) == []
    for job in (held, later, dependent):
        assert c.job_state(job) == "PENDING"
    c.sh(f"scancel {held} {later} {blocker} {dependent}")


# ----- failures -----


def test_failed_starts_back_off_and_capacity_comes_back(make_cluster, monkeypatch, tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    # The first three `runc run` fail, the next ones work.
    body = f'if [[ " $* " == *" run "* ]] && [ "$(ls {faults} | wc -l)" -lt 3 ]; then mktemp -p {faults} >/dev/null; echo "injected: no space" >&2; exit 1; fi'
    monkeypatch.setenv("PATH", f"{runtime_wrapper(tmp_path, body)}:{os.environ['PATH']}")
    c = make_cluster({
        "nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 1, "cpus": 1, "memory_mb": 256, "idle_timeout": 30}],
        # No prepared node: every start is a `runc run` (a prepared one's start is tested in test_cluster_lifecycle).
        "controller": {"max_start_failures": 1, "retry_backoff": 1, "retry_backoff_max": 2, "prepared_nodes": 0},
    })
    job = c.sbatch("hostname", "-N1", name="patient")
    assert c.wait_job(job, DONE, 60) == "COMPLETED"
    failed = [e for e in c.events() if e["kind"] == "failed"]
    assert len(failed) == 3 and all(e["node"] == "n-0" and "injected: no space" in e["reason"] for e in failed)
    assert "retried in 1 s" in failed[0]["reason"] and "retried in 2 s" in failed[2]["reason"]
    assert c.status()["nodesets"][0]["failures"] == {}  # registered: forgotten


def test_failed_listing_deletes_nothing(make_cluster, monkeypatch, tmp_path):
    """The listing reads each node's record of its container's init process; without one it asks runc.
    Here the records are away and runc fails: every step's listing fails, and nothing is removed."""
    broken = tmp_path / "list-fails"
    body = f'if [[ " $* " == *" state "* ]] && [ -e {broken} ]; then echo "injected: listing failed" >&2; exit 1; fi'
    monkeypatch.setenv("PATH", f"{runtime_wrapper(tmp_path, body)}:{os.environ['PATH']}")
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 2, "cpus": 1, "memory_mb": 256, "idle_timeout": 600}]})
    job = c.sbatch("sleep 10; echo survived", "-N2", name="both")
    c.wait_job(job, {"RUNNING"}, 30)
    before = created(c)
    records = [d / "init" for d in node_dirs(c.name) if (d / "init").exists()]
    assert len(records) == 2, records
    broken.touch()
    for r in records:
        r.rename(r.with_suffix(".away"))
    time.sleep(5)  # a few resyncs with a listing that fails
    for r in records:
        r.with_suffix(".away").rename(r)
    broken.unlink()
    assert c.wait_job(job, DONE, 30) == "COMPLETED" and c.job(job)["Restarts"] == "0"
    assert created(c) == before
    kinds = [(e["kind"], e.get("reason", "")) for e in c.events()]
    assert not [k for k in kinds if k[0] in ("removed", "lost", "failed")], kinds
    assert any(k == "controller" and "injected: listing failed" in r for k, r in kinds), kinds
