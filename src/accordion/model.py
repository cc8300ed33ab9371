"""The vocabulary shared by schedulers, the policy, the controller and the simulator.

Nothing here knows about Slurm, OAR, runc or Kubernetes: adapters translate into these types.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property, lru_cache
from itertools import groupby
from operator import attrgetter

_INDEX = re.compile(r"(\d+)$")
_since = attrgetter("since")


@lru_cache(maxsize=1 << 16)  # the simulator's policies order the same job ids hundreds of thousands of times
def node_order(name: str) -> tuple[str, int]:
    """Names in the order people number them: c-2 before c-10."""
    match = _INDEX.search(name)
    return (name[: match.start()], int(match.group(1))) if match else (name, -1)


class SchedState(StrEnum):
    """A node as the scheduler sees it. Jobs come first: a node with jobs or allocated CPUs on it is BUSY or
    DRAINING whatever else the scheduler says of it (not responding, unknown after a restart, down while its
    jobs are still being requeued)."""

    UNKNOWN = "unknown"  # nothing on it, and not answering: never registered, or not answering right now
    IDLE = "idle"
    BUSY = "busy"  # jobs or allocated CPUs on it
    DRAINING = "draining"  # drained by Accordion, jobs still on it
    DRAINED = "drained"  # drained by Accordion, empty: safe to remove
    HELD = "held"  # drained by someone else (an administrator, the scheduler itself), empty: not ours to use
    DOWN = "down"  # set down by the scheduler itself (not by Accordion), empty: its container is of no use


class NodeState(StrEnum):
    """A node as the policy sees it: provider and scheduler views merged."""

    ABSENT = "absent"  # no container
    STARTING = "starting"  # container up, never registered
    IDLE = "idle"
    BUSY = "busy"
    UNRESPONSIVE = "unresponsive"  # registered once, not answering now: kept, neither used nor removed
    DRAINING = "draining"  # leaving: no new jobs, removed once empty
    HELD = "held"  # drained by an administrator or by the scheduler: not used until they resume it
    FAILED = "failed"  # its last start failed: not started again before its retry time


@dataclass(frozen=True)
class SchedNode:
    name: str
    state: SchedState
    free_cpus: int
    idle_since: float | None = None
    reason: str = ""  # why it is drained or down (without Accordion's prefix)
    marked_absent: bool = False  # Accordion told the scheduler there is no container behind it
    absent_since: float | None = None  # when it was marked absent, if the scheduler records it
    free_mem: int = 0  # MB; 0 when the scheduler does not count memory
    responding: bool = True
    held: bool = False  # drained or set down by someone other than Accordion (BUSY nodes included)


@dataclass(frozen=True)
class Job:
    """A job as its scheduler describes it. Its shape on a node set (how many nodes, of how many CPUs and
    how much memory) depends on that node set's node size: see `policy.shape`."""

    id: str
    nodeset: str  # the first node set it may run in
    nodes: int  # at least this many nodes
    cpus_per_node: int  # at least this many CPUs on each
    running: bool
    submit_time: float
    # Pending for lack of nodes (as opposed to a dependency, a hold, a begin time, a limit, ...).
    wants_resources: bool = True
    node_names: tuple[str, ...] = ()
    reason: str = ""
    exclusive: bool = False  # wants whole nodes whatever its CPU count
    nodesets: tuple[str, ...] = ()  # every node set it may run in (several partitions), in its order
    cpus: int = 0  # CPUs in all (0: nodes x cpus_per_node); `-n 4` is 4 nodes of 1 CPU or 1 node of 4
    mem_per_node: int = 0  # MB on each node (0: none asked)
    mem_per_cpu: int = 0  # MB per allocated CPU (0: none asked)
    required: tuple[str, ...] = ()  # node names it must have (sbatch -w)
    excluded: tuple[str, ...] = ()  # node names it must not have (sbatch --exclude)
    count: int = 1  # identical jobs it stands for (the pending tasks of an array)
    # While it waits, its scheduler reserves nodes for it among the nodes in service, so later jobs cannot
    # delay it (Slurm's backfill, OAR's Gantt planning); Grid Engine reserves none as Accordion sets it up.
    reservable: bool = True

    @property
    def candidates(self) -> tuple[str, ...]:
        return self.nodesets or (self.nodeset,)

    @property
    def waiting(self) -> bool:
        """Waiting for nodes: the one definition of a waiting job (not a hold, dependency or begin time)."""
        return not self.running and self.wants_resources and self.count > 0


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
    free_mem: int = 0  # MB free on a busy node (idle and starting nodes have their node set's memory)


@dataclass(frozen=True)
class NodeSetSpec:
    name: str
    min_nodes: int
    max_nodes: int
    cpus: int
    idle_timeout: float
    pinned: int | None = None  # set by `accordion scale NODESET N`
    memory_mb: int = 0  # per node; 0: memory is not counted (the simulator)


@dataclass(frozen=True)
class IdleRun:
    """Idle nodes of one node set idle since the same time (gone idle together), by name."""

    since: float
    names: Sequence[str]  # name order


@dataclass(frozen=True)
class NodeSetNodes:
    """One node set's nodes by state, in the orders the policy uses them. Held and failed nodes are in none
    of these: they are neither capacity nor startable. Sequences, not necessarily tuples: the simulator
    passes views that build a `Node` only when the policy reads it, so that the thousands of nodes of a large
    machine that the policy only counts cost nothing per call. Absent nodes and idle nodes past a timeout are
    given by name: names are all the policy reads of them, and on a large machine it starts and stops
    millions of them."""

    starting: Sequence[Node] = ()  # name order
    idle: Sequence[Node] = ()  # name order
    busy: Sequence[Node] = ()  # busy and unresponsive: in service, not removable; name order
    partly_free: Sequence[Node] = ()  # the busy nodes with CPUs left, name order
    absent: Sequence[str] = ()  # names, longest absent first, ties in name order: a name just removed is reused last
    draining: int = 0
    # The idle nodes again, in runs idle since the same time, longest idle first: those past an idle timeout
    # come first, and a run's nodes share their reason to go.
    idle_runs: Sequence[IdleRun] = ()


NO_NODES = NodeSetNodes()


def index_nodes(nodes: Iterable[Node]) -> dict[str, NodeSetNodes]:
    """Every node set's nodes by state (what a snapshot holds when its builder gives no index): one pass puts
    them, in name order, into a list per node set and state."""
    by: dict[str, dict[NodeState, list[Node]]] = {}
    for n in sorted(nodes, key=lambda n: node_order(n.name)):
        # Unresponsive nodes are in service like busy ones: one list, in name order.
        state = NodeState.BUSY if n.state == NodeState.UNRESPONSIVE else n.state
        by.setdefault(n.nodeset, {}).setdefault(state, []).append(n)
    out: dict[str, NodeSetNodes] = {}
    for name, of in by.items():
        busy, idle = of.get(NodeState.BUSY, []), of.get(NodeState.IDLE, [])
        out[name] = NodeSetNodes(
            starting=tuple(of.get(NodeState.STARTING, ())),
            idle=tuple(idle),
            busy=tuple(busy),
            partly_free=tuple(n for n in busy if n.state == NodeState.BUSY and n.free_cpus > 0),
            absent=tuple(n.name for n in sorted(of.get(NodeState.ABSENT, ()), key=_since)),
            draining=len(of.get(NodeState.DRAINING, ())),
            idle_runs=tuple(IdleRun(t, tuple(n.name for n in run)) for t, run in groupby(sorted(idle, key=_since), key=_since)),
        )
    return out


@dataclass
class Tally:
    """One node set's counts (`Snapshot.tally`)."""

    nodes: Counter[NodeState] = field(default_factory=Counter)  # by state; a state with none reads 0
    waiting_jobs: int = 0  # an array's pending tasks one by one
    waiting_cpus: int = 0  # the CPUs they ask for
    running_jobs: int = 0


@dataclass(frozen=True)
class Snapshot:
    """What the policy sees. `index` is the nodes by node set and state: a builder that keeps one up to date
    as nodes change (the simulator) passes it, with views that build a node only when read; otherwise it is
    built here from `nodes`."""

    now: float
    nodesets: tuple[NodeSetSpec, ...]
    nodes: Sequence[Node]
    jobs: tuple[Job, ...]
    resume_timeout: float = 30.0
    index: Mapping[str, NodeSetNodes] | None = None

    def __post_init__(self) -> None:
        if self.index is None:
            object.__setattr__(self, "index", index_nodes(self.nodes))  # a frozen dataclass sets derived fields so

    def of(self, nodeset: str) -> NodeSetNodes:
        assert self.index is not None
        return self.index.get(nodeset, NO_NODES)

    @cached_property
    def waiting(self) -> list[Job]:
        """The jobs waiting for nodes (`Job.waiting`), in the snapshot's order: listed once, read by the policy
        and the controller."""
        return [j for j in self.jobs if j.waiting]

    @cached_property
    def tally(self) -> dict[str, Tally]:
        """Every node set's counts, made once per snapshot (nodes and jobs counted for all node sets at once,
        not once per node set): the one count that status, samples and metrics show. A job counts in its
        first node set; a node set no longer configured still shows."""
        nodes = Counter((n.nodeset, n.state) for n in self.nodes)
        running = Counter(j.nodeset for j in self.jobs if j.running)
        jobs, cpus = Counter[str](), Counter[str]()
        for j in self.waiting:
            jobs[j.nodeset] += j.count
            cpus[j.nodeset] += j.count * (j.cpus or j.nodes * j.cpus_per_node)
        names = dict.fromkeys([*(spec.name for spec in self.nodesets), *(ns for ns, _ in nodes), *running, *jobs])
        return {
            name: Tally(Counter({state: c for (ns, state), c in nodes.items() if ns == name}), jobs[name], cpus[name], running[name])
            for name in names
        }


# A plan names nodes in runs, one for each reason (a job's nodes, a run of nodes idle since the same time): a
# large machine starts and stops thousands of nodes at once (README, "Speed"). A run is never empty.


@dataclass(frozen=True)
class Start:
    nodes: tuple[str, ...]  # in the order they are to start
    nodeset: str
    reason: str


@dataclass(frozen=True)
class Stop:
    nodes: tuple[str, ...]
    nodeset: str
    reason: str
    failed: bool = False  # the nodes are given up on (did not register in time)


@dataclass
class Plan:
    start: list[Start] = field(default_factory=list)
    stop: list[Stop] = field(default_factory=list)
