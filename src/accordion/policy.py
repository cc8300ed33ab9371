"""The scaling policy: a pure function from a snapshot to a plan.

No I/O and no clock of its own: the live controller and the workload simulator call the same code with
snapshots they build, so what is proven in simulation is what runs.

Scale-up follows job shapes, not queue lengths: pending jobs (oldest first) are fitted onto nodes that
are idle, partly free or already starting, and only what does not fit asks for new nodes, exactly as many
as each job's node count and per-node CPUs require. Scale-down removes nodes idle for the node set's idle
timeout that no waiting job has been fitted onto, down to `min_nodes`; the controller drains a node before
removing it, so a job the scheduler places meanwhile is never killed.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from operator import attrgetter

from accordion.model import Job, Node, NodeSetSpec, NodeState, Plan, Snapshot, Start, Stop

_INDEX = re.compile(r"(\d+)$")


@lru_cache(maxsize=1 << 16)  # the simulator sorts the same names hundreds of thousands of times
def node_order(name: str) -> tuple[str, int]:
    match = _INDEX.search(name)
    return (name[: match.start()], int(match.group(1))) if match else (name, -1)


_name = attrgetter("name")
_id = attrgetter("id")
_submit_time = attrgetter("submit_time")
_nodeset = attrgetter("nodeset")
_STATES = tuple(NodeState)


def by_name(nodes: Iterable[Node], first: int | None = None) -> list[Node]:
    """Nodes in name order (only the first `first` of them if given); the same as
    `sorted(nodes, key=lambda n: node_order(n.name))[:first]`, with the per-node work kept in C."""
    nodes = list(nodes)
    if len(nodes) < 2:
        return nodes[:first]
    keys = list(map(node_order, map(_name, nodes))).__getitem__
    order = range(len(nodes))
    picked = sorted(order, key=keys) if first is None else heapq.nsmallest(first, order, key=keys)
    return [nodes[i] for i in picked]


def longest_absent(nodes: Iterable[Node], first: int | None = None) -> list[Node]:
    """Absent nodes to start, longest gone first (ties in name order): a name just removed is reused last,
    so a new node does not receive what the scheduler still sends to its dead predecessor."""
    return sorted(by_name(nodes), key=attrgetter("since"))[:first]


def fcfs(jobs: list[Job]) -> list[Job]:
    """Oldest first, ties by job id: `sorted(jobs, key=lambda j: (j.submit_time, node_order(j.id)))`
    done as two stable sorts, secondary key first, with the per-job work kept in C."""
    if len(jobs) < 2:
        return jobs
    ids = list(map(node_order, map(_id, jobs))).__getitem__
    return sorted([jobs[i] for i in sorted(range(len(jobs)), key=ids)], key=_submit_time)


@dataclass
class _Slot:
    node: str | None  # None: a node to be started
    free: int


def _per_node(job: Job, cpus: int) -> int:
    return cpus if job.exclusive else job.cpus_per_node


def _fit(job: Job, slots: list[_Slot], cpus: int, room: int) -> tuple[list[_Slot], int] | None:
    """Slots the job would use and how many new nodes it needs, or None if it cannot fit now."""
    need = _per_node(job, cpus)
    if need > cpus:
        return None
    usable = list(islice((s for s in slots if s.free >= need), max(job.nodes, 0)))
    new = job.nodes - len(usable)
    if new > room:
        return None
    return usable, new


def decide_nodeset(
    spec: NodeSetSpec, by_state: dict[NodeState, list[Node]], jobs: list[Job], now: float, resume_timeout: float
) -> Plan:
    """The plan for one node set, given its nodes by state. Nodes are put in name order only where order
    matters: sorting every node on every call made the simulator slow on large clusters."""
    plan = Plan()
    starting = []
    for n in by_name(by_state[NodeState.STARTING]):
        if now - n.since > resume_timeout:
            plan.stop.append(Stop(n.name, spec.name, f"did not register within {resume_timeout:.0f} s", failed=True))
        else:
            starting.append(n)
    idle, busy, absent = by_name(by_state[NodeState.IDLE]), by_state[NodeState.BUSY], by_state[NodeState.ABSENT]
    active = len(starting) + len(idle) + len(busy)

    if spec.pinned is not None:
        target = max(0, min(spec.pinned, spec.max_nodes))
        reason = f"scaled to {target} by hand"
        if active < target:
            plan.start += [Start(n.name, spec.name, reason) for n in longest_absent(absent, target - active)]
        elif active > target:
            longest_idle = sorted(idle, key=lambda n: n.since)
            for n in (longest_idle + starting[::-1] + by_name(busy)[::-1])[: active - target]:
                plan.stop.append(Stop(n.name, spec.name, reason))
        return plan

    slots = [_Slot(n.name, n.free_cpus) for n in by_name([n for n in busy if n.free_cpus > 0])]
    slots += [_Slot(n.name, spec.cpus) for n in idle + starting]
    wanted: set[str] = set()
    new_reasons: list[str] = []
    room = min(spec.max_nodes - active, len(absent))
    waiting = fcfs([j for j in jobs if not j.running and j.wants_resources and j.nodeset == spec.name])
    blocked = False  # a job that could run here once busy nodes free up: keep idle nodes for it
    # A slot with less room than every waiting job needs is never used again: not keeping it, and stopping
    # once nothing can fit any more, keeps long queues on large clusters cheap (the simulator's hot path).
    smallest = min((_per_node(j, spec.cpus) for j in waiting), default=0)
    for job in waiting:
        left = room - len(new_reasons)
        if blocked and left == 0 and not any(s.free >= smallest for s in slots):
            break
        fit = _fit(job, slots, spec.cpus, left)
        if fit is None:
            blocked = blocked or (_per_node(job, spec.cpus) <= spec.cpus and job.nodes <= spec.max_nodes)
            continue
        usable, new = fit
        need = _per_node(job, spec.cpus)
        for s in usable:
            s.free -= need
            if s.node is not None:
                wanted.add(s.node)
        what = f"{job.nodes} node{'s' if job.nodes > 1 else ''} of {need} CPU{'s' if need > 1 else ''}"
        for _ in range(new):
            if spec.cpus - need >= smallest:
                slots.append(_Slot(None, spec.cpus - need))
            new_reasons.append(f"job {job.id} needs {what}")
    while active + len(new_reasons) < spec.min_nodes and len(new_reasons) < len(absent):
        new_reasons.append(f"min_nodes is {spec.min_nodes}")
    if new_reasons:
        plan.start += [Start(n.name, spec.name, r) for n, r in zip(longest_absent(absent, len(new_reasons)), new_reasons)]

    removable = sorted(
        (n for n in idle if not blocked and n.name not in wanted and now - n.since >= spec.idle_timeout),
        key=lambda n: (n.since, node_order(n.name)),
    )
    keep = max(0, spec.min_nodes - (active - len(removable)))
    for n in removable[: max(0, len(removable) - keep)]:
        plan.stop.append(Stop(n.name, spec.name, f"idle {now - n.since:.0f} s"))
    return plan


def _group(snapshot: Snapshot) -> dict[str, dict[NodeState, list[Node]]]:
    """Nodes by node set and state, in snapshot order, in one pass (the simulator's hottest loop)."""
    groups = {spec.name: {s: [] for s in _STATES} for spec in snapshot.nodesets}
    names = set(map(_nodeset, snapshot.nodes))
    if len(names) == 1 and names <= groups.keys():  # the usual case: no per-node node set test
        add = {s: nodes.append for s, nodes in groups[names.pop()].items()}
        for n in snapshot.nodes:
            add[n.state](n)
    else:
        for n in snapshot.nodes:
            by_state = groups.get(n.nodeset)
            if by_state is not None:
                by_state[n.state].append(n)
    return groups


def decide(snapshot: Snapshot) -> Plan:
    plan = Plan()
    groups = _group(snapshot)
    for spec in snapshot.nodesets:
        name = spec.name
        jobs = [j for j in snapshot.jobs if j.nodeset == name]
        part = decide_nodeset(spec, groups[name], jobs, snapshot.now, snapshot.resume_timeout)
        plan.start += part.start
        plan.stop += part.stop
    return plan
