"""The event log: one JSON object per line, appended and flushed to disk as it happens."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("accordion.events")


class EventLog:
    def __init__(self, path: Path, cluster: str, sink: Callable[[dict[str, object]], None] | None = None) -> None:
        self.path = path
        self.cluster = cluster
        self.sink = sink  # also told of every event (the Kubernetes provider makes them Kubernetes Events)

    def emit(self, kind: str, node: str = "", nodeset: str = "", reason: str = "", **extra: object) -> dict[str, object]:
        event: dict[str, object] = {"ts": round(time.time(), 3), "cluster": self.cluster, "kind": kind}
        if node:
            event["node"] = node
        if nodeset:
            event["nodeset"] = nodeset
        if reason:
            event["reason"] = reason
        event.update(extra)
        log.info("%s%s%s", kind, f" {node}" if node else "", f" ({reason})" if reason else "", extra={"node": node, "nodeset": nodeset})
        line = json.dumps(event, separators=(",", ":")) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.sink is not None:
            self.sink(event)
        return event


def read_events(path: Path, since: float = 0.0) -> Iterator[dict[str, object]]:
    """Records of a JSON-lines file (event log, time series) stamped `ts` >= since."""
    try:
        with open(path) as f:
            for line in f:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if float(event.get("ts", 0)) >= since:
                    yield event
    except FileNotFoundError:
        return
