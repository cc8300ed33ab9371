"""The scaling policy: a pure function from a snapshot to a plan.

No I/O and no clock of its own: the live controller and the workload simulator call the same code with
snapshots they build, so what is proven in simulation is what runs.

Scale-up follows job shapes, not queue lengths: waiting jobs (oldest first, an array's pending tasks as
that many jobs) are fitted onto nodes that are idle, partly free or already starting, and only what does
not fit asks for new nodes, exactly as many as each job's shape on that node set needs (`shape`), with the
names it requires and never the names it excludes. A job that may run in several node sets takes nodes
from one of them. Scale-down removes nodes idle for the node set's idle timeout that no waiting job has
been fitted onto, down to a floor: `min_nodes`, or while the oldest job that cannot start now, but could
once busy nodes free up, waits, as many nodes as that job needs. The scheduler reserves nodes for that job only among
nodes in service (absent ones are down to it); with fewer it reserves none, and later jobs pass it for as
long as they come (README, "Policies compared"). The controller drains a node before removing it, so a job
the scheduler places meanwhile is never killed.

The snapshot gives each node set's nodes by state, in the order they are used (`model.NodeSetNodes`): the
simulator keeps that index as its nodes change, so the policy neither groups nor sorts nodes on each call.
Absent nodes come by name, and idle ones also in runs idle since the same time: a run past the idle timeout
goes with one reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice, takewhile
from operator import attrgetter, lt

from accordion.model import IdleRun, Job, Node, NodeSetNodes, NodeSetSpec, NodeState, Plan, Snapshot, Start, Stop, node_order

_submit_time = attrgetter("submit_time")


def fcfs(jobs: list[Job]) -> list[Job]:
    """Oldest first, ties by job id: `sorted(jobs, key=lambda j: (j.submit_time, node_order(j.id)))`, except
    that a queue already in order (the simulator's, up to thousands of jobs on every call) is recognised in C."""
    times = list(map(_submit_time, jobs))
    if all(map(lt, times, islice(times, 1, None))):
        return jobs
    return sorted(jobs, key=lambda j: (j.submit_time, node_order(j.id)))


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


def _what(s: Shape) -> str:
    return f"{s.nodes} node{'s' if s.nodes > 1 else ''} of {s.cpus} CPU{'s' if s.cpus > 1 else ''}"


def _held_for(job: Job, s: Shape, capacity: int, reach: set[str]) -> bool:
    """Whether nodes kept in service make the scheduler reserve some for the job while it waits: it reserves
    (`Job.reservable`), the job names no nodes (those are reserved by name, and are busy), and it needs no
    more than the `capacity` nodes that can be in service, less those it excludes (`--exclude`, a
    reservation it is not in) among the names that can be (`reach`, filled only when some job excludes).
    A job that needs more (some nodes held by an administrator, failed or excluded) can get no
    reservation: the scheduler reserves for the next one, and so must the floor."""
    excluded = len(reach.intersection(job.excluded)) if job.excluded else 0
    return job.reservable and not job.required and s.nodes <= capacity - excluded


def _first_held(jobs: Iterable[Job], spec: NodeSetSpec, capacity: int, reach: set[str]) -> Job | None:
    """The first of `jobs` the floor is for, once nothing more fits: each cannot start now."""
    for job in jobs:
        s = shape(job, spec)
        if s is not None and _held_for(job, s, capacity, reach):
            return job
    return None


def _fit_whole(
    spec: NodeSetSpec, waiting: list[Job], free: int, absent: Sequence[str], room: int, capacity: int, reach: set[str]
) -> tuple[int, list[Start], Job | None] | None:
    """`_fit` when every slot is one of `free` whole free nodes and no job names nodes: then each job takes
    whole free nodes from the front and new nodes from the front of `absent`, and counting them is enough
    (on a large machine, thousands of nodes are never looked at). How many of the free nodes jobs were
    fitted onto (the first ones), the starts and the oldest job that cannot start now (`_held_for`); None if a job names
    nodes or would leave room on a node (then the slots differ, and `_fit` tells them apart)."""
    taken = started = 0
    starts: list[Start] = []
    head: Job | None = None
    for i, job in enumerate(waiting):
        if job.required or job.excluded:
            return None
        s = shape(job, spec)
        if s is None:
            continue  # can never run here
        if s.cpus < spec.cpus:
            return None
        if started >= room and taken == free:
            return taken, starts, head or _first_held(islice(waiting, i, None), spec, capacity, reach)  # nothing more can fit: long queues stay cheap
        for _ in range(job.count):
            new = s.nodes - min(s.nodes, free - taken)
            if new > room - started:
                if head is None and _held_for(job, s, capacity, reach):
                    head = job
                break  # the job's other copies have the same shape: they do not fit either
            taken += s.nodes - new
            if new:
                starts.append(Start(tuple(absent[started : started + new]), spec.name, f"job {job.id} needs {_what(s)}"))
                started += new
    return taken, starts, head


def _fit(
    spec: NodeSetSpec, waiting: list[Job], nodes: Sequence[Node], fresh: list[str], room: int, capacity: int, reach: set[str]
) -> tuple[set[str], list[Start], Job | None]:
    """Fit waiting jobs, oldest first, onto nodes (busy ones with free CPUs, then idle, then starting) and up
    to `room` of the `fresh` names: the existing nodes some job was fitted onto, the starts, and the oldest
    job that cannot start now (`_held_for`: `capacity` nodes can be in service)."""
    slots = [_Slot(n.name, n.free_cpus, n.free_mem) if n.state == NodeState.BUSY else _Slot(n.name, spec.cpus, spec.memory_mb) for n in nodes]
    if not spec.memory_mb:
        for slot in slots:
            slot.mem = 0
    fresh = list(fresh)
    wanted: set[str] = set()
    starts: list[Start] = []
    head: Job | None = None
    started = 0
    # How many slots can take a shape, until a job takes some: most waiting jobs of a long queue fit
    # nowhere, and this tells so without looking at every slot for each of them.
    takers: dict[tuple[int, int], int] = {}
    for i, job in enumerate(waiting):
        s = shape(job, spec)
        if s is None:
            continue  # can never run here
        if room - started <= 0 and not any(slot.cpus > 0 for slot in slots):
            return wanted, starts, head or _first_held(islice(waiting, i, None), spec, capacity, reach)  # nothing more can fit
        for _ in range(job.count):
            left = room - started
            if (s.cpus, s.mem) not in takers:
                takers[s.cpus, s.mem] = sum(1 for slot in slots if slot.takes(s))
            placed = _place(job, s, slots, fresh, left) if takers[s.cpus, s.mem] + left >= s.nodes else None
            if placed is None:
                if head is None and _held_for(job, s, capacity, reach):
                    head = job
                break  # the job's other copies have the same shape: they do not fit either
            used, new = placed
            takers.clear()
            for slot in used:
                slot.cpus -= s.cpus
                slot.mem -= s.mem
                wanted.add(slot.name)
            for name in new:
                fresh.remove(name)
                slots.append(_Slot(name, spec.cpus - s.cpus, (spec.memory_mb - s.mem) if spec.memory_mb else 0))
            if new:
                starts.append(Start(tuple(new), spec.name, f"job {job.id} needs {_what(s)}"))
                started += len(new)
    return wanted, starts, head


def _choose(job: Job, specs: dict[str, NodeSetSpec], snapshot: Snapshot, unclaimed: dict[str, int]) -> str | None:
    """The node set a job that may run in several takes its nodes from: the first where it fits on nodes
    already up that no older job claims (`unclaimed` whole nodes), else the first with room to start what it
    needs, else the first where it can ever run."""
    usable = [n for n in job.candidates if n in specs and shape(job, specs[n]) is not None]
    if len(usable) < 2:
        return usable[0] if usable else None
    excluded = set(job.excluded)
    for name in usable:
        s, g = shape(job, specs[name]), snapshot.of(name)
        assert s is not None
        up = [n for n in [*g.idle, *g.starting] if n.name not in excluded]
        partly = [n for n in g.partly_free if n.name not in excluded and n.free_cpus >= s.cpus and n.free_mem >= s.mem]
        if min(len(up), unclaimed[name]) + len(partly) >= s.nodes:
            return name
    for name in usable:
        s, g = shape(job, specs[name]), snapshot.of(name)
        assert s is not None
        active = len(g.starting) + len(g.idle) + len(g.busy)
        startable = sum(1 for n in g.absent if n not in excluded)
        up = [n for n in [*g.idle, *g.starting] if n.name not in excluded]
        if s.nodes <= min(len(up), unclaimed[name]) + min(startable, specs[name].max_nodes - active):
            return name
    return usable[0]


def decide_nodeset(spec: NodeSetSpec, snapshot: Snapshot, g: NodeSetNodes, waiting: list[Job], plan: Plan) -> None:
    """Add one node set's starts and stops to the plan. The snapshot gives its nodes by state, each in the
    order used here (`NodeSetNodes`), so nothing is sorted but the jobs."""
    name, now = spec.name, snapshot.now
    starting: list[Node] = []
    late: list[str] = []
    resume_timeout = snapshot.resume_timeout
    for n in g.starting:
        if now - n.since > resume_timeout:
            late.append(n.name)
        else:
            starting.append(n)
    if late:
        plan.stop.append(Stop(tuple(late), name, f"did not register within {resume_timeout:.0f} s", failed=True))
    idle = g.idle
    active = len(starting) + len(idle) + len(g.busy)

    if spec.pinned is not None:
        target = max(0, min(spec.pinned, spec.max_nodes))
        reason = f"scaled to {target} by hand"
        if active < target and g.absent:
            plan.start.append(Start(tuple(g.absent[: target - active]), name, reason))
        elif active > target:
            longest_idle = sorted(idle, key=lambda n: n.since)
            gone = (longest_idle + starting[::-1] + list(g.busy[::-1]))[: active - target]
            plan.stop.append(Stop(tuple(n.name for n in gone), name, reason))
        return

    room = min(spec.max_nodes - active, len(g.absent))
    wanted: set[str] = set()  # the existing nodes some waiting job was fitted onto, by name
    whole = 0  # or by count: the first `whole` of the idle, then starting, nodes
    starts: list[Start] = []
    head: Job | None = None  # the oldest waiting job that cannot start now
    counted = None
    # The names that can be in service, for the jobs that exclude some (the simulator's exclude none).
    reach = {n.name for n in [*starting, *idle, *g.busy]} | set(g.absent) if any(j.excluded for j in waiting) else set()
    if waiting and not g.partly_free:
        counted = _fit_whole(spec, fcfs(waiting), len(idle) + len(starting), g.absent, room, active + room, reach)
    if counted is not None:
        whole, starts, head = counted
    elif waiting:
        wanted, starts, head = _fit(spec, fcfs(waiting), [*g.partly_free, *idle, *starting], list(g.absent), room, active + room, reach)
    # The nodes kept in service: min_nodes, and as many as the oldest job that cannot start now needs. The
    # scheduler reserves nodes for that job only among nodes in service (absent ones are down to it); with
    # fewer, it reserves none and lets every later job pass it, for as long as later jobs keep coming. A
    # scheduler that reserves nothing (`Job.reservable`) gets no floor: the nodes would buy that job nothing.
    floor, why = spec.min_nodes, f"min_nodes is {spec.min_nodes}"
    need = shape(head, spec) if head is not None else None
    excluded: set[str] = set()  # names the job the floor is for excludes: never started for it
    if head is not None and need is not None and floor < need.nodes:
        floor, why = need.nodes, f"job {head.id} waits for busy nodes: {need.nodes} kept in service for its reservation"
        excluded = reach.intersection(head.excluded)
    # Nodes in service that job excludes are none of its reservation: the floor counts the others.
    usable = active - len(excluded.difference(g.absent)) if excluded else active
    missing = floor - usable - sum(len(s.nodes) for s in starts)
    if missing > 0:
        taken = {n for s in starts for n in s.nodes}
        more = tuple(islice((n for n in g.absent if n not in taken and n not in excluded), missing))
        if more:
            starts.append(Start(more, name, why))
    plan.start += starts

    # An idle node no waiting job was fitted onto goes after the idle timeout, down to the floor: keeping every
    # idle node while any job waits for busy nodes cost 2-8 % more node-hours than Slurm's power saving on the
    # shared traces (README, "Policies compared"); the floor keeps only what the oldest such job needs.
    # Only the nodes past the timeout are looked at (longest idle first), and none if jobs were fitted onto
    # every idle node: a long wait for busy nodes to free up costs nothing per call.
    removable: list[tuple[IdleRun, list[str]]] = []  # runs past the timeout, their nodes no job was fitted onto
    if whole < len(idle):
        expired = list(takewhile(lambda run: now - run.since >= spec.idle_timeout, g.idle_runs))
        if expired and whole:
            wanted = {n.name for n in idle[:whole]}
        removable = [(run, [n for n in run.names if n not in wanted]) for run in expired]
    left = max(0, usable - floor)  # how many may go, longest idle first; those the floor's job excludes go anyway
    for run, names in removable:
        out: list[str] = []
        if excluded:
            for x in names:
                if x in excluded:
                    out.append(x)
                elif left > 0:
                    out.append(x)
                    left -= 1
        else:
            out = names[:left]
            left -= len(out)
        if out:
            plan.stop.append(Stop(tuple(out), name, f"idle {now - run.since:.0f} s"))


def _by_nodeset(snapshot: Snapshot, specs: dict[str, NodeSetSpec]) -> dict[str, list[Job]]:
    """The waiting jobs of each node set. A job naming node sets takes up nodes of one only if older jobs leave
    them (`_choose`): those they would start on, and those kept for an older job's reservation (the floor),
    which the scheduler would not give it either; so once such a job is seen, every job is placed again,
    oldest first, counting the up nodes each claims. The simulator's queues have none: one pass."""
    waiting: dict[str, list[Job]] = {}
    for job in snapshot.waiting:
        if job.nodesets:
            break
        if job.nodeset in specs:
            waiting.setdefault(job.nodeset, []).append(job)
    else:
        return waiting
    waiting = {}
    unclaimed = {s.name: len(snapshot.of(s.name).idle) + len(snapshot.of(s.name).starting) for s in snapshot.nodesets}
    for job in fcfs(snapshot.waiting):
        target = _choose(job, specs, snapshot, unclaimed)
        if target is not None:
            waiting.setdefault(target, []).append(job)
            s = shape(job, specs[target])
            assert s is not None  # `_choose` takes only node sets where the job can run
            unclaimed[target] -= min(unclaimed[target], s.nodes * job.count)
    return waiting


def decide(snapshot: Snapshot) -> Plan:
    plan = Plan()
    specs = {s.name: s for s in snapshot.nodesets}
    waiting = _by_nodeset(snapshot, specs)
    for spec in snapshot.nodesets:
        decide_nodeset(spec, snapshot, snapshot.of(spec.name), waiting.get(spec.name, []), plan)
    return plan
