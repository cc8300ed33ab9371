"""Cost and service of one simulated run, as the field reports them (prior-art §7)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from accordion.simulator.engine import Run
from accordion.units import percentile

SLOWDOWN_BOUND = 10.0  # seconds: very short jobs do not dominate the mean slowdown


@dataclass(frozen=True)
class Metrics:
    policy: str
    jobs: int
    never_started: int  # left waiting for nodes the policy never provided
    mean_wait: float  # seconds, over jobs that started
    p95_wait: float
    mean_bounded_slowdown: float
    node_hours: float  # provisioned: paid for
    ideal_node_hours: float  # what the jobs used: no policy can pay less
    utilization: float  # ideal / provisioned
    node_starts: int
    killed: int  # jobs killed by scale-in: must be 0

    def as_dict(self) -> dict[str, float | int | str | None]:
        """JSON-ready: nan (no job started) becomes None."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


def waits(run: Run) -> list[float]:
    """Per job, in log order; nan for a job that never started."""
    return [s - j.submit for s, j in zip(run.start, run.jobs)]


def summarize(run: Run) -> Metrics:
    w = waits(run)
    started = [(wait, j.run, k) for wait, j, k in zip(w, run.jobs, run.nodes) if not math.isnan(wait)]
    ws = sorted(x[0] for x in started)
    n = len(started)
    used = sum(run_s * k for _, run_s, k in started) / 3600
    provisioned = run.node_seconds / 3600
    slowdown = sum(max(1.0, (wait + r) / max(r, SLOWDOWN_BOUND)) for wait, r, _ in started)
    return Metrics(
        policy=run.policy,
        jobs=len(run.jobs),
        never_started=len(run.jobs) - n,
        mean_wait=sum(ws) / n if n else math.nan,
        p95_wait=percentile(ws, 0.95),
        mean_bounded_slowdown=slowdown / n if n else math.nan,
        node_hours=provisioned,
        ideal_node_hours=used,
        utilization=used / provisioned if provisioned else math.nan,
        node_starts=run.node_starts,
        killed=run.killed,
    )
