"""The policies `accordion simulate` compares, all `(Snapshot) -> Plan` like the live controller's.

`accordion` is the controller's own policy, imported, not copied. The others model what a cluster would do
without Accordion: every node always on, CHSC's one-node-per-job rule, and Slurm's power saving.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from accordion import policy
from accordion.model import Job, Node, NodeSetSpec, NodeState, Plan, Snapshot, Start, Stop
from accordion.policy import node_order

Policy = Callable[[Snapshot], Plan]


def _of(snapshot: Snapshot, spec: NodeSetSpec) -> tuple[list[Node], list[Job]]:
    nodes = sorted((n for n in snapshot.nodes if n.nodeset == spec.name), key=lambda n: node_order(n.name))
    waiting = sorted(
        (j for j in snapshot.jobs if j.nodeset == spec.name and not j.running and j.wants_resources),
        key=lambda j: (j.submit_time, node_order(j.id)),
    )
    return nodes, waiting


def _stop_idle(spec: NodeSetSpec, nodes: list[Node], now: float) -> list[Stop]:
    """Idle nodes past the idle timeout, longest idle first, keeping min_nodes."""
    active = sum(n.state in (NodeState.STARTING, NodeState.IDLE, NodeState.BUSY) for n in nodes)
    expired = sorted((n for n in nodes if n.state == NodeState.IDLE and now - n.since >= spec.idle_timeout), key=lambda n: n.since)
    count = max(0, min(len(expired), active - spec.min_nodes))
    return [Stop(n.name, spec.name, f"idle {now - n.since:.0f} s") for n in expired[:count]]


def static(snapshot: Snapshot) -> Plan:
    """Every node always on: the cluster as bought."""
    absent = NodeState.ABSENT
    return Plan(start=[Start(n.name, n.nodeset, "static") for n in snapshot.nodes if n.state is absent])


class CHSC:
    """One new node per newly waiting job whatever its size; nodes idle 30 s removed.

    It must remember which jobs it has already answered, so it is a callable object; a multi-node job
    gets one node, and waits until enough nodes happen to be idle at once.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, snapshot: Snapshot) -> Plan:
        plan = Plan()
        seen: set[str] = set()
        for spec in snapshot.nodesets:
            nodes, waiting = _of(snapshot, spec)
            absent = [n for n in nodes if n.state == NodeState.ABSENT]
            new = [j for j in waiting if j.id not in self.seen]
            plan.start += [Start(n.name, spec.name, f"job {j.id} waits") for n, j in zip(absent, new)]
            plan.stop += _stop_idle(spec, nodes, snapshot.now)
            seen |= {j.id for j in waiting}
        self.seen = seen  # jobs no longer waiting never come back
        return plan


def powersave(snapshot: Snapshot) -> Plan:
    """Slurm power saving: a waiting job that would fit if powered-off nodes were up gets exactly the nodes
    it would be allocated resumed; nodes idle for SuspendTime (600 s) are suspended.

    Slurm counts powered-off nodes as available, so its backfilling allocates them to jobs behind a blocked
    head too. A snapshot carries no time limits, so the allocation is modelled as whole-node first fit in
    FCFS order: each job takes idle and resuming nodes left by the jobs ahead of it, then powered-off ones.
    """
    plan = Plan()
    for spec in snapshot.nodesets:
        nodes, waiting = _of(snapshot, spec)
        stops = _stop_idle(spec, nodes, snapshot.now)
        leaving = {s.node for s in stops}
        free = sum(n.state == NodeState.STARTING or (n.state == NodeState.IDLE and n.name not in leaving) for n in nodes)
        absent = [n for n in nodes if n.state == NodeState.ABSENT]
        for job in waiting:
            if job.nodes <= free:
                free -= job.nodes
                continue
            more = job.nodes - free
            if more > len(absent):
                continue
            plan.start += [Start(n.name, spec.name, f"job {job.id} allocated") for n in absent[:more]]
            absent, free = absent[more:], 0
        plan.stop += stops
    return plan


@dataclass(frozen=True)
class PolicyDef:
    make: Callable[[], Policy]  # a fresh policy per run: CHSC keeps state
    idle_timeout: float
    about: str


ACCORDION_IDLE_TIMEOUT = 60.0  # the live cluster's default (config.py)

POLICIES: dict[str, PolicyDef] = {
    "static": PolicyDef(lambda: static, math.inf, "all nodes always on"),
    "chsc": PolicyDef(CHSC, 30.0, "one node per newly waiting job, removed after 30 s idle"),
    "powersave": PolicyDef(lambda: powersave, 600.0, "Slurm power saving: resume allocated nodes, suspend after 600 s idle"),
    "accordion": PolicyDef(lambda: policy.decide, ACCORDION_IDLE_TIMEOUT, "Accordion's policy: nodes for waiting jobs' shapes"),
}
