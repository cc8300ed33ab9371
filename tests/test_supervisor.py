"""The controller's supervisor, with a stand-in controller: restarts, backoff, stopping, the controller lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from accordion.supervisor import exit_reason

# Stand-in controller. works: writes a status (a step), then runs; crash: exits at once; stubborn: a working
# controller that ignores SIGTERM. Every start is recorded.
FAKE = textwrap.dedent("""
    import os, signal, sys, time
    state, mode = sys.argv[1], sys.argv[2]
    with open(os.path.join(state, "starts"), "a") as f:
        f.write(f"{time.time()} {os.getpid()}\\n")
    if mode == "crash":
        sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.path.join(state, "status.json"), "w").write(str(os.getpid()))
    while True:
        time.sleep(60)
""")

RUN = textwrap.dedent("""
    import sys
    from accordion.events import EventLog
    from accordion.logs import setup_logging
    from accordion.paths import ClusterPaths
    from accordion.supervisor import Supervisor
    fake, mode, first, most, stop = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
    paths = ClusterPaths("s")
    setup_logging("s")
    Supervisor([sys.executable, fake, str(paths.state), mode], paths, EventLog(paths.events, "s"),
               first_delay=first, max_delay=most, stop_timeout=stop).run()
""")


class Supervised:
    def __init__(self, root: Path, mode: str, first: float = 0.5, most: float = 5.0, stop: float = 15.0) -> None:
        self.env = os.environ | {"ACCORDION_STATE": str(root / "state"), "ACCORDION_RUN": str(root / "run")}
        self.state = root / "state" / "s"
        self.pidfile = root / "run" / "s" / "pids" / "controller.pid"
        (self.state / "logs").mkdir(parents=True)
        (self.state / "cluster.json").write_text("{}")
        self.pidfile.parent.mkdir(parents=True)
        fake = root / "fake.py"
        fake.write_text(FAKE)
        with open(root / "supervisor.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", RUN, str(fake), mode, str(first), str(most), str(stop)], env=self.env, stderr=log,
            )

    def starts(self) -> list[tuple[float, int]]:
        try:
            lines = (self.state / "starts").read_text().split("\n")
        except FileNotFoundError:
            return []
        return [(float(t), int(p)) for t, p in (line.split() for line in lines if line)]

    def controller(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def stepped(self, pid: int) -> bool:
        try:
            return (self.state / "status.json").read_text() == str(pid)
        except FileNotFoundError:
            return False

    def events(self) -> list[str]:
        path = self.state / "events.jsonl"
        return [json.loads(line)["reason"] for line in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture
def supervised(tmp_path):
    made: list[Supervised] = []

    def make(*args, **kwargs) -> Supervised:
        made.append(Supervised(tmp_path, *args, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.stop()
        for _, pid in s.starts():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_killed_controller_is_started_again_at_once(supervised):
    s = supervised("works")
    for _ in range(3):
        pid = _until(s.controller, 5, "a controller")
        _until(lambda: s.stepped(pid), 5, "a first step")
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        new = _until(lambda: (p := s.controller()) != pid and p, 5, "the controller started again")
        assert time.monotonic() - killed < 3
    assert s.events() == ["restarted after SIGKILL"] * 3
    _until(lambda: len(s.starts()) == 4, 5, "the last start recorded")
    assert s.starts()[-1][1] == new


def test_a_controller_that_keeps_failing_is_retried_less_and_less_often(supervised):
    s = supervised("crash", first=0.1, most=0.4)
    _until(lambda: len(s.starts()) >= 6, 10, "six attempts")
    times = [t for t, _ in s.starts()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # 0.2, 0.4, then capped at 0.4 (plus the stand-in's start-up)
    assert 0.2 <= gaps[0] < gaps[1] + 0.1 and all(0.4 <= g < 1.5 for g in gaps[1:]), gaps
    assert set(s.events()) == {"restarted after exit code 3"}
    assert s.proc.poll() is None, "the supervisor gave up"


def test_stopping_the_supervisor_stops_the_controller_and_starts_nothing(supervised):
    s = supervised("works")
    pid = _until(s.controller, 5, "a controller")
    _until(lambda: s.stepped(pid), 5, "a first step")
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(10) == 0
    assert not _alive(pid) and not s.pidfile.exists()
    time.sleep(1)
    assert len(s.starts()) == 1 and s.events() == []


def test_a_controller_that_ignores_sigterm_is_killed(supervised):
    s = supervised("stubborn", stop=1.0)
    pid = _until(s.controller, 5, "a controller")
    _until(lambda: s.stepped(pid), 5, "the stand-in to ignore SIGTERM")
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(10) == 0
    assert 1.0 <= time.monotonic() - t0 < 5 and not _alive(pid)


def test_a_supervisor_whose_cluster_is_gone_exits(supervised):
    s = supervised("crash", first=0.1, most=0.1)
    _until(lambda: s.starts(), 5, "a first attempt")
    (s.state / "cluster.json").unlink()
    assert s.proc.wait(5) == 0


def test_a_stop_during_the_wait_before_a_restart_is_immediate(supervised):
    s = supervised("crash", first=5.0, most=5.0)
    _until(lambda: s.starts(), 5, "a first attempt")
    time.sleep(0.5)  # now in the 5 s wait
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(10) == 0
    assert time.monotonic() - t0 < 1 and len(s.starts()) == 1


HOLD = textwrap.dedent("""
    import subprocess, sys, time
    from accordion.paths import ClusterPaths
    from accordion.supervisor import take_controller_lock
    take_controller_lock(ClusterPaths("s"))
    child = subprocess.Popen(["sleep", "60"])  # as slurmctld, restarted by a controller
    print(child.pid, flush=True)
    time.sleep(60)
""")

TRY = textwrap.dedent("""
    from accordion.errors import ClusterError
    from accordion.paths import ClusterPaths
    from accordion.supervisor import take_controller_lock
    try:
        take_controller_lock(ClusterPaths("s"))
        print("locked")
    except ClusterError as exc:
        print(exc)
""")


def test_one_controller_at_a_time_and_the_lock_goes_with_it(tmp_path):
    env = os.environ | {"ACCORDION_STATE": str(tmp_path / "state"), "ACCORDION_RUN": str(tmp_path / "run")}
    holder = subprocess.Popen([sys.executable, "-c", HOLD], env=env, stdout=subprocess.PIPE, text=True)
    with holder.stdout:
        child = int(holder.stdout.readline())
    try:
        out = subprocess.run([sys.executable, "-c", TRY], env=env, capture_output=True, text=True).stdout
        assert out.startswith("another controller of cluster 's' is running"), out
        holder.kill()
        holder.wait()
        assert _alive(child)
        # The child the controller started still runs, and does not hold the lock.
        out = subprocess.run([sys.executable, "-c", TRY], env=env, capture_output=True, text=True).stdout
        assert out == "locked\n", out
    finally:
        os.kill(child, signal.SIGKILL)


def test_exit_reasons():
    assert exit_reason(-9) == "SIGKILL" and exit_reason(1) == "exit code 1" and exit_reason(-65) == "signal 65"
