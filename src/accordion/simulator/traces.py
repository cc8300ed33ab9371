"""Job logs: the Standard Workload Format (plain or gzipped) and Slurm `sacct --parsable2` exports."""

from __future__ import annotations

import gzip
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

SWF_FIELDS = 18
SACCT_NEEDED = ("JobID", "Submit", "Start", "NCPUS")
_HEADER = re.compile(r"^;\s*(\w+)\s*:\s*(-?\d+)")


class TraceError(ValueError):
    """A trace that cannot be read; the message names the file (and line)."""


@dataclass(frozen=True)
class TraceJob:
    id: str
    submit: float
    run: float
    procs: int
    estimate: float  # the requested time, the scheduler's only knowledge of the run time
    recorded_wait: float | None = None  # what the real machine made it wait, if the log says
    nodes: int = 0  # nodes the log says it held (sacct); 0: derive from procs


@dataclass
class Trace:
    path: Path
    format: str
    jobs: list[TraceJob]
    max_nodes: int | None = None
    max_procs: int | None = None
    bad_lines: list[str] = field(default_factory=list)  # skipped with --skip-bad-lines
    unusable: dict[str, int] = field(default_factory=dict)  # well-formed jobs that cannot be replayed, by reason


def _open_lines(path: Path) -> Iterator[str]:
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        stream = gzip.open(path, "rt", errors="replace") if gzipped else path.open(errors="replace")
        with stream:
            yield from stream
    except (OSError, EOFError) as exc:  # EOFError: truncated gzip
        raise TraceError(f"{path}: cannot read: {exc}") from None


def read_trace(path: Path, skip_bad_lines: bool = False) -> Trace:
    """Read an SWF or sacct file; which one is told by its first line."""
    if not path.is_file():
        raise TraceError(f"{path}: no such file")
    numbered = enumerate(_open_lines(path), 1)
    for lineno, first in numbered:  # noqa: B007  (lineno is read after the loop)
        if first.strip():
            break
    else:
        raise TraceError(f"{path}: empty file")
    lines = itertools.chain([(lineno, first)], numbered)
    trace = (_read_sacct if "|" in first else _read_swf)(path, lines, skip_bad_lines)
    trace.jobs.sort(key=lambda j: j.submit)  # stable: equal submit times keep the log's order
    return trace


class _Lines:
    """Bad-line bookkeeping shared by both formats."""

    def __init__(self, trace: Trace, skip: bool) -> None:
        self.trace, self.skip = trace, skip

    def bad(self, lineno: int, reason: str) -> None:
        message = f"{self.trace.path}:{lineno}: {reason}"
        if not self.skip:
            raise TraceError(f"{message} (pass --skip-bad-lines to skip such lines)")
        self.trace.bad_lines.append(message)

    def unusable(self, reason: str) -> None:
        self.trace.unusable[reason] = self.trace.unusable.get(reason, 0) + 1


def _add(trace: Trace, book: _Lines, job: TraceJob) -> None:
    if job.run < 0:
        book.unusable("run time unknown")
    elif job.procs <= 0:
        book.unusable("no processors")
    else:
        trace.jobs.append(job)


def _read_swf(path: Path, lines: Iterator[tuple[int, str]], skip: bool) -> Trace:
    trace = Trace(path, "swf", [])
    book = _Lines(trace, skip)
    header: dict[str, int] = {}
    for lineno, line in lines:
        if line.startswith(";"):
            m = _HEADER.match(line)
            if m:
                header[m.group(1)] = int(m.group(2))
            continue
        fields = line.split()
        if not fields:
            continue
        if len(fields) != SWF_FIELDS:
            book.bad(lineno, f"expected {SWF_FIELDS} fields, found {len(fields)}")
            continue
        try:
            v = list(map(float, fields))
        except ValueError:
            book.bad(lineno, "non-numeric field")
            continue
        # Requested processors (field 8) is what the scheduler saw; some logs only have the allocated count.
        procs = int(v[7]) if v[7] > 0 else int(v[4])
        estimate = v[8] if v[8] > 0 else v[3]
        _add(trace, book, TraceJob(str(int(v[0])), v[1], v[3], procs, estimate, v[2] if v[2] >= 0 else None))
    trace.max_nodes, trace.max_procs = (v if v > 0 else None for v in (header.get("MaxNodes", 0), header.get("MaxProcs", 0)))
    return trace


def _seconds(text: str) -> float | None:
    """Slurm durations: [D-]HH:MM:SS, MM:SS or MM (minutes); None for UNLIMITED and the like."""
    days, _, clock = text.rpartition("-")
    try:
        parts = [float(p) for p in clock.split(":")]
        d = float(days) if days else 0.0
    except ValueError:
        return None
    if len(parts) == 1:
        parts = [0.0, parts[0], 0.0]
    elif len(parts) == 2:
        parts = [0.0, *parts]
    elif len(parts) != 3:
        return None
    return d * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def _timestamp(text: str) -> float | None:
    """sacct prints local times without a zone: read them as UTC, which keeps differences right."""
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None  # Unknown, None: the job never got there


def _read_sacct(path: Path, lines: Iterator[tuple[int, str]], skip: bool) -> Trace:
    trace = Trace(path, "sacct", [])
    book = _Lines(trace, skip)
    _, header = next(lines)
    names = header.rstrip("\n").rstrip("|").split("|")
    missing = [c for c in SACCT_NEEDED if c not in names]
    if "Elapsed" not in names and "End" not in names:
        missing.append("Elapsed or End")
    if missing:
        raise TraceError(f"{path}:1: sacct header lacks {', '.join(missing)} (export with sacct --parsable2 "
                         "--format JobID,Submit,Start,End,Elapsed,NNodes,NCPUS,Timelimit,Partition,State)")
    col = {name: i for i, name in enumerate(names)}
    for lineno, line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) == len(names) + 1 and fields[-1] == "":  # --parsable ends lines with '|'
            fields.pop()
        if len(fields) != len(names):
            book.bad(lineno, f"expected {len(names)} fields, found {len(fields)}")
            continue
        row = dict(zip(names, fields))
        if "." in row["JobID"]:
            continue  # a job step: its allocation is on the job's own line
        submit = _timestamp(row["Submit"])
        if submit is None:
            book.bad(lineno, f"Submit {row['Submit']!r} is not a date")
            continue
        try:
            procs = int(row["NCPUS"])
            nodes = int(row["NNodes"]) if "NNodes" in col else 0
        except ValueError:
            book.bad(lineno, "NCPUS or NNodes is not a number")
            continue
        start = _timestamp(row["Start"])
        end = _timestamp(row.get("End", ""))
        run = _seconds(row["Elapsed"]) if "Elapsed" in col else None
        if run is None and start is not None and end is not None:
            run = end - start
        unfinished = row.get("State", "").startswith(("PENDING", "RUNNING", "REQUEUED", "SUSPENDED"))
        if start is None or unfinished or (end is None and "End" in col):
            run = None  # nothing to replay yet
        limit = _seconds(row.get("Timelimit", ""))
        run_s = -1.0 if run is None else run
        estimate = limit if limit is not None and limit > 0 else max(run_s, 0.0)
        wait = start - submit if start is not None else None
        _add(trace, book, TraceJob(row["JobID"], submit, run_s, procs, estimate, wait, nodes))
    return trace
