"""The largest cluster the configuration accepts runs: the local provider refuses more nodes than one Linux
bridge has ports (before anything is made), and the controller runs a cluster at that limit."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import wait
from pathlib import Path

import yaml

from accordion.config import ClusterConfig
from accordion.controller import Controller, write_pins
from accordion.events import EventLog
from accordion.model import NodeState
from accordion.paths import ClusterPaths
from accordion.providers.local import MAX_NODES
from tests.test_controller import FakeProvider, FakeScheduler


def test_local_cluster_over_the_bridge_limit_is_refused_naming_the_field(tmp_path: Path) -> None:
    name = "toobig"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": name, "nodesets": [
        {"name": "a", "max_nodes": 1000}, {"name": "b", "name_base": "b", "max_nodes": MAX_NODES - 1000 + 1}]}))
    roots = {k: tmp_path / k.lower() for k in ("ACCORDION_STATE", "ACCORDION_RUN", "ACCORDION_SHARED")}
    proc = subprocess.run([sys.executable, "-m", "accordion", "up", "-f", str(cfg)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **{k: str(v) for k, v in roots.items()}})
    assert proc.returncode != 0
    assert "nodesets[].max_nodes: 1000 + 25 = 1025 nodes" in proc.stderr and "at most 1024 nodes" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing half-made: no state, no run directory, no network namespace.
    assert not any(p.exists() and any(p.iterdir()) for p in roots.values())
    assert not Path(f"/run/netns/acc.{name}").exists()


def test_a_cluster_at_the_limit_runs_with_stand_ins(tmp_path: Path, monkeypatch) -> None:
    """Every node of a 1024-node cluster is started, registers and is seen idle, through the controller."""
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path))
    cfg = ClusterConfig.model_validate({"name": "big", "nodesets": [
        {"name": "a", "max_nodes": 1000, "idle_timeout": 600}, {"name": "b", "name_base": "b", "max_nodes": MAX_NODES - 1000, "idle_timeout": 600}],
        "controller": {"workers": 8}})
    paths = ClusterPaths("big")
    paths.state.mkdir(parents=True)
    prov = FakeProvider(lambda: 1000.0)
    sched = FakeScheduler(prov)
    ctl = Controller(cfg, paths, sched, prov, EventLog(paths.events, "big"), clock=lambda: 1000.0)
    write_pins(paths, {"a": 1000, "b": MAX_NODES - 1000})
    for _ in range(100):  # 4 x workers boot at a time: 32 steps at least
        ctl.step()
        wait([op.future for op in ctl.ops.values()], timeout=60)
        if sum(1 for s in ctl.last.values() if s == NodeState.IDLE) == MAX_NODES:
            break
    assert len(prov.nodes) == MAX_NODES
    assert sum(1 for s in ctl.last.values() if s == NodeState.IDLE) == MAX_NODES
    ctl.close()


def test_the_neighbour_table_is_raised_for_the_cluster_and_never_lowered(tmp_path: Path, monkeypatch) -> None:
    """The kernel's one ARP table for every namespace holds 1024 entries by default: at 280 nodes
    `srun -N280` lost nodes to "neighbor table overflow!". Each limit is raised for the cluster's nodes,
    in order, and a limit already higher (another cluster's, the administrator's) is kept."""
    from accordion.providers import local

    monkeypatch.setattr(local, "NEIGHBOUR_SYSCTL", tmp_path)
    for name, value in (("gc_thresh1", 128), ("gc_thresh2", 512), ("gc_thresh3", 1024)):
        (tmp_path / name).write_text(f"{value}\n")
    local.make_room_for_neighbours(280)
    hard = 1024 + local.NEIGHBOURS_PER_NODE * 280
    assert [int((tmp_path / f"gc_thresh{i}").read_text()) for i in (1, 2, 3)] == [hard // 8, hard // 2, hard]
    (tmp_path / "gc_thresh3").write_text("1000000\n")
    local.make_room_for_neighbours(10)
    assert [int((tmp_path / f"gc_thresh{i}").read_text()) for i in (1, 2, 3)] == [hard // 8, hard // 2, 1000000]
    # Not visible from a network namespace other than the machine's first (an agent on a simulated host).
    monkeypatch.setattr(local, "NEIGHBOUR_SYSCTL", tmp_path / "absent")
    local.make_room_for_neighbours(280)
