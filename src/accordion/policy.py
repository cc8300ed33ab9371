"""The scaling policy: a pure function from a snapshot to a plan.

No I/O and no clock of its own: the live controller and the workload simulator call the same code with
snapshots they build, so what is proven in simulation is what runs.

Scale-up follows job shapes, not queue lengths: waiting jobs (oldest first, an array's pending tasks as
that many jobs) are fitted onto nodes that are idle, partly free or already starting, and only what does
not fit asks for new nodes, exactly as many as each job's shape on that node set needs (`shape`), with the
names it requires and never the names it excludes. A job that may run in several node sets takes nodes
from one of them. Scale-down removes nodes idle for the node set's idle timeout that no waiting job has
been fitted onto, down to `min_nodes`; the controller drains a node before removing it, so a job the
scheduler places meanwhile is never killed.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import compress, islice, repeat
from operator import attrgetter, le, lt

from accordion.model import Job, Node, NodeSetSpec, NodeState, Plan, Snapshot, Start, Stop

_INDEX = re.compile(r"(\d+)$")


@lru_cache(maxsize=1 << 16)  # the simulator sorts the same names hundreds of thousands of times
def node_order(name: str) -> tuple[str, int]:
    match = _INDEX.search(name)
    return (name[: match.start()], int(match.group(1))) if match else (name, -1)


_name = attrgetter("name")
_id = attrgetter("id")
_submit_time = attrgetter("submit_time")
_since = attrgetter("since")
_ABSENT, _STARTING, _IDLE, _BUSY = NodeState.ABSENT, NodeState.STARTING, NodeState.IDLE, NodeState.BUSY
_UNRESPONSIVE = NodeState.UNRESPONSIVE


def by_name(nodes: Iterable[Node], first: int | None = None) -> list[Node]:
    """Nodes in name order (only the first `first` of them if given); the same as
    `sorted(nodes, key=lambda n: node_order(n.name))[:first]`, with the per-node work kept in C."""
    nodes = list(nodes)
    if len(nodes) < 2:
        return nodes[:first]
    keys = list(map(node_order, map(_name, nodes)))
    if all(map(le, keys, islice(keys, 1, None))):  # already in order, as the simulator's snapshots are
        return nodes if first is None else nodes[: max(first, 0)]
    key, order = keys.__getitem__, range(len(nodes))
    picked = sorted(order, key=key) if first is None else heapq.nsmallest(first, order, key=key)
    return [nodes[i] for i in picked]


def longest_absent(nodes: Iterable[Node], first: int | None = None) -> list[Node]:
    """Absent nodes to start, longest gone first (ties in name order): a name just removed is reused last,
    so a new node does not receive what the scheduler still sends to its dead predecessor."""
    nodes = list(nodes)
    if first is not None and 0 < first < len(nodes):
        # Only nodes gone no later than the first-th longest gone can be among the first: sort those.
        since = list(map(_since, nodes))
        last = heapq.nsmallest(first, since)[-1]
        nodes = list(compress(nodes, map(le, since, repeat(last))))
    return sorted(by_name(nodes), key=_since)[:first]


def fcfs(jobs: list[Job]) -> list[Job]:
    """Oldest first, ties by job id: `sorted(jobs, key=lambda j: (j.submit_time, node_order(j.id)))`
    done as two stable sorts, secondary key first, with the per-job work kept in C."""
    if len(jobs) < 2:
        return jobs
    times = list(map(_submit_time, jobs))
    if all(map(lt, times, islice(times, 1, None))):
        return jobs  # the simulator's queue is already in order
    ids = list(map(node_order, map(_id, jobs))).__getitem__
    return sorted([jobs[i] for i in sorted(range(len(jobs)), key=ids)], key=_submit_time)


def nodes_by_state(nodes: tuple[Node, ...], nodeset: str) -> tuple[list[Node], list[Node], int, list[Node], list[Node]]:
    """A node set's starting and idle nodes, how many are busy, those with free CPUs, and its absent nodes,
    in snapshot order (the simulator's policies use this one pass)."""
    g = group(nodes).get(nodeset) or Group()
    return g.starting, g.idle, g.busy, g.busy_free, g.absent


class Group:
    """One node set's nodes by state, in snapshot order."""

    def __init__(self) -> None:
        self.starting: list[Node] = []
        self.idle: list[Node] = []
        self.busy = 0  # busy and unresponsive nodes: in service, not removable
        self.busy_free: list[Node] = []  # busy nodes with CPUs left
        self.absent: list[Node] = []
        self.draining = 0


def group(nodes: Iterable[Node]) -> dict[str, Group]:
    """Every node set's nodes by state, in one pass (the simulator calls the policy hundreds of thousands
    of times, each call looking at every node; busy nodes, most of them, are only counted)."""
    groups: dict[str, Group] = {}
    last, g, busy = None, Group(), 0
    for n in nodes:
        if n.nodeset is not last:  # nodes come grouped by node set: one lookup per run of them
            g.busy += busy
            last, busy = n.nodeset, 0
            g = groups.get(last) or groups.setdefault(last, Group())
        state = n.state
        if state is _BUSY:
            busy += 1
            if n.free_cpus > 0:
                g.busy_free.append(n)
        elif state is _ABSENT:
            g.absent.append(n)
        elif state is _IDLE:
            g.idle.append(n)
        elif state is _STARTING:
            g.starting.append(n)
        elif state is _UNRESPONSIVE:
            busy += 1
        elif state is NodeState.DRAINING:
            g.draining += 1
        # HELD and FAILED names are neither capacity nor startable.
    g.busy += busy
    return groups


@dataclass(frozen=True)
class Shape:
    """What a job takes on one node set: `nodes` nodes, each with `cpus` CPUs and `mem` MB free."""

    nodes: int
    cpus: int
    mem: int


def shape(job: Job, spec: NodeSetSpec) -> Shape | None:
    """The job's shape on `spec`'s nodes, or None if it can never run there. CPUs in all are spread over as
    few nodes as hold them (`-n 4` is 4 nodes of 1 CPU, or 1 node of 4), never fewer than it asked for."""
    if job.cpus_per_node > spec.cpus:
        return None
    total = job.cpus or max(job.nodes, 1) * job.cpus_per_node
    nodes = max(job.nodes, 1, -(-total // spec.cpus))
    cpus = spec.cpus if job.exclusive else max(job.cpus_per_node, -(-total // nodes), 1)
    mem = job.mem_per_node or job.mem_per_cpu * cpus
    if cpus > spec.cpus or nodes > spec.max_nodes or (spec.memory_mb and mem > spec.memory_mb):
        return None
    return Shape(nodes, cpus, mem if spec.memory_mb else 0)


class _Slot:
    """Room left on one node (existing or about to start) while jobs are fitted."""

    __slots__ = ("name", "cpus", "mem")

    def __init__(self, name: str, cpus: int, mem: int) -> None:
        self.name, self.cpus, self.mem = name, cpus, mem

    def takes(self, s: Shape) -> bool:
        return self.cpus >= s.cpus and self.mem >= s.mem


def _place(job: Job, s: Shape, slots: list[_Slot], fresh: list[str], left: int) -> tuple[list[_Slot], list[str]] | None:
    """Where one copy of the job goes: existing slots (its required nodes first) and names to start (at most
    `left`), or None if it cannot run now."""
    mine: list[_Slot] = []
    new: list[str] = []
    if job.required:
        by_slot = {slot.name: slot for slot in slots}
        for name in job.required:
            slot = by_slot.get(name)
            if slot is not None and slot.takes(s):
                mine.append(slot)
            elif slot is None and name in fresh:
                new.append(name)
            else:
                return None  # busy, held, failed or not in this node set: wait for the scheduler
    excluded = set(job.excluded)
    for slot in slots:
        if len(mine) + len(new) >= s.nodes:
            break
        if slot.takes(s) and slot.name not in excluded and slot not in mine:
            mine.append(slot)
    for name in fresh:
        if len(mine) + len(new) >= s.nodes or len(new) >= left:
            break
        if name not in excluded and name not in new:
            new.append(name)
    if len(mine) + len(new) < s.nodes or len(new) > left:
        return None
    return mine, new


def _fit(spec: NodeSetSpec, waiting: list[Job], nodes: list[Node], fresh: list[str], room: int, capacity: int) -> tuple[set[str], list[Start], bool]:
    """Fit waiting jobs, oldest first, onto nodes (busy ones with free CPUs, then idle, then starting) and up
    to `room` of the `fresh` names: the existing nodes some job was fitted onto, the starts, and whether a
    job could run here once busy nodes free up (idle nodes are then kept for it)."""
    slots = [_Slot(n.name, n.free_cpus, n.free_mem) if n.state is _BUSY else _Slot(n.name, spec.cpus, spec.memory_mb) for n in nodes]
    if not spec.memory_mb:
        for slot in slots:
            slot.mem = 0
    fresh = list(fresh)
    wanted: set[str] = set()
    starts: list[Start] = []
    blocked = False
    # How many slots can take a shape, until a job takes some: most waiting jobs of a long queue fit
    # nowhere, and this tells so without looking at every slot for each of them.
    takers: dict[tuple[int, int], int] = {}
    for job in waiting:
        s = shape(job, spec)
        if s is None:
            continue  # can never run here
        for _ in range(job.count):
            left = room - len(starts)
            if (s.cpus, s.mem) not in takers:
                takers[s.cpus, s.mem] = sum(1 for slot in slots if slot.takes(s))
            placed = _place(job, s, slots, fresh, left) if takers[s.cpus, s.mem] + left >= s.nodes else None
            if placed is None:
                blocked = blocked or s.nodes <= capacity
                break  # the job's other copies have the same shape: they do not fit either
            used, new = placed
            takers.clear()
            for slot in used:
                slot.cpus -= s.cpus
                slot.mem -= s.mem
                wanted.add(slot.name)
            what = f"{s.nodes} node{'s' if s.nodes > 1 else ''} of {s.cpus} CPU{'s' if s.cpus > 1 else ''}"
            for name in new:
                fresh.remove(name)
                slots.append(_Slot(name, spec.cpus - s.cpus, (spec.memory_mb - s.mem) if spec.memory_mb else 0))
                starts.append(Start(name, spec.name, f"job {job.id} needs {what}"))
        if room - len(starts) <= 0 and blocked and not any(slot.cpus > 0 for slot in slots):
            break  # nothing more can fit: long queues on full clusters stay cheap
    return wanted, starts, blocked


def _choose(job: Job, specs: dict[str, NodeSetSpec], groups: dict[str, Group]) -> str | None:
    """The node set a job that may run in several takes its nodes from: the first where it fits on nodes
    already up, else the first with room to start what it needs, else the first where it can ever run."""
    usable = [n for n in job.candidates if n in specs and shape(job, specs[n]) is not None]
    if len(usable) < 2:
        return usable[0] if usable else None
    for name in usable:
        s, g = shape(job, specs[name]), groups.get(name) or Group()
        assert s is not None
        free = sum(1 for n in g.busy_free + g.idle + g.starting if n.name not in job.excluded and (n.state is not _BUSY or n.free_cpus >= s.cpus))
        if free >= s.nodes:
            return name
    excluded = set(job.excluded)
    for name in usable:
        s, g = shape(job, specs[name]), groups.get(name) or Group()
        assert s is not None
        active = len(g.starting) + len(g.idle) + g.busy
        startable = sum(1 for n in g.absent if n.name not in excluded)
        up = sum(1 for n in g.idle + g.starting if n.name not in excluded)
        if s.nodes <= up + min(startable, specs[name].max_nodes - active):
            return name
    return usable[0]


def decide_nodeset(spec: NodeSetSpec, snapshot: Snapshot, g: Group, waiting: list[Job], plan: Plan) -> None:
    """Add one node set's starts and stops to the plan. Nodes are put in name order only where order
    matters: sorting every node on every call made the simulator slow on large clusters."""
    name, now = spec.name, snapshot.now
    starting = []
    resume_timeout = snapshot.resume_timeout
    for n in by_name(g.starting):
        if now - n.since > resume_timeout:
            plan.stop.append(Stop(n.name, name, f"did not register within {resume_timeout:.0f} s", failed=True))
        else:
            starting.append(n)
    idle = by_name(g.idle)
    active = len(starting) + len(idle) + g.busy

    if spec.pinned is not None:
        target = max(0, min(spec.pinned, spec.max_nodes))
        reason = f"scaled to {target} by hand"
        if active < target:
            plan.start += [Start(n.name, name, reason) for n in longest_absent(g.absent, target - active)]
        elif active > target:
            longest_idle = sorted(idle, key=lambda n: n.since)
            busy_nodes = [n for n in snapshot.nodes if n.nodeset == name and n.state in (_BUSY, _UNRESPONSIVE)]
            for n in (longest_idle + starting[::-1] + by_name(busy_nodes)[::-1])[: active - target]:
                plan.stop.append(Stop(n.name, name, reason))
        return

    room = min(spec.max_nodes - active, len(g.absent))
    if waiting:
        fresh = [n.name for n in longest_absent(g.absent)]
        capacity = active + g.draining + len(g.absent)
        wanted, starts, blocked = _fit(spec, fcfs(waiting), by_name(g.busy_free) + idle + starting, fresh, room, capacity)
    else:
        wanted, starts, blocked = set(), [], False
    missing = spec.min_nodes - active - len(starts)
    if missing > 0:
        taken = {s.node for s in starts}
        more = [n for n in longest_absent(g.absent) if n.name not in taken][:missing]
        starts += [Start(n.name, name, f"min_nodes is {spec.min_nodes}") for n in more]
    plan.start += starts

    if blocked:
        return
    removable = sorted(
        (n for n in idle if n.name not in wanted and now - n.since >= spec.idle_timeout),
        key=lambda n: (n.since, node_order(n.name)),
    )
    keep = max(0, spec.min_nodes - (active - len(removable)))
    for n in removable[: max(0, len(removable) - keep)]:
        plan.stop.append(Stop(n.name, name, f"idle {now - n.since:.0f} s"))


def decide(snapshot: Snapshot) -> Plan:
    plan = Plan()
    groups = group(snapshot.nodes)
    specs = {s.name: s for s in snapshot.nodesets}
    waiting: dict[str, list[Job]] = {}
    for job in snapshot.jobs:
        if job.running or not job.wants_resources or job.count < 1:
            continue
        target = job.nodeset if not job.nodesets and job.nodeset in specs else _choose(job, specs, groups)
        if target is not None:
            waiting.setdefault(target, []).append(job)
    for spec in snapshot.nodesets:
        decide_nodeset(spec, snapshot, groups.get(spec.name) or Group(), waiting.get(spec.name, []), plan)
    return plan
