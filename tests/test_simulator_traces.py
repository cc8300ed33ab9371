"""Reading job logs: SWF (plain, gzipped, header, quirks), sacct exports, bad lines, cutting."""

import gzip

import pytest

from accordion.simulator.traces import TraceError, read_trace
from accordion.simulator.workload import cluster_for, cut, prepare


def swf(job, submit, run, procs, wait=-1, req_procs=-1, req_time=-1, status=1):
    fields = [job, submit, wait, run, procs, -1, -1, req_procs, req_time, -1, status, 1, 1, -1, 1, -1, -1, -1]
    return " ".join(str(f) for f in fields)


HEADER = "; Version: 2.2\n; MaxNodes: 338 (batch partition; 512 total)\n; MaxProcs: 676\n;\n"


def test_swf_header_and_fields(tmp_path):
    path = tmp_path / "t.swf"
    path.write_text(HEADER + swf(1, 0, 100, 4, wait=5, req_procs=8, req_time=3600) + "\n" + swf(2, 10, 50, 3) + "\n")
    trace = read_trace(path)
    assert (trace.format, trace.max_nodes, trace.max_procs) == ("swf", 338, 676)
    a, b = trace.jobs
    assert (a.id, a.submit, a.run, a.procs, a.estimate, a.recorded_wait) == ("1", 0, 100, 8, 3600, 5)
    # Requested processors -1: the allocated count; requested time -1: the run time; wait -1: unknown.
    assert (b.procs, b.estimate, b.recorded_wait) == (3, 50, None)
    cluster = cluster_for(trace, None, None)
    assert (cluster.max_nodes, cluster.cpus_per_node) == (338, 2)
    assert cluster_for(trace, 10, 4).max_nodes == 10


def test_gzip_and_sorting_by_submit(tmp_path):
    path = tmp_path / "t.swf.gz"
    with gzip.open(path, "wt") as f:
        f.write("; MaxNodes: 4\n" + swf(2, 20, 1, 1) + "\n" + swf(1, 10, 1, 1) + "\n" + swf(3, 20, 1, 1) + "\n")
    trace = read_trace(path)
    assert [j.id for j in trace.jobs] == ["1", "2", "3"]
    assert (trace.max_nodes, trace.max_procs) == (4, None)
    assert cluster_for(trace, None, None).cpus_per_node == 1


def test_unusable_jobs_are_counted_not_replayed(tmp_path):
    path = tmp_path / "t.swf"
    path.write_text("; MaxNodes: 4\n" + swf(1, 0, -1, 2) + "\n" + swf(2, 0, 10, -1) + "\n" + swf(3, 0, 10, 1) + "\n")
    trace = read_trace(path)
    assert [j.id for j in trace.jobs] == ["3"]
    assert trace.unusable == {"run time unknown": 1, "no processors": 1}


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.swf"
    path.write_text("; MaxNodes: 4\n" + swf(1, 0, 10, 1) + "\n1 2 3\n" + swf(3, 0, 10, 1).replace(" 10 ", " ten ") + "\n")
    with pytest.raises(TraceError, match=r"bad\.swf:3: expected 18 fields, found 3"):
        read_trace(path)
    trace = read_trace(path, skip_bad_lines=True)
    assert [j.id for j in trace.jobs] == ["1"]
    assert len(trace.bad_lines) == 2 and trace.bad_lines[1].endswith("bad.swf:4: non-numeric field")


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "nope.swf")
    (tmp_path / "empty.swf").write_text("\n\n")
    with pytest.raises(TraceError, match="empty file"):
        read_trace(tmp_path / "empty.swf")
    (tmp_path / "broken.swf.gz").write_bytes(gzip.compress(b"; MaxNodes: 4\n" + b"1 " * 500)[:30])
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "broken.swf.gz")


def test_no_header_needs_nodes(tmp_path):
    path = tmp_path / "t.swf"
    path.write_text(swf(1, 0, 10, 1) + "\n")
    with pytest.raises(TraceError, match="give --nodes"):
        cluster_for(read_trace(path), None, None)
    assert cluster_for(read_trace(path), 3, None).max_nodes == 3


SACCT = """State|JobID|Partition|Submit|Start|End|Elapsed|NNodes|NCPUS|Timelimit
COMPLETED|100|batch|2024-03-01T10:00:00|2024-03-01T10:00:30|2024-03-01T11:00:30|01:00:00|2|8|1-00:00:00
COMPLETED|100.batch|batch|2024-03-01T10:00:30|2024-03-01T10:00:30|2024-03-01T11:00:30|01:00:00|1|4|
CANCELLED by 0|101|batch|2024-03-01T10:05:00|2024-03-01T10:06:00|2024-03-01T10:07:00|00:01:00|1|1|UNLIMITED
PENDING|102|batch|2024-03-01T10:06:00|Unknown|Unknown|00:00:00|1|4|30:00
TIMEOUT|103_7|batch|2024-03-01T09:00:00|2024-03-01T09:00:00|2024-03-01T09:30:00|00:30:00|1|2|30
"""


def test_sacct_columns_by_name(tmp_path):
    path = tmp_path / "sacct.txt"
    path.write_text(SACCT)
    trace = read_trace(path)
    assert trace.format == "sacct"
    assert [j.id for j in trace.jobs] == ["103_7", "100", "101"]  # by submit time; the step is not a job
    j103, j100, j101 = trace.jobs
    assert (j100.run, j100.procs, j100.nodes, j100.estimate, j100.recorded_wait) == (3600, 8, 2, 86400, 30)
    assert (j101.run, j101.estimate) == (60, 60)  # UNLIMITED: the run time stands in
    assert (j103.run, j103.estimate, j103.recorded_wait) == (1800, 1800, 0)  # Timelimit in minutes
    assert trace.unusable == {"run time unknown": 1}
    assert j103.submit == 1709283600.0  # read as UTC, whatever the machine's zone
    with pytest.raises(TraceError, match="give --nodes and --cpus-per-node"):
        cluster_for(trace, None, None)
    cluster = cluster_for(trace, 4, 4)
    assert cluster.nodes_for(j100) == 2 and cluster.nodes_for(j103) == 1


def test_sacct_bad_header_and_line(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("JobID|Start|End\n1|x|y\n")
    with pytest.raises(TraceError, match=r"s\.txt:1: sacct header lacks Submit, NCPUS"):
        read_trace(path)
    path.write_text("JobID|Submit|Start|Elapsed|NCPUS|\n1|2024-01-01T00:00:00|2024-01-01T00:00:01|00:00:10|2|\n2|2024-01-01T00:00:00|2024-01-01T00:00:01|00:00:10|two|\n")
    with pytest.raises(TraceError, match=r"s\.txt:3: NCPUS or NNodes is not a number"):
        read_trace(path)
    assert [j.id for j in read_trace(path, skip_bad_lines=True).jobs] == ["1"]  # --parsable's trailing '|' accepted


def test_cut_and_prepare(tmp_path):
    path = tmp_path / "t.swf"
    day = 86400
    lines = [swf(i, i * day // 2, 10, 1 if i != 3 else 9) for i in range(1, 8)]
    path.write_text("; MaxNodes: 4\n" + "\n".join(lines) + "\n")
    jobs = read_trace(path).jobs
    assert [j.id for j in cut(jobs, start_day=1, days=1)] == ["3", "4"]
    assert [j.id for j in cut(jobs, limit=2)] == ["1", "2"]
    work = prepare(path, start_day=0.5, days=2)
    assert [j.id for j in work.jobs] == ["2", "4", "5"]
    assert [j.id for j in work.too_big] == ["3"] and work.cut == 3
