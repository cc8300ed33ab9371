"""Where a cluster keeps its files.

State (config, keys, scheduler state, events, shared work dir) lives under the state root; volatile
runtime files (sockets, pid files, node root mounts) under the run root. Both are root-only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from accordion.errors import ConfigError

# A cluster's name is a directory under each root (and a network namespace, a cgroup, the scheduler's
# cluster name): a name such as "/etc" or ".." would make `down` delete a directory that is not the
# cluster's, so no path is ever built from another.
CLUSTER_NAME = r"^[a-z][a-z0-9-]{0,19}$"
# The state root's directories that are not clusters': every cluster's CA and head keys, and on a host
# every cluster's agent keys (providers/agent.py). A cluster of that name would be removed with them.
NOT_CLUSTERS = ("pki", "agent")


def cluster_name_error(name: str) -> str | None:
    """Why `name` cannot be a cluster's name, or None."""
    if not re.fullmatch(CLUSTER_NAME, name):
        return f"{name!r} is not a cluster name: a lowercase letter, then up to 19 lowercase letters, digits or '-'"
    if name in NOT_CLUSTERS:
        return f"{name!r} is not a cluster name: the state directory's {name}/ holds every cluster's host keys"
    return None


def _root(variable: str, default: str) -> Path:
    # An empty or relative root would put a cluster's files, and what `down` deletes, under the current
    # directory.
    value = os.environ.get(variable, default)
    if not os.path.isabs(value):
        raise ConfigError(f"{variable}: {value!r} is not an absolute path")
    return Path(value)


def state_root() -> Path:
    return _root("ACCORDION_STATE", "/var/lib/accordion")


def shared_root() -> Path:
    return _root("ACCORDION_SHARED", "/srv/accordion")


def run_root() -> Path:
    return _root("ACCORDION_RUN", "/run/accordion")


@dataclass(frozen=True)
class ClusterPaths:
    name: str

    def __post_init__(self) -> None:
        error = cluster_name_error(self.name)
        if error:
            raise ConfigError(error)

    @property
    def state(self) -> Path:
        return state_root() / self.name

    @property
    def run(self) -> Path:
        return run_root() / self.name

    @property
    def records(self) -> Path:
        """The job accounting database: kept by `accordion down --keep-data`, reused by the next `up` of
        that name; with nothing else in the state directory, a cluster that is down."""
        return self.state / "accounting"

    @property
    def config(self) -> Path:
        return self.state / "cluster.json"

    @property
    def events(self) -> Path:
        return self.state / "events.jsonl"

    @property
    def controller_state(self) -> Path:
        return self.state / "controller.json"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def shared(self) -> Path:
        """The cluster's shared work directory, mounted read-write at the same path in every node.

        Outside the state directory, which stays root-only and hidden from nodes."""
        return shared_root() / self.name

    @property
    def scheduler(self) -> Path:
        return self.state / "scheduler"

    @property
    def pids(self) -> Path:
        return self.run / "pids"

    @property
    def nodes(self) -> Path:
        return self.run / "nodes"


def all_clusters() -> list[str]:
    root = state_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "cluster.json").is_file())
