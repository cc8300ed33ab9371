"""The cluster file (`accordion.yaml`): validated models and loading.

Every name here ends up in a path, a network namespace, a cgroup and the scheduler's own
configuration, so names are restricted to what all of those accept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from accordion.errors import ConfigError

CLUSTER_NAME = r"^[a-z][a-z0-9-]{0,19}$"
NODESET_NAME = r"^[a-z][a-z0-9_]{0,19}$"
NAME_BASE = r"^[a-z][a-z0-9-]{0,29}$"
IMAGE = r"^[a-z0-9][a-z0-9._/:@-]{0,254}$"
DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _parse_duration(value: object) -> object:
    """Accept 30, 30.5, "30s", "5m", "1h", "250ms"; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"'{value}' is not a duration (examples: 30, 30s, 5m, 1h)")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


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
    # on a change, while nodes start or drain, and at least every resync_interval.
    poll_interval: Seconds = Field(default=0.1, gt=0, le=60)
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
    # Node starts and deletes run beside the loop on this many workers: enough to start a burst quickly,
    # few enough not to overload the machine (a 280-node burst with no bound reached load 53 here).
    workers: int = Field(default=4, ge=1, le=64)


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


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="accordion", pattern=CLUSTER_NAME)
    scheduler: Literal["slurm", "oar", "gridengine"] = "slurm"
    provider: Literal["local", "kubernetes"] = "local"
    kubernetes: KubernetesSettings | None = None
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
