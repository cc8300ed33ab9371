"""The controller loop: observe (scheduler + provider) -> decide (policy) -> act (provider + scheduler).

The controller keeps almost no state of its own: which nodes exist comes from the provider, what they
do from the scheduler, how long they have idled from the scheduler's last-busy time and when they were
created from the provider. What it does keep (start failures per node) is written atomically, so a
controller killed at any point and restarted finds the same cluster and neither loses nor doubles nodes.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable

from accordion import policy
from accordion.config import ClusterConfig
from accordion.events import EventLog
from accordion.metrics import Metrics, reason_kind
from accordion.model import Node, NodeSetSpec, NodeState, Plan, SchedState, SchedulerView, Snapshot
from accordion.paths import ClusterPaths
from accordion.providers.base import NodeInfo, Provider
from accordion.schedulers.base import Scheduler
from accordion.store import private, read_json, write_json

log = logging.getLogger("accordion.controller")


class Launch:
    """One node start running beside the loop: a start that hangs must not stop the controller."""

    def __init__(self, start: Callable[[], None]) -> None:
        self.error: Exception | None = None
        # A daemon thread: a controller that exits does not wait for a hung start; the provider's delete
        # (on restart or `down`) cleans up what it left.
        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.abandoned = False
        self.thread.start()

    def _run(self, start: Callable[[], None]) -> None:
        try:
            start()
        except Exception as exc:  # reported by the loop, which owns events and failure counts
            self.error = exc

    def done(self) -> bool:
        return not self.thread.is_alive()


def read_pins(paths: ClusterPaths) -> dict[str, int]:
    data = read_json(paths.state / "scale.json", {})
    return {k: int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def write_pins(paths: ClusterPaths, pins: dict[str, int]) -> None:
    write_json(paths.state / "scale.json", pins)


class Controller:
    def __init__(
        self,
        config: ClusterConfig,
        paths: ClusterPaths,
        scheduler: Scheduler,
        provider: Provider,
        events: EventLog,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.paths = paths
        self.scheduler = scheduler
        self.provider = provider
        self.events = events
        self.clock = clock
        self.metrics = metrics
        self.requested_at: dict[str, float] = {}
        self.nodeset_of = {n: ns.name for ns in config.nodesets for n in ns.node_names()}
        saved = read_json(paths.controller_state, {})
        self.failures: dict[str, int] = dict(saved.get("failures", {})) if isinstance(saved, dict) else {}
        self.last: dict[str, NodeState] = {}
        self._status_written = 0.0
        self.last_plan = Plan()
        self._status_blob = ""
        self.launches: dict[str, Launch] = {}

    # ----- observe -----

    def _collect(self) -> None:
        """Report the starts that finished since the last step."""
        for name, launch in list(self.launches.items()):
            if not launch.done():
                continue
            del self.launches[name]
            if launch.abandoned:
                # Given up while its start still ran: the failure is already reported; remove what it made.
                self.provider.delete(name)
            elif launch.error is None:
                self.events.emit("started", name, self.nodeset_of[name])
            else:
                self._start_failed(name, f"could not start: {launch.error}")

    def _start_failed(self, name: str, reason: str) -> None:
        self.failures[name] = self.failures.get(name, 0) + 1
        self._save()
        self.scheduler.mark_absent([name], reason)
        self.events.emit("failed", name, self.nodeset_of[name], reason)

    def _reconcile(self, view: SchedulerView, containers: dict[str, NodeInfo]) -> None:
        """Make provider and scheduler agree before deciding anything (starts still running aside)."""
        for name in self.launches:
            containers.pop(name, None)
        for name in sorted(set(containers) - set(self.nodeset_of)):
            self.provider.delete(name)
            self.events.emit("removed", name, reason="not a node of this cluster")
            del containers[name]
        handled: set[str] = set()
        for name, info in sorted(containers.items()):
            sn = view.nodes.get(name)
            handled.add(name)
            if not info.running:
                self.provider.delete(name)
                del containers[name]
                why = "node container exited" + (f": {info.reason}" if info.reason else "")
                if sn is None or sn.state == SchedState.UNKNOWN:
                    self._start_failed(name, why)  # it never came up: counts towards max_start_failures
                else:
                    self.scheduler.mark_absent([name], why)
                    self.events.emit("failed", name, self.nodeset_of[name], why)
            elif sn is not None and sn.state == SchedState.DRAINED:
                self.provider.delete(name)
                del containers[name]
                self.scheduler.mark_absent([name])
                self.events.emit("removed", name, self.nodeset_of[name], sn.reason)
            else:
                handled.discard(name)
        lost, unmarked = [], []
        for name in self.nodeset_of:
            sn = view.nodes.get(name)
            if name in containers or name in handled or name in self.launches or sn is None or sn.marked_absent:
                continue
            # In use (or usable) by the scheduler with no container: its jobs are lost. A node that is only
            # unknown or drained by Accordion just needs to be marked absent again.
            usable = sn.state in (SchedState.IDLE, SchedState.BUSY, SchedState.DRAINING)
            (lost if usable else unmarked).append(name)
        if lost:
            # The scheduler believes in nodes that no longer exist: tell it now rather than after its own
            # timeout, so their jobs are requeued at once.
            self.scheduler.mark_absent(lost, "node container gone")
            for name in lost:
                self.events.emit("lost", name, self.nodeset_of[name], "node container gone while the scheduler used it")
        if unmarked:
            self.scheduler.mark_absent(unmarked)

    def snapshot(self, view: SchedulerView, containers: dict[str, NodeInfo], now: float) -> Snapshot:
        pins = read_pins(self.paths)
        nodes = []
        for name, ns in self.nodeset_of.items():
            sn = view.nodes.get(name)
            info = containers.get(name)
            free = 0
            launch = self.launches.get(name)
            failed = self.failures.get(name, 0) >= self.config.controller.max_start_failures
            if launch is not None:
                # An abandoned start is on its way out: the policy must neither use nor reuse its name yet.
                state = (NodeState.FAILED if failed else NodeState.DRAINING) if launch.abandoned else NodeState.STARTING
                since = self.requested_at.get(name, now)
            elif info is None:
                # When it went away: the policy reuses the longest-absent names first, so a node is not
                # recreated under the name the scheduler may still be sending old messages to.
                gone = sn.absent_since if sn is not None and sn.absent_since is not None else 0.0
                state, since = (NodeState.FAILED if failed else NodeState.ABSENT), gone
            elif sn is None or sn.state == SchedState.UNKNOWN:
                state, since = NodeState.STARTING, info.created
            elif sn.state == SchedState.IDLE:
                state, since, free = NodeState.IDLE, max(sn.idle_since or info.created, info.created), sn.free_cpus
            elif sn.state == SchedState.BUSY:
                state, since, free = NodeState.BUSY, now, sn.free_cpus
            else:
                state, since = NodeState.DRAINING, now
            nodes.append(Node(name, ns, state, since, free))
        specs = tuple(
            NodeSetSpec(ns.name, ns.min_nodes, ns.max_nodes, ns.cpus, ns.idle_timeout, pins.get(ns.name))
            for ns in self.config.nodesets
        )
        return Snapshot(now, specs, tuple(nodes), tuple(view.jobs), self.config.controller.resume_timeout)

    # ----- act -----

    def _act(self, plan: Plan, snap: Snapshot) -> None:
        states = {n.name: n.state for n in snap.nodes}
        for stop in plan.stop:
            launch = self.launches.get(stop.node)
            if launch is not None or stop.failed or states[stop.node] == NodeState.STARTING:
                if launch is not None:
                    launch.abandoned = True  # its start still runs: deleted once it returns (_collect)
                else:
                    self.provider.delete(stop.node)
                if stop.failed:
                    self._start_failed(stop.node, stop.reason)
                else:
                    self.scheduler.mark_absent([stop.node])
                    self.events.emit("removed", stop.node, stop.nodeset, stop.reason)
            else:
                self.scheduler.release(stop.node, stop.reason)
                self.events.emit("draining", stop.node, stop.nodeset, stop.reason)
            if self.metrics:
                self.metrics.scale_downs.labels(self.config.name, stop.nodeset, reason_kind(stop.reason)).inc()
        for start in plan.start:
            self.events.emit("requested", start.node, start.nodeset, start.reason)
            self.requested_at[start.node] = snap.now
            if self.metrics:
                self.metrics.scale_ups.labels(self.config.name, start.nodeset, reason_kind(start.reason)).inc()
            self.launches[start.node] = Launch(lambda node=start.node: self._start(node))

    def _start(self, node: str) -> None:
        self.scheduler.node_starting(node)
        self.provider.create(self.scheduler.node_spec(node))
        self.scheduler.node_started(node)

    def _transitions(self, snap: Snapshot) -> None:
        for n in snap.nodes:
            before = self.last.get(n.name)
            if before is not None and before != n.state:
                # Registration is often faster than one poll: a node may go from absent to busy unseen.
                if before in (NodeState.ABSENT, NodeState.STARTING) and n.state in (NodeState.IDLE, NodeState.BUSY):
                    asked = self.requested_at.pop(n.name, None)
                    # n.since is already the registered node's (idle since): time it from the request.
                    self.events.emit("registered", n.name, n.nodeset, f"{snap.now - asked:.2f} s after it was requested" if asked is not None else "")
                    if self.failures.pop(n.name, None):
                        self._save()
                    if asked is not None and self.metrics:
                        self.metrics.provision.labels(self.config.name, n.nodeset).observe(snap.now - asked)
                if n.state == NodeState.BUSY:
                    self.events.emit("busy", n.name, n.nodeset)
                elif n.state == NodeState.IDLE and before == NodeState.BUSY:
                    self.events.emit("idle", n.name, n.nodeset)
            self.last[n.name] = n.state

    def _save(self) -> None:
        write_json(self.paths.controller_state, {"failures": self.failures})

    def _write_status(self, snap: Snapshot) -> None:
        blob = json.dumps(
            {
                "nodes": [{"name": n.name, "nodeset": n.nodeset, "state": n.state.value, "since": n.since} for n in snap.nodes],
                "jobs": [
                    {"id": j.id, "nodeset": j.nodeset, "nodes": j.nodes, "cpus_per_node": j.cpus_per_node, "running": j.running, "reason": j.reason}
                    for j in snap.jobs
                ],
                "pins": {s.name: s.pinned for s in snap.nodesets if s.pinned is not None},
            },
            sort_keys=True,
        )
        if blob != self._status_blob or snap.now - self._status_written > 2:
            write_json(self.paths.state / "status.json", {"ts": snap.now, **json.loads(blob)})
            if blob != self._status_blob:
                self._sample(snap)
            self._status_blob, self._status_written = blob, snap.now

    def _sample(self, snap: Snapshot) -> None:
        """One line of the time series `accordion report` plots, written only when something changed."""
        sets = {}
        for spec in snap.nodesets:
            nodes = [n for n in snap.nodes if n.nodeset == spec.name]
            waiting = [j for j in snap.jobs if j.nodeset == spec.name and not j.running and j.wants_resources]
            sets[spec.name] = {
                "provisioned": sum(1 for n in nodes if n.state not in (NodeState.ABSENT, NodeState.FAILED)),
                "busy": sum(1 for n in nodes if n.state == NodeState.BUSY),
                "pending_cpus": sum(j.nodes * j.cpus_per_node for j in waiting),
                "pending_jobs": len(waiting),
                "max": spec.max_nodes,
            }
        line = json.dumps({"ts": round(snap.now, 3), "nodesets": sets}, separators=(",", ":")) + "\n"
        with open(self.paths.state / "samples.jsonl", "a", opener=private) as f:
            f.write(line)

    def step(self) -> Plan:
        t0 = time.monotonic()
        self._collect()
        view = self.scheduler.observe()
        containers = self.provider.list()
        self._reconcile(view, containers)
        now = self.clock()
        snap = self.snapshot(view, containers, now)
        self._transitions(snap)
        plan = policy.decide(snap)
        self._act(plan, snap)
        self.last_plan = plan
        self._write_status(snap)
        if self.metrics:
            self.metrics.update(snap)
            self.metrics.loop.labels(self.config.name).observe(time.monotonic() - t0)
        return plan

    def _token(self) -> object:
        try:
            pins = (self.paths.state / "scale.json").stat().st_mtime_ns
        except OSError:
            pins = None
        return (self.scheduler.changes(), pins)

    def _supervise(self) -> None:
        """Restart the scheduler's server if it died; it recovers jobs and nodes from its state directory."""
        if not self.scheduler.running():
            self.events.emit("controller", reason=f"{self.scheduler.name} server not running: restarting it")
            self.scheduler.setup()
            self.events.emit("controller", reason=f"{self.scheduler.name} server restarted")

    def run(self, stop: threading.Event) -> None:
        self.events.emit("controller", reason="started")
        settings = self.config.controller
        last_token: object = object()
        last_step = float("-inf")
        moving = True
        while not stop.is_set():
            token = self._token()
            now = time.monotonic()
            if moving or token != last_token or now - last_step >= settings.resync_interval:
                last_token, last_step = token, now
                try:
                    self._supervise()
                    self.step()
                    moving = bool(self.last_plan.start or self.last_plan.stop) or any(
                        s in (NodeState.STARTING, NodeState.DRAINING) for s in self.last.values()
                    )
                except Exception as exc:
                    if isinstance(exc, OSError):
                        # Disk full, read-only state directory, ...: state files are written atomically,
                        # so retrying once the cause is gone is all there is to do; no traceback needed.
                        log.error("controller step failed: %s; retrying", exc)
                    else:
                        log.exception("controller step failed; retrying")
                    if self.metrics:
                        self.metrics.errors.labels(self.config.name).inc()
                    stop.wait(1.0)
            stop.wait(settings.poll_interval)
        self.events.emit("controller", reason="stopped")


def serve(controller: Controller) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller.run(stop)
