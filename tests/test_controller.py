"""Controller logic against in-memory stand-ins for the scheduler and provider (the live tests use real ones)."""

from __future__ import annotations

import threading

from accordion.config import ClusterConfig
from accordion.controller import Controller
from accordion.events import EventLog, read_events
from accordion.model import Job, SchedNode, SchedState, SchedulerView
from accordion.paths import ClusterPaths
from accordion.providers.base import NodeInfo, NodeSpec


class FakeProvider:
    def __init__(self, clock):
        self.clock = clock
        self.nodes: dict[str, NodeInfo] = {}
        self.fail_create = False
        self.hang: threading.Event | None = None  # create blocks until it is set

    def create(self, spec: NodeSpec) -> None:
        if self.hang is not None:
            self.hang.wait(10)
        if self.fail_create:
            raise RuntimeError("boom")
        self.nodes[spec.name] = NodeInfo(spec.name, True, self.clock())

    def delete(self, name: str) -> None:
        self.nodes.pop(name, None)

    def list(self):
        return dict(self.nodes)


class FakeScheduler:
    """Nodes register when `registers` is true; jobs are whatever the test puts in `jobs`."""

    name = "fake"

    def __init__(self, provider: FakeProvider):
        self.provider = provider
        self.registers = True
        self.jobs: list[Job] = []
        self.state: dict[str, SchedNode] = {}
        self.absent_calls: list[tuple[str, str]] = []

    def observe(self) -> SchedulerView:
        for name in self.provider.nodes:
            cur = self.state.get(name)
            if self.registers and (cur is None or cur.marked_absent):
                self.state[name] = SchedNode(name, SchedState.IDLE, 2, self.provider.clock())
        return SchedulerView(dict(self.state), list(self.jobs))

    def mark_absent(self, nodes, reason="powered off"):
        for n in nodes:
            self.absent_calls.append((n, reason))
            self.state[n] = SchedNode(n, SchedState.UNKNOWN, 0, None, reason, marked_absent=True)

    def node_starting(self, node):
        pass

    def node_started(self, node):
        pass

    def release(self, node, reason):
        cur = self.state[node]
        busy = cur.state == SchedState.BUSY
        self.state[node] = SchedNode(node, SchedState.DRAINING if busy else SchedState.DRAINED, cur.free_cpus, None, reason)

    def node_spec(self, node):
        return NodeSpec(node, 2, 512, ["true"])

    def changes(self):
        return None


def make(tmp_path, monkeypatch, **controller):
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path))
    cfg = ClusterConfig.model_validate(
        {"name": "t", "nodesets": [{"name": "c", "max_nodes": 3, "idle_timeout": 10}], "controller": controller}
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
    """Let the starts launched by the last step finish (they run beside the loop)."""
    for launch in list(ctl.launches.values()):
        launch.thread.join(10)


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


def test_node_that_never_registers_is_given_up_and_retried_within_limits(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch, resume_timeout=5, max_start_failures=2)
    sched.registers = False
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    step(ctl)
    assert set(prov.nodes) == {"c-0"}
    for _ in range(10):
        now[0] += 6
        step(ctl)
    failed = [e for e in read_events(paths.events) if e["kind"] == "failed"]
    assert "did not register within 5 s" in failed[0]["reason"]
    # Each node name is retried up to its limit, then left alone: no endless churn.
    assert sorted(e["node"] for e in failed) == ["c-0", "c-0", "c-1", "c-1", "c-2", "c-2"]
    assert prov.nodes == {}
    assert ctl.failures == {"c-0": 2, "c-1": 2, "c-2": 2}
    assert {n.state.value for n in ctl.snapshot(sched.observe(), {}, now[0]).nodes} == {"failed"}
    # The failure count survives a controller restart.
    ctl2 = Controller(ctl.config, paths, sched, prov, ctl.events, clock=ctl.clock)
    assert ctl2.failures == ctl.failures


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
    assert ctl.failures == {"c-0": 1}


def test_hung_start_does_not_block_the_loop_and_is_given_up(tmp_path, monkeypatch):
    ctl, sched, prov, now, paths = make(tmp_path, monkeypatch, resume_timeout=5)
    prov.hang = threading.Event()
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    ctl.step()
    ctl.step()  # returns while the start of c-0 is still hanging
    assert "c-0" in ctl.launches and not ctl.launches["c-0"].done()
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
    assert "c-0" not in prov.nodes and "c-0" not in ctl.launches
    assert ctl.failures == {"c-0": 1}
