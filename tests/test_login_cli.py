"""Compose-style habits and the login shell's front door (issue 12), without a live cluster.

The cluster's state is faked under a temporary ACCORDION_STATE; the commands run as subprocesses, and
`status` in a real 80x24 terminal (tmux, capture-pane)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import typer

from accordion.cli import _commands, app
from accordion.cluster import Cluster
from accordion.config import parse_config

NODESETS = [{"name": "compute", "max_nodes": 4}, {"name": "gpu_nodes_large_2026", "max_nodes": 2}]


@pytest.fixture
def env(tmp_path):
    env = os.environ | {"ACCORDION_STATE": str(tmp_path / "state"), "ACCORDION_RUN": str(tmp_path / "run"), "COLUMNS": "80"}
    env.pop("ACCORDION_CLUSTER", None)
    for name in ("lab", "other"):
        d = tmp_path / "state" / name
        d.mkdir(parents=True)
        (d / "cluster.json").write_text(json.dumps({"name": name, "nodesets": NODESETS}))
        (d / "status.json").write_text(json.dumps({
            "ts": time.time(), "pins": {"gpu_nodes_large_2026": 2},
            "nodes": [{"name": "hpc-node-0", "nodeset": "compute", "state": "busy", "since": 0}],
            "jobs": [{"id": "7", "nodeset": "compute", "nodes": 1, "cpus_per_node": 1, "running": False, "reason": "Resources"}],
        }))
    (tmp_path / "lab.yaml").write_text("name: lab\nnodesets:\n  - {name: compute, max_nodes: 4}\n")
    return env


def accordion(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "accordion", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_every_command_taking_a_cluster_name_takes_a_cluster_file():
    command = typer.main.get_command(app)
    checked = []
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        opts = {o for p in sub.params for o in getattr(p, "opts", [])}
        if "--cluster" in opts and not sub.hidden:
            assert {"--file", "-f"} <= opts, f"`accordion {name}` takes -c but not -f"
            checked.append(name)
    assert {"status", "shell", "down", "scale", "events", "report", "simulate"} <= set(checked)


def test_file_and_directory_name_the_cluster(env, tmp_path):
    by_file = accordion(env, "status", "-f", str(tmp_path / "lab.yaml"), "--json")
    assert by_file.returncode == 0 and json.loads(by_file.stdout)["cluster"] == "lab", by_file.stderr
    # Two clusters here: without an option, the directory's accordion.yaml decides, as with compose.
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(tmp_path / "lab.yaml", project / "accordion.yaml")
    in_dir = accordion(env, "status", "--json", cwd=project)
    assert in_dir.returncode == 0 and json.loads(in_dir.stdout)["cluster"] == "lab", in_dir.stderr
    both = accordion(env, "status", "-c", "other", "-f", str(tmp_path / "lab.yaml"))
    assert both.returncode == 2 and "either --cluster or --file" in both.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad Name\n")
    refused = accordion(env, "events", "-f", str(bad))
    assert refused.returncode == 2 and "bad.yaml: name" in refused.stderr, refused.stderr


# Under scripts/test.sh (ACCORDION_REQUIRE_LIVE) a missing tmux fails the test instead of skipping it.
@pytest.mark.skipif(shutil.which("tmux") is None and not os.environ.get("ACCORDION_REQUIRE_LIVE"), reason="tmux is installed by scripts/test.sh")
def test_status_header_is_whole_in_an_80_column_terminal(env, tmp_path):
    sock = f"accordion-test-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    done = tmp_path / "done"
    envs = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("ACCORDION_") or k == "PYTHONPATH")
    command = f"env -u COLUMNS {envs} {sys.executable} -m accordion status -c lab; touch {done}; sleep 60"
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "24", command], check=True, timeout=30)
    try:
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "0"], capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)
    assert done.exists(), screen
    header = next((line for line in screen.splitlines() if "scaling" in line), None)
    assert header is not None, screen
    assert header.split() == ["node", "set", "scaling", "max", "start", "idle", "busy", "drain", "fail", "jobs", "wait", "cpus"], screen
    assert "…" not in screen and max(len(line) for line in screen.splitlines()) <= 80, screen
    # The longest node set name (20 characters) folds rather than any figure or header.
    assert "gpu_nodes_large" in screen and "pinned 2" in screen, screen


def test_hints_name_the_clusters_own_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path))
    oar = _commands(Cluster(parse_config({"name": "o", "scheduler": "oar"})))
    slurm = _commands(Cluster(parse_config({"name": "s"})))
    assert "oarsub" in oar and "oarstat" in oar and "sbatch" not in oar
    assert "sbatch" in slurm and "oar" not in slurm


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("ACCORDION_REQUIRE_LIVE"), reason="switching to hpcuser needs root")
def test_an_ordinary_user_is_told_how_to_get_a_login_shell(env):
    proc = subprocess.run(
        ["setpriv", "--reuid=hpcuser", "--regid=hpcuser", "--init-groups", sys.executable, "-m", "accordion", "shell", "-c", "lab"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1 and "accordion shell --user hpcuser" in proc.stderr, proc.stderr
    missing = accordion(env, "shell", "-c", "lab", "--user", "no-such-user-x")
    assert missing.returncode != 0


def test_a_users_directory_is_their_own_or_refused(tmp_path):
    # The shared directory is open to all (1777): someone else's directory, or a link, made first under a
    # user's name would have their shell and jobs working where that someone can replace their files.
    import pwd

    from accordion.cli import own_dir

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)
    daemon, nobody = pwd.getpwnam("daemon"), pwd.getpwnam("nobody")
    made = own_dir(shared, daemon)
    assert made == shared / "daemon" and made.stat().st_uid == daemon.pw_uid and own_dir(shared, daemon) == made
    (shared / "nobody").mkdir()  # root's, made by someone else
    (shared / "bin").symlink_to(tmp_path)
    for account in (nobody, pwd.getpwnam("bin")):
        with pytest.raises(typer.Exit):
            own_dir(shared, account)
    assert (shared / "nobody").stat().st_uid == 0 and (shared / "bin").is_symlink()
