"""The policies `accordion simulate` compares, all `(Snapshot) -> Plan` like the live controller's.

`accordion` is the controller's own policy, imported, not copied. The others model what a cluster would do
without Accordion: every node always on, CHSC's one-node-per-job rule, and Slurm's power saving.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from accordion import policy
from accordion.model import Job, Node, NodeSetSpec, NodeState, Plan, Snapshot, Start, Stop, node_order
from accordion.policy import fcfs
from accordion.simulator.engine import Policy

ABSENT = NodeState.ABSENT
_id = attrgetter("id")


def _waiting(snapshot: Snapshot, spec: NodeSetSpec) -> list[Job]:
    return [j for j in snapshot.jobs if j.nodeset == spec.name and not j.running and j.wants_resources]


def by_name(nodes: Sequence[Node]) -> list[Node]:
    return sorted(nodes, key=lambda n: node_order(n.name))


def _stop_idle(
    spec: NodeSetSpec, active: int, idle: Sequence[Node], now: float, keep: frozenset[str] | set[str] = frozenset()
) -> list[Stop]:
    """Idle nodes past the idle timeout (except `keep`), longest idle first, down to min_nodes."""
    expired = sorted(
        (n for n in idle if now - n.since >= spec.idle_timeout and n.name not in keep),
        key=lambda n: (n.since, node_order(n.name)),
    )
    count = max(0, min(len(expired), active - spec.min_nodes))
    return [Stop((n.name,), spec.name, f"idle {now - n.since:.0f} s") for n in expired[:count]]


def static(snapshot: Snapshot) -> Plan:
    """Every node always on: the cluster as bought."""
    absent = [(spec, tuple(snapshot.of(spec.name).absent)) for spec in snapshot.nodesets]
    return Plan(start=[Start(names, spec.name, "static") for spec, names in absent if names])


class CHSC:
    """One new node per newly waiting job whatever its size; nodes idle 30 s removed.

    It must remember which jobs it has already answered, so it is a callable object; a multi-node job
    gets one node, and waits until enough nodes happen to be idle at once.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, snapshot: Snapshot) -> Plan:
        plan = Plan()
        waiting_now: set[str] = set()
        for spec in snapshot.nodesets:
            g = snapshot.of(spec.name)
            waiting = _waiting(snapshot, spec)
            ids = set(map(_id, waiting))
            if ids - self.seen:  # set operations: queues grow long under this policy
                new = fcfs([j for j in waiting if j.id not in self.seen])
                absent = sorted(g.absent, key=node_order)[: len(new)]
                plan.start += [Start((n,), spec.name, f"job {j.id} waits") for n, j in zip(absent, new)]
            plan.stop += _stop_idle(spec, len(g.starting) + len(g.idle) + len(g.busy), g.idle, snapshot.now)
            waiting_now |= ids
        self.seen = waiting_now  # a job that stopped waiting never waits again
        return plan


def powersave(snapshot: Snapshot) -> Plan:
    """Slurm power saving: a waiting job gets exactly the nodes it would be allocated if powered-off nodes
    were up, and those that are off are resumed; nodes idle for SuspendTime (600 s) are suspended.

    Slurm counts powered-off nodes as available, so it allocates a job as soon as idle plus powered-off
    nodes are enough, and its backfilling does the same for jobs behind a blocked head. A snapshot carries
    no time limits, so the allocation is modelled as whole-node first fit in FCFS order: each job takes
    idle and resuming nodes left by the jobs ahead of it, then powered-off ones. Idle nodes so allocated
    are not suspended (Slurm would have made them busy). Its reservation for the first waiting job counts
    powered-off nodes too (`PolicyDef.plans_on_absent`).
    """
    plan = Plan()
    for spec in snapshot.nodesets:
        g = snapshot.of(spec.name)
        free, absent = by_name([*g.idle, *g.starting]), list(g.absent)
        in_order = False  # absent nodes are put in name order only once a job needs some: most calls none
        allocated: set[str] = set()
        for job in fcfs(_waiting(snapshot, spec)):
            if job.nodes > len(free) + len(absent):
                continue
            taken, free = free[: job.nodes], free[job.nodes :]
            allocated.update(n.name for n in taken)
            more = job.nodes - len(taken)
            if more and not in_order:
                absent, in_order = sorted(absent, key=node_order), True
            if more:
                plan.start.append(Start(tuple(absent[:more]), spec.name, f"job {job.id} allocated"))
            absent = absent[more:]
        plan.stop += _stop_idle(spec, len(g.starting) + len(g.idle) + len(g.busy), g.idle, snapshot.now, allocated)
    return plan


@dataclass(frozen=True)
class PolicyDef:
    make: Callable[[], Policy]  # a fresh policy per run: CHSC keeps state
    idle_timeout: float
    about: str
    plans_on_absent: bool = False  # the scheduler reserves absent nodes too (engine.Simulation)


ACCORDION_IDLE_TIMEOUT = 60.0  # the live cluster's default (config.py)

POLICIES: dict[str, PolicyDef] = {
    "static": PolicyDef(lambda: static, math.inf, "all nodes always on"),
    "chsc": PolicyDef(CHSC, 30.0, "one node per newly waiting job, removed after 30 s idle"),
    "powersave": PolicyDef(
        lambda: powersave, 600.0, "Slurm power saving: resume allocated nodes, suspend after 600 s idle", plans_on_absent=True
    ),
    "accordion": PolicyDef(lambda: policy.decide, ACCORDION_IDLE_TIMEOUT, "Accordion's policy: nodes for waiting jobs' shapes"),
}
