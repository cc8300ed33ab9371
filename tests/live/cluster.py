"""Drive a real cluster through the `accordion` command, as a user would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ACCORDION = [sys.executable, "-m", "accordion"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def accordion(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*ACCORDION, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"accordion {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def node_dirs(cluster: str) -> list[Path]:
    """The local provider's node directories, without the prepared ones (providers/local.py, PREPARED)."""
    d = Path("/run/accordion") / cluster / "nodes"
    return [p for p in d.iterdir() if not (p / "prepared").exists()] if d.is_dir() else []


class LiveCluster:
    def __init__(self, name: str, config: dict, workdir: Path) -> None:
        self.name = name
        self.config = {"name": name, **config}
        self.file = workdir / f"{name}.yaml"
        self.file.write_text(yaml.safe_dump(self.config))
        self.shared = Path("/srv/accordion") / name

    def up(self) -> subprocess.CompletedProcess[str]:
        return accordion("up", "-f", str(self.file))

    def down(self) -> None:
        accordion("down", "-c", self.name, check=False)

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(
            [*ACCORDION, "shell", "-c", self.name, "--", "bash", "-c", script],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"in {self.name}: {script!r} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout + proc.stderr if not check else proc.stdout

    def sbatch(self, body: str, *options: str, name: str = "job") -> str:
        script = self.shared / f"{name}.sh"
        script.write_text("#!/bin/bash\n" + body + "\n")
        out = self.sh(f"sbatch --parsable {' '.join(options)} {script}")
        return out.strip().split(";")[0]

    def job(self, jobid: str) -> dict[str, str]:
        out = self.sh(f"scontrol show job -o {jobid}", check=False)
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def job_state(self, jobid: str) -> str:
        return self.job(jobid).get("JobState", "?")

    def wait_job(self, jobid: str, states: set[str], timeout: float = 60) -> str:
        return wait_for(lambda: (s := self.job_state(jobid)) in states and s, timeout, f"job {jobid} in {states}")

    def status(self) -> dict:
        return json.loads(accordion("status", "-c", self.name, "--json").stdout)

    def node_states(self, nodeset: str = "compute") -> dict[str, str]:
        for ns in self.status()["nodesets"]:
            if ns["name"] == nodeset:
                return ns["node_states"]
        raise KeyError(nodeset)

    def metric(self, name: str, **labels: str) -> float:
        """One sample from the controller's Prometheus endpoint."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        url = self.status()["metrics"]
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        raise KeyError(f"{name}{labels} not in {url}")

    def containers(self) -> set[str]:
        """The nodes' containers: not those prepared for the next start (nothing runs in them)."""
        return {p.name for p in node_dirs(self.name)}

    def sinfo(self) -> dict[str, str]:
        """node -> Slurm state, as users see it."""
        out = self.sh("sinfo -h -N -o '%N %T'")
        # A node without a container is "down*" (down, not responding): strip the flag characters.
        return {n: s.rstrip("*~#!%$@^-") for n, s in (line.split() for line in out.splitlines() if line.strip())}

    def scale(self, nodeset: str, count: int | str) -> None:
        if count == "auto":
            accordion("scale", "-c", self.name, nodeset, "--auto")
        else:
            accordion("scale", "-c", self.name, nodeset, str(count), "--wait", "60")

    def events(self) -> list[dict]:
        out = accordion("events", "-c", self.name, "--json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def build_pi(self) -> Path:
        (self.shared / "pi.c").write_text((EXAMPLES / "pi.c").read_text())
        self.sh(f"cd {self.shared} && mpicc -O2 -o pi pi.c")
        return self.shared / "pi"


CHROMIUM = [
    "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Open a local page in headless Chromium (Debian's), with a fresh profile."""
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [*CHROMIUM, f"--user-data-dir={profile}", *args, page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )


def runtime_wrapper(tmp_path: Path, body: str) -> Path:
    """A directory holding a `runc` that runs `body` (bash: inject a fault) and then the real runc: put first
    on PATH, which the cluster's controller inherits."""
    real = subprocess.run(["bash", "-c", "command -v runc"], capture_output=True, text=True, check=True).stdout.strip()
    wrapper = tmp_path / "bin" / "runc"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/bash\n{body}\nexec {real} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper.parent
