import io
import json
import os
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from accordion.cli import _status_view, status_document
from accordion.cluster import Cluster
from accordion.config import parse_config
from accordion.events import EventLog

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "status-schema.json").read_text())


def test_status_json_follows_documented_schema(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("ACCORDION_RUN", str(tmp_path / "run"))
    c = Cluster(parse_config({"name": "s", "nodesets": [{"name": "a", "max_nodes": 2}, {"name": "b", "max_nodes": 1}]}))
    c.paths.state.mkdir(parents=True)
    (c.paths.state / "status.json").write_text(json.dumps({
        "ts": 1.0,
        "nodes": [{"name": "a-0", "nodeset": "a", "state": "busy", "since": 0}, {"name": "a-1", "nodeset": "a", "state": "absent", "since": 0},
                  {"name": "b-0", "nodeset": "b", "state": "starting", "since": 0}],
        "jobs": [{"id": "1", "nodeset": "a", "nodes": 1, "cpus_per_node": 2, "running": True, "reason": "None"},
                 {"id": "2", "nodeset": "b", "nodes": 1, "cpus_per_node": 1, "running": False, "reason": "Resources"}],
        "pins": {"b": 1},
    }))
    EventLog(c.paths.events, "s").emit("requested", "b-0", "b", "job 2 needs 1 node of 1 CPU")
    doc = status_document(c)
    jsonschema.validate(doc, SCHEMA)
    a, b = doc["nodesets"]
    assert a["nodes"]["busy"] == 1 and a["node_states"] == {"a-0": "busy"} and a["running_jobs"] == 1
    assert b["scaling"] == "pinned to 1" and b["pending_cpus"] == 1 and b["pending_reasons"] == ["Resources"]
    assert doc["controller"] == "dead" and doc["supervisor"] == "dead" and doc["events"][0]["kind"] == "requested"
    assert doc["stale"] and doc["age"] > 1e9  # written at ts 1.0
    bad = dict(doc, controller="maybe")
    try:
        jsonschema.validate(bad, SCHEMA)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the schema accepts anything")


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("ACCORDION_RUN", str(tmp_path / "run"))
    c = Cluster(parse_config({"name": "s", "controller": {"resync_interval": 4}, "nodesets": [{"name": "a", "max_nodes": 1}]}))
    c.paths.state.mkdir(parents=True)
    c.paths.pids.mkdir(parents=True)
    return c


def _written(c: Cluster, ago: float) -> None:
    (c.paths.state / "status.json").write_text(json.dumps({"ts": time.time() - ago, "nodes": [], "jobs": [], "pins": {}}))


def _text(doc: dict) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(_status_view(doc))
    return console.export_text()


def test_status_says_whether_the_controller_runs_and_how_old_its_figures_are(cluster):
    c = cluster
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = str(os.getpid())  # any live process stands for the daemon
    cases = [
        # controller pid, supervisor pid, written s ago -> controller, supervisor, stale, words shown
        (alive, alive, 1, "running", "running", False, "controller running, updated 1s ago"),
        (alive, alive, 19, "running", "running", False, "updated 19s ago"),  # within 5 resync intervals of 4 s
        (alive, alive, 25, "running", "running", True, "updated 25s ago, stale"),  # the controller is stuck
        (str(dead.pid), alive, 1, "restarting", "running", True, "controller restarting, updated 1s ago, stale"),
        (None, alive, 1, "restarting", "running", True, "controller restarting"),
        (str(dead.pid), str(dead.pid), 300, "dead", "dead", True, "controller dead (`accordion up -c s` starts it again), updated 5m ago, stale"),
        (alive, None, 1, "running", "dead", False, "running, unsupervised (`accordion up -c s` restarts its supervisor)"),
    ]
    for controller, supervisor, ago, state, sup, stale, words in cases:
        for pidfile, pid in ((c.controller_pidfile, controller), (c.supervisor_pidfile, supervisor)):
            pidfile.unlink(missing_ok=True)
            if pid is not None:
                pidfile.write_text(pid + "\n")
        _written(c, ago)
        doc = status_document(c)
        jsonschema.validate(doc, SCHEMA)
        assert (doc["controller"], doc["supervisor"], doc["stale"]) == (state, sup, stale), (controller, supervisor, ago, doc)
        assert abs(doc["age"] - ago) < 1
        assert words in _text(doc), _text(doc)


def test_status_before_the_first_figures(cluster):
    c = cluster
    c.supervisor_pidfile.write_text(f"{os.getpid()}\n")
    c.controller_pidfile.write_text(f"{os.getpid()}\n")
    doc = status_document(c)
    jsonschema.validate(doc, SCHEMA)
    assert doc["updated"] is None and doc["age"] is None and doc["stale"]
    assert "no figures yet" in _text(doc)
