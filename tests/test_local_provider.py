"""The local provider's listing without `runc list`: each node's container state from the init process it
recorded (pid and start time) and runc's exec fifo; runc is asked only about a node without that record
and no start under way; a listing that cannot be read is an error, never an empty one (the controller
would delete every node)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accordion.config import ClusterConfig
from accordion.providers import local
from accordion.providers.base import ProviderError
from accordion.sh import CommandError

CONFIG = ClusterConfig.model_validate({"name": "t", "nodesets": [{"name": "compute", "name_base": "n", "max_nodes": 2}]})


def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: list[CommandError | str] | None = None) -> tuple[local.NodeRuntime, list[list[str]]]:
    """A runtime with node n-0's directory; runc's answers, in order, if it is asked at all."""
    calls: list[list[str]] = []

    def fake_run(cmd, **_):  # noqa: ANN001, ANN003, ANN202
        calls.append(list(cmd))
        answer = (answers or []).pop(0)
        if isinstance(answer, CommandError):
            raise answer
        return subprocess.CompletedProcess(cmd, 0, answer, "")

    monkeypatch.setattr(local, "run", fake_run)
    rt = local.NodeRuntime(CONFIG, "t", tmp_path / "run", tmp_path / "logs")
    (rt.nodes / "n-0").mkdir(parents=True)
    (rt.nodes / "n-0" / "created").write_text("5\n")
    return rt, calls


def record(rt: local.NodeRuntime, pid: int, started: str | None = None) -> None:
    """What `_create` keeps of the container's init process."""
    (rt.nodes / "n-0" / local.INIT).write_text(f"{pid} {started or local._started(str(pid))}\n")
    (rt.run / "runc" / "n-0").mkdir(parents=True, exist_ok=True)


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_node_whose_init_lives_is_running_and_created_while_its_exec_fifo_is_there(tmp_path, monkeypatch, child):
    rt, calls = runtime(tmp_path, monkeypatch)
    record(rt, child.pid)
    assert rt.list() == {"n-0": local.NodeInfo("n-0", True, 5.0)}
    # Prepared (`runc create`): runc's init waits on the exec fifo; ready once the digest is written.
    (rt.run / "runc" / "n-0" / "exec.fifo").touch()
    (rt.nodes / "n-0" / local.PREPARED).write_text("digest")
    assert rt.list() == {"n-0": local.NodeInfo("n-0", False, 5.0, prepared=True)}
    # Unmarked for its start, not started yet: a container that never ran, not a node.
    (rt.nodes / "n-0" / local.PREPARED).unlink()
    assert rt.list() == {"n-0": local.NodeInfo("n-0", False, 5.0)}
    assert calls == []  # runc was never run


def test_a_node_whose_init_exited_or_whose_pid_was_reused_is_not_running(tmp_path, monkeypatch, child):
    rt, calls = runtime(tmp_path, monkeypatch)
    record(rt, child.pid, started="1")  # another process had this pid when the node started
    assert rt.list()["n-0"].running is False
    record(rt, child.pid)
    child.kill()
    # Not reaped: a zombie, still in /proc, as a container's init whose parent has not waited for it.
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert rt.list()["n-0"].running is False
    child.wait()
    assert rt.list()["n-0"].running is False
    assert calls == []


def test_without_a_record_runc_tells_unless_a_start_is_under_way(tmp_path, monkeypatch, child):
    # A node made before Accordion kept the record: runc's own state, recorded, so runc is asked once.
    rt, calls = runtime(tmp_path, monkeypatch, [f'{{"id": "n-0", "status": "running", "pid": {child.pid}}}'])
    (rt.run / "runc" / "n-0").mkdir(parents=True)
    assert rt.list() == {"n-0": local.NodeInfo("n-0", True, 5.0)}
    assert calls and calls[0][-2:] == ["state", "n-0"]
    assert rt.list() == {"n-0": local.NodeInfo("n-0", True, 5.0)}
    assert len(calls) == 1
    # Removed between the directory listing and runc's answer: gone, not an error.
    rt, calls = runtime(tmp_path / "b", monkeypatch, [CommandError(["runc", "state"], 1, "container does not exist")])
    (rt.run / "runc" / "n-0").mkdir(parents=True)
    assert rt.list()["n-0"].running is False
    # While `runc run` makes it (its launcher recorded and alive): not running yet, runc not asked.
    rt, calls = runtime(tmp_path / "c", monkeypatch)
    (rt.run / "runc" / "n-0").mkdir(parents=True)
    bundle = rt.nodes / "n-0" / "bundle"
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--bundle", str(bundle), "n-0"])
    try:
        deadline = time.monotonic() + 10
        while b"--bundle" not in Path(f"/proc/{launcher.pid}/cmdline").read_bytes():  # until it has exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (rt.nodes / "n-0" / "runc.pid").write_text(f"{launcher.pid}\n")
        assert rt.list()["n-0"].running is False
        assert calls == []
    finally:
        launcher.kill()
        launcher.wait()


def test_a_listing_that_cannot_be_read_is_an_error(tmp_path, monkeypatch):
    rt, _ = runtime(tmp_path, monkeypatch, [CommandError(["runc", "state"], 1, "permission denied")])
    (rt.run / "runc" / "n-0").mkdir(parents=True)
    with pytest.raises(ProviderError, match="permission denied"):
        rt.list()
    rt, _ = runtime(tmp_path / "b", monkeypatch)
    (rt.nodes / "n-0" / local.INIT).mkdir()  # unreadable: not "no container"
    with pytest.raises(ProviderError, match="cannot list"):
        rt.list()
    assert os.path.isdir(rt.nodes / "n-0")


# Skipped only outside scripts/test.sh: there (ACCORDION_REQUIRE_LIVE) a run without root fails instead.
@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("ACCORDION_REQUIRE_LIVE"), reason="mounts need root")
def test_mounts_are_system_calls_that_name_what_failed(tmp_path):
    """A node's mounts are made and taken out without `mount` or `ip` processes: a mount that fails names
    its target, and taking out what is not (or no longer) mounted does nothing."""
    with pytest.raises(ProviderError, match=f"cannot mount tmpfs on {tmp_path / 'missing'}: No such file"):
        local._mount("tmpfs", tmp_path / "missing", "tmpfs", "size=1m")
    # A scope of its own: taking a node out of the host also removes its /run/netns entry, a real path.
    rt = local.NodeRuntime(CONFIG, f"unit{os.getpid()}", tmp_path / "run", tmp_path / "logs")
    scratch = rt.nodes / "n-0" / "scratch"
    scratch.mkdir(parents=True)
    local._mount("tmpfs", scratch, "tmpfs", "size=1m")
    try:
        assert os.path.ismount(scratch)
        rt._leave_host("n-0")
        assert not os.path.ismount(scratch)
        rt._leave_host("n-0")  # nothing mounted any more: nothing to do
    finally:
        subprocess.run(["umount", str(scratch)], capture_output=True)


def test_teardown_tries_every_node_and_names_the_one_it_could_not_remove(tmp_path, monkeypatch):
    rt = local.NodeRuntime(CONFIG, f"unit{os.getpid()}", tmp_path / "run", tmp_path / "logs")
    for name in ("n-0", "n-1"):
        (rt.nodes / name).mkdir(parents=True)
    tried = []

    def delete(name: str) -> None:
        tried.append(name)
        if name == "n-0":
            raise ProviderError("cannot unmount n-0's root: Operation not permitted")
        shutil.rmtree(rt.nodes / name)

    monkeypatch.setattr(rt, "delete", delete)
    with pytest.raises(ProviderError, match="n-0's root"):
        rt.teardown()
    assert tried == ["n-0", "n-1"]


def test_a_node_name_or_file_never_reaches_outside_the_runtime(tmp_path, monkeypatch):
    # A host agent deletes the node its head names: a name with "/" would be any directory of the host.
    rt, calls = runtime(tmp_path, monkeypatch)
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in (str(victim), "../../victim", "..", ""):
        with pytest.raises(ProviderError, match="is not a node name"):
            rt.delete(name)
    assert victim.is_dir() and calls == []
    with pytest.raises(ProviderError, match="must not climb out"):
        local._in_layer(tmp_path / "layer", "/etc/../../victim/key")
    assert local._in_layer(tmp_path / "layer", "/etc/munge/munge.key") == tmp_path / "layer/etc/munge/munge.key"
