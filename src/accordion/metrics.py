"""Prometheus metrics of one cluster's controller (names are what docs/grafana-dashboard.json uses)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from accordion.model import NodeState, Snapshot


def reason_kind(reason: str) -> str:
    """A bounded label value for a scaling reason (the full text, with job ids, goes to the event log)."""
    for prefix, kind in (("job ", "demand"), ("min_nodes", "min_nodes"), ("scaled to", "by_hand"), ("idle", "idle"), ("did not register", "resume_timeout")):
        if reason.startswith(prefix):
            return kind
    return "other"


class Metrics:
    def __init__(self, cluster: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["cluster", "nodeset"]
        self.cluster = cluster
        self.nodes = Gauge("accordion_nodes", "Nodes by node set and state", labels + ["state"], registry=self.registry)
        self.max_nodes = Gauge("accordion_nodeset_max_nodes", "Node set capacity (max_nodes)", labels, registry=self.registry)
        self.pending_jobs = Gauge("accordion_pending_jobs", "Jobs waiting for nodes", labels, registry=self.registry)
        self.pending_cpus = Gauge("accordion_pending_cpus", "CPUs requested by jobs waiting for nodes", labels, registry=self.registry)
        self.running_jobs = Gauge("accordion_running_jobs", "Running jobs", labels, registry=self.registry)
        self.scale_ups = Counter("accordion_scale_up_total", "Nodes requested, by reason", labels + ["reason"], registry=self.registry)
        self.scale_downs = Counter("accordion_scale_down_total", "Nodes released, by reason", labels + ["reason"], registry=self.registry)
        self.provision = Histogram(
            "accordion_provision_seconds",
            "Time from a node's request to its registration with the scheduler",
            labels,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.loop = Histogram(
            "accordion_controller_loop_seconds",
            "Duration of one observe-decide-act step",
            ["cluster"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.errors = Counter("accordion_controller_errors_total", "Controller steps that failed", ["cluster"], registry=self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)

    def update(self, snap: Snapshot) -> None:
        for spec in snap.nodesets:
            lab, tally = (self.cluster, spec.name), snap.tally[spec.name]
            self.max_nodes.labels(*lab).set(spec.max_nodes)
            for state in NodeState:
                self.nodes.labels(*lab, state.value).set(tally.nodes[state])
            self.pending_jobs.labels(*lab).set(tally.waiting_jobs)
            self.pending_cpus.labels(*lab).set(tally.waiting_cpus)
            self.running_jobs.labels(*lab).set(tally.running_jobs)
