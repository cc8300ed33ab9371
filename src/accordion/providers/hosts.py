"""Nodes on a set of hosts without Kubernetes, each running `accordion agent` (see providers/agent.py).

The head keeps which host each node was placed on, and a generation number raised on every change, in
the cluster's state (`hosts.json`); every listing sends each host the names it should run with that
generation (`converge`), so the hosts follow the head's intent even after a lost message or a restart of
either side. The listing is also the heartbeat: a host that does not answer makes the listing fail (an
error, so that the controller deletes nothing) until it has been silent for `host_timeout`; from then on its
nodes are listed as not running, "host lost", which the controller reports to the scheduler (jobs
requeued) before removing them. New nodes go only to hosts that answered the last listing, so a host that
comes back has its stale nodes removed (by that converge) before it gets new ones.

The cluster network: the head's namespace holds the bridge with the head's address, as the local
provider's does; each host's agent makes a bridge of its own, and a VXLAN tunnel (one network identifier
per cluster) joins every bridge to every other one, so that all nodes and the head share one layer-2
network (10.77.0.0/16) across hosts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from accordion.config import ClusterConfig, Host
from accordion.paths import ClusterPaths
from accordion.providers.agent import AgentClient, client_context, ensure_vxlan, nodes_of, secret_data, spec_to_json
from accordion.providers.base import NodeInfo, NodeSpec, ProviderError
from accordion.providers.local import HEAD, NodeRuntime, enter_netns, hosts_file, login_prefix
from accordion.sh import run
from accordion.store import read_json, write_json

log = logging.getLogger("accordion.hosts")


class HostsProvider:
    # Not yet: a prepared node would tie a name to a host before any job asks for it (see `prepare`).
    prepares = False

    def __init__(self, config: ClusterConfig, paths: ClusterPaths) -> None:
        self.config = config
        self.paths = paths
        self.file = paths.state / "hosts.json"
        self.hosts: dict[str, Host] = {h.name: h for h in config.hosts or []}
        # Hosts found by DNS-SD (and proven enrolled) are kept with the placement: a restarted controller
        # must list them before they announce themselves again, or their nodes would read as gone.
        data = read_json(self.file, {})
        assert isinstance(data, dict)
        for name, h in dict(data.get("discovered", {})).items():
            self.hosts.setdefault(name, Host(name=name, address=h["address"], port=h["port"]))
        # The head's side of the cluster network: a bridge (with the head's address) and no nodes.
        self.head = NodeRuntime(config, config.name, paths.run, paths.logs, mtu=None)
        self.netns = self.head.netns
        self.health_file = paths.run / "hosts.json"
        self.lock = threading.Lock()
        # A host is given host_timeout from when this process starts before its nodes are called lost.
        start = time.monotonic()
        self.last_ok: dict[str, float] = dict.fromkeys(self.hosts, start)
        self.health: dict[str, dict[str, Any]] = {h: {"state": "unknown"} for h in self.hosts}
        self.created: dict[str, float] = {}
        self._ctx: Any = None
        self.timeout = max(0.5, min(3.0, config.host_timeout / 3))
        self._browser: Any = None
        self._tunnels: list[str] = []
        self._listing: dict[str, AgentClient] = {}

    # ----- the head's record of placement -----

    def _load(self) -> tuple[int, dict[str, str]]:
        data = read_json(self.file, {})
        assert isinstance(data, dict)
        return int(data.get("generation", 0)), dict(data.get("placed", {}))

    def _change(self, node: str, spec: NodeSpec | None) -> tuple[int, str]:
        """Place `spec` on a host, or (None) forget where `node` was; returns the new generation and the host.
        Under the lock: starts run in parallel, and two must not both take a host's last CPUs."""
        with self.lock:
            generation, placed = self._load()
            generation += 1
            if spec is None:
                host = placed.pop(node, "")
            else:
                host = placed[node] = self._place(spec, placed)
            self._save(generation, placed)
            return generation, host

    def _save(self, generation: int, placed: dict[str, str]) -> None:
        static = {h.name for h in self.config.hosts or []}
        discovered = {n: {"address": str(h.address), "port": h.port} for n, h in self.hosts.items() if n not in static}
        write_json(self.file, {"generation": generation, "placed": placed, "discovered": discovered})

    def placed(self) -> dict[str, str]:
        return self._load()[1]

    def _context(self) -> Any:
        if self._ctx is None:
            self._ctx = client_context(self.config.name)
        return self._ctx

    def _client(self, host: str) -> AgentClient:
        h = self.hosts[host]
        return AgentClient(self.config.name, h.name, h.address, h.port, self._context(), self.timeout)

    # ----- Provider -----

    def head_address(self) -> str:
        return str(HEAD)

    def address(self, node: str) -> str:
        return self.head.address(node)

    def enter(self) -> list[str]:
        return enter_netns(self.netns)

    def login(self) -> list[str]:
        return login_prefix(self.config, self.paths, self.netns)

    def _local_address(self) -> str:
        """This machine's address towards the hosts (the source the kernel would use): the head's end of the tunnels."""
        if self.config.discover is not None:
            return str(self.config.discover)
        first = str(next(iter(self.hosts.values())).address)
        words = run(["ip", "-o", "route", "get", first]).stdout.split()
        if "src" not in words:
            raise ProviderError(f"no route from this machine to host address {first}")
        return words[words.index("src") + 1]

    def setup(self) -> None:
        client_context(self.config.name)  # credentials first: nothing is made for a cluster that has none
        self.head.setup(str(HEAD))
        self._ensure_tunnels()
        (self.paths.run / "hosts").write_text(hosts_file(self.config))
        self.paths.state.mkdir(parents=True, exist_ok=True)
        if not self.file.exists():
            self._save(0, {})

    def _ensure_tunnels(self) -> None:
        peers = sorted(str(h.address) for h in self.hosts.values())
        if peers != self._tunnels:
            ensure_vxlan(self.netns, self.config.name, self._local_address(), peers)
            self._tunnels = peers

    # ----- discovery (DNS-SD) -----

    def _discover(self) -> None:
        """Listen for agents announcing themselves on the head's address on the hosts' network (once per process)."""
        if self.config.discover is None or self._browser is not None:
            return
        from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

        from accordion.providers.agent import SERVICE

        zc = Zeroconf(interfaces=[str(self.config.discover)])

        def changed(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
                # Resolving waits on the network: not on zeroconf's own thread.
                threading.Thread(target=self._found, args=(zc, service_type, name), daemon=True).start()

        self._browser = (zc, ServiceBrowser(zc, SERVICE, handlers=[changed]))

    def _found(self, zc: Any, service_type: str, name: str) -> None:
        info = zc.get_service_info(service_type, name, timeout=3000)
        if info is None or not info.parsed_addresses():
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        if props.get("cluster") != self.config.name:
            return
        try:
            host = Host(name=props.get("host", ""), address=info.parsed_addresses()[0], port=info.port)
        except ValueError as exc:
            log.warning("ignored an announcement %s: %s", name, exc)
            return
        known = self.hosts.get(host.name)
        if known is not None and (known.address, known.port) == (host.address, host.port):
            return
        if known is not None and host.name in {h.name for h in self.config.hosts or []}:
            return  # the cluster file's word wins over an announcement
        # Used only once it proves it holds this cluster's credentials for that name (enrolled).
        try:
            AgentClient(self.config.name, host.name, host.address, host.port, self._context(), self.timeout).call("/v1/status")
        except ProviderError as exc:
            log.warning("ignored host %s announced at %s:%d: %s", host.name, host.address, host.port, exc)
            return
        with self.lock:
            log.info("discovered host %s at %s:%d", host.name, host.address, host.port)
            self.hosts[host.name] = host
            self.last_ok[host.name] = time.monotonic()
            self.health.setdefault(host.name, {"state": "unknown"})
            self._save(*self._load())

    def _peers(self, host: str) -> list[str]:
        return [self._local_address()] + [str(h.address) for name, h in self.hosts.items() if name != host]

    def _converge(self, host: str, generation: int, placed: dict[str, str]) -> dict[str, Any]:
        # One kept connection per host for the listing (only list() converges, one call per host at a time).
        client = self._listing.get(host)
        if client is None or client.address != str(self.hosts[host].address) or client.port != self.hosts[host].port:
            client = self._listing[host] = AgentClient(self.config.name, host, self.hosts[host].address, self.hosts[host].port, self._context(), self.timeout, keep=True)
        return client.call(
            "/v1/converge",
            {"config": self._config_json(), "generation": generation, "nodes": sorted(n for n, h in placed.items() if h == host), "peers": self._peers(host)},
        )

    def _config_json(self) -> dict[str, Any]:
        """The cluster file as the agents see it: with the hosts discovered so far."""
        data: dict[str, Any] = json.loads(self.config.model_copy(update={"hosts": list(self.hosts.values())}).model_dump_json())
        return data

    def list(self) -> dict[str, NodeInfo]:
        self._discover()
        self._ensure_tunnels()
        generation, placed = self._load()
        if not self.hosts:
            return {}
        with ThreadPoolExecutor(max_workers=len(self.hosts)) as pool:
            futures = {h: pool.submit(self._converge, h, generation, placed) for h in list(self.hosts)}
        now, wall = time.monotonic(), time.time()
        nodes: dict[str, NodeInfo] = {}
        silent: list[str] = []
        for host, future in futures.items():
            error = future.exception()
            if error is None:
                status = future.result()
                self.last_ok[host] = now
                here = {n: i for n, i in nodes_of(status).items() if placed.get(n) == host}
                self.created.update({n: i.created for n, i in here.items()})
                nodes.update(here)
                self.health[host] = {"state": "up", "seen": wall, "capacity": status["capacity"], "nodes": sorted(here)}
                continue
            quiet = now - self.last_ok[host]
            if quiet < self.config.host_timeout:
                silent.append(f"{host} ({error})")
                self.health[host] = {**self.health[host], "state": "not answering", "error": str(error)}
                continue
            mine = sorted(n for n, h in placed.items() if h == host)
            reason = f"host {host} lost: silent for {quiet:.0f} s"
            nodes.update({n: NodeInfo(n, False, self.created.get(n, 0.0), reason) for n in mine})
            self.health[host] = {**self.health[host], "state": "lost", "error": str(error), "nodes": mine}
        write_json(self.health_file, self.health)
        if silent:
            raise ProviderError(
                f"host(s) not answering: {'; '.join(silent)}; their nodes are reported lost after host_timeout ({self.config.host_timeout:g} s)"
            )
        return nodes

    def _place(self, spec: NodeSpec, placed: dict[str, str]) -> str:
        """A host for a new node: among those that answered the last listing, within their capacity."""
        candidates = []
        for name, host in self.hosts.items():
            health = self.health.get(name, {})
            if health.get("state") != "up":
                continue
            cap = health.get("capacity", {})
            cpus = host.cpus or int(cap.get("cpus", 0))
            mem = host.memory_mb or int(cap.get("memory_mb", 0))
            mine = [n for n, h in placed.items() if h == name and n != spec.name]
            used_cpus = sum(self._size(n)[0] for n in mine)
            used_mem = sum(self._size(n)[1] for n in mine)
            if used_cpus + spec.cpus <= cpus and used_mem + spec.memory_mb <= mem:
                candidates.append((len(mine), used_cpus, name))
        if not candidates:
            raise ProviderError(f"no host can take {spec.name} ({spec.cpus} CPUs, {spec.memory_mb} MB): all are full, lost or not yet listed")
        if self.config.placement == "spread":
            return min(candidates)[2]
        # pack: the fullest host that still fits, in the cluster file's order on a tie.
        order = list(self.hosts)
        return max(candidates, key=lambda c: (c[1], -order.index(c[2])))[2]

    def _size(self, node: str) -> tuple[int, int]:
        ns = self.config.nodeset_of(node)
        return (ns.cpus, ns.memory_mb) if ns is not None else (0, 0)

    def create(self, spec: NodeSpec) -> None:
        previous = self.placed().get(spec.name)
        if previous is not None:
            self.delete(spec.name)
        generation, host = self._change(spec.name, spec)
        try:
            request = {"config": self._config_json(), "generation": generation, "spec": spec_to_json(spec), "secret_data": secret_data(spec)}
            status = self._client(host).call("/v1/create", request, timeout=60)
        except ProviderError as exc:
            self._change(spec.name, None)
            try:
                self._client(host).call("/v1/delete", {"name": spec.name})
            except ProviderError:
                pass  # the host's next converge removes it
            raise ProviderError(f"could not start {spec.name} on host {host}: {exc}") from None
        info = nodes_of(status).get(spec.name)
        if info is not None:
            self.created[spec.name] = info.created

    def prepare(self, spec: NodeSpec) -> None:
        raise ProviderError("provider 'hosts' does not prepare nodes")

    def delete(self, name: str) -> None:
        _, host = self._change(name, None)
        if host not in self.hosts or self.health.get(host, {}).get("state") == "lost":
            return  # a lost host removes it at its first converge once back
        try:
            self._client(host).call("/v1/delete", {"name": name}, timeout=60)
        except ProviderError:
            pass  # no longer placed: the host's next converge removes it

    def teardown(self) -> None:
        errors = []
        for host in self.hosts:
            try:
                self._client(host).call("/v1/teardown", {"config": self._config_json()}, timeout=120)
            except ProviderError as exc:
                errors.append(f"{host}: {exc}")
        self.head.teardown()
        if errors:
            raise ProviderError(f"could not clear every host: {'; '.join(errors)}")
        self.file.unlink(missing_ok=True)
        self.health_file.unlink(missing_ok=True)

    def host_health(self) -> dict[str, Any]:
        data = read_json(self.health_file, {})
        return data if isinstance(data, dict) else {}
