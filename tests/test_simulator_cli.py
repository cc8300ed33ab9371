"""`accordion simulate`: table, JSON, HTML report, and one-line errors (no root needed)."""

import json

from typer.testing import CliRunner

from accordion.cli import app
from tests.test_simulator_traces import swf

runner = CliRunner()


def write_trace(tmp_path):
    path = tmp_path / "small.swf"
    lines = [swf(i, i * 50, 100 + 10 * i, 1 + i % 3, wait=i % 7, req_time=400) for i in range(1, 40)]
    lines.append(swf(99, 100, 10, 64))  # larger than the cluster
    path.write_text("; MaxNodes: 4\n; MaxProcs: 8\n" + "\n".join(lines) + "\n")
    return path


def test_table_for_every_policy(tmp_path):
    result = runner.invoke(app, ["simulate", str(write_trace(tmp_path))])
    assert result.exit_code == 0, result.output
    for name in ("static", "chsc", "powersave", "accordion", "provisioned node-hours", "jobs killed by scale-in"):
        assert name in result.output
    assert "1 jobs larger than the cluster dropped" in result.output


def test_json_and_report(tmp_path):
    report = tmp_path / "r.html"
    result = runner.invoke(app, ["simulate", str(write_trace(tmp_path)), "--policy", "static,accordion", "--json",
                                 "--report", str(report), "--idle-timeout", "30", "--limit", "20"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc["policies"]) == {"static", "accordion"}  # 20 jobs, one too large for the cluster
    assert doc["policies"]["accordion"]["jobs"] == 19 and doc["policies"]["accordion"]["killed"] == 0
    assert doc["policies"]["static"]["node_hours"] > doc["policies"]["accordion"]["node_hours"]
    page = report.read_text()
    assert page.count("<svg") == 4 and "Provisioned nodes" in page and "Wait-time distribution" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained


def test_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.swf"
    bad.write_text("; MaxNodes: 4\n1 0 0 10 1\n")
    cases = [
        (["simulate", str(bad)], 1, "bad.swf:2: expected 18 fields, found 5"),
        (["simulate", str(tmp_path / "missing.swf")], 1, "no such file"),
        (["simulate", str(write_trace(tmp_path)), "--policy", "magic"], 2, "unknown policy magic"),
        (["simulate", str(write_trace(tmp_path)), "--nodes", "0"], 2, "--nodes must be positive"),
        (["simulate", str(write_trace(tmp_path)), "--start-day", "999"], 1, "no job to replay"),
    ]
    for args, code, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == code, result.output
        assert message in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["simulate", str(bad), "--skip-bad-lines", "--nodes", "2"])
    assert result.exit_code == 1 and "no job to replay" in result.output
