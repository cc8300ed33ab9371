"""Background daemons (munged, slurmctld, the controller) tracked by pid files."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from accordion.store import private

_TICKS = os.sysconf("SC_CLK_TCK")
_BOOTED = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)  # /proc counts start times from boot


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
    """The live process the pid file names, or None. A daemon that died leaves its pid to be reused (pid_max
    is 32768 here): a process that started after the file was written is not the one it names, and must be
    neither stopped nor taken for the daemon."""
    try:
        pid = int(pidfile.read_text().strip())
        written = pidfile.stat().st_mtime
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    state, started = fields[0], _BOOTED + int(fields[19]) / _TICKS  # fields 3 and 22 of proc(5)
    # Start times are counted in ticks (10 ms); a second of margin leaves no doubt.
    return None if state == "Z" or started > written + 1.0 else pid



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
