"""Daemons tracked by pid files: a pid file left by a daemon that died never names another process."""

from __future__ import annotations

import os
import subprocess
import time

from accordion import daemons


def test_a_daemon_is_found_and_stopped_by_its_pid_file(tmp_path):
    pid = daemons.spawn(["sleep", "30"], tmp_path / "log", tmp_path / "d.pid")
    assert daemons.pid_of(tmp_path / "d.pid") == pid
    assert daemons.stop(tmp_path / "d.pid", timeout=5) is True
    assert daemons.pid_of(tmp_path / "d.pid") is None and not (tmp_path / "d.pid").exists()


def test_a_pid_reused_after_the_daemon_died_is_neither_stopped_nor_taken_for_it(tmp_path):
    # The daemon's pid file was written a minute ago; the process that has its pid now started since.
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        pidfile = tmp_path / "d.pid"
        pidfile.write_text(f"{other.pid}\n")
        written = time.time() - 60
        os.utime(pidfile, (written, written))
        assert daemons.pid_of(pidfile) is None
        assert daemons.stop(pidfile, timeout=1) is False
        assert other.poll() is None  # still running
    finally:
        other.kill()
        other.wait()
