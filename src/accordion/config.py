"""The cluster file (`accordion.yaml`): validated models and loading.

Every name here ends up in a path, a network namespace, a cgroup and the scheduler's own
configuration, so names are restricted to what all of those accept.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from accordion.errors import ConfigError
from accordion.paths import CLUSTER_NAME, cluster_name_error
from accordion.units import parse_duration

NODESET_NAME = r"^[a-z][a-z0-9_]{0,19}$"
NAME_BASE = r"^[a-z][a-z0-9-]{0,29}$"
IMAGE = r"^[a-z0-9][a-z0-9._/:@-]{0,254}$"
DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

def _parse_duration(value: object) -> object:
    """Accept 30, 30.5, "30s", "5m", "1h", "250ms"; anything else is left for pydantic to refuse."""
    return parse_duration(value) if isinstance(value, str) else value


def _cluster_name(name: str) -> str:
    error = cluster_name_error(name)
    if error:
        raise ValueError(error)
    return name


Seconds = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0, le=7 * 86400)]


class NodeSet(BaseModel):
    """A group of identical nodes: one Slurm partition (an OAR property, a Grid Engine queue), one template."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NODESET_NAME)
    name_base: str | None = Field(default=None, pattern=NAME_BASE)
    min_nodes: int = Field(default=0, ge=0, le=1000)
    max_nodes: int = Field(default=4, ge=1, le=1000)
    cpus: int = Field(default=2, ge=1, le=256)
    memory_mb: int = Field(default=1024, ge=64, le=1024 * 1024)
    idle_timeout: Seconds = 60.0
    # The node image (provider kubernetes); default: kubernetes.image.
    image: str | None = Field(default=None, pattern=IMAGE)

    @model_validator(mode="after")
    def _bounds(self) -> NodeSet:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) must not exceed max_nodes ({self.max_nodes})")
        return self

    @property
    def base(self) -> str:
        return self.name_base or self.name.replace("_", "-")

    def node_names(self) -> list[str]:
        return [f"{self.base}-{i}" for i in range(self.max_nodes)]


class ControllerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # How often to look for a change (cheap: a few stat calls); a full observation of the scheduler runs
    # on a change, while nodes start or drain, and at least every resync_interval. A new job waits on
    # average half of it before the controller sees it (at 0.1 s, a third of a cold start).
    poll_interval: Seconds = Field(default=0.02, gt=0, le=60)
    resync_interval: Seconds = Field(default=2.0, gt=0, le=600)
    # Prometheus /metrics on 127.0.0.1 of the host; 0 picks a free port (see `accordion status --json`).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # The controller's log (logs/controller.log): text lines, or one JSON object per line.
    log_format: Literal["text", "json"] = "text"
    resume_timeout: Seconds = Field(default=30.0, gt=0, le=3600)
    # Consecutive failed starts of a node name before it waits: then retry_backoff, doubling on each further
    # failure up to retry_backoff_max. A failed name is always retried: a short fault (munged down, disk
    # full) must not leave a node set without capacity for good.
    max_start_failures: int = Field(default=3, ge=1, le=100)
    retry_backoff: Seconds = Field(default=10.0, gt=0, le=3600)
    retry_backoff_max: Seconds = Field(default=300.0, gt=0, le=86400)
    # Node starts and deletes run beside the loop on this many workers, and at most 4 x workers nodes boot
    # at once. 8 measured best of 4 and 8 on this 2-core machine (bench/burst.py, 280 nodes: all running
    # after 44 s instead of 54, 280 -> 0 in 12 s after the idle timeout instead of 24, no failed start).
    workers: int = Field(default=8, ge=1, le=64)
    # Names of each node set made ready to start ahead of any job (provider `local`: network, root and
    # runc's container made, nothing run), the ones the policy starts next: a cold start then skips ~60 ms
    # of its ~0.2 s (README, "What a cold start waits for"). Each costs a waiting runc process and a mount
    # or two; 0 makes none.
    prepared_nodes: int = Field(default=1, ge=0, le=16)


class KubernetesSettings(BaseModel):
    """Where node Pods go (provider: kubernetes)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(default="default", pattern=DNS_LABEL)
    # None: the in-cluster configuration (the controller runs in a Pod with its ServiceAccount).
    kubeconfig: str | None = None
    image: str = Field(default="localhost/accordion-node:0.1.0", pattern=IMAGE)
    # Where nodes reach slurmctld: the head's Service name in the chart (default "<cluster>-head").
    head_address: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.-]{0,252}$")
    # A Kubernetes volume source for the shared work directory (e.g. {persistentVolumeClaim: {claimName:
    # x}}); None: a hostPath, which only suits single-host clusters.
    shared_volume: dict[str, object] | None = None
    # Run the head (scheduler server and its commands) in this existing network namespace: for a head
    # outside the Kubernetes cluster that reaches Pod IPs from there (the test stand-in does).
    network_namespace: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Host(BaseModel):
    """A machine running `accordion agent` (provider: hosts). Capacity not given is what the agent measures."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=CLUSTER_NAME)
    address: IPv4Address  # where its agent listens, and its end of the cluster network's VXLAN tunnels
    port: int = Field(default=7471, ge=1, le=65535)
    cpus: int | None = Field(default=None, ge=1, le=4096)
    memory_mb: int | None = Field(default=None, ge=64, le=64 * 1024 * 1024)


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, AfterValidator(_cluster_name)] = Field(default="accordion", pattern=CLUSTER_NAME)
    scheduler: Literal["slurm", "oar", "gridengine"] = "slurm"
    provider: Literal["local", "kubernetes", "hosts"] = "local"
    kubernetes: KubernetesSettings | None = None
    # provider hosts: the machines nodes run on, how nodes are spread over them, and how long a host may
    # stay silent before its nodes are reported lost.
    hosts: list[Host] | None = Field(default=None, min_length=1, max_length=256)
    placement: Literal["spread", "pack"] = "spread"
    host_timeout: Seconds = Field(default=10.0, gt=0, le=3600)
    # The head's address on the hosts' network: hosts announcing themselves there with DNS-SD are added,
    # once they prove they hold the cluster's credentials (enrolled).
    discover: IPv4Address | None = None
    nodesets: list[NodeSet] = Field(
        default_factory=lambda: [NodeSet(name="compute", name_base="hpc-node")], min_length=1, max_length=32
    )
    controller: ControllerSettings = Field(default_factory=ControllerSettings)

    @model_validator(mode="after")
    def _unique(self) -> ClusterConfig:
        names = [ns.name for ns in self.nodesets]
        bases = [ns.base for ns in self.nodesets]
        for label, values in (("name", names), ("name_base", bases)):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"node set {label} must be unique, repeated: {', '.join(dupes)}")
        if sum(ns.max_nodes for ns in self.nodesets) > 4000:
            raise ValueError("the node sets' max_nodes add up to more than 4000")
        if self.provider == "hosts":
            if not self.hosts and self.discover is None:
                raise ValueError("provider 'hosts' needs a list of hosts (name and address of each), or discover")
            for label, values in (("name", [h.name for h in self.hosts or []]), ("address", [str(h.address) for h in self.hosts or []])):
                dupes = sorted({v for v in values if values.count(v) > 1})
                if dupes:
                    raise ValueError(f"host {label} must be unique, repeated: {', '.join(dupes)}")
        elif self.hosts is not None or self.discover is not None:
            raise ValueError(f"hosts and discover are only used with provider 'hosts' (provider is {self.provider!r})")
        if self.provider == "kubernetes":
            if self.scheduler != "slurm":
                raise ValueError("provider 'kubernetes' runs scheduler 'slurm' only (no OAR or Grid Engine node image yet)")
            if self.kubernetes is None:
                self.kubernetes = KubernetesSettings()
        else:
            for label, used in (("kubernetes", self.kubernetes is not None), ("nodesets[].image", any(ns.image for ns in self.nodesets))):
                if used:
                    raise ValueError(f"{label} is only used with provider 'kubernetes' (provider is {self.provider!r})")
        return self

    def nodeset(self, name: str) -> NodeSet:
        for ns in self.nodesets:
            if ns.name == name:
                return ns
        raise KeyError(name)

    def nodeset_of(self, node: str) -> NodeSet | None:
        for ns in self.nodesets:
            prefix = ns.base + "-"
            if node.startswith(prefix) and node[len(prefix) :].isdigit():
                if int(node[len(prefix) :]) < ns.max_nodes:
                    return ns
        return None

    def all_nodes(self) -> list[str]:
        return [n for ns in self.nodesets for n in ns.node_names()]


def _where(loc: tuple[object, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            # An unknown field may be any text: quoted unless plain, so the message stays on one line.
            text = str(item) if re.fullmatch(r"[A-Za-z0-9_-]+", str(item)) else repr(str(item))
            parts.append(("." if parts else "") + text)
    return "".join(parts) or "(top level)"


def parse_config(data: object, source: str = "accordion.yaml") -> ClusterConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must be a mapping of fields (name, scheduler, nodesets, ...)")
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "string_pattern_mismatch":
            msg = f"{err['input']!r} is not allowed: use lower-case letters, digits and - or _, starting with a letter"
        elif err["type"] == "literal_error":
            msg = f"{err['input']!r} is not allowed, {msg[0].lower()}{msg[1:]}"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {_where(loc)}: {msg}{more}") from None


def load_config(path: Path | None) -> ClusterConfig:
    if path is None:
        return ClusterConfig()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the cluster file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}") from None
    return parse_config(data, str(path))
