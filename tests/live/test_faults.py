"""Faults the seeds' systems did not survive, injected into a real cluster (loops bounded in count and time)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from tests.live.cluster import accordion, runtime_wrapper, wait_for

DONE = {"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def _controller_pid(c) -> int:
    return int((Path("/run/accordion") / c.name / "pids" / "controller.pid").read_text())


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _restarted(c, old: int, killed: float, within: float = 5.0) -> float:
    """Seconds from the kill until a new controller has observed the cluster (written a status); no command typed."""
    status = Path("/var/lib/accordion") / c.name / "status.json"

    def back() -> bool:
        try:
            pid, ts = _controller_pid(c), json.loads(status.read_text())["ts"]
        except (OSError, ValueError, KeyError):
            return False  # between a controller's exit and the next start: no pid file
        return pid != old and _alive(pid) and ts > killed

    wait_for(back, within, "the controller to run again", interval=0.05)
    return time.time() - killed


def _consistent(c) -> None:
    """Every container is a node Slurm has up (or starting); every node Slurm has up has a container."""
    containers = c.containers()
    slurm_up = {n for n, s in c.sinfo().items() if s not in ("down", "drained", "draining", "unknown")}
    assert slurm_up <= containers, f"Slurm uses nodes without a container: {slurm_up - containers}"
    wait_for(lambda: c.containers() <= set(c.sinfo()), 10, "no container outside the cluster")


def _submit_mix(c, rng: random.Random, count: int, tag: str) -> list[str]:
    jobs = []
    for i in range(count):
        nodes = rng.choice([1, 1, 1, 2])
        cpus = rng.choice([1, 2])
        jobs.append(c.sbatch(f"sleep {rng.choice([0, 0.5, 1, 2])}", f"-N{nodes}", f"-c{cpus}", "-o", "/dev/null", name=f"{tag}{i}"))
    return jobs


def _all_completed(c, jobs: list[str], timeout: float) -> None:
    def states():
        out = c.sh("scontrol show job -o | sed -n 's/.*JobId=\\([0-9]*\\) .*JobState=\\([A-Z_]*\\).*/\\1 \\2/p'")
        return dict(line.split() for line in out.splitlines())

    final = wait_for(lambda: (s := states()) and all(s.get(j) in DONE for j in jobs) and s, timeout, "all jobs to end", interval=1)
    bad = {j: final[j] for j in jobs if final[j] != "COMPLETED"}
    assert not bad, f"jobs that did not complete: {bad}"


def test_controller_sigkilled_repeatedly(make_cluster):
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 3, "cpus": 2, "memory_mb": 256, "idle_timeout": 1}]})
    rng = random.Random(20261122)
    jobs = []
    kills = 0
    restarts = []
    deadline = time.monotonic() + 240
    while kills < 20 and time.monotonic() < deadline:
        jobs += _submit_mix(c, rng, rng.randint(0, 3), f"k{kills}-")
        time.sleep(rng.uniform(0.05, 1.5))  # lands in scale-up, scale-down or idle at random
        pid, killed = _controller_pid(c), time.time()
        os.kill(pid, signal.SIGKILL)
        kills += 1
        # Jobs keep coming while it is down; its supervisor starts it again, nobody types anything.
        jobs += _submit_mix(c, rng, rng.randint(0, 1), f"d{kills}-")
        restarts.append(_restarted(c, pid, killed))
    assert kills == 20
    assert sum(e.get("reason") == "restarted after SIGKILL" for e in c.events()) == 20
    _all_completed(c, jobs, 180)
    _consistent(c)
    # Nothing duplicated: one container per node name, and each counted once by Slurm.
    assert len(c.containers()) == len(set(c.containers()))
    wait_for(lambda: c.containers() == set(), 30, "idle nodes removed after the storm")
    restarts.sort()
    print(f"controller running again {restarts[10]:.2f} s after a SIGKILL (median of 20; max {restarts[-1]:.2f} s)")


def test_controller_sigkilled_is_back_within_5_s_and_a_job_submitted_meanwhile_gets_its_node(make_cluster):
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 2, "cpus": 1, "memory_mb": 256, "idle_timeout": 30}]})
    pid = _controller_pid(c)
    # Frozen first, so that the job is certainly submitted while no controller acts on it.
    os.kill(pid, signal.SIGSTOP)
    job = c.sbatch("echo ran on $(hostname)", "-N1", name="meanwhile")
    time.sleep(1)
    assert c.containers() == set() and c.job_state(job) == "PENDING"
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    back = _restarted(c, pid, killed)
    assert c.wait_job(job, DONE, 30) == "COMPLETED"
    assert "ran on hpc-node-" in (c.shared / f"slurm-{job}.out").read_text()
    after = [e for e in c.events() if e["ts"] >= killed]
    assert {"restarted after SIGKILL", "started"} <= {e.get("reason") for e in after if e["kind"] == "controller"}, after
    assert any(e["kind"] == "requested" for e in after), after
    st = c.status()
    assert (st["controller"], st["supervisor"], st["stale"]) == ("running", "running", False)
    print(f"controller running again {back:.2f} s after a SIGKILL")


def test_killed_with_its_supervisor_the_controller_is_shown_dead_until_up(make_cluster):
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 2, "cpus": 1, "memory_mb": 256, "idle_timeout": 30}]})
    pids = Path("/run/accordion") / c.name / "pids"
    os.kill(int((pids / "supervisor.pid").read_text()), signal.SIGKILL)
    st = c.status()
    assert (st["controller"], st["supervisor"]) == ("running", "dead")
    os.kill(_controller_pid(c), signal.SIGKILL)
    job = c.sbatch("true", "-N1", name="orphan")
    time.sleep(3)
    # Nothing starts it again, and status says so rather than showing the last figures as current.
    st = c.status()
    assert (st["controller"], st["supervisor"], st["stale"]) == ("dead", "dead", True), st
    assert st["nodesets"][0]["pending_jobs"] == 0  # the controller never saw the job: these figures are old
    text = " ".join(accordion("status", "-c", c.name).stdout.split())
    assert "controller dead" in text and "stale" in text, text
    assert c.containers() == set() and c.job_state(job) == "PENDING"
    c.up()  # starts a supervisor, which starts the controller
    assert c.wait_job(job, DONE, 30) == "COMPLETED"
    st = c.status()
    assert (st["controller"], st["supervisor"], st["stale"]) == ("running", "running", False), st


def test_node_killed_under_a_job_is_detected_and_the_job_reruns(make_cluster):
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 2, "cpus": 1, "memory_mb": 256, "idle_timeout": 30}]})
    job = c.sbatch("echo run on $(hostname) >> runs.log; sleep 6", "-N1", "--requeue", name="victim")
    c.wait_job(job, {"RUNNING"}, 30)
    node = c.job(job)["NodeList"]
    runc_root = Path("/run/accordion") / c.name / "runc"
    killed = time.monotonic()
    subprocess.run(["runc", "--root", str(runc_root), "kill", node, "KILL"], check=True)
    wait_for(lambda: any(e["kind"] in ("failed", "lost") and e.get("node") == node for e in c.events()), 10, "the dead node to be noticed")
    detection = time.monotonic() - killed
    assert detection <= 10
    wait_for(lambda: c.sinfo().get(node) in ("down", "drained"), 10, "Slurm to be told")
    state = c.wait_job(job, DONE, 120)
    info = c.job(job)
    assert state == "COMPLETED" and int(info["Restarts"]) >= 1, info
    runs = (c.shared / "runs.log").read_text().splitlines()
    assert len(runs) >= 2, runs
    print(f"node death detected in {detection:.2f} s")


def test_slurmctld_killed_is_restarted_and_busy_nodes_kept(make_cluster):
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 2, "cpus": 1, "memory_mb": 256, "idle_timeout": 2}]})
    job = c.sbatch("sleep 12; echo survived", "-N1", name="long")
    c.wait_job(job, {"RUNNING"}, 30)
    node = c.job(job)["NodeList"]
    # slurmctld saves its job state asynchronously (about 2 s after a change here): a crash before that
    # loses the job whatever Accordion does. Kill it once the running job is on disk.
    state = Path("/var/lib/accordion") / c.name / "scheduler" / "state" / "job_state"
    running_at = time.time()
    wait_for(lambda: state.exists() and state.stat().st_mtime > running_at, 20, "slurmctld to save the running job")
    pid = int((Path("/run/accordion") / c.name / "pids" / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: any("server restarted" in e.get("reason", "") for e in c.events()), 30, "slurmctld restarted by the controller")
    assert node in c.containers()
    assert c.wait_job(job, DONE, 60) == "COMPLETED"
    assert "survived" in (c.shared / f"slurm-{job}.out").read_text()


def test_scale_in_soak(make_cluster):
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 4, "cpus": 2, "memory_mb": 256, "idle_timeout": 1}]})
    rng = random.Random(7)
    jobs = []
    for batch in range(20):
        jobs += _submit_mix(c, rng, 10, f"s{batch}-")
        time.sleep(rng.uniform(0, 2.5))  # gaps long enough for idle nodes to be removed in between
    assert len(jobs) == 200
    _all_completed(c, jobs, 400)
    events = c.events()
    removed = sum(1 for e in events if e["kind"] == "removed")
    assert removed > 0, "the soak never scaled in"
    bad = [e for e in events if e["kind"] in ("lost", "failed")]
    context = [[(round(x["ts"] - events[0]["ts"], 2), x["kind"], x.get("reason", "")) for x in events if x.get("node") == e["node"] and x["ts"] <= e["ts"]][-6:] for e in bad]
    assert not bad, context
    print(f"200 jobs, {sum(1 for e in events if e['kind'] == 'requested')} node starts, {removed} removals, 0 jobs killed")


def test_no_secret_in_anything_a_run_writes(make_cluster):
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 1, "cpus": 1, "memory_mb": 256, "idle_timeout": 1}]})
    job = c.sbatch("hostname", "-N1", name="one")
    c.wait_job(job, DONE, 30)
    key_path = Path("/var/lib/accordion") / c.name / "munge" / "munge.key"
    st = key_path.stat()
    assert oct(st.st_mode & 0o777) == "0o400" and st.st_uid == __import__("pwd").getpwnam("munge").pw_uid
    key = key_path.read_bytes()
    needles = [key[i : i + 16] for i in range(0, 64, 16)] + [key.hex()[:32].encode()]
    status = accordion("status", "-c", c.name, "--json").stdout.encode()
    run_dir = Path("/run/accordion") / c.name
    files = [p for root in (Path("/var/lib/accordion") / c.name, c.shared) for p in root.rglob("*")]
    # Node roots are overlays of the host's root: look at what Accordion writes there, not the host.
    for top in run_dir.iterdir():
        if top.name != "nodes":
            files += [top, *top.rglob("*")] if top.is_dir() else [top]
    written = [p for p in files if p.is_file() and p != key_path and "state" not in p.parts]
    assert any(p.name == "events.jsonl" for p in written) and any(p.name == "slurm.conf" for p in written)
    for blob in [status] + [p.read_bytes() for p in written if p.stat().st_size < 10_000_000]:
        assert not any(n in blob for n in needles)
    # Nodes see neither Accordion's state nor the key.
    out = c.sh(f"srun -N1 bash -c 'ls /var/lib/accordion; test -e {key_path} && echo KEY-VISIBLE || echo hidden'")
    assert "hidden" in out and c.name not in out.split("hidden")[0]
    assert oct(Path("/var/lib/accordion").stat().st_mode & 0o777) in ("0o700", "0o711")
    # Nothing Accordion keeps is readable or listable by other users (directories are at most
    # traverse-only, so that the daemons that drop root reach their own files); slurm.conf (no secret)
    # is what users' commands must read.
    def reachable(p: Path) -> bool:  # every directory on the way is traversable by others
        return all(d.stat().st_mode & 0o001 for d in p.parents if d.is_relative_to("/var/lib/accordion"))

    for p in [Path("/var/lib/accordion") / c.name, *(Path("/var/lib/accordion") / c.name).rglob("*")]:
        if p.exists() and p.name != "slurm.conf" and reachable(p):
            assert p.stat().st_mode & 0o004 == 0, f"{p} is readable by everyone ({oct(p.stat().st_mode)})"
    # Node processes run under a seccomp filter: a syscall no job needs (keyctl) is refused.
    probe = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        "r = libc.syscall(250, 0, -3, 0); print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0], r, ctypes.get_errno())"
    )
    (c.shared / "probe.py").write_text(probe)
    mode, ret, errno_ = c.sh(f"srun -N1 python3 {c.shared / 'probe.py'}").split()
    assert (mode, ret, errno_) == ("2", "-1", "1")


def test_a_prepared_node_that_does_not_start_is_made_afresh(make_cluster, monkeypatch, tmp_path):
    """`runc start` of the prepared node fails once: the start makes the node from scratch instead, and the
    job runs with no failed start (a preparation is a head start, never a condition of one)."""
    faults = tmp_path / "faults"
    faults.mkdir()
    body = f'if [[ " $* " == *" start "* ]] && mkdir {faults}/start 2>/dev/null; then echo "injected: start failed" >&2; exit 1; fi'
    monkeypatch.setenv("PATH", f"{runtime_wrapper(tmp_path, body)}:{os.environ['PATH']}")
    c = make_cluster({"nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 1, "cpus": 1, "memory_mb": 256, "idle_timeout": 600}]})
    marker = Path("/run/accordion") / c.name / "nodes" / "n-0" / "prepared"
    wait_for(marker.exists, 30, "n-0 prepared")
    job = c.sbatch("hostname", "-N1", name="afresh")
    assert c.wait_job(job, DONE, 60) == "COMPLETED"
    assert (faults / "start").exists(), "the prepared node's start was never tried: the test proves nothing"
    assert [e for e in c.events() if e["kind"] in ("failed", "lost")] == []


def test_node_that_never_comes_up_is_given_up_and_the_job_runs_elsewhere(make_cluster, monkeypatch, tmp_path):
    # A broken container runtime, put in front of the real one: its first `run` hangs, its second fails.
    faults = tmp_path / "faults"
    faults.mkdir()
    body = (
        'if [[ " $* " == *" run "* ]]; then\n'
        f"  if mkdir {faults}/hang 2>/dev/null; then sleep 120; exit 1; fi\n"
        f'  if mkdir {faults}/fail 2>/dev/null; then echo "injected: no such image" >&2; exit 1; fi\n'
        "fi"
    )
    monkeypatch.setenv("PATH", f"{runtime_wrapper(tmp_path, body)}:{os.environ['PATH']}")
    c = make_cluster({
        "nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 3, "cpus": 1, "memory_mb": 256, "idle_timeout": 30}],
        # No prepared node: every start is a `runc run` (a prepared one's start is tested in test_cluster_lifecycle).
        "controller": {"resume_timeout": 4, "max_start_failures": 1, "retry_backoff": 120, "prepared_nodes": 0},
    })
    job = c.sbatch("echo ok", "-N1", name="patient")
    assert c.wait_job(job, DONE, 60) == "COMPLETED"
    hung = subprocess.run(["pgrep", "-f", "--", f"--bundle /run/accordion/{c.name}/"], capture_output=True, text=True).stdout.split()
    # The job ran while the hung start was still hanging: the controller never waited for it.
    assert hung, "the hung runc is gone already: the test proves nothing"
    failed = {e["node"]: e["reason"] for e in c.events() if e["kind"] == "failed"}
    assert len(failed) == 2, failed
    reasons = sorted(failed.values())
    assert reasons[0].startswith("could not start: runc could not start node") and "injected: no such image" in reasons[0]
    assert reasons[1] == "did not register within 4 s; retried in 120 s"
    # Both are reported to Slurm (drained, with the reason) and shown as failed until their retry time.
    for node, reason in failed.items():
        assert reason[:30] in c.sh(f"scontrol show node {node} | grep Reason"), node
        assert c.node_states()[node] == "failed"
    c.down()
    assert subprocess.run(["pgrep", "-f", f"/run/accordion/{c.name}/"], capture_output=True).returncode == 1, "a start left a process behind"
