"""Controller logic against in-memory stand-ins for the scheduler and provider (the live tests use real ones)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait
from pathlib import Path

import pytest

from accordion.config import ClusterConfig
from accordion.controller import Controller, write_pins
from accordion.events import EventLog, read_events
from accordion.model import Job, SchedNode, SchedState, SchedulerView
from accordion.paths import ClusterPaths
from accordion.providers.base import NodeInfo, NodeSpec, Provider, ProviderError
from accordion.schedulers.base import Scheduler


class FakeProvider:
    def __init__(self, clock):
        self.clock = clock
        self.nodes: dict[str, NodeInfo] = {}
        self.fail_create = False
        self.fail_list = False
        self.hang: threading.Event | None = None  # create blocks until it is set
        self.prepares = False  # the tests of preparation turn it on
        self.prepared: dict[str, NodeInfo] = {}
        self.prepare_calls: list[str] = []
        self.started_prepared: list[str] = []  # creates that found their node prepared
        self.fail_prepare = False
        self.hang_prepare: threading.Event | None = None

    def create(self, spec: NodeSpec) -> None:
        if self.hang is not None:
            self.hang.wait(10)
        if self.fail_create:
            raise RuntimeError("boom")
        if self.prepared.pop(spec.name, None) is not None:
            self.started_prepared.append(spec.name)
        self.nodes[spec.name] = NodeInfo(spec.name, True, self.clock())

    def prepare(self, spec: NodeSpec) -> None:
        if spec.name in self.prepared:
            return  # as the local provider: already prepared from the same spec
        self.prepare_calls.append(spec.name)
        if self.hang_prepare is not None:
            self.hang_prepare.wait(10)
        if self.fail_prepare:
            raise RuntimeError("no room")
        self.prepared[spec.name] = NodeInfo(spec.name, False, self.clock(), prepared=True)

    def delete(self, name: str) -> None:
        self.nodes.pop(name, None)
        self.prepared.pop(name, None)

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        self.nodes.clear()

    def head_address(self) -> str:
        return "127.0.0.1"

    def address(self, node: str) -> str:
        return "127.0.0.1"

    def enter(self) -> list[str]:
        return []

    def login(self) -> list[str]:
        return []

    def list(self):
        if self.fail_list:
            raise ProviderError("runc list: injected failure")
        return {**self.prepared, **self.nodes}


class FakeScheduler:
    """Nodes register when `registers` is true; jobs are whatever the test puts in `jobs`."""

    name = "fake"
    user_commands: tuple[str, ...] = ("submit",)

    def __init__(self, provider: FakeProvider):
        self.provider = provider
        self.registers = True
        self.jobs: list[Job] = []
        self.state: dict[str, SchedNode] = {}
        self.absent_calls: list[tuple[str, str]] = []
        self.nudges = 0
        self.nudged: list[list[str]] = []

    def observe(self) -> SchedulerView:
        for name in self.provider.nodes:
            # As Slurm: a node marked absent since its start was asked for (given up) registers out of service.
            if self.registers and self.state.get(name) is None:
                self.state[name] = SchedNode(name, SchedState.IDLE, 2, self.provider.clock())
        return SchedulerView(dict(self.state), list(self.jobs))

    def mark_absent(self, nodes, reason="powered off"):
        for n in nodes:
            self.absent_calls.append((n, reason))
            self.state[n] = SchedNode(n, SchedState.UNKNOWN, 0, None, reason, marked_absent=True)

    def nodes_starting(self, nodes):
        for n in nodes:  # as Slurm lifts the drain flag of the nodes it is told are starting
            if (cur := self.state.get(n)) is not None and cur.marked_absent:
                del self.state[n]

    def node_started(self, node, given_up):
        self.given_up = given_up

    def nudge(self, idle):
        self.nudges += 1
        self.nudged.append(idle)
        return 0.0

    def release(self, nodes, reason):
        for node in nodes:
            cur = self.state[node]
            busy = cur.state == SchedState.BUSY
            self.state[node] = SchedNode(node, SchedState.DRAINING if busy else SchedState.DRAINED, cur.free_cpus, None, reason)

    def node_spec(self, node):
        return NodeSpec(node, 2, 512, ["true"])

    def changes(self):
        return None

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def running(self) -> bool:
        return True

    def env(self) -> dict[str, str]:
        return {}

    def user_added(self, user: str) -> None:
        pass

    def data(self) -> list[Path]:
        return []

    def history(self) -> str:
        return ""

    def wrap(self) -> list[str]:
        return []


def test_fakes_implement_the_protocols() -> None:
    """Checked by mypy --strict (scripts/lint.sh): a fake that drifts from a protocol fails there."""
    provider: Provider = FakeProvider(lambda: 0.0)
    scheduler: Scheduler = FakeScheduler(FakeProvider(lambda: 0.0))
    assert provider.list() == {} and scheduler.observe().jobs == []


def make(tmp_path, monkeypatch, max_nodes=3, **controller):
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path))
    cfg = ClusterConfig.model_validate(
        {"name": "t", "nodesets": [{"name": "c", "max_nodes": max_nodes, "idle_timeout": 10}], "controller": controller}
    )
    paths = ClusterPaths("t")
    paths.state.mkdir(parents=True)
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    prov = FakeProvider(clock)
    sched = FakeScheduler(prov)
    ctl = Controller(cfg, paths, sched, prov, EventLog(paths.events, "t"), clock=clock)
    return ctl, sched, prov, now, paths


def settle(ctl):
    """Let the starts and removals of the last step finish (they run on the pool, beside the loop)."""
    wait([op.future for op in ctl.ops.values()], timeout=10)


def step(ctl):
    ctl.step()
    settle(ctl)


def kinds(paths):
    return [(e["kind"], e.get("node")) for e in read_events(paths.events)]


def test_scale_up_register_idle_and_remove(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    sched.jobs = [Job("1", "c", 2, 1, False, 0.0)]
    step(ctl)
    assert set(prov.nodes) == {"c-0", "c-1"}
    sched.jobs = []
    now[0] += 2.5
    step(ctl)
    registered = [e for e in read_events(paths.events) if e["kind"] == "registered" and e["node"] == "c-0"]
    assert registered[0]["reason"] == "2.50 s after it was requested"
    now[0] += 11
    step(ctl)  # drained at once (no job): removed on the next step
    step(ctl)
    assert prov.nodes == {}
    assert ("removed", "c-0") in kinds(paths) and ("removed", "c-1") in kinds(paths)


def counts(ctl):
    return {name: f.count for name, f in ctl.failures.items()}


def test_node_that_never_registers_is_given_up_and_retried_with_backoff(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch, resume_timeout=5, max_start_failures=2, retry_backoff=60, retry_backoff_max=120)
    sched.registers = False
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    step(ctl)
    assert set(prov.nodes) == {"c-0"}
    for _ in range(3):
        now[0] += 6
        step(ctl)
    failed = [e for e in read_events(paths.events) if e["kind"] == "failed"]
    assert "did not register within 5 s" in failed[0]["reason"]
    # Each name is retried at once up to max_start_failures, then waits retry_backoff: no endless churn.
    assert counts(ctl) == {"c-0": 2, "c-1": 1} and "retried in 60 s" in failed[-1]["reason"]
    step(ctl)  # its removal, run on the pool, is collected
    assert ctl.snapshot(sched.observe(), prov.list(), now[0]).nodes[0].state.value == "failed"
    for _ in range(4):
        now[0] += 6
        step(ctl)
    step(ctl)
    assert counts(ctl) == {"c-0": 2, "c-1": 2, "c-2": 2} and prov.nodes == {}
    assert {n.state.value for n in ctl.snapshot(sched.observe(), {}, now[0]).nodes} == {"failed"}
    # The failures survive a controller restart.
    ctl2 = Controller(ctl.config, paths, sched, prov, ctl.events, clock=ctl.clock)
    assert ctl2.failures == ctl.failures
    # Once its wait is over the name is tried again, and waits twice as long after another failure.
    now[0] = ctl.failures["c-0"].retry
    step(ctl)
    assert "c-0" in prov.nodes
    now[0] += 6
    step(ctl)
    assert ctl.failures["c-0"].count == 3 and ctl.failures["c-0"].retry == now[0] + 120


def test_failures_never_stick_capacity_comes_back(tmp_path, monkeypatch):
    """A provider that fails three starts and then succeeds: capacity comes back without `accordion down`
    (before, a name was FAILED after max_start_failures until the cluster was taken down)."""
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch, max_start_failures=1, retry_backoff=10, retry_backoff_max=30)
    prov.fail_create = True
    sched.jobs = [Job("1", "c", 3, 1, False, 0.0)]
    for _ in range(3):
        step(ctl)
        step(ctl)  # a start's outcome is reported by the step after it
        now[0] += 31
    assert prov.nodes == {} and all(n >= 3 for n in counts(ctl).values())
    prov.fail_create = False
    step(ctl)
    step(ctl)
    assert set(prov.nodes) == {"c-0", "c-1", "c-2"}
    assert {n.state.value for n in ctl.snapshot(sched.observe(), prov.list(), now[0]).nodes} == {"idle"}
    assert ctl.failures == {}  # registered: forgotten


def test_failed_listing_deletes_nothing(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    sched.jobs = [Job("1", "c", 2, 1, False, 0.0)]
    step(ctl)
    step(ctl)
    assert set(prov.nodes) == {"c-0", "c-1"}
    prov.fail_list = True
    with pytest.raises(ProviderError):
        ctl.step()
    settle(ctl)
    assert set(prov.nodes) == {"c-0", "c-1"} and sched.absent_calls == []
    assert not any(kind in ("lost", "removed", "failed") for kind, _ in kinds(paths))


def test_create_error_is_an_event_not_a_crash(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    prov.fail_create = True
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    step(ctl)
    step(ctl)  # a start's outcome is reported by the step after it
    assert prov.nodes == {}
    assert any(e["kind"] == "failed" and "could not start: boom" in e["reason"] for e in read_events(paths.events))


def test_lost_container_is_reported_to_scheduler_at_once(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    sched.jobs = [Job("1", "c", 1, 2, False, 0.0)]
    step(ctl)
    step(ctl)
    sched.state["c-0"] = SchedNode("c-0", SchedState.BUSY, 0)
    sched.jobs = [Job("1", "c", 1, 2, True, 0.0, node_names=("c-0",))]
    del prov.nodes["c-0"]  # the container died under its job
    step(ctl)
    assert ("c-0", "node container gone") in sched.absent_calls
    assert ("lost", "c-0") in kinds(paths)


def test_busy_node_is_drained_not_killed(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    from accordion.controller import write_pins

    write_pins(paths, {"c": 1})
    step(ctl)
    step(ctl)
    sched.state["c-0"] = SchedNode("c-0", SchedState.BUSY, 0)
    write_pins(paths, {"c": 0})
    step(ctl)
    assert "c-0" in prov.nodes and sched.state["c-0"].state == SchedState.DRAINING
    sched.state["c-0"] = SchedNode("c-0", SchedState.DRAINED, 2)
    step(ctl)
    assert prov.nodes == {}


def test_orphan_container_removed(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    prov.nodes["stray-0"] = NodeInfo("stray-0", True, 0.0)
    step(ctl)
    assert "stray-0" not in prov.nodes


def test_failed_create_is_reported_to_the_scheduler(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    prov.fail_create = True
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    step(ctl)
    step(ctl)
    assert ("c-0", "could not start: boom") in sched.absent_calls
    assert counts(ctl) == {"c-0": 1}


def test_hung_start_does_not_block_the_loop_and_is_given_up(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch, resume_timeout=5)
    prov.hang = threading.Event()
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    ctl.step()
    ctl.step()  # returns while the start of c-0 is still hanging
    assert "c-0" in ctl.ops and not ctl.ops["c-0"].future.done()
    assert ("requested", "c-0") in kinds(paths) and ("started", "c-0") not in kinds(paths)
    now[0] += 6
    ctl.step()
    failed = [e for e in read_events(paths.events) if e["kind"] == "failed"]
    assert [e["node"] for e in failed] == ["c-0"] and "did not register within 5 s" in failed[0]["reason"]
    assert ("c-0", "did not register within 5 s") in sched.absent_calls
    # Another name is started for the job meanwhile; the hung one is neither reused nor double-counted.
    assert ("requested", "c-1") in kinds(paths)
    prov.hang.set()
    settle(ctl)
    ctl.step()
    settle(ctl)
    ctl.step()
    assert "c-0" not in prov.nodes and "c-0" not in ctl.ops
    assert counts(ctl) == {"c-0": 1}


def oar_like(sched, gate, seen, put_in_service):
    """A scheduler whose node is in service only once `node_started` says so (OAR: Alive; Grid Engine: its
    calendar lifted), and whose agent answers only once `gate` is set. `put_in_service(given_up)`: whether
    this start puts it there then; in service, a job lands on it at once."""
    sched.registers = False

    def node_started(node, given_up):
        gate.wait(10)
        seen.append((node, given_up()))
        if put_in_service(given_up):
            sched.state[node] = SchedNode(node, SchedState.BUSY, 0)
            sched.jobs = [Job("1", "c", 1, 2, True, 0.0, node_names=(node,))]

    sched.node_started = node_started


def given_up(tmp_path, monkeypatch, put_in_service, max_nodes=3):
    """A job's node c-0 whose agent answers only after the loop gave its start up (resume_timeout), and
    the start then returned: (controller, scheduler, provider, paths, what each node_started was told)."""
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch, max_nodes=max_nodes, resume_timeout=5)
    gate, seen = threading.Event(), []
    oar_like(sched, gate, seen, put_in_service)
    sched.jobs = [Job("1", "c", 1, 2, False, 0.0)]
    ctl.step()
    now[0] += 6
    ctl.step()
    assert ("c-0", "did not register within 5 s") in sched.absent_calls
    gate.set()
    settle(ctl)
    return ctl, sched, prov, paths, seen


def test_a_start_given_up_while_waiting_for_its_node_puts_nothing_in_service(tmp_path, monkeypatch):
    # OAR's sshd, Grid Engine's execd answering after resume_timeout (or the start queued behind 31 others):
    # the start went on after the give-up and set the node Alive, undoing the Absent the loop had just set;
    # a job landed there and died when the container was removed.
    ctl, sched, prov, paths, seen = given_up(tmp_path, monkeypatch, lambda given_up: not given_up())
    step(ctl)
    step(ctl)
    assert ("c-0", True) in seen  # told, when its node answered at last
    assert "c-0" not in prov.nodes and ("started", "c-0") not in kinds(paths)


def test_a_node_in_service_before_its_start_returned_is_not_given_up(tmp_path, monkeypatch):
    # The scheduler has the node in service, and a job on it, while the start's last step still runs: it is
    # what the scheduler says, not "starting", so resume_timeout does not take it out from under the job.
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch, resume_timeout=5)
    gate, seen = threading.Event(), []
    sched.registers = False
    sched.jobs = [Job("1", "c", 1, 2, False, 0.0)]

    def node_started(node, given_up):
        sched.state[node] = SchedNode(node, SchedState.BUSY, 0)
        sched.jobs = [Job("1", "c", 1, 2, True, 0.0, node_names=(node,))]
        gate.wait(10)  # its nudge, say, still on its way
        seen.append(given_up())

    sched.node_started = node_started
    ctl.step()
    time.sleep(0.2)
    now[0] += 6
    ctl.step()
    gate.set()
    settle(ctl)
    step(ctl)
    assert seen == [False] and [c for c in sched.absent_calls if c[0] == "c-0"] == []
    assert "c-0" in prov.nodes and ("failed", "c-0") not in kinds(paths)


def test_a_start_that_put_its_node_in_service_as_it_was_given_up_keeps_it(tmp_path, monkeypatch):
    # The node came into service in the instant the loop gave it up (Alive sent before the start could be
    # told): the scheduler runs a job there, so the container stays.
    ctl, sched, prov, paths, seen = given_up(tmp_path, monkeypatch, lambda given_up: True)
    step(ctl)
    step(ctl)
    assert ("c-0", True) in seen and "c-0" in prov.nodes


def test_a_start_given_up_after_a_job_landed_is_removed_once_told_absent(tmp_path, monkeypatch):
    # Alive went out just before the give-up, a job landed, then the loop's Absent: the scheduler has the
    # node busy but absent (its job is lost either way). Kept for that, it stayed for ever, unresponsive.
    ctl, sched, prov, paths, seen = given_up(tmp_path, monkeypatch, lambda given_up: True, max_nodes=1)
    sched.state["c-0"] = SchedNode("c-0", SchedState.BUSY, 0, marked_absent=True)
    step(ctl)
    assert "c-0" not in prov.nodes


def test_a_name_listed_busy_by_a_stale_job_is_started_once(tmp_path, monkeypatch):
    # Its container died under a job the scheduler still lists (OAR, Grid Engine: busy, marked absent). Its
    # new start, still running, read as that stale "busy" and with no container as absent: started again
    # at every step.
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch, max_nodes=1)
    sched.registers = False
    sched.nodes_starting = lambda nodes: None  # OAR, Grid Engine: nothing to do here
    sched.state["c-0"] = SchedNode("c-0", SchedState.BUSY, 0, marked_absent=True)
    sched.jobs = [Job("1", "c", 1, 2, True, 0.0, node_names=("c-0",)), Job("2", "c", 1, 2, False, 0.0)]
    prov.hang = threading.Event()  # a slow create
    for _ in range(3):
        ctl.step()
    prov.hang.set()
    settle(ctl)
    assert [n for k, n in kinds(paths) if k == "requested"] == ["c-0"]


def test_registered_node_is_never_starting_again(tmp_path, monkeypatch):
    """slurmctld restarted, or a missed ping: the scheduler reports a node that has registered once as
    unknown. Judged by its age it was given up as "did not register" and deleted under its job."""
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch, resume_timeout=5)
    sched.jobs = [Job("1", "c", 1, 2, False, 0.0)]
    step(ctl)
    step(ctl)
    assert sched.state["c-0"].state == SchedState.IDLE
    sched.jobs = [Job("1", "c", 1, 2, True, 0.0, node_names=("c-0",))]
    now[0] += 60  # far beyond resume_timeout
    for state, free in ((SchedState.UNKNOWN, 0), (SchedState.BUSY, 0)):
        sched.registers = False
        sched.state["c-0"] = SchedNode("c-0", state, free, responding=False)
        for _ in range(3):
            now[0] += 10
            step(ctl)
        assert "c-0" in prov.nodes and sched.absent_calls == []
    snap = ctl.snapshot(sched.observe(), prov.list(), now[0])
    assert snap.nodes[0].state.value == "busy"
    sched.state["c-0"] = SchedNode("c-0", SchedState.UNKNOWN, 0, responding=False)
    assert ctl.snapshot(sched.observe(), prov.list(), now[0]).nodes[0].state.value == "unresponsive"
    # The same after a controller restart: what registered is on disk.
    ctl2 = Controller(ctl.config, paths, sched, prov, ctl.events, clock=ctl.clock)
    assert ctl2.snapshot(sched.observe(), prov.list(), now[0]).nodes[0].state.value == "unresponsive"


def test_drain_by_someone_else_is_kept_and_its_container_removed_once_empty(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    sched.jobs = [Job("1", "c", 1, 2, False, 0.0)]
    step(ctl)
    step(ctl)
    # An administrator drains the busy node: no room on it, nothing deleted while its job runs.
    sched.state["c-0"] = SchedNode("c-0", SchedState.BUSY, 2, reason="maintenance", held=True)
    sched.jobs = [Job("1", "c", 1, 1, True, 0.0, node_names=("c-0",)), Job("2", "c", 1, 1, False, 1.0)]
    step(ctl)
    assert "c-0" in prov.nodes and "c-1" in prov.nodes  # the new job gets a node of its own
    sched.state["c-0"] = SchedNode("c-0", SchedState.HELD, 0, reason="maintenance", held=True)
    step(ctl)
    assert "c-0" not in prov.nodes and ("removed", "c-0") in kinds(paths)
    assert [n for n, _ in sched.absent_calls] == []  # the drain and its reason stay the administrator's
    step(ctl)  # the removal, run on the pool, is collected
    snap = ctl.snapshot(sched.observe(), prov.list(), now[0])
    assert snap.nodes[0].state.value == "held"
    assert ctl._held == {"c-0": "maintenance"}


def test_a_job_waiting_beside_an_idle_node_nudges_the_scheduler_a_few_times(tmp_path, monkeypatch):
    """OAR defers a pass asked for too soon after its last and then sleeps 10 s: the controller asks again,
    a second apart, a bounded number of times per (waiting jobs, idle nodes)."""
    monkeypatch.setattr("accordion.controller.NUDGE_INTERVAL", 0.0)
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    step(ctl)  # starts c-0 (and nudges once it is up: see the next test); nothing idle yet
    assert sched.nudged == [["c-0"]]
    for _ in range(6):
        step(ctl)  # c-0 idle, job 1 still waiting (the scheduler has not started it)
    assert sched.nudges == 4
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0), Job("2", "c", 1, 1, False, 0.0)]
    for _ in range(6):
        step(ctl)  # a new waiting job: a new round
    assert sched.nudges == 7
    assert sched.nudged[-1] == ["c-0"]
    # A node busy for a moment (as under Slurm's nudge, an empty job) is no new situation by itself.
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    busy, idle = SchedNode("c-0", SchedState.BUSY, 0), sched.state["c-0"]
    sched.state["c-0"] = busy
    step(ctl)  # meanwhile the policy starts c-1 for the waiting jobs: that is a new situation
    sched.state["c-0"] = idle
    for _ in range(4):
        step(ctl)
    nudges = sched.nudges
    for state in (busy, idle, busy, idle):
        sched.state["c-0"] = state
        step(ctl)
    assert sched.nudges == nudges
    sched.jobs = [Job("1", "c", 1, 1, True, 0.0, node_names=("c-0",))]
    step(ctl)
    assert sched.nudges == nudges  # nothing waits


def test_no_nudge_lands_on_a_node_every_waiting_job_excludes(tmp_path, monkeypatch):
    # A node reserved for later, idle: Slurm's nudge (an empty job on it) reset its idle time each round, so
    # it stayed for as long as the queue kept changing. A node some waiting job may use is nudged as before.
    monkeypatch.setattr("accordion.controller.NUDGE_INTERVAL", 0.0)
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch, max_nodes=1)
    write_pins(paths, {"c": 1})
    step(ctl)
    write_pins(paths, {})
    step(ctl)
    sched.nudged.clear()
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0, excluded=("c-0",)), Job("2", "c", 1, 1, False, 1.0, excluded=("c-0",))]
    for _ in range(4):
        step(ctl)
    assert sched.nudged == []
    sched.jobs.append(Job("3", "c", 1, 1, False, 2.0))
    step(ctl)
    assert sched.nudged == [["c-0"]]


def test_a_nudge_too_soon_for_the_scheduler_is_asked_again_when_it_can_be_taken(tmp_path, monkeypatch):
    """OAR takes at most one pass per second: its nudge says how long until then, and the controller asks
    again at that time (the early call counts as one of the round's nudges: a scheduler that is always
    busy is not asked for ever)."""
    monkeypatch.setattr("accordion.controller.NUDGE_INTERVAL", 0.3)
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    answers = [0.2, 0.0, 0.01, 0.01, 0.01]
    calls: list[float] = []
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    step(ctl)  # starts c-0
    sched.nudge = lambda idle: (calls.append(time.monotonic()), answers.pop(0) if answers else 0.0)[1]
    step(ctl)  # c-0 idle beside job 1: asked, too soon
    step(ctl)  # not yet
    assert len(calls) == 1
    time.sleep(0.25)
    step(ctl)  # now: taken
    step(ctl)  # the next one is NUDGE_INTERVAL away
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.2
    for _ in range(6):
        time.sleep(0.1)
        step(ctl)
    assert len(calls) == 3  # too soon again, and the round's three are spent


def test_a_change_the_scheduler_shows_only_a_moment_later_is_seen_before_the_resync(tmp_path, monkeypatch):
    """Grid Engine writes a job's script (the change the loop watches) before qstat lists the job: the step
    the change wakes may not see it. The loop looks once more, a step later, instead of at the next resync
    (2 s: most of a Grid Engine cold start)."""
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    ctl.config.controller.resync_interval = 30  # only the change may bring the job in
    token = [0]
    sched.changes = lambda: token[0]
    observe = sched.observe
    seen = threading.Event()

    def lagging():
        if token[0]:
            if seen.is_set():
                sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
            seen.set()  # the first observation after the change: the job is not listed yet
        return observe()

    sched.observe = lagging
    stop = threading.Event()
    loop = threading.Thread(target=ctl.run, args=(stop,))
    loop.start()
    try:
        time.sleep(0.5)  # started, settled: no node, no change
        token[0] = 1
        deadline = time.monotonic() + 5
        while not prov.nodes and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        loop.join(10)
    assert seen.is_set() and set(prov.nodes) == {"c-0"}


def test_a_start_whose_nudge_is_too_soon_asks_again_when_the_scheduler_can_take_it(tmp_path, monkeypatch):
    """OAR's pass of the job's submission takes the second in which the node comes up: the start's nudge
    says how long until the next, and the loop asks again at that moment, before any step (it used to ask
    a whole step later: 0.1-0.25 s of every OAR cold start). Once only, not for a wait longer than the
    loop's own nudge interval, and the start's worker does not wait for it."""
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    answers = [0.2, 0.3]
    calls: list[float] = []
    sched.nudge = lambda idle: (calls.append(time.monotonic()), answers.pop(0) if answers else 0.0)[1]
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    ctl.step()
    settle(ctl)
    assert all(op.future.done() for op in ctl.ops.values()) and len(calls) == 1
    ctl._retry_nudge()  # not yet
    assert len(calls) == 1
    time.sleep(0.2)
    ctl._retry_nudge()
    ctl._retry_nudge()
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.2  # asked again, once (its 0.3 s answer is the loop's)

    ctl2, sched2, _, _, _ = make(tmp_path / "b", monkeypatch)
    calls.clear()
    sched2.nudge = lambda idle: (calls.append(time.monotonic()), 30.0)[1]
    sched2.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    ctl2.step()
    settle(ctl2)
    assert len(calls) == 1 and ctl2._nudge_retry is None  # 30 s: the loop's own nudges take it from there


def test_a_node_started_for_waiting_jobs_nudges_as_soon_as_it_is_up(tmp_path, monkeypatch):
    """The job a node was started for should not wait for the loop's next observation of that node (a fifth
    of a cold start): the start itself asks for a pass once the container runs, with that node. A node
    started for no job (min_nodes) or in a burst asks for nothing; a failing nudge does not fail the start."""
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    order: list[str] = []
    create = prov.create
    prov.create = lambda spec: (create(spec), order.append("created"))
    sched.nudge = lambda idle: (order.append(f"nudge {idle}"), 0.0)[1]
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    ctl.step()  # the start runs on the pool: nothing observed yet
    settle(ctl)
    assert order == ["created", "nudge ['c-0']"]

    ctl2, sched2, prov2, _, paths2 = make(tmp_path / "b", monkeypatch)
    ctl2.config.nodesets[0].min_nodes = 1
    sched2.nudge = lambda idle: order.append("nudge for nothing")
    step(ctl2)
    assert set(prov2.nodes) == {"c-0"} and "nudge for nothing" not in order

    # A burst: too many nodes boot at once for each to wait for its registration.
    ctl4, sched4, prov4, _, _ = make(tmp_path / "d", monkeypatch, max_nodes=8)
    sched4.jobs = [Job("1", "c", 5, 1, False, 0.0)]
    step(ctl4)
    assert len(prov4.nodes) == 5 and sched4.nudged == []

    ctl3, sched3, prov3, _, paths3 = make(tmp_path / "c", monkeypatch)

    def broken(idle):
        raise RuntimeError("scancel: injected failure")

    sched3.nudge = broken
    sched3.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    step(ctl3)
    sched3.nudge = lambda idle: 0.0  # the loop's own nudge (c-0 idle beside job 1) is not under test here
    step(ctl3)
    assert ("started", "c-0") in kinds(paths3) and not any(k == "failed" for k, _ in kinds(paths3))


def test_nodes_boot_a_bounded_number_at_a_time(tmp_path, monkeypatch):
    """A burst starts at most 4 x workers nodes that have not registered yet; the rest follow as they do."""
    _, sched, prov, now, paths = make(tmp_path, monkeypatch)
    sched.registers = False
    cfg = ClusterConfig.model_validate({"name": "t", "nodesets": [{"name": "c", "max_nodes": 10, "idle_timeout": 10}], "controller": {"workers": 1}})
    ctl = Controller(cfg, paths, sched, prov, EventLog(paths.events, "t"), clock=lambda: now[0])
    sched.jobs = [Job("1", "c", 10, 1, False, 0.0)]
    step(ctl)
    assert len(prov.nodes) == 4
    step(ctl)
    assert len(prov.nodes) == 4  # none registered: no more start
    sched.registers = True
    step(ctl)  # the 4 register; 4 more start
    assert len(prov.nodes) == 8
    step(ctl)
    step(ctl)
    assert len(prov.nodes) == 10


def test_the_next_node_is_prepared_and_a_cold_start_only_starts_it(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    prov.prepares = True
    step(ctl)
    step(ctl)
    # The name the policy starts first (the longest absent), once: a prepared node is not prepared again.
    assert set(prov.prepared) == {"c-0"} and prov.prepare_calls == ["c-0"] and prov.nodes == {}
    assert {n.state.value for n in ctl.snapshot(sched.observe(), {}, now[0]).nodes} == {"absent"}  # not a node
    sched.jobs = [Job("1", "c", 2, 1, False, 0.0)]
    sched.registers = False
    ctl.step()
    assert ctl.ops["c-0"].kind == "start"
    settle(ctl)
    assert set(prov.nodes) == {"c-0", "c-1"} and prov.started_prepared == ["c-0"]
    step(ctl)
    step(ctl)
    assert prov.prepare_calls == ["c-0"]  # nothing prepared while nodes start: a burst needs the machine
    sched.jobs = []
    sched.registers = True
    step(ctl)  # registered: the next name is prepared
    step(ctl)
    assert set(prov.prepared) == {"c-2"} and prov.prepare_calls == ["c-0", "c-2"]


def test_a_start_that_overtakes_a_preparation_waits_for_it(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    prov.prepares = True
    prov.hang_prepare = threading.Event()
    ctl.step()
    assert ctl.ops["c-0"].kind == "prepare"
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    ctl.step()  # the policy starts c-0, absent while it is prepared
    assert ctl.ops["c-0"].kind == "start" and prov.nodes == {}
    prov.hang_prepare.set()
    settle(ctl)
    assert set(prov.nodes) == {"c-0"} and prov.started_prepared == ["c-0"] and prov.prepared == {}


def test_a_prepared_name_no_longer_next_is_removed_and_a_failed_preparation_waits(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    prov.prepares = True
    prov.prepared["c-2"] = NodeInfo("c-2", False, 0.0, prepared=True)  # as left by an earlier order
    prov.prepared["c-1"] = NodeInfo("c-1", False, 0.0, "prepared container not ready", prepared=True)  # cut short
    prov.fail_prepare = True
    for _ in range(3):
        step(ctl)
    assert prov.prepared == {} and prov.prepare_calls == ["c-0"]  # tried once: not at every step
    assert not any(kind == "failed" for kind, _ in kinds(paths))  # not nodes: no failed start either
    assert {n.state.value for n in ctl.snapshot(sched.observe(), prov.list(), now[0]).nodes} == {"absent"}


def test_a_start_that_failed_after_its_node_came_into_service_keeps_it(tmp_path, monkeypatch):
    # The start's last command failed after it took effect (OAR's `oarnodesetting -s Alive` timed out once
    # the node was Alive; a provider's create raised once slurmd had registered): a job ran there. Taken
    # out as a failed start, its container was removed and the scheduler told it absent: the job was lost.
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch)
    sched.registers = False
    sched.jobs = [Job("1", "c", 1, 2, False, 0.0)]

    def node_started(node, given_up):
        sched.state[node] = SchedNode(node, SchedState.BUSY, 0)
        sched.jobs = [Job("1", "c", 1, 2, True, 0.0, node_names=(node,))]
        raise RuntimeError("oarnodesetting: timed out")

    sched.node_started = node_started
    step(ctl)
    step(ctl)
    step(ctl)
    assert "c-0" in prov.nodes and [c for c in sched.absent_calls if c[0] == "c-0"] == []
    assert ("failed", "c-0") not in kinds(paths)
    # The error is still told, with the node it concerns.
    assert any(e["kind"] == "started" and "oarnodesetting: timed out" in e.get("reason", "") for e in read_events(paths.events))


def test_a_start_that_failed_before_its_node_came_into_service_is_taken_out(tmp_path, monkeypatch):
    # The same failure with the node not in service: a failed start, counted, its container removed.
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch, max_start_failures=1)
    sched.registers = False
    sched.jobs = [Job("1", "c", 1, 2, False, 0.0)]

    def node_started(node, given_up):
        raise RuntimeError("oarnodesetting: timed out")

    sched.node_started = node_started
    step(ctl)
    step(ctl)
    step(ctl)
    # Removed, and not started again at once: the name waits out its backoff (another is started).
    assert "c-0" not in prov.nodes and ("c-0", "could not start: oarnodesetting: timed out; retried in 10 s") in sched.absent_calls
    assert counts(ctl)["c-0"] == 1 and ("failed", "c-0") in kinds(paths)
