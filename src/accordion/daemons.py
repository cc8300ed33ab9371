"""Background daemons (munged, slurmctld, the controller) tracked by pid files."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from accordion.store import private


def spawn(argv: Sequence[str], log: Path, pidfile: Path, env: dict[str, str] | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab", opener=private) as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def pid_of(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return None if state == "Z" else pid


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(pidfile: Path, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; returns True if a process was stopped."""
    pid = pid_of(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if pid_of(pidfile) is None:
            break
        time.sleep(0.05)
    else:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(100):
            _reap(pid)
            if pid_of(pidfile) is None:
                break
            time.sleep(0.05)
    pidfile.unlink(missing_ok=True)
    return True
