"""The OAR side of the live tests: submit, inspect and cancel jobs the way an OAR user does."""

from __future__ import annotations

import json
import re

from tests.live.cluster import LiveCluster, wait_for

USER = "hpcuser"  # OAR refuses root's jobs
STATES = {
    "Waiting": "PENDING", "Hold": "PENDING", "toLaunch": "PENDING", "Launching": "PENDING", "toAckReservation": "PENDING",
    "Running": "RUNNING", "Finishing": "RUNNING", "Suspended": "RUNNING", "Resuming": "RUNNING",
    "Terminated": "COMPLETED", "Error": "FAILED", "toError": "FAILED",
}


class OarCluster(LiveCluster):
    def __init__(self, name: str, config: dict, workdir) -> None:
        super().__init__(name, {"scheduler": "oar", **config}, workdir)

    def up(self):
        proc = super().up()
        self.shared.chmod(0o1777)
        return proc

    def as_user(self, command: str, check: bool = True) -> str:
        quoted = command.replace("'", "'\\''")
        return self.sh(f"su {USER} -c 'cd {self.shared} && {quoted}'", check=check)

    def oarsub(self, command: str, resources: str, *options: str) -> str:
        out = self.as_user(f"oarsub -l {resources} {' '.join(options)} \"{command}\"")
        m = re.search(r"OAR_JOB_ID=(\d+)", out)
        assert m, out
        return m.group(1)

    def job(self, jobid: str) -> dict:
        out = self.sh(f"oarstat -f -J -j {jobid}", check=False)
        try:
            return json.loads(out).get(jobid, {})
        except json.JSONDecodeError:
            return {}

    def job_state(self, jobid: str) -> str:
        return STATES.get(self.job(jobid).get("state", ""), "?")

    def job_nodes(self, jobid: str) -> set[str]:
        return set(self.job(jobid).get("assigned_network_address") or [])

    def wait_job(self, jobid: str, states: set[str], timeout: float = 60) -> str:
        return wait_for(lambda: (s := self.job_state(jobid)) in states and s, timeout, f"OAR job {jobid} in {states}")

    def cancel(self, jobid: str) -> None:
        self.as_user(f"oardel {jobid}")

    def capacity(self) -> dict[str, set[str]]:
        """host -> the states of its resources, as `oarnodes` shows them."""
        data = json.loads(self.sh("oarnodes -J"))
        hosts: dict[str, set[str]] = {}
        for r in data.values():
            hosts.setdefault(r["host"], set()).add(r["state"])
        return hosts
