import json
from pathlib import Path

import jsonschema

from accordion.cli import status_document
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
    assert doc["controller"] == "stopped" and doc["events"][0]["kind"] == "requested"
    bad = dict(doc, controller="maybe")
    try:
        jsonschema.validate(bad, SCHEMA)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the schema accepts anything")
