"""Discrete-event replay of a job log on one elastic node set.

The batch scheduler is FCFS with EASY backfilling over whole nodes; the scaling policy is any
`(Snapshot) -> Plan` function and its plans are applied as the live controller applies them. The policy is
asked after every change (job submitted or ended, node ready or gone, a node's idle timeout reached), never
on a clock tick, so its reaction time is zero and a slow policy only makes the simulation slower.

On a machine of thousands of nodes (`bench/simulate_speed.py --scale 20`) the cost is in the nodes: nodes
started, removed or gone idle together are one event, and snapshots show the nodes through views that build a
`Node` only for a node the policy reads (it counts the others), so a call costs what the policy names.
"""

from __future__ import annotations

import heapq
import math
from array import array
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, count, islice, repeat
from operator import eq, le
from typing import NamedTuple, TypeVar, overload

from accordion.model import IdleRun, Job, Node, NodeSetNodes, NodeSetSpec, NodeState, Plan, Snapshot
from accordion.simulator.traces import TraceJob

Policy = Callable[[Snapshot], Plan]
NODESET = "sim"

ABSENT, STARTING, IDLE, BUSY, DRAINING = (NodeState.ABSENT, NodeState.STARTING, NodeState.IDLE, NodeState.BUSY, NodeState.DRAINING)
_END, _READY, _GONE, _WAKE = range(4)
T = TypeVar("T")


class SimulationError(RuntimeError):
    pass


@dataclass(frozen=True)
class ClusterModel:
    max_nodes: int
    cpus_per_node: int
    min_nodes: int = 0
    boot_time: float = 0.15  # the live cluster's measured cold start, 0.12-0.14 s, rounded up (README, Benchmarks)
    stop_time: float = 0.2

    def nodes_for(self, job: TraceJob) -> int:
        """Whole nodes: a job never shares a node, which is what makes node counts comparable."""
        return max(job.nodes, -(-job.procs // self.cpus_per_node))


def fit_to(cluster: ClusterModel, jobs: Sequence[TraceJob]) -> tuple[list[TraceJob], list[TraceJob]]:
    """The jobs that fit in the cluster, and those larger than it."""
    fits: list[TraceJob] = []
    too_big: list[TraceJob] = []
    for j in jobs:
        (fits if cluster.nodes_for(j) <= cluster.max_nodes else too_big).append(j)
    return fits, too_big


@dataclass
class Run:
    """What happened to the jobs and the node set during one simulation."""

    policy: str
    cluster: ClusterModel
    jobs: Sequence[TraceJob]
    nodes: list[int]  # per job, as replayed
    start: array  # per job; nan: never started
    begin: float
    end: float
    node_seconds: float  # provisioned: starting, idle, busy or leaving
    node_starts: int
    killed: int
    policy_calls: int
    # Change points (time, demand: cores of queued and running jobs, provisioned nodes, busy nodes).
    timeline: tuple[array, array, array, array]


class _Nodes(Sequence[T]):
    """Some of the engine's nodes as the policy reads them: a `Node` (or a name) is built only when the policy
    looks at that node, and a `Node` once per state the node enters. The policy counts most nodes of a large
    machine (busy ones, idle ones a job was fitted onto) and names few: building them all on every call was
    most of its cost (README, "Speed"). Made once, they show the engine's nodes as they are: a policy must not
    keep them past its call."""

    def __init__(self, read: Callable[[int], T], xs: Collection[int]) -> None:
        self.read, self.xs = read, xs

    @property
    def ordered(self) -> Sequence[int]:
        """The node numbers in order: a set's in name order, sorted when read (policies read few starting
        nodes, and busy ones only by hand); a sequence's or a dict's as they are."""
        if isinstance(self.xs, set):
            return sorted(self.xs)
        return self.xs if isinstance(self.xs, Sequence) else list(self.xs)

    def __len__(self) -> int:
        return len(self.xs)

    @overload
    def __getitem__(self, i: int) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[T]: ...
    def __getitem__(self, i: int | slice) -> T | Sequence[T]:
        if isinstance(i, slice):
            return tuple(map(self.read, self.ordered[i]))
        return self.read(self.ordered[i])

    def __iter__(self) -> Iterator[T]:
        # A dict is read from its start, not listed: the policy reads a run of idle nodes only if it is past
        # the idle timeout.
        return map(self.read, self.ordered if isinstance(self.xs, set) else self.xs)

    def __eq__(self, other: object) -> bool:
        """Equal to the same nodes in the same order, as in the tuples of an index a snapshot builds itself."""
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]


class _Runs(Sequence[IdleRun]):
    """The idle nodes in runs idle since the same time, longest idle first, as the policy reads them: a run
    and its names are made only when the policy reads it (those past the idle timeout, and one more)."""

    def __init__(self, name: Callable[[int], str], runs: dict[float, dict[int, None]]) -> None:
        self.name, self.runs = name, runs

    def __len__(self) -> int:
        return len(self.runs)

    @overload
    def __getitem__(self, i: int) -> IdleRun: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[IdleRun]: ...
    def __getitem__(self, i: int | slice) -> IdleRun | Sequence[IdleRun]:
        return tuple(self)[i]

    def __iter__(self) -> Iterator[IdleRun]:
        return (IdleRun(t, _Nodes(self.name, xs)) for t, xs in self.runs.items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]


class _Views(NamedTuple):
    """The engine's nodes by state as the policy reads them, made once."""

    starting: _Nodes[Node]
    idle: _Nodes[Node]
    busy: _Nodes[Node]
    absent: _Nodes[str]
    idle_runs: _Runs
    every: _Nodes[Node]


def _after(t: float, delay: float) -> float:
    """The first float time at which `time - t >= delay` holds, so a policy comparing durations agrees."""
    w = t + delay
    while w - t < delay:
        w = math.nextafter(w, math.inf)
    return w


class Simulation:
    """One run: the trace's jobs, one node set, one policy. Nodes are `sim-0` .. `sim-<max_nodes-1>`."""

    def __init__(
        self,
        jobs: Sequence[TraceJob],
        cluster: ClusterModel,
        policy: Policy,
        idle_timeout: float,
        name: str = "policy",
        progress: Callable[[int], None] | None = None,
        plans_on_absent: bool = False,
    ) -> None:
        self.jobs, self.cluster, self.policy, self.name, self.progress = jobs, cluster, policy, name, progress
        # Whether the scheduler counts absent and starting nodes when it reserves nodes for the first waiting
        # job: Slurm's power saving does (powered-down nodes are idle to it, resumed when a job is placed on
        # them); with Accordion absent nodes are DOWN and only nodes up count.
        self.plans_on_absent = plans_on_absent
        cpn, n = cluster.cpus_per_node, cluster.max_nodes
        self.spec = NodeSetSpec(NODESET, cluster.min_nodes, n, cpn, idle_timeout)
        self.idle_timeout = idle_timeout
        # A node never fails to start here: give the policy no reason to give up on one.
        self.resume_timeout = cluster.boot_time + 30.0
        self.sub = [j.submit for j in jobs]
        self.run_t = [j.run for j in jobs]
        self.est = [j.estimate for j in jobs]
        self.k = [cluster.nodes_for(j) for j in jobs]
        if any(k > n for k in self.k):
            raise SimulationError("a job needs more nodes than the cluster has: filter with fit_to() first")
        self.start = array("d", [math.nan]) * len(jobs)
        # Waiting jobs as the policy sees them. Running jobs are left out of snapshots: no policy reads them
        # (their nodes are busy) and they would cost time on every call.
        self.job_objs: list[Job | None] = [None] * len(jobs)
        self.queue: list[int] = []  # waiting jobs, FCFS
        self.running: dict[int, list[int]] = {}  # job -> its nodes
        self.by_end: list[tuple[float, int]] = []  # running jobs by estimated end
        self.usable: dict[int, int] = {}  # running job -> its nodes that will serve again when it ends

        self.names = [f"{NODESET}-{i}" for i in range(n)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.state = [ABSENT] * n
        self.gen = [0] * n  # bumped on every state change: events of a node's earlier life are stale
        self.since = [0.0] * n
        self.job_on = [-1] * n
        # Each node's `Node` as the policy last read it, and the gen it was built at.
        self.nodes = [Node(name, NODESET, ABSENT, 0.0) for name in self.names]
        self.built = [0] * n
        self.free_in = {STARTING: cpn, IDLE: cpn}  # CPUs free on a node in a state, if any
        self.node = self._reader()
        # The nodes by state, kept as they change (in place: `views` shows them), in the orders the policy reads
        # them (model.NodeSetNodes): snapshots are views of these, and look at no node the policy does not read.
        self.idle: list[int] = []  # sorted: jobs take the lowest-numbered idle nodes, as Slurm picks them
        # The idle nodes in runs idle since the same time, longest idle first, each in name order: dicts keep
        # those orders and forget a node that leaves in O(1) (jobs take idle nodes by name, not by age).
        self.idle_runs: dict[float, dict[int, None]] = {}
        self.starting: set[int] = set()
        self.in_use: set[int] = set()  # busy: only counted, unless a policy reads them (then sorted)
        self.absent: list[int] = list(range(n))  # longest absent first, ties in name (index) order
        self.draining = 0
        named = self.names.__getitem__
        self.views = _Views(
            _Nodes(self.node, self.starting), _Nodes(self.node, self.idle), _Nodes(self.node, self.in_use),
            _Nodes(named, self.absent), _Runs(named, self.idle_runs), _Nodes(self.node, range(n)),
        )
        self.leaving: tuple[list[int], list[int]] = ([], [])  # nodes removed in this step and their gens
        # Idle timeouts in the order they expire (nodes go idle in time order), one per batch of nodes gone
        # idle together: (when, nodes, their gens). Only the earliest is an event.
        self.expiries: deque[tuple[float, list[int], list[int]]] = deque()
        self.wake_at = math.inf
        self.idle_t = self.idle_until = math.nan  # the last _after(t, idle_timeout): nodes go idle together
        self.provisioned = self.busy = self.demand = 0
        # (time, sequence, kind, job, nodes): the job that ends (_END), or the nodes started or removed together
        # and their gens (_READY, _GONE): one event for them all, not one per node.
        self.events: list[tuple[float, int, int, int, tuple[Sequence[int], Sequence[int]]]] = []
        self.seq = 0
        self.node_seconds = 0.0
        self.node_starts = self.killed = self.calls = 0
        self.timeline = (array("d"), array("d"), array("d"), array("d"))

    # ----- nodes -----

    def _push(self, t: float, kind: int, j: int = -1, nodes: tuple[Sequence[int], Sequence[int]] = ((), ())) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, j, nodes))

    def _live(self, xs: Sequence[int], gens: Sequence[int]) -> Sequence[int]:
        """The nodes xs still in the life they had (gens): the others changed state since, and their event is
        stale. All of them, usually: that is found in C."""
        gen = self.gen
        if all(map(eq, map(gen.__getitem__, xs), gens)):
            return xs
        return [x for x, g in zip(xs, gens) if gen[x] == g]

    def _reader(self) -> Callable[[int], Node]:
        """`node(x)`: node x as the policy sees it, built once per state it enters. A closure over the node
        arrays (never rebound), as the policy reads millions of nodes on a large machine."""
        built, gen, nodes, state, since, names, free_in = self.built, self.gen, self.nodes, self.state, self.since, self.names, self.free_in

        def node(x: int) -> Node:
            if built[x] == gen[x]:
                return nodes[x]
            s = state[x]
            nodes[x] = n = Node(names[x], NODESET, s, since[x], free_in.get(s, 0))
            built[x] = gen[x]
            return n

        return node

    def _drain(self, x: int, t: float) -> None:
        """Node x (starting, busy, or draining and its job ending: see _remove) is leaving: no new jobs."""
        old = self.state[x]
        if old is STARTING:
            self.starting.discard(x)
        elif old is BUSY:
            self.in_use.discard(x)
        else:
            self.draining -= 1
        self.draining += 1
        self.gen[x] += 1
        self.state[x] = DRAINING
        self.since[x] = t

    def _idle(self, xs: list[int], t: float, was: set[int]) -> None:
        """Nodes xs (in increasing order, busy or starting: `was` is that set) become idle at t."""
        gen, state, since, job_on, runs = self.gen, self.state, self.since, self.job_on, self.idle_runs
        tied = runs.get(t)  # nodes idle since t already (the last run): they and xs are one run, in name order
        runs[t] = dict.fromkeys(sorted([*tied, *xs]) if tied else xs)
        for x in xs:
            gen[x] += 1
            state[x] = IDLE
            since[x] = t
            job_on[x] = -1
        was.difference_update(xs)
        idle = self.idle
        if idle and idle[-1] > xs[0]:
            idle += xs
            idle.sort()  # a merge of two sorted runs
        else:
            idle += xs
        if self.idle_timeout < math.inf:
            if t != self.idle_t:
                self.idle_t, self.idle_until = t, _after(t, self.idle_timeout)
            self.expiries.append((self.idle_until, xs, [gen[x] for x in xs]))

    def _still_idle(self, xs: list[int], gens: list[int]) -> bool:
        """Whether one of nodes xs is still in the life it had then (idle since). Found in C, from the last:
        jobs take the lowest-numbered idle nodes, so the last ones are those most likely still idle."""
        return any(map(eq, map(self.gen.__getitem__, reversed(xs)), reversed(gens)))

    def _expired(self, t: float) -> bool:
        """Forget idle timeouts reached by t; whether one of them is a node still idle since then."""
        expiries = self.expiries
        woke = False
        while expiries and expiries[0][0] <= t:
            _, xs, gens = expiries.popleft()
            woke = woke or self._still_idle(xs, gens)
        return woke

    def _next_wake(self) -> None:
        expiries = self.expiries
        while expiries and not self._still_idle(expiries[0][1], expiries[0][2]):
            expiries.popleft()
        if expiries and expiries[0][0] != self.wake_at:
            self.wake_at = expiries[0][0]
            self._push(self.wake_at, _WAKE)

    def _remove(self, x: int, t: float) -> None:
        self.job_on[x] = -1
        self._drain(x, t)
        self.leaving[0].append(x)
        self.leaving[1].append(self.gen[x])

    def _remove_idle(self, xs: list[int], t: float) -> None:
        """`_remove` for idle nodes the policy stops together (most stops): one pass over the idle nodes,
        not a search for each."""
        out = set(xs)
        self.idle[:] = [x for x in self.idle if x not in out]
        gen, state, since, runs = self.gen, self.state, self.since, self.idle_runs
        for x in xs:
            run = runs[since[x]]
            del run[x]
            if not run:
                del runs[since[x]]
            gen[x] += 1
            state[x] = DRAINING
            since[x] = t
        self.draining += len(xs)
        self.leaving[0].extend(xs)
        self.leaving[1].extend([gen[x] for x in xs])

    def _gone(self, xs: list[int], t: float) -> None:
        """Leaving nodes xs (in increasing order) are gone at t: reused last, in name order."""
        gen, state, since = self.gen, self.state, self.since
        for x in xs:
            gen[x] += 1
            state[x] = ABSENT
            since[x] = t
        self.absent += xs
        self.draining -= len(xs)
        self.provisioned -= len(xs)

    def _left(self, t: float) -> None:
        """The nodes removed in this step are gone once stopped: one event for them all."""
        if self.leaving[0]:
            self._push(t + self.cluster.stop_time, _GONE, nodes=self.leaving)
            self.leaving = ([], [])

    # ----- jobs -----

    def _submit(self, j: int, t: float) -> None:
        tj = self.jobs[j]
        cpn = -(-tj.procs // self.k[j])
        self.job_objs[j] = Job(tj.id, NODESET, self.k[j], cpn, False, tj.submit, True, exclusive=True)
        self.queue.append(j)
        self.demand += tj.procs

    def _start(self, j: int, t: float) -> None:
        k, idle = self.k[j], self.idle
        got = idle[:k]
        del idle[:k]
        gen, state, since, job_on, runs = self.gen, self.state, self.since, self.job_on, self.idle_runs
        for x in got:
            run = runs[since[x]]
            del run[x]
            if not run:
                del runs[since[x]]
            gen[x] += 1
            state[x] = BUSY
            since[x] = t
            job_on[x] = j
        self.in_use.update(got)
        self.busy += k
        self.running[j] = got
        self.usable[j] = len(got)
        insort(self.by_end, (t + self.est[j], j))
        self.start[j] = t
        self.job_objs[j] = None
        self._push(t + self.run_t[j], _END, j)

    def _release(self, j: int, t: float) -> None:
        """Job j leaves its nodes: they serve again, or go if they were draining."""
        got = self.running.pop(j)
        del self.usable[j]
        by_end = self.by_end
        del by_end[bisect_left(by_end, (self.start[j] + self.est[j], j))]
        self.demand -= self.jobs[j].procs
        job_on, state = self.job_on, self.state
        mine = [x for x in got if job_on[x] == j]  # the others were taken away (a killing stop)
        self.busy -= len(mine)
        back = [x for x in mine if state[x] is BUSY]
        if len(back) < len(mine):  # the others were drained while the job ran: they go now
            for x in mine:
                if state[x] is not BUSY:
                    self._remove(x, t)
        if back:
            self._idle(back, t, self.in_use)

    # ----- the batch scheduler -----

    def _reservation(self, need: int, t: float) -> tuple[float, int]:
        """EASY: when the head job can start by running jobs' estimates (the shadow time), and nodes spare at
        that time: every job estimated to end by then frees its nodes, those ending at that very moment too."""
        avail = len(self.idle) + (len(self.starting) + len(self.absent) if self.plans_on_absent else 0)
        if avail >= need:  # only when absent nodes count: the head job waits for some to start
            return t, avail - need
        shadow = math.inf
        for end, j in self.by_end:
            end = max(end, t)  # a job past its estimate is expected to end now
            if end > shadow:
                return shadow, avail - need
            avail += self.usable[j]
            if avail >= need:
                shadow = end
        if shadow < math.inf:
            return shadow, avail - need
        # Not enough nodes up even once all running jobs end: no reservation, as Slurm does while nodes are down.
        return math.inf, 0

    def _schedule(self, t: float) -> None:
        q, k, idle = self.queue, self.k, self.idle
        i = 0
        while i < len(q) and k[q[i]] <= len(idle):
            self._start(q[i], t)
            i += 1
        del q[:i]
        if not q or not idle:
            return
        shadow, extra = self._reservation(k[q[0]], t)
        est = self.est
        # Only jobs small enough for the idle nodes can start: found in C, since queues can be long.
        small = list(compress(count(1), map(le, map(k.__getitem__, islice(q, 1, None)), repeat(len(idle)))))
        started = []
        for pos in small:
            j = q[pos]
            if k[j] <= len(idle):
                before = t + est[j] <= shadow
                if before or k[j] <= extra:
                    self._start(j, t)
                    started.append(pos)
                    if not before:
                        extra -= k[j]
                    if not idle:
                        break
        for pos in reversed(started):
            del q[pos]

    # ----- the policy -----

    def _decide(self, t: float) -> None:
        jobs = tuple(map(self.job_objs.__getitem__, self.queue))
        v = self.views
        index = NodeSetNodes(v.starting, v.idle, v.busy, (), v.absent, self.draining, v.idle_runs)  # no node partly free
        plan = self.policy(Snapshot(t, (self.spec,), v.every, jobs, self.resume_timeout, {NODESET: index}))  # type: ignore[arg-type]
        self.calls += 1
        state, number = self.state, self.index.__getitem__
        idle = []
        for stop in plan.stop:
            for x in map(number, stop.nodes):
                s = state[x]
                if s is ABSENT or s is DRAINING:
                    continue
                if s is IDLE:
                    idle.append(x)
                elif s is STARTING:
                    self._remove(x, t)
                elif stop.failed:
                    # The controller deletes such a node at once: its job dies with it.
                    j = self.job_on[x]
                    self.killed += 1
                    self.busy -= 1
                    self._remove(x, t)
                    self._release(j, t)
                else:
                    self._drain(x, t)
                    self.usable[self.job_on[x]] -= 1
        if idle:
            self._remove_idle(idle, t)
        self._left(t)
        xs = [x for start in plan.start for x in map(number, start.nodes)]
        gen, since = self.gen, self.since
        for x in xs:
            if state[x] is not ABSENT:  # a node started twice in the plan is starting by its second time
                raise SimulationError(f"policy {self.name!r} started {self.names[x]}, which is {state[x].value}")
            gen[x] += 1
            state[x] = STARTING
            since[x] = t
        absent = self.absent
        if absent[: len(xs)] == xs:  # the policies start the longest absent nodes first: one cut, not a search each
            del absent[: len(xs)]
        else:
            for x in xs:
                absent.remove(x)
        self.starting.update(xs)
        self.provisioned += len(xs)
        self.node_starts += len(xs)
        if xs:
            self._push(t + self.cluster.boot_time, _READY, nodes=(xs, [gen[x] for x in xs]))

    # ----- the loop -----

    def _record(self, t: float) -> None:
        tt, demand, prov, busy = self.timeline
        if tt and demand[-1] == self.demand and prov[-1] == self.provisioned and busy[-1] == self.busy:
            return
        tt.append(t)
        demand.append(self.demand)
        prov.append(self.provisioned)
        busy.append(self.busy)

    def run(self) -> Run:
        n = len(self.jobs)
        t = self.sub[0] - self.cluster.boot_time if n else 0.0
        begin = last = t
        # A warm start: nodes the policy wants before any job (static, min_nodes) are up when the log begins.
        self._decide(t)
        self._record(t)
        self._next_wake()
        events, sub = self.events, self.sub
        i = 0
        while i < n or self.queue or self.running:
            nxt = sub[i] if i < n else math.inf
            if events and events[0][0] <= nxt:
                nxt = events[0][0]
            if nxt == math.inf:
                break  # jobs left waiting for nodes no policy will start
            t = nxt
            self.node_seconds += self.provisioned * (t - last)
            last = t
            changed = woke = False
            ready: list[int] = []
            gone: list[int] = []
            while i < n and sub[i] == t:
                self._submit(i, t)
                i += 1
                changed = True
                if self.progress and i % 4096 == 0:
                    self.progress(i)
            while events and events[0][0] == t:
                _, _, kind, j, nodes = heapq.heappop(events)
                if kind == _END:
                    if j in self.running:  # else killed earlier
                        self._release(j, t)
                        changed = True
                elif kind == _WAKE:
                    woke = self._expired(t) or woke
                else:
                    (ready if kind == _READY else gone).extend(self._live(*nodes))
            if gone:
                self._gone(sorted(gone), t)
            if ready:
                ready.sort()
                self._idle(ready, t, self.starting)
                changed = True
            if changed:
                self._schedule(t)
            # A node gone is an event only for a waiting job, which may want its slot.
            if changed or woke or (gone and self.queue):
                self._decide(t)
                self._next_wake()
            self._left(t)
            if changed or woke or gone:
                self._record(t)
        if self.progress:
            self.progress(n)
        return Run(
            self.name, self.cluster, self.jobs, self.k, self.start, begin, t, self.node_seconds,
            self.node_starts, self.killed, self.calls, self.timeline,
        )


def simulate(
    jobs: Sequence[TraceJob],
    cluster: ClusterModel,
    policy: Policy,
    idle_timeout: float,
    name: str = "policy",
    progress: Callable[[int], None] | None = None,
    plans_on_absent: bool = False,
) -> Run:
    return Simulation(jobs, cluster, policy, idle_timeout, name, progress, plans_on_absent).run()
