"""Table 10.1 of the thesis (l.2112-2132): pending and running jobs while nodes are added and removed.

Each scenario runs with a single-node sleep job and a 2-node x 2-CPU MPI job (Monte-Carlo pi built with
Debian's OpenMPI, launched with srun). Nodes are added and removed with `accordion scale`, as the paper
resized its StatefulSets by hand. Scenario 1 is the one Slurm failed in the paper: the pending job must run
on the added nodes without being resubmitted.
"""

import pytest

from tests.live.cluster import wait_for

CONFIG = {"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 4, "cpus": 2, "idle_timeout": 600}]}
BLOCKER = "sleep infinity"


class Kind:
    def __init__(self, c, kind: str) -> None:
        self.c = c
        self.kind = kind
        self.nodes = 1 if kind == "sleep" else 2
        if kind == "mpi":
            self.pi = c.build_pi()

    def submit(self, hold: int = 0, *extra: str) -> str:
        if self.kind == "sleep":
            return self.c.sbatch(f"sleep {hold}; echo sleep-done on $(hostname)", "-N1", "-c2", *extra, name="sleepjob")
        return self.c.sbatch(f"srun --mpi=pmix {self.pi} 2000000 {hold}", "-N2", "--ntasks-per-node=2", *extra, name="mpijob")

    def check_completed(self, jobid: str) -> None:
        state = self.c.wait_job(jobid, {"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY"}, 90)
        info = self.c.job(jobid)
        out = (self.c.shared / f"slurm-{jobid}.out").read_text()
        assert state == "COMPLETED" and info["ExitCode"] == "0:0", (info, out)
        assert info["Restarts"] == "0", "the job was requeued or resubmitted"
        if self.kind == "sleep":
            assert "sleep-done on hpc-node-" in out
        else:
            assert "pi is approximately 3.1" in out, out
            hosts = {line.split(" on ")[1] for line in out.splitlines() if line.startswith("rank ")}
            assert len(hosts) == 2 and out.count("rank ") == 4, out


@pytest.fixture(params=["sleep", "mpi"])
def kind(request, make_cluster):
    c = make_cluster(CONFIG)
    return Kind(c, request.param)


def test_1_pending_job_runs_when_nodes_are_added(kind):
    c = kind.c
    c.scale("compute", 0)
    job = kind.submit(0)
    wait_for(lambda: c.job(job).get("Reason") not in (None, "None"), 10, "the job to pend")
    assert c.job_state(job) == "PENDING" and c.containers() == set()
    c.scale("compute", kind.nodes)
    kind.check_completed(job)


def test_2_pending_job_survives_removal_of_free_nodes(kind):
    c = kind.c
    c.scale("compute", 2)
    blocker = c.sbatch(BLOCKER, "-N1", "-c2", name="blocker")
    c.wait_job(blocker, {"RUNNING"})
    busy = c.job(blocker)["NodeList"]
    # The MPI job needs two nodes and only one is free; the sleep job waits on the blocker.
    job = kind.submit(0) if kind.kind == "mpi" else kind.submit(0, f"--dependency=afterany:{blocker}")
    wait_for(lambda: c.job(job).get("Reason") not in (None, "None"), 10, "the job to pend")
    c.scale("compute", 1)
    assert c.containers() == {busy}
    assert c.job_state(job) == "PENDING" and c.job_state(blocker) == "RUNNING"
    if kind.kind == "mpi":
        c.scale("compute", 3)
    else:
        c.sh(f"scancel {blocker}")
    kind.check_completed(job)
    c.sh(f"scancel {blocker}")


def test_3_running_job_survives_nodes_being_added(kind):
    c = kind.c
    c.scale("compute", kind.nodes)
    job = kind.submit(6)
    c.wait_job(job, {"RUNNING"})
    c.scale("compute", kind.nodes + 2)
    assert len(c.containers()) == kind.nodes + 2
    assert c.job_state(job) == "RUNNING"
    kind.check_completed(job)


def test_4_running_job_survives_removal_of_free_nodes(kind):
    c = kind.c
    c.scale("compute", kind.nodes + 2)
    job = kind.submit(6)
    c.wait_job(job, {"RUNNING"})
    used = set(c.sh(f"scontrol show hostnames $(squeue -h -j {job} -o %N)").split())
    c.scale("compute", kind.nodes)
    assert c.containers() == used
    assert c.job_state(job) == "RUNNING"
    kind.check_completed(job)
