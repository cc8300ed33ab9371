"""What every provider offers the controller and the scheduler adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from accordion.errors import ProviderError  # re-exported: providers raise it

# What slurmd/sshd and job steps need as root inside a node, whatever runs it: run steps as the submitting
# user (SETUID/SETGID/SETPCAP), manage spool and job files (CHOWN/DAC_OVERRIDE/FOWNER/FSETID), signal steps
# (KILL), bind low ports (sshd), chroot for privilege separation (sshd), audit records (login).
NODE_CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "AUDIT_WRITE",
]


@dataclass(frozen=True)
class Bind:
    source: str
    target: str
    readonly: bool = True
    head_only: bool = False  # a head socket: only nodes on the head's machine can share it


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cpus: int
    memory_mb: int
    command: list[str]
    binds: list[Bind] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Files a node needs that a provider whose nodes cannot share the head's sockets (Pods) delivers
    # instead: target path in the node -> path on the head. Binds with `head_only` are skipped there.
    secrets: dict[str, str] = field(default_factory=dict)
    # Small files every user of the node reads and runs (a scheduler's hook scripts): target path in the node
    # -> contents. Every provider delivers them (0755), on the node's own layer or volume, not from the head.
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeInfo:
    name: str
    running: bool  # false once it has ended or cannot run (image missing, crashed)
    created: float
    reason: str = ""  # why it is not running, when the provider knows
    # Made by `prepare` and not started: not a node (nothing runs in it), a cold start's head start.
    prepared: bool = False


__all__ = ["Bind", "NodeInfo", "NodeSpec", "Provider", "ProviderError", "NODE_CAPABILITIES"]


class Provider(Protocol):
    def setup(self) -> None:
        """Create what the cluster's nodes share (its network); idempotent."""

    def teardown(self) -> None:
        """Remove every node and everything `setup` made; idempotent."""

    def head_address(self) -> str:
        """The address at which nodes reach the scheduler's server."""

    def address(self, node: str) -> str: ...

    def enter(self) -> list[str]:
        """A command prefix that runs a program where it can reach the scheduler's server."""

    def login(self) -> list[str]:
        """A command prefix for the login node's shell: `enter()`, and where the provider can, a host name
        of its own that resolves, there and on every node, to an address the nodes reach. Runs as root."""

    def create(self, spec: NodeSpec) -> None:
        """Start the node; returns once its main process is running. Leaves nothing behind on failure."""

    def delete(self, name: str) -> None:
        """Stop and remove the node and all it used, or what `prepare` made; a missing node is not an error."""

    # Whether `prepare` makes anything: the controller calls it only then.
    prepares: bool

    def prepare(self, spec: NodeSpec) -> None:
        """Make the node's container ready to start with nothing run in it (network, root, namespaces,
        cgroups), so that a `create` of the same spec then only starts it; `list` shows it with `prepared`
        true. Idempotent; leaves nothing behind on failure."""

    def list(self) -> dict[str, NodeInfo]: ...
