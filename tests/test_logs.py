import json
import logging

from accordion.events import EventLog
from accordion.logs import setup_logging


def test_json_log_lines_name_cluster_and_node(tmp_path, capsys):
    setup_logging("lab", "json")
    EventLog(tmp_path / "e.jsonl", "lab").emit("requested", "hpc-node-1", "compute", "job 3 needs 1 node of 2 CPUs")
    logging.getLogger("accordion.controller").warning("plain message")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["cluster"] == "lab" and lines[0]["node"] == "hpc-node-1" and lines[0]["nodeset"] == "compute"
    assert lines[0]["msg"] == "requested hpc-node-1 (job 3 needs 1 node of 2 CPUs)"
    assert lines[1]["cluster"] == "lab" and "node" not in lines[1] and lines[1]["level"] == "warning"
    logging.getLogger().handlers.clear()
