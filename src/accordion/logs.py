"""Controller logging: every line names the cluster, and the node when there is one."""

from __future__ import annotations

import json
import logging
import sys


class _Context(logging.Filter):
    def __init__(self, cluster: str) -> None:
        super().__init__()
        self.cluster = cluster

    def filter(self, record: logging.LogRecord) -> bool:
        record.cluster = self.cluster
        record.node = getattr(record, "node", "") or ""
        record.nodeset = getattr(record, "nodeset", "") or ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # cluster, node and nodeset are set on every record by ContextFilter.
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower(), "cluster": getattr(record, "cluster", ""), "logger": record.name}
        for field in ("node", "nodeset"):
            if getattr(record, field, ""):
                doc[field] = getattr(record, field)
        doc["msg"] = record.getMessage()
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(cluster: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Context(cluster))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(cluster)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
