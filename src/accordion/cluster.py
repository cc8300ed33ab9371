"""A cluster's lifecycle: bring it up, find it again, take it down leaving nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accordion import daemons
from accordion.config import ClusterConfig, ConfigError, parse_config
from accordion.errors import ClusterError
from accordion.events import EventLog
from accordion.paths import ClusterPaths, all_clusters, run_root, shared_root, state_root
from accordion.providers import make_provider
from accordion.providers.base import ProviderError
from accordion.schedulers import make_scheduler
from accordion.store import read_json, write_json
from accordion.supervisor import STOP_TIMEOUT

REQUIRED = {
    "slurm": ["slurmctld", "slurmd", "munged", "scontrol", "sbatch"],
    "oar": ["Almighty", "oarsub", "oarnodesetting", "psql", "sshd", "ssh-keygen", "unshare"],
    "gridengine": ["sge_qmaster", "sge_execd", "qconf", "qsub", "unshare", "setpriv"],
    "local": ["runc", "catatonit", "ip", "nsenter", "setpriv"],
    "kubernetes": [],
    "hosts": ["ip", "bridge", "nsenter"],
}

Progress = Callable[[str], None]


def missing_programs(config: ClusterConfig) -> list[str]:
    wanted = REQUIRED[config.scheduler] + REQUIRED[config.provider]
    return [p for p in wanted if shutil.which(p, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.paths = ClusterPaths(config.name)
        self.provider = make_provider(config, self.paths)
        self.scheduler = make_scheduler(config, self.paths, self.provider)
        self.events = EventLog(self.paths.events, config.name, getattr(self.provider, "record", None))

    @classmethod
    def load(cls, name: str) -> Cluster:
        paths = ClusterPaths(name)
        data = read_json(paths.config, None)
        if data is None:
            known = ", ".join(all_clusters()) or "none"
            raise ClusterError(f"no cluster named {name!r} (clusters here: {known}); start one with `accordion up`")
        try:
            return cls(parse_config(data, str(paths.config)))
        except ConfigError as exc:
            raise ClusterError(str(exc)) from None

    # ----- controller daemon and its supervisor -----

    @property
    def controller_pidfile(self) -> Path:
        return self.paths.pids / "controller.pid"

    @property
    def supervisor_pidfile(self) -> Path:
        return self.paths.pids / "supervisor.pid"

    def controller_pid(self) -> int | None:
        return daemons.pid_of(self.controller_pidfile)

    def supervisor_pid(self) -> int | None:
        return daemons.pid_of(self.supervisor_pidfile)

    def controller_state(self) -> str:
        """running; restarting (its supervisor is about to start it again); or dead (no supervisor either)."""
        if self.controller_pid() is not None:
            return "running"
        return "restarting" if self.supervisor_pid() is not None else "dead"

    def controller_argv(self) -> list[str]:
        # In the host's network, so that its /metrics endpoint is reachable on the host's loopback.
        return self.scheduler.wrap() + [sys.executable, "-m", "accordion", "controller", "--cluster", self.config.name]

    def start_supervisor(self) -> None:
        """Start the controller's supervisor unless one runs: only the supervisor ever starts the controller."""
        if self.supervisor_pid() is not None:
            return
        # A controller whose supervisor was killed may still run: replace it, so that the controller
        # running is the new supervisor's child, whose exits it sees.
        daemons.stop(self.controller_pidfile, timeout=STOP_TIMEOUT)
        daemons.spawn(
            [sys.executable, "-m", "accordion", "supervise", "--cluster", self.config.name],
            self.paths.logs / "supervisor.log",
            self.supervisor_pidfile,
        )

    def stop_controller(self) -> None:
        # The supervisor first, so that nothing starts the controller again during teardown; it stops the
        # controller before it exits. The controller's own pid file covers a supervisor that was killed.
        daemons.stop(self.supervisor_pidfile, timeout=STOP_TIMEOUT + 5)
        daemons.stop(self.controller_pidfile, timeout=STOP_TIMEOUT)

    # ----- lifecycle -----

    def up(self, progress: Progress, wait: float = 60.0) -> None:
        missing = missing_programs(self.config)
        if missing:
            raise ClusterError(f"missing programs: {', '.join(missing)}; run scripts/setup.sh first")
        existing = read_json(self.paths.config, None)
        if existing is not None and existing != json.loads(self.config.model_dump_json()):
            raise ClusterError(
                f"cluster {self.config.name!r} already exists with another configuration; "
                f"`accordion down -c {self.config.name}` first, or pick another name"
            )
        fresh = existing is None
        # Records kept by `down --keep-data` survive an `up` that fails.
        had_data = any(p.exists() for p in self.scheduler.data())
        try:
            # Traverse-only: the daemons that drop root reach their own files (key, state, log) below, nothing else.
            for d in (self.paths.state, self.paths.logs):
                d.mkdir(parents=True, exist_ok=True)
                os.chmod(d, 0o711)
            # Daemons that drop root (munged) create their sockets below the run directory.
            self.paths.run.mkdir(parents=True, exist_ok=True, mode=0o755)
            os.chmod(state_root(), 0o711)
            self.paths.shared.mkdir(parents=True, exist_ok=True)
            os.chmod(self.paths.shared, 0o1777)
            write_json(self.paths.config, json.loads(self.config.model_dump_json()))
            progress("network")
            self.provider.setup()
            progress(f"{self.config.scheduler} server")
            self.scheduler.setup()
            progress("controller")
            self.start_supervisor()
            self._wait_ready(progress, wait)
        except BaseException:
            if fresh:
                progress("cleaning up after the failure")
                self.down(lambda _: None, force=True, keep_data=had_data)
            raise

    def _wait_ready(self, progress: Progress, wait: float) -> None:
        want = {ns.name: ns.min_nodes for ns in self.config.nodesets}
        deadline = time.monotonic() + wait
        started = time.time()
        first: int | None = None
        while time.monotonic() < deadline:
            if self.supervisor_pid() is None:
                raise ClusterError(f"the controller's supervisor exited: {self._last_line('supervisor.log')}")
            # The supervisor would start a controller that exits again: a controller that fails while the
            # cluster starts is reported at once instead, as the pid it had changes or goes.
            pid = self.controller_pid()
            first = first or pid
            if first is not None and pid != first:
                raise ClusterError(f"the controller exited: {self._last_line('controller.log')}")
            status = read_json(self.paths.state / "status.json", {})
            if isinstance(status, dict) and status.get("ts", 0) >= started:
                ready = {ns: 0 for ns in want}
                for n in status.get("nodes", []):
                    if n["state"] in ("idle", "busy"):
                        ready[n["nodeset"]] += 1
                if all(ready[ns] >= want[ns] for ns in want):
                    return
                progress("min_nodes: " + ", ".join(f"{ns} {ready[ns]}/{want[ns]}" for ns in want))
            time.sleep(0.1)
        raise ClusterError(f"the cluster did not become ready within {wait:.0f} s; see {self.paths.logs}")

    def _last_line(self, log: str) -> str:
        # Quoted in the error: a failed `up` removes the cluster's files, its logs included.
        try:
            return (self.paths.logs / log).read_text(errors="replace").strip().splitlines()[-1]
        except (OSError, IndexError):
            return "no output"

    def down(self, progress: Progress, force: bool = False, keep_data: bool = False) -> None:
        """`force`: remove what is here even if the provider cannot remove the nodes. `keep_data`: keep the
        scheduler's records (the accounting database) for the next `up` of the same name."""
        progress("controller")
        self.stop_controller()
        progress("nodes")
        try:
            self.provider.teardown()
        except ProviderError as exc:
            # Nodes may remain where the provider could not reach (a Kubernetes API that is down): stop
            # what runs here anyway, but keep the cluster's files so that `down` can be run again.
            self.scheduler.teardown()
            if not force:
                raise ClusterError(
                    f"{exc}; the scheduler is stopped, nodes may remain: run `accordion down` again once this is "
                    "fixed, or `accordion down --force` to forget them"
                ) from None
            progress(f"nodes left behind: {exc}")
        progress(f"{self.config.scheduler} server")
        self.scheduler.teardown()
        progress("files")
        kept = self.scheduler.data() if keep_data else []
        if kept and self.paths.state.is_dir():
            # Everything but the records: without cluster.json the cluster is gone (`list` does not show it).
            for entry in self.paths.state.iterdir():
                if entry in kept:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            shutil.rmtree(self.paths.run, ignore_errors=True)
            shutil.rmtree(self.paths.shared, ignore_errors=True)
            return
        for d in (self.paths.state, self.paths.run, self.paths.shared):
            shutil.rmtree(d, ignore_errors=True)
        for root in (state_root(), run_root(), shared_root()):
            try:
                root.rmdir()
            except OSError:
                pass

    def metrics_url(self) -> str | None:
        try:
            return f"http://127.0.0.1:{int((self.paths.run / 'metrics.port').read_text())}/metrics"
        except (OSError, ValueError):
            return None

    def status(self) -> dict[str, Any]:
        status = read_json(self.paths.state / "status.json", {})
        return status if isinstance(status, dict) else {}
