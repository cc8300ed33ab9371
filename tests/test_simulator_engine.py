"""The simulator on hand-made workloads whose outcome is worked out in each test."""

import dataclasses
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from accordion import policy as live_policy
from accordion.model import Node, Plan, Snapshot, Stop, index_nodes
from accordion.simulator.engine import ClusterModel, SimulationError, fit_to, simulate
from accordion.simulator.metrics import summarize, waits
from accordion.simulator.policies import CHSC, POLICIES, powersave, static
from accordion.simulator.traces import TraceJob
from tests.test_policy import per_node, plain_decide


def job(i, submit, nodes, run, estimate=None):
    """A job of `nodes` 1-CPU processors (clusters here have 1 CPU per node unless said)."""
    return TraceJob(str(i), float(submit), float(run), nodes, float(run if estimate is None else estimate))


def run(jobs, policy=static, nodes=4, idle_timeout=math.inf, **kw):
    return simulate(jobs, ClusterModel(nodes, 1, **kw), policy, idle_timeout)


STATIC = {"boot_time": 0.0, "stop_time": 0.0}


def test_fcfs_order_without_backfill():
    # A holds both nodes until 100. B (2 nodes) is next; C (1 node) would end at 1002, after B's
    # reservation at 100, and there is no spare node then: C waits for B to end at 150.
    jobs = [job(1, 0, 2, 100), job(2, 1, 2, 50), job(3, 2, 1, 10, estimate=1000)]
    r = run(jobs, nodes=2, **STATIC)
    assert waits(r) == [0, 99, 148]


def test_easy_backfill_jumps_without_delaying_the_head():
    # A takes 2 of 3 nodes until 100; B needs all 3 and is reserved for 100. C (1 node, ends by 52) fits
    # the free node and ends before the reservation: it starts at once, B still starts at 100.
    jobs = [job(1, 0, 2, 100), job(2, 1, 3, 10), job(3, 2, 1, 50)]
    assert waits(run(jobs, nodes=3, **STATIC)) == [0, 99, 0]


def test_easy_backfill_must_not_delay_the_head():
    # Same, but C would run to 202, past B's reservation, and no node is spare at 100: C waits for B.
    jobs = [job(1, 0, 2, 100), job(2, 1, 3, 10), job(3, 2, 1, 200)]
    assert waits(run(jobs, nodes=3, **STATIC)) == [0, 99, 108]


def test_easy_backfill_on_spare_nodes():
    # 4 nodes: at 100 B needs 3 of the 4, so one node is spare for the long C, which starts at once.
    jobs = [job(1, 0, 2, 100), job(2, 1, 3, 10), job(3, 2, 1, 500)]
    assert waits(run(jobs, nodes=4, **STATIC)) == [0, 99, 0]


def test_easy_counts_every_job_ending_at_the_reservation_as_spare():
    # 5 nodes: A and B take 2 each until 100, one node is idle. C (3 nodes) is reserved for 100: A's end
    # alone is enough, but B ends at that same moment, so 1 + 2 + 2 - 3 = 2 nodes are spare then, as EASY
    # counts them. D (1 node, 500 s) runs past 100 on a spare node: it starts at once, and C still at 100.
    jobs = [job(1, 0, 2, 100), job(2, 0, 2, 100), job(3, 1, 3, 10), job(4, 2, 1, 500)]
    assert waits(run(jobs, nodes=5, **STATIC)) == [0, 0, 99, 0]


def test_easy_spare_nodes_stop_at_the_reservation():
    # As above but B ends at 101, after C's reservation: at 100 no node is spare (1 + 2 - 3), so D, which
    # would hold its node past 100, waits; C takes the three nodes free at 100 and D gets one of B's at 101.
    jobs = [job(1, 0, 2, 100), job(2, 0, 2, 101), job(3, 1, 3, 10), job(4, 2, 1, 500)]
    assert waits(run(jobs, nodes=5, **STATIC)) == [0, 0, 99, 99]


def test_estimate_not_run_time_drives_the_reservation():
    # C really ends at 52, but asks for 200 s: the scheduler must assume 202 and hold it back.
    jobs = [job(1, 0, 2, 100), job(2, 1, 3, 10), job(3, 2, 1, 50, estimate=200)]
    assert waits(run(jobs, nodes=3, **STATIC)) == [0, 99, 108]


def test_a_job_waiting_for_busy_nodes_keeps_its_reservation_on_an_elastic_cluster():
    # 4 nodes, 1 s to start one. A takes 2 until 101; B needs all 4. The scheduler reserves only among nodes
    # up, so the policy starts the other 2 at once for B (idle past the 60 s timeout: kept). C (1 node, 200 s)
    # would hold one past B's reservation at 101: it waits for B (101 to 111), as on a static cluster.
    # Before, C got a node of its own, 3 nodes up could not be reserved for B, C ran at 3 and B waited to 204.
    jobs = [job(1, 0, 2, 100), job(2, 1, 4, 10), job(3, 2, 1, 200)]
    r = run(jobs, live_policy.decide, idle_timeout=60, boot_time=1.0, stop_time=0.0)
    assert waits(r) == [1, 100, 109]


def test_power_saving_reserves_powered_down_nodes_for_the_first_job():
    # As above under power saving, whose Slurm counts powered-down nodes as available: B, needing all 4, is
    # reserved A's 2 and the 2 powered down for 101. C gets a node started for it (power saving allocates
    # from idle and powered-down nodes) but would hold it past 101: it waits for B (102, one node resumed
    # for it, to 112). Counting only nodes up, as for Accordion, C ran at 3 and B waited to 204.
    jobs = [job(1, 0, 2, 100), job(2, 1, 4, 10), job(3, 2, 1, 200)]
    d = POLICIES["powersave"]
    cluster = ClusterModel(4, 1, boot_time=1.0, stop_time=0.0)
    assert d.plans_on_absent
    assert waits(simulate(jobs, cluster, d.make(), d.idle_timeout, plans_on_absent=True)) == [1, 101, 110]
    assert waits(simulate(jobs, cluster, d.make(), d.idle_timeout)) == [1, 203, 1]


def test_static_nodes_are_up_when_the_log_begins():
    r = run([job(1, 0, 4, 10)], boot_time=5.0)
    m = summarize(r)
    assert waits(r) == [0] and m.node_starts == 4
    assert r.begin == -5.0 and m.node_hours == pytest.approx(4 * 15 / 3600)


def test_provisioning_delay_adds_boot_time_to_wait():
    r = run([job(1, 10, 2, 100)], live_policy.decide, idle_timeout=60, boot_time=0.8)
    assert waits(r) == [pytest.approx(0.8)]
    assert summarize(r).node_starts == 2


def test_idle_nodes_removed_after_idle_timeout():
    # The node starts at 0, runs the job 0.8..100.8, idles until 160.8, is asked to go and is gone at 161.
    # A job at 1000 gets a new node: 0.8 s of boot, 10 s of run.
    r = run([job(1, 0, 1, 100), job(2, 1000, 1, 10)], live_policy.decide, idle_timeout=60, boot_time=0.8, stop_time=0.2)
    assert waits(r) == [pytest.approx(0.8), pytest.approx(0.8)]
    assert summarize(r).node_starts == 2
    assert r.node_seconds == pytest.approx(161.0 + 10.8)
    t, _, provisioned, _ = r.timeline
    assert (t[provisioned.index(0, 1)], t[-1]) == (pytest.approx(161.0), pytest.approx(1010.8))


def test_min_nodes_kept():
    r = run([job(1, 0, 1, 100), job(2, 1000, 1, 10)], live_policy.decide, idle_timeout=60, min_nodes=1, boot_time=0.8)
    assert waits(r) == [0, 0]  # the min_nodes node is up from the start and never leaves
    assert summarize(r).node_starts == 1
    assert r.node_seconds == pytest.approx(1010 + 0.8)


def test_chsc_under_provisions_a_multi_node_job():
    jobs = [job(1, 0, 3, 100)]
    accordion = run(jobs, live_policy.decide, idle_timeout=60, boot_time=0.8)
    assert waits(accordion) == [pytest.approx(0.8)] and summarize(accordion).node_starts == 3
    # CHSC starts one node for the 3-node job and removes it after 30 s idle: the job never runs.
    chsc = run(jobs, CHSC(), idle_timeout=30, boot_time=0.8, stop_time=0.2)
    m = summarize(chsc)
    assert (m.never_started, m.node_starts) == (1, 1)
    assert chsc.end == pytest.approx(0.8 + 30 + 0.2)


def test_powersave_resumes_exactly_the_nodes_of_the_job_and_suspends_after_600_s():
    r = run([job(1, 0, 3, 100), job(2, 2000, 1, 10)], powersave, idle_timeout=600, boot_time=0.8, stop_time=0.2)
    assert waits(r) == [pytest.approx(0.8), pytest.approx(0.8)]
    assert summarize(r).node_starts == 4
    assert r.node_seconds == pytest.approx(3 * (700.8 + 0.2) + 10.8)


def test_draining_never_kills_a_job():
    def leave_now(s: Snapshot) -> Plan:  # starts what waiting jobs need, then asks every node to go
        plan = live_policy.decide(s)
        plan.stop += [Stop((n.name,), n.nodeset, "go") for n in s.nodes if n.state.value in ("idle", "busy")]
        return plan

    r = run([job(1, 0, 2, 100), job(2, 5, 1, 10)], leave_now, idle_timeout=60, boot_time=0.8)
    m = summarize(r)
    assert m.killed == 0 and m.never_started == 0
    assert waits(r)[0] == pytest.approx(0.8)


def test_deleting_a_busy_node_at_once_is_counted_as_a_kill():
    def give_up(s: Snapshot) -> Plan:
        plan = live_policy.decide(s)
        plan.stop += [Stop((n.name,), n.nodeset, "broken", failed=True) for n in s.nodes if n.state.value == "busy"]
        return plan

    assert summarize(run([job(1, 0, 2, 100)], give_up, idle_timeout=60)).killed == 1


def test_policy_starting_a_present_node_is_an_error():
    def bad(s: Snapshot) -> Plan:
        return Plan(start=[live_policy.Start((s.nodes[0].name,), s.nodes[0].nodeset, "again")])

    with pytest.raises(SimulationError, match="started sim-0, which is busy"):
        run([job(1, 0, 1, 10)], bad, idle_timeout=60)


def test_too_big_jobs_are_dropped_before_simulating():
    cluster = ClusterModel(4, 2)
    fits, too_big = fit_to(cluster, [job(1, 0, 8, 10), job(2, 0, 9, 10)])
    assert [j.id for j in fits] == ["1"] and [j.id for j in too_big] == ["2"]
    with pytest.raises(SimulationError):
        simulate(too_big, cluster, static, math.inf)


def random_jobs(n=400, seed=7):
    rnd = random.Random(seed)
    t = 0.0
    jobs = []
    for i in range(n):
        t += rnd.expovariate(1 / 40)
        run_s = rnd.choice([0, 5, 30, 300, 2000])
        jobs.append(TraceJob(str(i), round(t), run_s, rnd.choice([1, 1, 2, 3, 8, 16]), run_s * rnd.choice([1, 2, 10])))
    return jobs


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_runs_every_job_without_killing(name):
    cluster = ClusterModel(16, 2)
    jobs = random_jobs()
    d = POLICIES[name]
    m = summarize(simulate(jobs, cluster, d.make(), d.idle_timeout, name))
    assert m.killed == 0
    assert m.never_started == 0 or name == "chsc"
    assert m.node_hours >= m.ideal_node_hours


def test_deterministic():
    cluster = ClusterModel(16, 2)
    jobs = random_jobs()
    for name, d in POLICIES.items():
        a = simulate(jobs, cluster, d.make(), d.idle_timeout, name)
        b = simulate(jobs, cluster, d.make(), d.idle_timeout, name)
        assert a.start.tobytes() == b.start.tobytes()  # nan != nan: compare the bits
        assert (a.timeline, a.node_seconds) == (b.timeline, b.node_seconds)
        assert summarize(a) == summarize(b)


def test_deterministic_across_processes():
    """Same input, same output, whatever the interpreter's hash seed (set and dict orders)."""
    code = (
        "from tests.test_simulator_engine import random_jobs\n"
        "from accordion.simulator.engine import ClusterModel, simulate\n"
        "from accordion.simulator.metrics import summarize\n"
        "from accordion.simulator.policies import POLICIES\n"
        "for name, d in POLICIES.items():\n"
        "    r = simulate(random_jobs(), ClusterModel(16, 2), d.make(), d.idle_timeout, name)\n"
        "    print(summarize(r), r.start.tobytes().hex(), list(r.timeline[2]))\n"
    )
    root = Path(__file__).parent.parent
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                       env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(root / "src")}).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1 and "never_started" in outs.pop()


def test_snapshot_nodes_are_nodes():
    """Snapshot nodes are plain Nodes (built by their constructor) describing the engine's state."""
    seen = []

    def spy(s: Snapshot) -> Plan:
        seen.extend(s.nodes)
        return live_policy.decide(s)

    run(random_jobs(60), spy, nodes=16, idle_timeout=60)
    assert seen and all(type(n) is Node for n in seen)


@pytest.mark.parametrize("cpus_per_node", [1, 4])
def test_the_policy_plans_in_a_simulation_as_the_plain_policy_does(cpus_per_node):
    """Golden comparison: at every call of a simulation (jobs of up to 16 nodes on 24, idle timeouts, boot
    and stop delays), the policy on the engine's snapshot (views, counted fits) makes exactly the plan the
    plain policy of tests/test_policy.py makes from the same nodes listed and indexed in full."""
    calls = []

    def spy(s: Snapshot) -> Plan:
        plan = live_policy.decide(s)
        plain = Snapshot(s.now, s.nodesets, tuple(s.nodes), s.jobs, s.resume_timeout)
        calls.append(per_node(plan) == per_node(plain_decide(plain)) and plan == live_policy.decide(plain))
        return plan

    jobs = [dataclasses.replace(j, procs=j.procs * cpus_per_node) for j in random_jobs(300, seed=3)]
    simulate(jobs, ClusterModel(24, cpus_per_node, min_nodes=2), spy, idle_timeout=30)
    assert len(calls) > 300 and all(calls)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_the_index_kept_by_the_engine_is_the_snapshot_nodes_indexed(name):
    """The engine keeps its nodes by state as they change (no pass over every node per call): at every
    call that index must be exactly what indexing the snapshot's nodes gives."""
    calls = []
    inner = POLICIES[name].make()

    def spy(s: Snapshot) -> Plan:
        calls.append(s.index == index_nodes(s.nodes))
        return inner(s)

    run(random_jobs(80), spy, nodes=16, idle_timeout=30, boot_time=0.8, stop_time=0.2)
    assert len(calls) > 50 and all(calls)
