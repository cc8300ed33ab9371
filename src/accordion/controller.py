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
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from accordion import policy
from accordion.config import ClusterConfig
from accordion.errors import AccordionError
from accordion.events import EventLog
from accordion.metrics import Metrics, reason_kind
from accordion.model import Node, NodeSetSpec, NodeState, Plan, SchedNode, SchedState, SchedulerView, Snapshot
from accordion.paths import ClusterPaths
from accordion.providers.base import NodeInfo, Provider
from accordion.schedulers.base import Scheduler
from accordion.store import private, read_json, write_json

log = logging.getLogger("accordion.controller")

# A scheduler may defer a pass asked for too soon after its last one (OAR's Almighty: within
# SCHEDULER_MIN_TIME_BETWEEN_2_CALLS, 1 s here) and then sleep 10 s: so ask again, a second apart.
NUDGES = 3
NUDGE_INTERVAL = 1.1
START_NUDGES = 4  # nodes booting at most, for a start to nudge (see `_act`)
# Full observations (two scheduler commands, tens of milliseconds of CPU) on a change or while nodes start
# or drain, at most this often, counted from a step's end: a busy scheduler's files change many times a
# second. The first change after a quiet spell is observed within `poll_interval`.
STEP_INTERVAL = 0.1
# A preparation that failed is not tried again before this (its cause, a full disk say, may last).
PREPARE_RETRY = 30.0


@dataclass
class Op:
    """A node start or removal running on the worker pool: a start that hangs must not stop the loop."""

    kind: str  # "start", "remove", "prepare" or "unprepare" (a prepared container no longer wanted)
    future: Future[None]
    # A start given up while it still ran: set by the loop, read by the start itself, which then makes
    # nothing more and puts nothing in service (`_start`); what it made is removed from the facts.
    abandoned: threading.Event = field(default_factory=threading.Event)


@dataclass
class Failure:
    """A node name whose last starts failed: not started again before `retry` (then with a longer wait)."""

    count: int
    reason: str
    retry: float


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
        self.settings = config.controller
        self.paths = paths
        self.scheduler = scheduler
        self.provider = provider
        self.events = events
        self.clock = clock
        self.metrics = metrics
        self.requested_at: dict[str, float] = {}
        self.nodeset_of = {n: ns.name for ns in config.nodesets for n in ns.node_names()}
        saved = read_json(paths.controller_state, {})
        saved = saved if isinstance(saved, dict) else {}
        self.failures = {name: Failure(**f) for name, f in saved.get("failures", {}).items() if isinstance(f, dict)}
        # Nodes seen in service, by their container's creation time: a node that has registered once is never
        # "starting" again, whatever the scheduler says of it while it restarts or misses pings.
        self.registered: dict[str, float] = dict(saved.get("registered", {}))
        self.last: dict[str, NodeState] = {}
        self._status_written = 0.0
        self.last_plan = Plan()
        self._status_last: dict[str, object] = {}
        self.ops: dict[str, Op] = {}
        # Starts given up (None) or failed (why) that have returned: what they made goes, unless the scheduler
        # has the node in service after all (`_reconcile`).
        self._ended: dict[str, str | None] = {}
        self._held: dict[str, str] = {}  # node -> reason, for nodes drained by someone else
        self._absent: dict[str, list[str]] = {}  # reason -> nodes taken out this step, told in `_flush`
        self._dirty = False  # failures or registrations changed this step: saved in `_flush`
        self._nudge_key: object = None  # (waiting jobs, idle nodes) last nudged for
        self._nudges_left = 0
        self._next_nudge = 0.0
        self._nudge_retry: tuple[float, str] | None = None  # (monotonic time, node): a start's nudge to ask again
        self._prepare_after = 0.0  # monotonic: no preparation before (one failed)
        self._prepare_checked = time.monotonic()  # when prepared nodes were last checked against what they were made from
        self.pool = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="node")
        # Nodes booting at once (requested, not registered yet). The pool bounds the `create` calls, but a
        # created node's agent boots after `create` returns: 280 slurmd booting together on 2 cores took
        # 15-30 s each to register and 112 missed resume_timeout (bench/burst.py). The rest of a plan's starts
        # wait for the next steps (the policy plans them again).
        self.max_booting = 4 * self.settings.workers

    def close(self) -> None:
        """Stop taking work; starts still running are left to finish (a daemon exit does not wait for them)."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ----- observe -----

    def _collect(self) -> None:
        """Report the starts and removals that finished since the last step."""
        for name, op in list(self.ops.items()):
            if not op.future.done():
                continue
            del self.ops[name]
            error = op.future.exception()
            if op.kind in ("prepare", "unprepare"):
                if error is not None:
                    log.warning("could not %s %s: %s; tried again in %.0f s", op.kind, name, error, PREPARE_RETRY)
                    self._prepare_after = time.monotonic() + PREPARE_RETRY
            elif op.kind == "remove":
                if error is not None:
                    # The container may remain: the next observation finds it and removes it again.
                    log.error("could not remove %s: %s", name, error)
            elif op.abandoned.is_set():
                # Given up while its start still ran: the failure is already reported, and the scheduler told.
                self._ended[name] = None
            elif error is None:
                self.events.emit("started", name, self.nodeset_of[name])
            else:
                # Its last command may have failed after taking effect (OAR's Alive sent, then a timeout): the
                # next observation tells (`_reconcile`).
                self._ended[name] = f"could not start: {error}"
        self._flush()

    def _submit(self, name: str, kind: str, *, nudge: bool = False) -> None:
        """Run a start, removal or preparation of `name` on the pool, after the one in flight, if any (a
        preparation the policy overtook: the start then finds the node prepared)."""
        abandoned = threading.Event()
        work: Callable[[], None] = {
            "start": lambda: self._start(name, nudge, abandoned),
            "remove": lambda: self.provider.delete(name),
            "unprepare": lambda: self.provider.delete(name),
            "prepare": lambda: self.provider.prepare(self.scheduler.node_spec(name)),
        }[kind]
        op = self.ops.get(name)
        self.ops[name] = Op(kind, self.pool.submit(_after, op.future if op is not None else None, work), abandoned)

    def _take_out(self, name: str, reason: str, kind: str = "removed", *, tell: bool = True, failed: bool = False) -> None:
        """The one way out for a node: its container is deleted on the pool (a start still running is
        abandoned and removed once it returns), and the scheduler is told it has none, with one reason.
        `tell` false keeps a drain someone else set, with their reason; `failed` counts a failed start,
        which delays the name's next start (see `_state`). Only for nodes the scheduler runs nothing on, or
        whose jobs it has just been told are lost: a busy node leaves by draining first (`release`)."""
        op = self.ops.get(name)
        if op is None or op.kind in ("prepare", "unprepare"):
            self._submit(name, "remove")
        elif op.kind == "start":
            op.abandoned.set()
        self.registered.pop(name, None)
        if failed:
            previous = self.failures.get(name)
            count = previous.count + 1 if previous else 1
            over = count - self.settings.max_start_failures
            wait = 0.0 if over < 0 else min(self.settings.retry_backoff_max, self.settings.retry_backoff * 2**over)
            self.failures[name] = Failure(count, reason, self.clock() + wait)
            reason += f"; retried in {wait:.0f} s" if wait else ""
            kind = "failed"
        self._dirty = True
        if tell:
            self._absent.setdefault(reason, []).append(name)
        self.events.emit(kind, name, self.nodeset_of.get(name, ""), reason)

    def _flush(self) -> None:
        """Save and tell the scheduler what `_take_out` decided: once per step and reason, not once per node
        (280 nodes timing out together were 840 scheduler commands in a row)."""
        if self._dirty:
            self._save()
            self._dirty = False
        absent, self._absent = self._absent, {}
        for reason, names in absent.items():
            self.scheduler.mark_absent(names, reason)

    def _reconcile(self, view: SchedulerView, containers: dict[str, NodeInfo]) -> None:
        """Make provider and scheduler agree before deciding anything (starts and removals in flight aside)."""
        for name in self.ops:
            containers.pop(name, None)
        ended, self._ended = self._ended, {}
        for name, failure in sorted(ended.items()):
            sn = view.nodes.get(name)
            if name in containers and sn is not None and not sn.marked_absent and sn.state in (SchedState.IDLE, SchedState.BUSY):
                # In service after all (it came in just as it was given up, or its start failed after putting
                # it there): a job may run there, so it stays.
                if failure is not None:
                    self.events.emit("started", name, self.nodeset_of[name], f"{failure}; in service with {self.scheduler.name}: kept")
                continue
            if failure is not None:
                containers.pop(name, None)
                self._take_out(name, failure, failed=True)
            elif containers.pop(name, None) is not None:
                self._submit(name, "remove")
        for name in sorted(set(containers) - set(self.nodeset_of)):
            del containers[name]
            self._submit(name, "remove")
            self.events.emit("removed", name, reason="not a node of this cluster")
        for name, info in sorted(containers.items()):
            sn = view.nodes.get(name)
            if not info.running:
                del containers[name]
                why = "node container exited" + (f": {info.reason}" if info.reason else "")
                # Never registered: a failed start. Registered: its jobs, if any, are requeued by the scheduler.
                self._take_out(name, why, "failed", failed=self.registered.get(name) != info.created)
            elif sn is None:
                continue
            elif sn.state == SchedState.DRAINED:
                del containers[name]
                self._take_out(name, sn.reason)
            elif sn.state == SchedState.HELD:
                # Drained by an administrator or by the scheduler, and empty: the container goes, the drain
                # and its reason stay until they resume the node.
                del containers[name]
                self._take_out(name, f"held: {sn.reason}", tell=False)
            elif sn.state == SchedState.DOWN:
                del containers[name]
                self._take_out(name, f"set down by {self.scheduler.name}: {sn.reason}", "failed")
        self._flush()
        lost: list[str] = []
        unmarked: list[str] = []
        for name in self.nodeset_of:
            sn = view.nodes.get(name)
            if name in containers or name in self.ops or sn is None or sn.marked_absent or sn.state == SchedState.HELD:
                continue
            # Jobs on a node with no container are lost: tell the scheduler now rather than after its own
            # timeout, so that they are requeued at once. Any other node just needs marking absent again.
            (lost if sn.state in (SchedState.BUSY, SchedState.DRAINING) else unmarked).append(name)
        if lost:
            self.scheduler.mark_absent(lost, "node container gone")
            for name in lost:
                self.events.emit("lost", name, self.nodeset_of[name], "node container gone while the scheduler used it")
        if unmarked:
            self.scheduler.mark_absent(unmarked)
        seen = {n: info.created for n, info in containers.items() if (sn := view.nodes.get(n)) is not None and sn.responding
                and sn.state in (SchedState.IDLE, SchedState.BUSY, SchedState.DRAINING)}
        if any(self.registered.get(n) != created for n, created in seen.items()):
            self.registered.update(seen)
            self._save()

    def _state(self, name: str, sn: SchedNode | None, info: NodeInfo | None, now: float) -> tuple[NodeState, float, int, int]:
        """A node's state for the policy, from the scheduler's and the provider's facts: (state, since, free
        CPUs, free memory). Computed here only; status, metrics and the policy all read it."""
        op = self.ops.get(name)
        failure = self.failures.get(name)
        waiting = failure is not None and failure.count >= self.settings.max_start_failures and now < failure.retry
        # A name being prepared or unprepared is absent: the policy may start it (the start waits for that op).
        # A start still running whose node the scheduler already has in service (it registered, and may run a
        # job, before the start's last step: a slow create, OAR's Alive before a nudge) is what the scheduler says.
        in_service = info is not None and sn is not None and not sn.marked_absent and sn.state in (SchedState.IDLE, SchedState.BUSY)
        if op is not None and op.kind not in ("prepare", "unprepare") and not (op.kind == "start" and in_service):
            if op.kind == "start" and not op.abandoned.is_set():
                return NodeState.STARTING, self.requested_at.get(name, now), 0, 0
            # On its way out: neither used nor reused yet.
            return (NodeState.FAILED if waiting else NodeState.DRAINING), now, 0, 0
        if info is None:
            if sn is not None and sn.state == SchedState.HELD:
                return NodeState.HELD, now, 0, 0
            if waiting:
                return NodeState.FAILED, now, 0, 0
            # When it went away: the policy reuses the longest-absent names first, so a node is not
            # recreated under the name the scheduler may still be sending old messages to.
            return NodeState.ABSENT, (sn.absent_since or 0.0) if sn is not None else 0.0, 0, 0
        if sn is None or sn.state == SchedState.UNKNOWN:
            if self.registered.get(name) == info.created:
                return NodeState.UNRESPONSIVE, now, 0, 0
            return NodeState.STARTING, info.created, 0, 0
        if sn.state == SchedState.IDLE:
            return NodeState.IDLE, max(sn.idle_since or info.created, info.created), sn.free_cpus, sn.free_mem
        if sn.state == SchedState.BUSY:
            # A busy node drained by someone else takes no new job: it has no room to offer.
            return NodeState.BUSY, now, 0 if sn.held else sn.free_cpus, 0 if sn.held else sn.free_mem
        return NodeState.DRAINING, now, 0, 0

    def snapshot(self, view: SchedulerView, containers: dict[str, NodeInfo], now: float) -> Snapshot:
        pins = read_pins(self.paths)
        nodes = []
        for name, ns in self.nodeset_of.items():
            sn, info = view.nodes.get(name), containers.get(name)
            state, since, free, mem = self._state(name, sn, info, now)
            nodes.append(Node(name, ns, state, since, free, mem))
        specs = tuple(
            NodeSetSpec(ns.name, ns.min_nodes, ns.max_nodes, ns.cpus, ns.idle_timeout, pins.get(ns.name), ns.memory_mb)
            for ns in self.config.nodesets
        )
        return Snapshot(now, specs, tuple(nodes), tuple(view.jobs), self.settings.resume_timeout)

    # ----- act -----

    def _act(self, plan: Plan, snap: Snapshot, view: SchedulerView) -> None:
        states = {n.name: n.state for n in snap.nodes}
        release: dict[str, list[str]] = {}
        for stop in plan.stop:
            for node in stop.nodes:
                op = self.ops.get(node)
                sn = view.nodes.get(node)
                if states[node] == NodeState.STARTING:
                    # Never registered, so nothing runs on it.
                    self._take_out(node, stop.reason, failed=stop.failed)
                elif op is not None:
                    continue  # in service, its start still ending: it leaves by draining, once that is done
                elif sn is not None and sn.state not in (SchedState.IDLE, SchedState.BUSY):
                    continue  # unresponsive or leaving: the scheduler decides first
                else:
                    release.setdefault(stop.reason, []).append(node)
                    self.events.emit("draining", node, stop.nodeset, stop.reason)
                if self.metrics:
                    self.metrics.scale_downs.labels(self.config.name, stop.nodeset, reason_kind(stop.reason)).inc()
        self._flush()
        for reason, names in release.items():
            self.scheduler.release(names, reason)
        booting = sum(1 for n in snap.nodes if n.state == NodeState.STARTING)
        starts = [(node, start) for start in plan.start for node in start.nodes][: max(0, self.max_booting - booting)]
        # A few nodes started for waiting jobs (a cold start) each ask for a pass once up; in a burst the
        # tries would cost more CPU than they save (each node's registration waits its turn then), and
        # the loop's own nudges and every job's end already bring passes.
        few = booting + len(starts) <= START_NUDGES
        wanted = {ns for j in snap.waiting for ns in j.candidates} if few else set()
        for node, start in starts:
            self.events.emit("requested", node, start.nodeset, start.reason)
            self.requested_at[node] = snap.now
            if self.metrics:
                self.metrics.scale_ups.labels(self.config.name, start.nodeset, reason_kind(start.reason)).inc()
            self._submit(node, "start", nudge=start.nodeset in wanted)
        if starts:
            # Beside the starts, not before them: a node's agent takes tens of milliseconds to register, and a
            # cold start need not wait for this command too. One registered before it is only kept out of
            # service until it (Slurm: drained), and a start's own nudge waits until its node is in service.
            self.scheduler.nodes_starting([node for node, _ in starts])

    def _prepare(self, snap: Snapshot, prepared: dict[str, NodeInfo]) -> None:
        """Keep each node set's next `prepared_nodes` names (the absent ones the policy starts first) prepared
        by the provider, so that a cold start only starts a container (README, "What a cold start waits
        for"). A prepared name no longer among them, or not ready (a preparation cut short), is removed; a
        ready one is checked every `resync_interval` against what it would be made from now (an account
        added on the host, say), which costs nothing when nothing changed. Only while no node starts:
        preparing is the same work as a start, and a burst needs the machine."""
        if not self.provider.prepares:
            return
        want = {n for spec in snap.nodesets for n in snap.of(spec.name).absent[: self.settings.prepared_nodes]}
        stale = {n for n, info in prepared.items() if info.reason}
        for name in sorted((set(prepared) - want) | stale):
            if name not in self.ops:
                self._submit(name, "unprepare")
        now = time.monotonic()
        starting = any(op.kind == "start" for op in self.ops.values()) or any(n.state == NodeState.STARTING for n in snap.nodes)
        if starting or now < self._prepare_after:
            return
        ready = set(prepared) - stale
        todo = want - ready
        if now - self._prepare_checked >= self.settings.resync_interval:
            self._prepare_checked = now
            todo |= want & ready
        for name in sorted(todo):
            if name not in self.ops:
                self._submit(name, "prepare")

    def _nudge(self, snap: Snapshot) -> None:
        """A job waits and an idle node of its node sets has room: ask the scheduler for a pass now rather
        than at its own next tick, and again a second and two later, once per situation: the waiting jobs and
        the nodes in service. In service, not idle: a nudge may itself make a node busy for a moment (Slurm's),
        and that must not count as a new situation, or a job the scheduler will not start is nudged for ever."""
        waiting = snap.waiting
        sets = {ns for j in waiting for ns in j.candidates}
        mine = [n for n in snap.nodes if n.nodeset in sets]
        # Not a node every waiting job excludes (one reserved for later): none of them can start there, and
        # Slurm's nudge would reset its idle time, keeping it for as long as the queue changes.
        shut = set(waiting[0].excluded) if waiting else set()
        for j in waiting[1:]:
            if not shut:
                break
            shut.intersection_update(j.excluded)
        idle = sorted(n.name for n in mine if n.state == NodeState.IDLE and n.free_cpus > 0 and n.name not in shut)
        if not idle:
            self._nudges_left = 0
            return
        key = (frozenset(j.id for j in waiting), frozenset(n.name for n in mine if n.state in (NodeState.IDLE, NodeState.BUSY)))
        if key != self._nudge_key:
            self._nudge_key, self._nudges_left, self._next_nudge = key, NUDGES, 0.0
        now = time.monotonic()
        if self._nudges_left and now >= self._next_nudge:
            wait = self.scheduler.nudge(idle)
            # Too soon for the scheduler: asked again when it says. Counted all the same, so that a scheduler
            # busy every second is not asked for ever.
            self._nudges_left -= 1
            self._next_nudge = now + (wait if wait > 0 else NUDGE_INTERVAL)

    def _start(self, node: str, nudge: bool, abandoned: threading.Event) -> None:
        """Runs on the pool. `nudge`: jobs wait for this node set, so ask for a scheduling pass as soon as the
        node is up, not once the loop has seen it idle (an observation later: a fifth of a cold start).
        `abandoned`: the loop gave the start up (it took longer than resume_timeout, queued behind others in
        a burst or waiting for the node's agent) and told the scheduler the node is absent: nothing more is
        made, and the node is not put in service after that, or a job could land on a node being removed."""
        if abandoned.is_set():
            return
        self.provider.create(self.scheduler.node_spec(node))
        if abandoned.is_set():
            return
        self.scheduler.node_started(node, abandoned.is_set)
        if nudge and not abandoned.is_set():
            try:
                wait = self.scheduler.nudge([node])
                if 0 < wait <= NUDGE_INTERVAL:
                    # Too soon for the scheduler (OAR: its pass of the job's submission took this second): the
                    # loop asks again at the moment it names (`_retry_nudge`), not at the end of its next step,
                    # and this worker is free for other starts meanwhile.
                    self._nudge_retry = (time.monotonic() + wait, node)
            except Exception as exc:  # the node did start; the loop nudges again once it sees the node idle
                log.warning("nudge after starting %s failed: %s", node, exc)

    def _retry_nudge(self) -> None:
        """The nudge a start was told to ask again, once its time has come (a tuple, swapped whole: the start
        sets it on the pool, the loop takes it)."""
        retry = self._nudge_retry
        if retry is None or time.monotonic() < retry[0]:
            return
        self._nudge_retry = None
        try:
            self.scheduler.nudge([retry[1]])
        except Exception as exc:  # the loop's own nudges follow once it sees the node idle
            log.warning("nudge for %s failed: %s", retry[1], exc)

    def _transitions(self, snap: Snapshot) -> None:
        for n in snap.nodes:
            before = self.last.get(n.name)
            if before is not None and before != n.state:
                # Registration is often faster than one poll: a node may go from absent to busy unseen.
                if before in (NodeState.ABSENT, NodeState.STARTING) and n.state in (NodeState.IDLE, NodeState.BUSY):
                    asked = self.requested_at.pop(n.name, None)
                    # n.since is already the registered node's (idle since): time it from the request.
                    self.events.emit("registered", n.name, n.nodeset, f"{snap.now - asked:.2f} s after it was requested" if asked is not None else "")
                    if self.failures.pop(n.name, None) is not None:
                        self._save()
                    if asked is not None and self.metrics:
                        self.metrics.provision.labels(self.config.name, n.nodeset).observe(snap.now - asked)
                if n.state == NodeState.BUSY:
                    self.events.emit("busy", n.name, n.nodeset)
                elif n.state == NodeState.IDLE and before == NodeState.BUSY:
                    self.events.emit("idle", n.name, n.nodeset)
            self.last[n.name] = n.state

    def _save(self) -> None:
        write_json(
            self.paths.controller_state,
            {"failures": {n: asdict(f) for n, f in self.failures.items()}, "registered": self.registered},
        )

    def _write_status(self, snap: Snapshot) -> None:
        status = {
            # A busy, draining or failed node's `since` is the step's own time: null, so that the file (and a
            # sample) is rewritten when something changed, not at every step of a busy cluster.
            "nodes": [
                {"name": n.name, "nodeset": n.nodeset, "state": n.state, "since": None if n.since == snap.now else n.since}
                for n in snap.nodes
            ],
            "jobs": [
                {"id": j.id, "nodeset": j.nodeset, "nodes": j.nodes, "cpus_per_node": j.cpus_per_node, "running": j.running,
                 "reason": j.reason, "count": j.count, "waiting": j.waiting}
                for j in snap.jobs
            ],
            "pins": {s.name: s.pinned for s in snap.nodesets if s.pinned is not None},
            # Why a name is out of use: its last start failures (and when it is retried), or a drain by
            # an administrator or by the scheduler (until they resume it).
            "failures": {n: asdict(f) for n, f in self.failures.items()},
            "held": {n.name: self._held.get(n.name, "") for n in snap.nodes if n.state == NodeState.HELD},
        }
        # Compared as objects: encoding 4,000 nodes and their jobs at every step to compare costs more.
        if status != self._status_last or snap.now - self._status_written > 2:
            write_json(self.paths.state / "status.json", {"ts": snap.now, **status})
            if status != self._status_last:
                self._sample(snap)
            self._status_last, self._status_written = status, snap.now

    def _sample(self, snap: Snapshot) -> None:
        """One line of the time series `accordion report` plots, written only when something changed."""
        sets = {}
        for spec in snap.nodesets:
            tally = snap.tally[spec.name]
            sets[spec.name] = {
                "provisioned": tally.nodes.total() - tally.nodes[NodeState.ABSENT] - tally.nodes[NodeState.FAILED],
                "busy": tally.nodes[NodeState.BUSY],
                "pending_cpus": tally.waiting_cpus,
                "pending_jobs": tally.waiting_jobs,
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
        prepared = {n: info for n, info in containers.items() if info.prepared}
        for name in prepared:
            del containers[name]  # not nodes: nothing runs in them
        self._held = {n: sn.reason for n, sn in view.nodes.items() if sn.held}
        # Reconciled, a copy: what it takes out goes on the pool and reads as leaving; the snapshot keeps every
        # container, for a start still ending whose node is in service (`_state`).
        self._reconcile(view, dict(containers))
        now = self.clock()
        snap = self.snapshot(view, containers, now)
        self._transitions(snap)
        plan = policy.decide(snap)
        self._act(plan, snap, view)
        self._prepare(snap, prepared)
        self._nudge(snap)
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
        # A change is looked at twice: a scheduler's files may change before what they hold shows in its
        # commands (Grid Engine writes a job's script, then qstat lists the job: a cold start waited for
        # the next resync, 2 s).
        again = False
        failing = ""
        while not stop.is_set():
            self._retry_nudge()
            token = self._token()
            now = time.monotonic()
            nudge_due = self._nudges_left > 0 and now >= self._next_nudge
            since = now - last_step
            changed = token != last_token
            due = (moving or changed or again) and since >= max(settings.poll_interval, STEP_INTERVAL)
            if due or nudge_due or since >= settings.resync_interval:
                again = changed
                last_token = token
                try:
                    self._supervise()
                    self.step()
                    moving = bool(self.last_plan.start or self.last_plan.stop or self.ops) or any(
                        s in (NodeState.STARTING, NodeState.DRAINING) for s in self.last.values()
                    )
                    failing = ""
                except Exception as exc:
                    if isinstance(exc, (OSError, AccordionError)):
                        # Disk full, a listing that failed, ...: nothing was acted on, state files are written
                        # atomically, so retrying once the cause is gone is all there is to do.
                        log.error("controller step failed: %s; retrying", exc)
                    else:
                        log.exception("controller step failed; retrying")
                    if str(exc) != failing:  # one event per distinct failure, not one per retry
                        failing = str(exc)
                        self.events.emit("controller", reason=f"step failed: {failing}; retrying")
                    if self.metrics:
                        self.metrics.errors.labels(self.config.name).inc()
                    stop.wait(1.0)
                last_step = time.monotonic()
            stop.wait(settings.poll_interval)
        self.close()
        self.events.emit("controller", reason="stopped")


def _after(before: Future[None] | None, work: Callable[[], None]) -> None:
    """`work` once `before` is done, whatever its outcome (that is its own op's to report). The pool takes
    work in order, so `before` already runs or has run: waiting cannot deadlock."""
    if before is not None:
        wait([before])
    work()


def serve(controller: Controller) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller.run(stop)
