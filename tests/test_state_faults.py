"""Disk full and read-only state directories, on real (small) tmpfs mounts: clear errors, no corrupt state."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from accordion.model import Job
from accordion.store import write_json
from tests.test_controller import make, step

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB tmpfs; unmounted whatever the test does."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(fs: Path) -> None:
    with open(fs / "filler", "wb", buffering=0) as f:
        for _ in range(1000):  # 4 MiB at most: the tmpfs is 64 KiB
            try:
                f.write(b"x" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return
    raise AssertionError("the small tmpfs never filled up")


def test_write_on_a_full_disk_keeps_the_old_file(small_fs):
    target = small_fs / "status.json"
    write_json(target, {"version": 1})
    fill(small_fs)
    with pytest.raises(OSError) as info:
        write_json(target, {"version": 2, "pad": "y" * 20000})
    assert info.value.errno == errno.ENOSPC
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler", "status.json"]  # no temporary file left


def test_write_on_a_read_only_disk_keeps_the_old_file(small_fs):
    target = small_fs / "status.json"
    write_json(target, {"version": 1})
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with pytest.raises(OSError) as info:
        write_json(target, {"version": 2})
    assert info.value.errno == errno.EROFS
    assert json.loads(target.read_text()) == {"version": 1}


def test_controller_survives_a_full_state_disk_and_resumes(small_fs, monkeypatch):
    ctl, sched, prov, now, paths = make(small_fs, monkeypatch)
    step(ctl)
    before = (paths.state / "status.json").read_text()
    fill(small_fs)
    sched.jobs = [Job("1", "c", 1, 1, False, 0.0)]
    with pytest.raises(OSError):
        ctl.step()  # the loop logs this in one line and retries (Controller.run)
    assert (paths.state / "status.json").read_text() == before
    (small_fs / "filler").unlink()
    step(ctl)
    step(ctl)
    assert "c-0" in prov.nodes
    assert json.loads((paths.state / "status.json").read_text())["jobs"][0]["id"] == "1"


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_up_with_an_unwritable_state_dir_is_one_clear_line_and_creates_nothing(small_fs, tmp_path, fault):
    state = small_fs / "state"
    state.mkdir()
    if fault == "full":
        fill(small_fs)
        expected = "No space left on device"
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
        expected = "Read-only file system"
    env = os.environ | {
        "ACCORDION_STATE": str(state), "ACCORDION_RUN": str(tmp_path / "run"), "ACCORDION_SHARED": str(tmp_path / "shared"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "accordion", "up", "-n", "diskfault"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 1, proc.stderr
    assert expected in proc.stderr and str(state) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not Path("/run/netns/acc.diskfault").exists()
    for root in (state, tmp_path / "run", tmp_path / "shared"):
        assert not root.exists() or list(root.iterdir()) == [], root
