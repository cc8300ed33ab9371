"""The vocabulary shared by schedulers, the policy, the controller and the simulator.

Nothing here knows about Slurm, OAR, runc or Kubernetes: adapters translate into these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class SchedState(StrEnum):
    """A node as the scheduler sees it."""

    UNKNOWN = "unknown"  # not registered, down, or not responding
    IDLE = "idle"
    BUSY = "busy"  # at least one job on it
    DRAINING = "draining"  # taken out of service by Accordion, jobs still on it
    DRAINED = "drained"  # taken out of service by Accordion, empty: safe to remove


class NodeState(StrEnum):
    """A node as the policy sees it: provider and scheduler views merged."""

    ABSENT = "absent"  # no container
    STARTING = "starting"  # container up, not registered yet
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"  # leaving: no new jobs, removed once empty
    FAILED = "failed"  # gave up starting it; not retried until the cluster restarts or it is rescaled


@dataclass(frozen=True)
class SchedNode:
    name: str
    state: SchedState
    free_cpus: int
    idle_since: float | None = None
    reason: str = ""
    marked_absent: bool = False  # the scheduler already knows there is no container behind it
    absent_since: float | None = None  # when it was marked absent, if the scheduler records it


@dataclass(frozen=True)
class Job:
    id: str
    nodeset: str
    nodes: int
    cpus_per_node: int
    running: bool
    submit_time: float
    # Pending for lack of nodes (as opposed to a dependency, a hold, a begin time, ...).
    wants_resources: bool = True
    node_names: tuple[str, ...] = ()
    reason: str = ""
    exclusive: bool = False  # wants whole nodes whatever its CPU count


@dataclass(frozen=True)
class SchedulerView:
    nodes: dict[str, SchedNode]
    jobs: list[Job]


@dataclass(frozen=True)
class Node:
    name: str
    nodeset: str
    state: NodeState
    since: float  # when it entered its state (created, idle since, ...)
    free_cpus: int = 0


@dataclass(frozen=True)
class NodeSetSpec:
    name: str
    min_nodes: int
    max_nodes: int
    cpus: int
    idle_timeout: float
    pinned: int | None = None  # set by `accordion scale NODESET N`


@dataclass(frozen=True)
class Snapshot:
    now: float
    nodesets: tuple[NodeSetSpec, ...]
    nodes: tuple[Node, ...]
    jobs: tuple[Job, ...]
    resume_timeout: float = 30.0


@dataclass(frozen=True)
class Start:
    node: str
    nodeset: str
    reason: str


@dataclass(frozen=True)
class Stop:
    node: str
    nodeset: str
    reason: str
    failed: bool = False  # the node is given up on (did not register in time)


@dataclass
class Plan:
    start: list[Start] = field(default_factory=list)
    stop: list[Stop] = field(default_factory=list)
