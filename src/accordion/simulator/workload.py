"""From a trace file and the user's options to jobs and a cluster ready to simulate."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accordion.simulator.engine import ClusterModel, Run, fit_to, simulate
from accordion.simulator.policies import POLICIES
from accordion.simulator.traces import Trace, TraceError, TraceJob, read_trace

DAY = 86400.0


@dataclass
class Workload:
    trace: Trace
    cluster: ClusterModel
    jobs: list[TraceJob]  # what is replayed
    too_big: list[TraceJob]  # need more nodes than the cluster has: dropped
    cut: int  # jobs outside --start-day/--days/--limit


def cluster_for(trace: Trace, nodes: int | None, cpus_per_node: int | None, **provisioning: float) -> ClusterModel:
    """The trace header's machine (MaxNodes nodes of MaxProcs // MaxNodes CPUs) unless overridden."""
    mn, mp = trace.max_nodes, trace.max_procs
    if trace.format != "swf" and (nodes is None or cpus_per_node is None):
        raise TraceError(f"{trace.path}: a {trace.format} export does not say how large the cluster is: give --nodes and --cpus-per-node")
    if cpus_per_node is None:
        cpus_per_node = max(1, mp // mn) if mn and mp else 1
    if nodes is None:
        if not (mn or mp):
            raise TraceError(f"{trace.path}: no MaxNodes or MaxProcs in the header: give --nodes")
        nodes = mn or max(1, (mp or 0) // cpus_per_node)
    return ClusterModel(nodes, cpus_per_node, **provisioning)  # type: ignore[arg-type]


def cut(jobs: list[TraceJob], start_day: float = 0.0, days: float | None = None, limit: int | None = None) -> list[TraceJob]:
    """Jobs submitted from `start_day` for `days` days after the first submission, at most `limit` of them."""
    if not jobs:
        return []
    t0 = jobs[0].submit + start_day * DAY
    t1 = t0 + days * DAY if days is not None else math.inf
    kept = [j for j in jobs if t0 <= j.submit < t1]
    return kept[:limit] if limit is not None else kept


def prepare(
    path: Path,
    nodes: int | None = None,
    cpus_per_node: int | None = None,
    start_day: float = 0.0,
    days: float | None = None,
    limit: int | None = None,
    skip_bad_lines: bool = False,
    **provisioning: float,
) -> Workload:
    trace = read_trace(path, skip_bad_lines)
    cluster = cluster_for(trace, nodes, cpus_per_node, **provisioning)
    chosen = cut(trace.jobs, start_day, days, limit)
    jobs, too_big = fit_to(cluster, chosen)
    return Workload(trace, cluster, jobs, too_big, len(trace.jobs) - len(chosen))


def run_policy(
    workload: Workload, name: str, idle_timeout: float | None = None, progress: Callable[[int], None] | None = None
) -> Run:
    """One policy on the workload; `idle_timeout` overrides the policy's own."""
    definition = POLICIES[name]
    timeout = definition.idle_timeout if idle_timeout is None else idle_timeout
    return simulate(workload.jobs, workload.cluster, definition.make(), timeout, name, progress, definition.plans_on_absent)
