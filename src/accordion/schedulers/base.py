"""What the controller needs from a batch scheduler."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from accordion.model import SchedulerView
from accordion.providers.base import NodeSpec


class Scheduler(Protocol):
    name: str
    # The commands users type, for hints: submit first, then queue and nodes.
    user_commands: tuple[str, ...]

    def setup(self) -> None:
        """Generate keys and configuration, start the scheduler's server; idempotent."""

    def teardown(self) -> None: ...

    def running(self) -> bool: ...

    def env(self) -> dict[str, str]:
        """Environment under which the scheduler's user commands talk to this cluster."""

    def wrap(self) -> list[str]:
        """A command prefix under which the scheduler's own tools find this cluster (may be empty)."""

    def user_added(self, user: str) -> None:
        """An ordinary user opened a login shell: make them known where the scheduler needs it (accounting)."""

    def history(self) -> str:
        """Every job the cluster has run, as a job log `accordion simulate` reads (sacct --parsable2 or SWF)."""

    def data(self) -> list[Path]:
        """The cluster's records (job accounting) that `accordion down --keep-data` keeps for the next `up`."""

    def node_spec(self, node: str) -> NodeSpec:
        """What a node container runs: the scheduler's node agent and what it must see."""

    def observe(self) -> SchedulerView: ...

    def changes(self) -> object:
        """A cheap token that changes whenever jobs may have been submitted or ended."""

    def mark_absent(self, nodes: list[str], reason: str = ...) -> None:
        """The nodes have no container: the scheduler must not use them (jobs on them are lost)."""

    def nodes_starting(self, nodes: list[str]) -> None:
        """Containers for these nodes are about to start: let the scheduler accept them when they register.
        Called once per step for all the nodes it starts (a burst starts hundreds), as their starts begin on
        the pool: the loop takes no other step before it returns."""

    def node_started(self, node: str, given_up: Callable[[], bool]) -> None:
        """The node's container runs: bring it into service once its agent answers, checked from inside
        the cluster's network (or leave it to the scheduler's own registration). Runs on the start pool,
        beside the loop; raises if the node cannot be brought into service. Once `given_up()` is true the
        controller has told the scheduler the node is absent and will remove it: stop waiting, and put
        nothing in service."""

    def nudge(self, idle: list[str]) -> float:
        """Ask the scheduler for a scheduling pass now: the controller calls it while a job waits beside an
        idle node (a few times, a second apart), with those idle nodes (name order), and on the start pool
        right after `node_started` of a node started for waiting jobs, with that node alone (which may not
        have registered yet: then the call does nothing useful and must not fail). Returns 0 once asked,
        or how many seconds from now the scheduler would take a pass asked for (the controller asks again
        then, as the next of its few nudges). A no-op returning 0 where the scheduler offers no such call."""

    def release(self, nodes: list[str], reason: str) -> None:
        """No new jobs on the nodes; `observe` reports each DRAINED once it is empty."""
