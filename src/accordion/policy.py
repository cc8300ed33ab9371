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
import math
import re
from collections.abc import Iterable
from functools import lru_cache
from itertools import compress, count, islice, repeat
from operator import attrgetter, ge, le, lt

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
    in snapshot order. One pass of identity tests, busy nodes counted rather than listed: the simulator
    calls the policy hundreds of thousands of times, each call looking at every node (and hashing a
    NodeState runs Python code, so no dict keyed by state)."""
    starting: list[Node] = []
    idle: list[Node] = []
    busy_free: list[Node] = []
    absent: list[Node] = []
    others = 0
    for n in nodes:
        if n.nodeset is not nodeset and n.nodeset != nodeset:  # `is` first: the simulator's names are one object
            others += 1
            continue
        state = n.state
        if state is _BUSY:
            if n.free_cpus > 0:
                busy_free.append(n)
        elif state is _ABSENT:
            absent.append(n)
        elif state is _IDLE:
            idle.append(n)
        elif state is _STARTING:
            starting.append(n)
        else:
            others += 1
    busy = len(nodes) - others - len(starting) - len(idle) - len(absent)
    return starting, idle, busy, busy_free, absent


def _fit(spec: NodeSetSpec, waiting: list[Job], nodes: list[Node], room: int) -> tuple[set[str], list[str], bool]:
    """Fit waiting jobs, oldest first, onto nodes (busy ones with free CPUs, then idle, then starting) and
    up to `room` new ones: the nodes some job was fitted onto, a reason per new node, and whether a job
    could run here once busy nodes free up (idle nodes are then kept for it)."""
    cpus = spec.cpus
    # Slots (node, free CPUs) as two parallel lists, so that finding where a job fits runs in C.
    slot_node: list[str | None] = [n.name for n in nodes]
    slot_free = [n.free_cpus if n.state is _BUSY else cpus for n in nodes]
    wanted: set[str] = set()
    new_reasons: list[str] = []
    needs = [cpus if j.exclusive else j.cpus_per_node for j in waiting]  # CPUs per node
    blocked = False
    # A slot with less room than every waiting job needs is never used again: not keeping it, and stopping
    # once nothing can fit any more, keeps long queues on large clusters cheap (the simulator's hot path).
    smallest = min(needs)
    most = max(slot_free, default=-math.inf)
    # How many slots have room for a given need, until a job takes some: most waiting jobs fit nowhere.
    have: dict[int, int] = {}
    for job, need in zip(waiting, needs):
        left = room - len(new_reasons)
        if blocked and left == 0 and most < smallest:
            break
        if need > cpus:
            continue  # can never run here
        k = max(job.nodes, 0)
        if need not in have:
            have[need] = sum(map(ge, slot_free, repeat(need)))
        new = job.nodes - min(k, have[need])
        if new > left:
            blocked = blocked or job.nodes <= spec.max_nodes
            continue
        # The first slots with room for it, in slot order.
        for slot in list(islice(compress(count(), map(ge, slot_free, repeat(need))), k)):
            slot_free[slot] -= need
            node = slot_node[slot]
            if node is not None:
                wanted.add(node)
        what = f"{job.nodes} node{'s' if job.nodes > 1 else ''} of {need} CPU{'s' if need > 1 else ''}"
        for _ in range(new):
            if cpus - need >= smallest:
                slot_node.append(None)
                slot_free.append(cpus - need)
            new_reasons.append(f"job {job.id} needs {what}")
        have.clear()
        most = max(slot_free, default=-math.inf)
    return wanted, new_reasons, blocked


def decide_nodeset(spec: NodeSetSpec, snapshot: Snapshot, plan: Plan) -> None:
    """Add one node set's starts and stops to the plan. Nodes are put in name order only where order
    matters: sorting every node on every call made the simulator slow on large clusters."""
    name, now = spec.name, snapshot.now
    starting_all, idle, busy, busy_free, absent = nodes_by_state(snapshot.nodes, name)
    starting = []
    resume_timeout = snapshot.resume_timeout
    for n in by_name(starting_all):
        if now - n.since > resume_timeout:
            plan.stop.append(Stop(n.name, name, f"did not register within {resume_timeout:.0f} s", failed=True))
        else:
            starting.append(n)
    idle = by_name(idle)
    active = len(starting) + len(idle) + busy

    if spec.pinned is not None:
        target = max(0, min(spec.pinned, spec.max_nodes))
        reason = f"scaled to {target} by hand"
        if active < target:
            plan.start += [Start(n.name, name, reason) for n in longest_absent(absent, target - active)]
        elif active > target:
            longest_idle = sorted(idle, key=lambda n: n.since)
            busy_nodes = [n for n in snapshot.nodes if n.nodeset == name and n.state is _BUSY]
            for n in (longest_idle + starting[::-1] + by_name(busy_nodes)[::-1])[: active - target]:
                plan.stop.append(Stop(n.name, name, reason))
        return

    room = min(spec.max_nodes - active, len(absent))
    waiting = fcfs([j for j in snapshot.jobs if not j.running and j.wants_resources and j.nodeset == name])
    if waiting:
        wanted, new_reasons, blocked = _fit(spec, waiting, by_name(busy_free) + idle + starting, room)
    else:
        wanted, new_reasons, blocked = set(), [], False
    while active + len(new_reasons) < spec.min_nodes and len(new_reasons) < len(absent):
        new_reasons.append(f"min_nodes is {spec.min_nodes}")
    if new_reasons:
        plan.start += [Start(n.name, name, r) for n, r in zip(longest_absent(absent, len(new_reasons)), new_reasons)]

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
    for spec in snapshot.nodesets:
        decide_nodeset(spec, snapshot, plan)
    return plan
