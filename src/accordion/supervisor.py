"""The controller's supervisor: starts the controller again whenever it exits, SIGKILL included.

A process of Accordion's own rather than a systemd unit: systemd is not PID 1 where Accordion runs (the
Kubernetes head image runs catatonit, containers and this machine run no init system at all), and a
cluster is started by `accordion up`, not installed. The supervisor is kept small so that it has little
to fail on: it starts the controller, waits for it to exit and starts it again. It holds no state; the
controller keeps almost none either, so a restarted controller resumes from what the scheduler and the
provider report.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence

from accordion.errors import ClusterError
from accordion.events import EventLog
from accordion.paths import ClusterPaths
from accordion.store import private

log = logging.getLogger("accordion.supervisor")

FIRST_DELAY = 0.5  # before restarting a controller that was working: a SIGKILLed one is back within about 1 s
MAX_DELAY = 5.0  # the longest wait between attempts when the controller keeps exiting before its first step
STOP_TIMEOUT = 15.0  # what a controller asked to stop gets to finish its step before SIGKILL
HEALTH_POLL = 0.5  # how often a new controller is checked for its first status


def take_controller_lock(paths: ClusterPaths) -> None:
    """Held by the calling controller until it exits: two controllers of one cluster would both start nodes.

    A flock, so that it goes with the process however it ends. The descriptor is not inheritable
    (Python's default): a slurmctld the controller restarts must not keep the lock once the controller is gone.
    """
    path = paths.pids / "controller.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ClusterError(f"another controller of cluster {paths.name!r} is running (it holds {path})") from None


def exit_reason(returncode: int) -> str:
    """`SIGKILL` or `exit code 1`, as a restart event names it."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    def __init__(
        self,
        argv: Sequence[str],
        paths: ClusterPaths,
        events: EventLog,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.argv = list(argv)
        self.paths = paths
        self.events = events
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.stop_timeout = stop_timeout
        self.pidfile = paths.pids / "controller.pid"
        self.stopping = False
        self._wakeup = -1

    def run(self) -> None:
        """Until SIGTERM or SIGINT, which stop the controller too."""
        self._wakeup, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # A signal makes the select() below return at once; without a wakeup fd Python would run the
        # handler and go back to waiting (PEP 475).
        signal.set_wakeup_fd(wfd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        log.info("supervising: %s", " ".join(self.argv))
        failures = 0  # consecutive exits before a first step: the controller cannot get going
        last_exit = ""
        while not self.stopping:
            if not self.paths.config.exists():
                # Taken down without stopping this supervisor (one started twice, by hand): nothing to run.
                log.info("cluster %s is gone: nothing to supervise", self.paths.name)
                break
            started = time.time()
            try:
                proc = self._spawn()
            except OSError as exc:
                failures += 1
                log.error("cannot start the controller: %s", exc)
                self._sleep(self._delay(failures))
                continue
            if last_exit:
                self._event(f"restarted after {last_exit}")
            worked = self._wait(proc, started)
            if self.stopping:
                self._terminate(proc)
                break
            last_exit = exit_reason(proc.returncode)
            failures = 0 if worked else failures + 1
            delay = self._delay(failures)
            log.warning(
                "controller exited (%s%s); starting it again in %.1f s",
                last_exit, "" if worked else ", before its first step", delay,
            )
            self._sleep(delay)
        log.info("stopped")

    def _delay(self, failures: int) -> float:
        # A controller that was working is back at once; one that keeps failing (a port in use, a broken
        # scheduler) is retried less and less often, without ever giving up.
        return min(self.first_delay * 2**failures, self.max_delay)

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.paths.logs / "controller.log", "ab", opener=private) as out:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, close_fds=True)
        try:
            self.pidfile.write_text(f"{proc.pid}\n")
        except OSError as exc:
            # The controller runs and is supervised; only `status` cannot see it.
            log.error("cannot write %s: %s", self.pidfile, exc)
        return proc

    def _wait(self, proc: subprocess.Popen[bytes], started: float) -> bool:
        """Until the controller exits or a stop is asked for; True if it wrote a status (ran a step)."""
        pidfd = os.pidfd_open(proc.pid)
        worked = False
        try:
            while not self.stopping:
                # Once the controller has worked, nothing to poll: an idle supervisor costs no CPU.
                ready, _, _ = select.select([pidfd, self._wakeup], [], [], None if worked else HEALTH_POLL)
                self._drain()
                worked = worked or self._wrote_status(started)
                if pidfd in ready:
                    proc.wait()
                    # Gone, so that a pid reused meanwhile is not taken for the controller.
                    self.pidfile.unlink(missing_ok=True)
                    break
        finally:
            os.close(pidfd)
        return worked

    def _wrote_status(self, since: float) -> bool:
        try:
            return (self.paths.state / "status.json").stat().st_mtime >= since
        except OSError:
            return False

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            select.select([self._wakeup], [], [], left)
            self._drain()

    def _drain(self) -> None:
        try:
            while os.read(self._wakeup, 64):
                pass
        except BlockingIOError:
            pass  # emptied

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("controller did not stop within %.0f s: killing it", self.stop_timeout)
                proc.kill()
                proc.wait()
        self.pidfile.unlink(missing_ok=True)

    def _event(self, reason: str) -> None:
        try:
            self.events.emit("controller", reason=reason)
        except OSError as exc:
            # A full disk must not stop supervision: the event is lost, the restart is not.
            log.error("cannot record the event %r: %s", reason, exc)
