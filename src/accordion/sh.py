"""Running system commands with errors that say what failed."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence


class CommandError(RuntimeError):
    def __init__(self, cmd: Sequence[str], code: int, stderr: str) -> None:
        self.cmd = list(cmd)
        self.code = code
        self.stderr = stderr.strip()
        super().__init__(f"`{' '.join(cmd)}` failed (exit {code}): {self.stderr or 'no error output'}")


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd), input=input, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stderr or proc.stdout)
    return proc


def wait_until(predicate: Callable[[], bool], timeout: float, message: str, interval: float = 0.1) -> None:
    """Poll until `predicate` holds; raise RuntimeError(message) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(message)
