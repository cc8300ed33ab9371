import os
import shutil
import subprocess
from pathlib import Path

from accordion.config import ClusterConfig
from accordion.model import SchedState
from accordion.paths import ClusterPaths
from accordion.providers.local import LocalProvider
from accordion.schedulers.slurm import (
    SCONTROL,
    SLURMD_SPOOL,
    TASK_PROLOG_SCRIPT,
    array_tasks,
    node_view,
    parse_reservations,
    parse_scontrol_oneliner,
    parse_squeue_json,
    render_slurm_conf,
)

LINE = (
    "NodeName=hpc-node-1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=1 CPUEfctv=2 CPUTot=2 CPULoad=0.00 "
    "AvailableFeatures=(null) NodeAddr=10.77.0.11 State=MIXED+DRAIN ThreadsPerCore=1 "
    "LastBusyTime=2026-11-22T22:34:46 Reason=accordion: idle 60 s [root@2026-11-22T22:35:46]"
)


def test_oneliner_keeps_values_with_spaces():
    f = parse_scontrol_oneliner(LINE)
    assert f["NodeName"] == "hpc-node-1" and f["State"] == "MIXED+DRAIN"
    assert f["Reason"] == "accordion: idle 60 s [root@2026-11-22T22:35:46]"


def node(state, reason="", alloc="0", jobs=False, **more):
    return node_view({"NodeName": "n", "State": state, "CPUTot": "2", "CPUAlloc": alloc, "Reason": reason, **more}, jobs)


def test_node_states():
    v = node_view(parse_scontrol_oneliner(LINE))
    assert v.state == SchedState.DRAINING and v.free_cpus == 1 and v.reason == "idle 60 s"
    assert node("IDLE+DRAIN", "accordion: x").state == SchedState.DRAINED
    v = node("IDLE+DRAIN", "admin")
    assert v.state == SchedState.HELD and v.held and v.reason == "admin"  # not ours to remove or use
    v = node("DOWN*", "accordion: powered off [root@x]")
    assert v.state == SchedState.UNKNOWN and v.marked_absent and v.absent_since is None  # no parsable stamp
    v = node("DOWN", "accordion: node container gone [root@2026-11-22T23:54:36]")
    assert v.marked_absent and v.absent_since is not None and v.reason == "node container gone"
    v = node("IDLE", LastBusyTime="2026-11-22T22:34:46")
    assert v.state == SchedState.IDLE and v.idle_since is not None and v.responding
    # `scontrol update state=fail`: out of use by an administrator, like a drain; read as idle capacity, a
    # waiting job was fitted onto it and waited for the administrator.
    for state in ("IDLE+FAIL", "FAIL"):
        v = node(state, "disk errors")
        assert v.state == SchedState.HELD and v.held and v.reason == "disk errors", state
    v = node("MIXED+FAIL", "disk errors", alloc="1")
    assert v.state == SchedState.BUSY and v.held  # its job goes on; no room for another
    # DOWN: Slurm's own (stamped by SlurmUser) is a failure, its container goes and the name is used again;
    # an administrator's is theirs, like a drain: read as Slurm's, its reason was overwritten and the name
    # started again.
    assert node("DOWN*", "Not responding [slurm@2026-12-03T08:17:44]").state == SchedState.DOWN
    v = node("DOWN", "bad DIMM [root@2026-12-03T08:17:44]")
    assert v.state == SchedState.HELD and v.held and v.reason == "bad DIMM"


def test_jobs_come_first_whatever_the_flags():
    """A node with jobs is busy however Slurm flags it: a missed ping, unknown after a slurmctld restart,
    down while its jobs are requeued, drained by an administrator."""
    for state in ("ALLOCATED*", "MIXED*", "UNKNOWN", "UNKNOWN*", "DOWN*", "IDLE*"):
        v = node(state, alloc="2")
        assert v.state == SchedState.BUSY and not v.responding, state
    assert node("UNKNOWN", jobs=True).state == SchedState.BUSY
    v = node("MIXED+DRAIN", "Kill task failed", alloc="1")
    assert v.state == SchedState.BUSY and v.held
    assert node("IDLE*").state == SchedState.UNKNOWN and not node("IDLE*").responding
    assert node("DOWN", "Not responding").state == SchedState.DOWN
    assert node("DOWN*+DRAIN", "maintenance").state == SchedState.HELD


def test_memory_facts():
    v = node("MIXED", alloc="1", RealMemory="1024", AllocMem="300")
    assert v.free_mem == 724 and v.free_cpus == 1


def test_array_task_counts():
    assert [array_tasks(s) for s in ("1-100%10", "3,5-9:2", "7", "0-279")] == [100, 4, 1, 280]


def test_squeue_json_shapes_from_slurm_22_05():
    """Records printed by Slurm 22.05.8's `squeue --json` for: an array 1-100%10, --mem=300, -w s-2,
    --exclude=s-0,s-1, -p small,big, -n 4, -H, --begin=now+1hour, --dependency, --exclusive -p big,
    --mem-per-cpu=100 -c 2 -p big -N2, and -n4 -p small,big (small: 1-CPU nodes, big: 4-CPU nodes)."""
    text = (Path(__file__).parent / "data" / "squeue-22.05.json").read_text()
    jobs = {j.id: j for j in parse_squeue_json(text, ["small", "big"])}
    assert jobs["1"].count == 10 and jobs["1"].waiting  # the throttle, not the 100 tasks
    assert jobs["2"].mem_per_node == 300
    assert jobs["3"].required == ("s-2",) and jobs["3"].waiting
    assert jobs["4"].excluded == ("s-0", "s-1")
    assert jobs["5"].nodesets == ("small", "big") and jobs["5"].nodeset == "small"
    assert jobs["6"].cpus == 4 and jobs["6"].mem_per_cpu == 512
    assert not jobs["7"].waiting and not jobs["8"].waiting and not jobs["9"].waiting  # held, begin, dependency
    assert jobs["10"].exclusive and jobs["10"].nodeset == "big"
    assert (jobs["11"].nodes, jobs["11"].cpus_per_node, jobs["11"].mem_per_cpu) == (2, 2, 100)
    assert (jobs["12"].nodes, jobs["12"].cpus, jobs["12"].nodesets) == (1, 4, ("small", "big"))
    assert set(parse_squeue_json(text, ["other"])) == set()  # jobs of partitions not managed here


def test_slurm_conf_declares_capacity_and_limits():
    c = ClusterConfig.model_validate({"name": "t", "nodesets": [{"name": "a", "max_nodes": 3, "cpus": 4, "memory_mb": 2048}]})
    paths = ClusterPaths("t")
    conf = render_slurm_conf(c, LocalProvider(c, paths), paths, "host")
    assert "NodeName=a-[0-2] NodeAddr=10.77.0.[10-12] CPUs=4 RealMemory=2048" in conf
    assert "PartitionName=a Nodes=a-[0-2] MaxNodes=3" in conf
    assert "EnforcePartLimits=ALL" in conf and "ReturnToService=2" in conf
    assert "SlurmctldHost=host(10.77.0.1)" in conf


def test_host_lists_keep_their_order_and_fold_only_what_slurm_parses(tmp_path: Path):
    """Slurm pairs NodeName's and NodeAddr's entries by position, so a node's address must stay at its
    name's place; addresses crossing a /24, names with a suffix or leading zeros, and gaps."""
    from accordion.schedulers.slurm import ordered_hostlist

    assert ordered_hostlist([f"n-{i}" for i in range(280)]) == "n-[0-279]"
    assert ordered_hostlist([f"10.77.0.{i}" for i in range(250, 256)] + ["10.77.1.0", "10.77.1.1"]) == "10.77.0.[250-255],10.77.1.[0-1]"
    assert ordered_hostlist(["n-0.svc", "n-1.svc", "b7", "b8", "b10", "x-007", "x-008", "n-3", "n-2"]) == (
        "n-0.svc,n-1.svc,b[7-8],b10,x-007,x-008,n-3,n-2"
    )
    # What Slurm itself expands them to, where it is installed.
    if shutil.which("scontrol"):
        names = ["n-0.svc", "b7", "b8", "b10", "x-007", "10.77.0.255", "10.77.1.0", "n-3", "n-2"]
        conf = tmp_path / "slurm.conf"
        conf.write_text("ClusterName=x\nSlurmctldHost=localhost\n")  # expanding a list asks no server
        out = subprocess.run(["scontrol", "show", "hostnames", ordered_hostlist(names)], capture_output=True, text=True,
                             env={**os.environ, "SLURM_CONF": str(conf)}, check=True).stdout
        assert out.split() == names


def test_not_waiting_before_slurm_says_why():
    """Until Slurm's next scheduling pass, a held job, a future begin time and an unmet dependency read as
    ReqNodeNotAvail (records as 22.05 prints them right after sbatch): the job itself says it waits for
    something other than nodes."""
    import json
    import time

    base = {"job_state": "PENDING", "partition": "small", "node_count": 1, "cpus": 1, "submit_time": 1, "state_reason": "ReqNodeNotAvail"}
    records = [
        {**base, "job_id": 1, "priority": 100, "eligible_time": int(time.time()) + 3600},
        {**base, "job_id": 2, "priority": 0, "eligible_time": 0},
        {**base, "job_id": 3, "priority": 100, "dependency": "afterok:1_*(unfulfilled)"},
        {**base, "job_id": 4, "priority": 100, "eligible_time": int(time.time()) - 1},
    ]
    jobs = {j.id: j for j in parse_squeue_json(json.dumps({"jobs": records}), ["small"])}
    assert [jobs[i].waiting for i in "1234"] == [False, False, False, True]


def test_a_node_under_the_nudges_empty_job_is_not_busy():
    """Slurm's nudge puts an empty job on an idle node for ~0.1 s: read as busy, the policy would start
    another node for the waiting job (and the next nudge round would do it again)."""
    fields = {"NodeName": "c-0", "State": "IDLE+COMPLETING", "CPUTot": "2", "CPUAlloc": "1", "LastBusyTime": "2026-12-01T10:00:00"}
    assert node_view(fields).state == SchedState.BUSY
    assert node_view(fields, nudged=True).state == SchedState.IDLE
    assert node_view({**fields, "State": "MIXED"}, nudged=True).state == SchedState.IDLE
    assert node_view({**fields, "State": "MIXED"}, has_jobs=True, nudged=True).state == SchedState.BUSY  # a user's job too


def test_a_nudge_waits_for_a_node_that_has_not_registered_yet(tmp_path, monkeypatch):
    """Right after its container starts, a node has not registered: salloc would be refused, and each refusal
    stays in the accounting as a FAILED job. The nudge looks at the node a few times, briefly, and allocates it
    only once it is idle; a node never in service in that time, or one that took a job, is left alone."""
    from accordion.schedulers import slurm

    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path))
    c = ClusterConfig.model_validate({"name": "t", "nodesets": [{"name": "c", "max_nodes": 2}]})
    paths = ClusterPaths("t")
    sched = slurm.SlurmScheduler(c, paths, LocalProvider(c, paths))
    monkeypatch.setattr(slurm, "NUDGE_WAITS", (0.0, 0.0, 0.0))
    calls: list[str] = []
    states: list[str] = []

    def cmd(argv, timeout=20, check=True):
        calls.append(argv[0])
        if argv[0] == "scontrol":
            return f"NodeName=c-0 CPUTot=2 CPUAlloc=0 State={states.pop(0)} Reason=x"
        return ""

    monkeypatch.setattr(sched, "_cmd", cmd)
    states[:] = ["DOWN", "DOWN*", "IDLE"]
    sched.nudge(["c-0"])
    assert calls == ["scontrol"] * 3 + ["salloc"]
    calls.clear()
    states[:] = ["DOWN"] * 10
    sched.nudge(["c-0"])
    assert calls == ["scontrol"] * 4  # bounded: never registered, and no salloc refused
    calls.clear()
    states[:] = ["ALLOCATED"]
    sched.nudge(["c-0"])
    assert calls == ["scontrol"]


def run_task_prolog(tmp_path: Path, env: dict[str, str], script: bool = True, job_dir: bool = True, requeue_rc: int = 0,
                    step: str = "batch"):
    """The generated TaskProlog under /bin/sh (dash), on a spool of its own, with a stand-in scontrol that
    records its arguments, run by a parent titled as slurmstepd titles a step's task: (exit code, stdout,
    scontrol's arguments or None)."""
    spool = tmp_path / "spool"
    job_dir_path = spool / "job00042"
    job_dir_path.mkdir(parents=True)
    if script:
        (job_dir_path / "slurm_script").write_text("#!/bin/sh\n")
    if not job_dir:
        shutil.rmtree(job_dir_path)
    calls = tmp_path / "calls"
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {calls}\nexit {requeue_rc}\n')
    scontrol.chmod(0o755)
    prolog = tmp_path / "prolog"
    prolog.write_text(TASK_PROLOG_SCRIPT.replace(SLURMD_SPOOL, str(spool)).replace(SCONTROL, str(scontrol)))
    parent = f'exec -a "slurmstepd: [42.{step}]" /bin/sh -c "/bin/sh {prolog}; exit \\$?"'
    proc = subprocess.run(["bash", "-c", parent], env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "42", **env},
                          capture_output=True, text=True, timeout=10)
    return proc.returncode, proc.stdout, calls.read_text().strip() if calls.exists() else None


def test_the_task_prolog_leaves_a_batch_job_whose_script_is_there(tmp_path):
    assert run_task_prolog(tmp_path, {}) == (0, "", None)


def test_the_task_prolog_requeues_a_batch_job_whose_script_is_gone(tmp_path):
    rc, out, call = run_task_prolog(tmp_path, {}, script=False)
    assert (rc, call) == (1, "requeue 42") and out.startswith("print accordion: slurmd deleted") and "requeued" in out
    # slurmd's purge removes the directory too
    assert run_task_prolog(tmp_path / "d", {}, job_dir=False)[::2] == (1, "requeue 42")


def test_the_task_prolog_requeues_one_array_task_not_the_array(tmp_path):
    # The task that keeps the array's id: `requeue 42` would requeue every task of array 42.
    env = {"SLURM_ARRAY_JOB_ID": "42", "SLURM_ARRAY_TASK_ID": "7"}
    assert run_task_prolog(tmp_path, env, script=False)[::2] == (1, "requeue 42_7")
    env = {"SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "9"}
    assert run_task_prolog(tmp_path / "other", env, script=False)[::2] == (1, "requeue 42")


def test_the_task_prolog_stands_aside_for_steps_repeats_and_says_why_it_cannot_requeue(tmp_path):
    assert run_task_prolog(tmp_path / "srun", {"SLURM_STEP_ID": "0"}, script=False, step="0") == (0, "", None)
    # A batch job submitted from inside a step carries its submitter's SLURM_STEP_ID: still guarded.
    assert run_task_prolog(tmp_path / "inner", {"SLURM_STEP_ID": "0"}, script=False)[::2] == (1, "requeue 42")
    assert run_task_prolog(tmp_path / "again", {"SLURM_RESTART_COUNT": "3"}, script=False) == (0, "", None)
    assert run_task_prolog(tmp_path / "twice", {"SLURM_RESTART_COUNT": "2"}, script=False)[::2] == (1, "requeue 42")
    rc, out, call = run_task_prolog(tmp_path / "norequeue", {}, script=False, requeue_rc=1)
    assert (rc, call) == (1, "requeue 42") and "submit it again" in out


def test_the_nodes_of_an_active_reservation_are_its_jobs_only():
    """A maintenance reservation on compute-[1-2] (as 22.05 prints it): a job outside it was fitted onto them,
    or had them started (absent, they are not flagged RESERVED), and waited while they idled; a job of the
    reservation may have only them."""
    import json

    text = (
        "ReservationName=maint StartTime=2026-12-03T09:16:44 EndTime=2026-12-03T10:16:44 Duration=01:00:00 "
        "Nodes=compute-[1-2] NodeCnt=2 CoreCnt=2 Features=(null) PartitionName=(null) Flags=MAINT,IGNORE_JOBS,SPEC_NODES "
        "TRES=cpu=2 Users=root Groups=(null) Accounts=(null) Licenses=(null) State=ACTIVE BurstBuffer=(null) Watts=n/a "
        "MaxStartDelay=(null)\n"
        "ReservationName=later StartTime=2026-12-04T09:00:00 EndTime=2026-12-04T10:00:00 Duration=01:00:00 "
        "Nodes=compute-0 NodeCnt=1 CoreCnt=1 Features=(null) PartitionName=(null) Flags=MAINT TRES=cpu=1 Users=root "
        "Groups=(null) Accounts=(null) Licenses=(null) State=INACTIVE BurstBuffer=(null) Watts=n/a MaxStartDelay=(null)\n"
    )
    reserved = parse_reservations(text)
    assert {k: (v.nodes, v.active) for k, v in reserved.items()} == {
        "maint": ({"compute-1", "compute-2"}, True), "later": ({"compute-0"}, False),
    }
    del reserved["later"]  # its window is tested below, against the clock
    assert parse_reservations("No reservations in the system\n") == {}
    base = {"job_state": "PENDING", "partition": "compute", "node_count": 1, "cpus": 1, "submit_time": 1, "priority": 1,
            "state_reason": "ReqNodeNotAvail"}
    records = [{**base, "job_id": 3, "resv_name": "", "excluded_nodes": "compute-3"}, {**base, "job_id": 1, "resv_name": "maint"}]
    names = frozenset(f"compute-{i}" for i in range(4))
    jobs = {j.id: j for j in parse_squeue_json(json.dumps({"jobs": records}), ["compute"], reserved, names)}
    assert jobs["3"].excluded == ("compute-1", "compute-2", "compute-3")
    assert jobs["1"].excluded == ("compute-0", "compute-3")


def test_the_nodes_of_a_reservation_to_come_are_no_job_s_whose_time_limit_runs_into_it():
    """A maintenance on compute-2 in 10 minutes (as 22.05 prints it, State=INACTIVE): Slurm starts no job
    there whose time limit runs into it. Accordion started compute-2 for a 30-minute job beside busy nodes,
    fitted it there while it idled, and started nothing else: the job waited for a busy node to free up."""
    import json
    from datetime import datetime, timedelta

    def reservation(start, end):
        at = [(datetime.now() + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%S") for m in (start, end)]
        return parse_reservations(
            f"ReservationName=maint StartTime={at[0]} EndTime={at[1]} Duration=01:00:00 Nodes=compute-2 NodeCnt=1 "
            "CoreCnt=1 Features=(null) PartitionName=(null) Flags=MAINT,SPEC_NODES TRES=cpu=1 Users=root Groups=(null) "
            "Accounts=(null) Licenses=(null) State=INACTIVE BurstBuffer=(null) Watts=n/a MaxStartDelay=(null)\n"
        )

    reserved = reservation(10, 70)
    base = {"job_state": "PENDING", "partition": "compute", "node_count": 1, "cpus": 1, "submit_time": 1, "priority": 1,
            "state_reason": "Resources"}
    # squeue --json's time_limit: minutes, or None with no limit (the partition's MaxTime=UNLIMITED).
    # With --time-min 5 (time_minimum), Slurm may cut a 30-minute job to end before it.
    records = [{**base, "job_id": 1, "time_limit": 30}, {**base, "job_id": 2, "time_limit": None},
               {**base, "job_id": 3, "time_limit": 5}, {**base, "job_id": 4, "time_limit": 30, "resv_name": "maint"},
               {**base, "job_id": 5, "time_limit": 30, "time_minimum": 5}, {**base, "job_id": 6, "time_limit": 30, "time_minimum": 0}]
    names = frozenset(f"compute-{i}" for i in range(4))
    jobs = {j.id: j.excluded for j in parse_squeue_json(json.dumps({"jobs": records}), ["compute"], reserved, names)}
    assert jobs == {"1": ("compute-2",), "2": ("compute-2",), "3": (), "4": ("compute-0", "compute-1", "compute-3"),
                    "5": (), "6": ("compute-2",)}
    # A window that cannot be read (another SLURM_TIME_FORMAT) is left out: read as blocking, it kept every
    # job off its nodes until it was deleted.
    unread = "ReservationName=m StartTime=12/04-09:00 EndTime=12/04-10:00 Nodes=compute-2 State=INACTIVE\n"
    assert parse_reservations(unread) == {}
    ended = reservation(-70, -10)
    assert [j.excluded for j in parse_squeue_json(json.dumps({"jobs": records[:1]}), ["compute"], ended, names)] == [()]
