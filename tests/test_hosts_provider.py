"""Provider `hosts` on the head: placement, and how a silent host is listed (no agent runs here: the
addresses are loopback ports nothing listens on, so every request is refused at once)."""

from __future__ import annotations

import socket
import time

import pytest

from accordion.config import parse_config
from accordion.paths import ClusterPaths
from accordion.providers import agent as A
from accordion.providers.base import NodeSpec, ProviderError
from accordion.providers.hosts import HostsProvider


def closed_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def make(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("ACCORDION_RUN", str(tmp_path / "run"))

    def make(placement: str = "spread", host_timeout: float = 10.0) -> HostsProvider:
        config = parse_config(
            {
                "name": "hp",
                "provider": "hosts",
                "placement": placement,
                "host_timeout": host_timeout,
                "hosts": [{"name": f"h{i}", "address": f"127.0.0.{i}", "port": closed_port(f"127.0.0.{i}"), "cpus": 4, "memory_mb": 4096} for i in (1, 2, 3)],
                "nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 8, "cpus": 2, "memory_mb": 1024}],
            }
        )
        paths = ClusterPaths("hp")
        paths.state.mkdir(parents=True)
        paths.run.mkdir(parents=True)
        p = HostsProvider(config, paths)
        p.health = {h: {"state": "up", "capacity": {"cpus": 2, "memory_mb": 1000}} for h in p.hosts}
        p._tunnels = sorted(str(h.address) for h in p.hosts.values())  # as after setup(): no network made here
        return p

    return make


def spec(name: str) -> NodeSpec:
    return NodeSpec(name, 2, 1024, ["true"])


def place(p: HostsProvider, names: list[str]) -> dict[str, str]:
    placed: dict[str, str] = {}
    for n in names:
        placed[n] = p._place(spec(n), placed)
    return placed


def test_spread_uses_every_host_before_doubling_up(make):
    p = make("spread")
    placed = place(p, ["n-0", "n-1", "n-2", "n-3"])
    assert sorted(list(placed.values())[:3]) == ["h1", "h2", "h3"]


def test_pack_fills_a_host_first(make):
    p = make("pack")
    assert place(p, ["n-0", "n-1", "n-2"]) == {"n-0": "h1", "n-1": "h1", "n-2": "h2"}


def test_never_beyond_a_hosts_capacity_and_never_on_a_host_not_up(make):
    p = make("pack")
    p.health["h2"]["state"] = "lost"
    p.health["h3"]["state"] = "not answering"
    # declared capacity (4 CPUs, 4096 MB) wins over the measured one: two 2-CPU nodes on h1, then none.
    assert place(p, ["n-0", "n-1"]) == {"n-0": "h1", "n-1": "h1"}
    with pytest.raises(ProviderError, match="no host can take n-2"):
        p._place(spec("n-2"), {"n-0": "h1", "n-1": "h1"})


def test_a_silent_host_fails_the_listing_then_its_nodes_are_lost(make):
    A.ensure_ca("hp")
    p = make(host_timeout=0.5)
    p._change("n-0", spec("n-0"))
    placed = p.placed()
    # Before host_timeout: an error, never an empty listing (which would read as "every node gone").
    with pytest.raises(ProviderError, match="not answering"):
        p.list()
    time.sleep(0.6)
    nodes = p.list()
    host = placed["n-0"]
    assert set(nodes) == {"n-0"} and not nodes["n-0"].running and nodes["n-0"].reason.startswith(f"host {host} lost")
    assert p.host_health()[host]["state"] == "lost"
    # Removing a lost host's node only forgets it: the host removes it itself once back (converge).
    p.delete("n-0")
    assert p.placed() == {}


def test_an_agent_refuses_a_cluster_that_does_not_list_its_host(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path / "state"))
    agent = A.Agent("hp", "h9", "127.0.0.1")
    config = parse_config({"name": "hp", "provider": "hosts", "hosts": [{"name": "h1", "address": "127.0.0.1"}]})
    with pytest.raises(ProviderError, match="h9 is not one of cluster hp's hosts"):
        agent.converge(config, 1, [], [])
    assert not (A.agent_dir("hp") / "state.json").exists()


@pytest.mark.skipif(__import__("os").geteuid() != 0 and not __import__("os").environ.get("ACCORDION_REQUIRE_LIVE"), reason="`accordion up` needs root")
def test_up_without_enrolled_hosts_says_so_and_leaves_nothing(tmp_path):
    import os
    import subprocess
    import sys

    env = os.environ | {"ACCORDION_STATE": str(tmp_path / "state"), "ACCORDION_RUN": str(tmp_path / "run"), "ACCORDION_SHARED": str(tmp_path / "shared")}
    f = tmp_path / "c.yaml"
    f.write_text("name: nocreds\nprovider: hosts\nhosts: [{name: h1, address: 127.0.0.5}]\n")
    proc = subprocess.run([sys.executable, "-m", "accordion", "up", "-f", str(f)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "no credentials yet: enrol its hosts with `accordion enrol`" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    for d in ("state", "run", "shared"):
        assert not (tmp_path / d / "nocreds").exists()
    assert not os.path.exists("/run/netns/acc.nocreds")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"provider": "hosts"}, "needs a list of hosts"),
        ({"hosts": [{"name": "h1", "address": "127.0.0.1"}]}, "only used with provider 'hosts'"),
        ({"discover": "127.0.0.1"}, "only used with provider 'hosts'"),
        ({"provider": "hosts", "hosts": [{"name": "h1", "address": "127.0.0.1"}, {"name": "h1", "address": "127.0.0.2"}]}, "host name must be unique, repeated: h1"),
        ({"provider": "hosts", "hosts": [{"name": "h1", "address": "127.0.0.1"}, {"name": "h2", "address": "127.0.0.1"}]}, "host address must be unique"),
        ({"provider": "hosts", "hosts": [{"name": "h1", "address": "nowhere"}]}, "hosts[0].address"),
        ({"provider": "hosts", "hosts": [{"name": "h1", "address": "127.0.0.1"}], "placement": "random"}, "placement: 'random' is not allowed"),
    ],
)
def test_the_cluster_file_names_the_bad_field(data, message):
    from accordion.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)
