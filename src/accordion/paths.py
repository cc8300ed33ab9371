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


def state_root() -> Path:
    return Path(os.environ.get("ACCORDION_STATE", "/var/lib/accordion"))


def shared_root() -> Path:
    return Path(os.environ.get("ACCORDION_SHARED", "/srv/accordion"))


def run_root() -> Path:
    return Path(os.environ.get("ACCORDION_RUN", "/run/accordion"))


@dataclass(frozen=True)
class ClusterPaths:
    name: str

    def __post_init__(self) -> None:
        if not re.fullmatch(CLUSTER_NAME, self.name):
            raise ConfigError(f"{self.name!r} is not a cluster name: a lowercase letter, then up to 19 lowercase letters, digits or '-'")

    @property
    def state(self) -> Path:
        return state_root() / self.name

    @property
    def run(self) -> Path:
        return run_root() / self.name

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
