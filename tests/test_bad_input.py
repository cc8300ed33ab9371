"""Property-based bad input: the cluster file and every CLI command.

Whatever is typed, the answer is a result or one error naming what was wrong: never a traceback, and
nothing is created when validation fails.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from accordion.cli import app
from accordion.config import ClusterConfig, ConfigError, _where, load_config, parse_config

FIELDS = ["name", "scheduler", "provider", "nodesets", "controller", "min_nodes", "max_nodes", "cpus", "memory_mb",
          "idle_timeout", "name_base", "poll_interval", "resume_timeout", "log_format", "metrics_port"]
NASTY = ["..", "../x", "a/b", "a b", "x" * 300, "", "-", "Compute", "hpc-node-0", "é", "a\nb", "$(id)", ";", "0", "-1",
         "1e9", "nan", "inf", "30s", "5m", "oar", "slurm", "local", "kubernetes", "/dev/null", "/"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
    st.sampled_from(NASTY), st.text(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
configs = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6) | values


@settings(max_examples=400, deadline=None)
@given(configs)
def test_any_cluster_file_is_accepted_or_refused_by_field(data):
    try:
        config = parse_config(data, "f.yaml")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("f.yaml: ") and "\n" not in message
        where = message.removeprefix("f.yaml: ")
        # The field path starts with a field the input actually has (or is the top level).
        if isinstance(data, dict) and not where.startswith("(top level)"):
            assert any(where.startswith(_where((k,))) for k in data), (where, data)
        return
    assert isinstance(config, ClusterConfig)
    for ns in config.nodesets:
        for node in ns.node_names():  # names end up in paths, netns names, cgroups and slurm.conf
            assert "/" not in node and ".." not in node and " " not in node and len(node) < 64


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_yaml_text_is_accepted_or_refused_with_the_file_name(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "accordion.yaml"
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)


COMMANDS = ["up", "down", "status", "events", "report", "shell", "scale", "list", "simulate", "controller"]
OPTIONS = ["-c", "--cluster", "-n", "--name", "--wait", "--json", "--watch", "--since", "--follow", "-o", "--output",
           "--auto", "--all", "--policy", "--nodes", "--cpus-per-node", "--report", "--help", "--", "compute"]
tokens = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(NASTY), st.text(max_size=20), st.integers(-5, 10**6).map(str))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(COMMANDS), st.lists(tokens, max_size=6), configs)
def test_every_command_answers_bad_input_with_an_error_not_a_traceback(command, args, config_data):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        env = {
            "ACCORDION_STATE": str(root / "state"), "ACCORDION_RUN": str(root / "run"),
            "ACCORDION_SHARED": str(root / "shared"), "ACCORDION_CLUSTER": None,
        }
        argv = [command, *args]
        if command == "up":
            # Only invalid cluster files: a valid one would really start a cluster.
            try:
                parse_config(config_data)
                assume(False)
            except ConfigError:
                pass
            cfg = root / "bad.yaml"
            cfg.write_text(yaml.safe_dump(config_data))
            argv = ["up", *[a for a in args if a not in ("-f", "--file", "--help")], "-f", str(cfg)]
        cwd = os.getcwd()
        os.chdir(d)  # no accordion.yaml here for `up` to pick up
        try:
            result = CliRunner(env=env).invoke(app, argv)
        finally:
            os.chdir(cwd)
        output = result.stdout + result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), (argv, repr(result.exception), output)
        assert "Traceback" not in output, (argv, output)
        assert result.exit_code in (0, 1, 2), (argv, result.exit_code, output)
        if result.exit_code != 0:
            first = result.stderr.strip()
            assert first.startswith(("error:", "Usage:", "╭─ Error")), (argv, output)
        # Nothing created: no cluster state, no runtime files, no shared directory.
        for sub in ("state", "run", "shared"):
            assert not (root / sub).exists() or not any((root / sub).iterdir()), (argv, sub)


def test_a_cluster_name_never_names_a_directory_outside_the_state_root(tmp_path):
    # A name is a directory under the state root: `down -c /some/dir` used to take it for a cluster's kept
    # records and delete it (found by the test above, with "/dev/null").
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    env = {"ACCORDION_STATE": str(tmp_path / "state"), "ACCORDION_RUN": str(tmp_path / "run"), "ACCORDION_CLUSTER": None}
    for name in (str(victim), f"../{victim.name}", ".."):
        result = CliRunner(env=env).invoke(app, ["down", "-c", name])
        assert result.exit_code == 2 and "--cluster" in result.stderr and "is not a cluster name" in result.stderr, result.stderr
    result = CliRunner(env={**env, "ACCORDION_CLUSTER": f"../{victim.name}"}).invoke(app, ["down"])
    assert result.exit_code == 1 and "is not a cluster name" in str(result.exception), result.exception
    assert (victim / "sub").is_dir()
    # Nor the state root's directories that are not clusters' (every cluster's host keys)...
    for name in ("pki", "agent"):
        (tmp_path / "state" / name / "prod").mkdir(parents=True)
        result = CliRunner(env=env).invoke(app, ["down", "-c", name])
        assert result.exit_code == 2 and f"the state directory's {name}/ holds" in result.stderr, result.stderr
        assert (tmp_path / "state" / name / "prod").is_dir()
        with pytest.raises(ConfigError, match=f"name: '{name}' is not a cluster name"):
            parse_config({"name": name})
    # ...nor a directory under the state root holding anything but a cluster's kept records.
    (tmp_path / "state" / "dpkg" / "info").mkdir(parents=True)
    result = CliRunner(env=env).invoke(app, ["down", "-c", "dpkg"])
    assert result.exit_code == 1 and "holds no cluster and no kept records of one: nothing deleted" in result.stderr
    assert (tmp_path / "state" / "dpkg" / "info").is_dir()
    (tmp_path / "state" / "old" / "accounting").mkdir(parents=True)  # what `down --keep-data` leaves
    result = CliRunner(env=env).invoke(app, ["down", "-c", "old"])
    assert result.exit_code == 0 and not (tmp_path / "state" / "old").exists(), result.stderr
    # An empty or relative root would be the current directory.
    for value in ("", "state"):
        result = CliRunner(env={**env, "ACCORDION_STATE": value}).invoke(app, ["down", "-c", "dpkg"])
        assert result.exit_code == 1 and f"ACCORDION_STATE: {value!r} is not an absolute path" in str(result.exception)
