"""The Grid Engine adapter's reading of qstat's XML (recorded from Grid Engine 8.1.9, Debian) and of queue
instance states."""

import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from accordion.config import ClusterConfig
from accordion.model import Job, SchedState
from accordion.paths import ClusterPaths
from accordion.providers.local import LocalProvider
from accordion.schedulers.gridengine import ABSENT, DRAINING, GridEngineScheduler, Instance, host_calendars, parse_qstat_f, task_count

DATA = Path(__file__).parent / "data"
CONFIG = ClusterConfig.model_validate(
    {"name": "g", "scheduler": "gridengine", "nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 4, "cpus": 2}]}
)


class Recorded(GridEngineScheduler):
    """The adapter with qstat's answers recorded: `qstat -f -xml` and `qstat -j 2,5,6,7 -xml`."""

    def _cmd(self, argv: list[str], timeout: float = 30, input: str | None = None) -> str:
        if argv[:2] == ["qstat", "-f"]:
            return (DATA / "qstat-f-8.1.9.xml").read_text()
        if argv[:2] == ["qstat", "-xml"]:
            return (DATA / "qstat-j-8.1.9.xml").read_text()
        assert argv[:2] == ["qconf", "-sq"], argv
        return f"qname compute\ncalendar NONE,[hpc-node-3={ABSENT}], \\\n        [hpc-node-9=other]\ninitial_state default\n"


def adapter(tmp_path: Path, monkeypatch: Any) -> Recorded:
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path))
    paths = ClusterPaths("g")
    return Recorded(CONFIG, paths, LocalProvider(CONFIG, paths))


def test_qstat_f_pending_jobs_are_read_once():
    instances, hosts, pending = parse_qstat_f((DATA / "qstat-f-8.1.9.xml").read_text())
    assert [i.host for i in instances] == ["hpc-node-0", "hpc-node-1", "hpc-node-2", "hpc-node-3"]
    assert hosts == {"2": ["hpc-node-1", "hpc-node-2"]}
    # The document's root is a <job_info> too: the pending jobs must not be counted twice.
    assert [j.findtext("JB_job_number") for j in pending] == ["7", "5", "6"]


def test_jobs_are_read_in_full(tmp_path, monkeypatch):
    view = adapter(tmp_path, monkeypatch).observe()
    jobs = {j.id: j for j in view.jobs}
    # -pe mpi2 4: 2 nodes x 2 slots, on the nodes qstat -f shows it on.
    assert jobs["2"].running and jobs["2"].node_names == ("hpc-node-1", "hpc-node-2") and jobs["2"].cpus == 4
    assert (jobs["2"].nodes, jobs["2"].cpus_per_node) == (2, 2)
    # -a in the future: not waiting for nodes.
    assert not jobs["5"].wants_resources and "starts at" in jobs["5"].reason
    # -hold_jid 4 (hqw): not waiting, and the reason names the job it waits for.
    assert not jobs["6"].wants_resources and "waits for job 4" in jobs["6"].reason
    # -t 1-5 -tc 2 -q compute@hpc-node-1: throttled to 2 tasks, only hpc-node-1 allowed.
    assert jobs["7"].wants_resources and jobs["7"].count == 2 and jobs["7"].nodesets == ("compute",)
    assert set(jobs["7"].excluded) == {"hpc-node-0", "hpc-node-2", "hpc-node-3"}
    # No reservations (max_reservation 0): no node is kept in service for a waiting job.
    assert not jobs["7"].reservable


def test_nodes_from_queue_instances(tmp_path, monkeypatch):
    view = adapter(tmp_path, monkeypatch).observe()
    assert view.nodes["hpc-node-0"].state == SchedState.IDLE and view.nodes["hpc-node-0"].free_cpus == 2
    assert view.nodes["hpc-node-1"].state == SchedState.BUSY and view.nodes["hpc-node-1"].free_cpus == 0
    assert view.nodes["hpc-node-3"].marked_absent and view.nodes["hpc-node-3"].state == SchedState.UNKNOWN


def node(tmp_path, monkeypatch, state, calendar="", used=0, jobs=False):
    return adapter(tmp_path, monkeypatch)._node(Instance("compute", "n", state, used, 2), calendar, {"reason": "idle 60 s"}, jobs)


def test_who_disabled_a_queue_instance(tmp_path, monkeypatch):
    def n(state: str, calendar: str = "", used: int = 0, jobs: bool = False):  # type: ignore[no-untyped-def]
        return node(tmp_path, monkeypatch, state, calendar, used, jobs)

    # Accordion's own calendars.
    assert n("D", DRAINING).state == SchedState.DRAINED and n("D", DRAINING).reason == "idle 60 s"
    assert n("D", DRAINING, used=1).state == SchedState.DRAINING
    assert n("Du", ABSENT).marked_absent
    # Anyone else's: an administrator's qmod -d or -s, Grid Engine's error state, another calendar.
    for state, calendar, why in (("d", "", "disabled"), ("s", "", "suspended"), ("E", "", "error"), ("D", "maintenance", "calendar maintenance")):
        v = n(state, calendar)
        assert v.state == SchedState.HELD and v.held and v.reason == why, (state, v)
    # Ours and theirs together: theirs wins (an administrator disabled a node Accordion had switched off).
    assert n("Dd", ABSENT).state == SchedState.HELD
    # Jobs come first: a node with jobs is busy (held if someone else disabled it), never drained.
    v = n("d", used=1)
    assert v.state == SchedState.BUSY and v.held
    assert n("", jobs=True).state == SchedState.BUSY and n("u").state == SchedState.UNKNOWN


def test_calendars_and_tasks():
    assert host_calendars(f"NONE,[hpc-node-1={ABSENT}],                [hpc-node-2={DRAINING}]") == {"hpc-node-1": ABSENT, "hpc-node-2": DRAINING}
    assert host_calendars("NONE") == {}
    assert task_count("1-10:1") == 10 and task_count("3,5-9:2") == 4 and task_count("7") == 1


def test_a_node_given_up_keeps_its_absent_calendar(tmp_path, monkeypatch):
    # The controller gave the start up and told the qmaster the node is absent: lifting the calendar now
    # would let a job be dispatched to a node about to be removed.
    sched = adapter(tmp_path, monkeypatch)
    lifted: list[list[str]] = []
    monkeypatch.setattr(sched, "_calendar", lambda nodes, calendar: lifted.append(nodes))
    answers = iter([False, True, True])
    monkeypatch.setattr(sched, "execd_answers", lambda node: next(answers))
    sched.node_started("hpc-node-0", lambda: True)  # stops waiting for an execd that does not answer
    sched.node_started("hpc-node-0", lambda: True)  # and lifts nothing once it answers
    assert lifted == []
    sched.node_started("hpc-node-0", lambda: False)
    assert lifted == [["hpc-node-0"]]


def test_hosts_asked_for_by_name_are_the_only_ones_the_job_can_have(tmp_path, monkeypatch):
    # `qsub -l h=hpc-node-2`, the usual way to pin a job to a host: unread, the job was fitted onto an idle
    # node it could not use, and hpc-node-2 was never started.
    sched = adapter(tmp_path, monkeypatch)
    entry = ET.fromstring("<job_list state='pending'><JB_job_number>8</JB_job_number><state>qw</state></job_list>")

    def job(*requests: tuple[str, str], queue: str = "") -> Job:
        listed = "".join(f"<element><CE_name>{n}</CE_name><CE_stringval>{escape(v)}</CE_stringval></element>" for n, v in requests)
        queues = f"<JB_hard_queue_list><destin_ident_list><QR_name>{queue}</QR_name></destin_ident_list></JB_hard_queue_list>" if queue else ""
        details = ET.fromstring(f"<djob_info><JB_submission_time>5</JB_submission_time>{queues}"
                                f"<JB_hard_resource_list>{listed}</JB_hard_resource_list></djob_info>")
        return sched._pending_job("8", "qw", entry, details, time.time())

    every = {f"hpc-node-{i}" for i in range(4)}
    assert set(job(("h", "hpc-node-2")).excluded) == every - {"hpc-node-2"}
    assert set(job(("hostname", "hpc-node-*&!hpc-node-0")).excluded) == {"hpc-node-0"}
    assert set(job(("h", "hpc-node-1|hpc-node-3"), queue="compute@hpc-node-3").excluded) == every - {"hpc-node-3"}
    assert set(job(("h", "other-host")).excluded) == every  # nowhere here: nothing is started for it
    assert job(("h_vmem", "1G")).excluded == ()
    # As Grid Engine compares host names: without case, a domain aside, and brackets with their "!".
    assert set(job(("h", "HPC-Node-1.example.org")).excluded) == every - {"hpc-node-1"}
    assert set(job(("h", "hpc-node-[!0-2]")).excluded) == every - {"hpc-node-3"}
