from accordion.config import ClusterConfig
from accordion.model import SchedState
from accordion.paths import ClusterPaths
from accordion.providers.local import LocalProvider
from accordion.schedulers.slurm import node_view, parse_scontrol_oneliner, parse_squeue, render_slurm_conf

LINE = (
    "NodeName=hpc-node-1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=1 CPUEfctv=2 CPUTot=2 CPULoad=0.00 "
    "AvailableFeatures=(null) NodeAddr=10.77.0.11 State=MIXED+DRAIN ThreadsPerCore=1 "
    "LastBusyTime=2026-11-22T22:34:46 Reason=accordion: idle 60 s [root@2026-11-22T22:35:46]"
)


def test_oneliner_keeps_values_with_spaces():
    f = parse_scontrol_oneliner(LINE)
    assert f["NodeName"] == "hpc-node-1" and f["State"] == "MIXED+DRAIN"
    assert f["Reason"] == "accordion: idle 60 s [root@2026-11-22T22:35:46]"


def test_node_states():
    v = node_view(parse_scontrol_oneliner(LINE))
    assert v.state == SchedState.DRAINING and v.free_cpus == 1 and v.reason == "idle 60 s"
    v = node_view({"NodeName": "n", "State": "IDLE+DRAIN", "CPUTot": "2", "CPUAlloc": "0", "Reason": "accordion: x"})
    assert v.state == SchedState.DRAINED
    v = node_view({"NodeName": "n", "State": "IDLE+DRAIN", "CPUTot": "2", "CPUAlloc": "0", "Reason": "admin"})
    assert v.state == SchedState.BUSY  # drained by someone else: not ours to remove, not usable
    v = node_view({"NodeName": "n", "State": "DOWN*", "CPUTot": "2", "Reason": "accordion: powered off [root@x]"})
    assert v.state == SchedState.UNKNOWN and v.marked_absent and v.absent_since is None  # no parsable stamp
    v = node_view({"NodeName": "n", "State": "DOWN", "CPUTot": "2", "Reason": "accordion: node container gone [root@2026-11-22T23:54:36]"})
    assert v.marked_absent and v.absent_since is not None and v.reason == "node container gone"
    v = node_view({"NodeName": "n", "State": "IDLE", "CPUTot": "2", "CPUAlloc": "0", "LastBusyTime": "2026-11-22T22:34:46"})
    assert v.state == SchedState.IDLE and v.idle_since is not None


def test_squeue_parsing():
    text = "\n".join(
        [
            "7|compute|PENDING|2|4|Resources|2026-11-22T22:00:00||OK",
            "8|compute|PENDING|1|1|Dependency|2026-11-22T22:00:01||OK",
            "9|compute|RUNNING|2|2|None|2026-11-22T22:00:02|hpc-node-[0-1]|NO",
            "10|compute|PENDING|1|1|ReqNodeNotAvail, UnavailableNodes:hpc-node-[0-3]|2026-11-22T22:00:03||OK",
        ]
    )
    jobs = {j.id: j for j in parse_squeue(text, "compute")}
    assert jobs["7"].nodes == 2 and jobs["7"].cpus_per_node == 2 and jobs["7"].wants_resources
    assert not jobs["8"].wants_resources
    assert jobs["9"].running and jobs["9"].node_names == ("hpc-node-0", "hpc-node-1") and jobs["9"].exclusive
    assert jobs["10"].wants_resources


def test_slurm_conf_declares_capacity_and_limits():
    c = ClusterConfig.model_validate({"name": "t", "nodesets": [{"name": "a", "max_nodes": 3, "cpus": 4, "memory_mb": 2048}]})
    paths = ClusterPaths("t")
    conf = render_slurm_conf(c, LocalProvider(c, paths), paths, "host")
    assert "NodeName=a-2 NodeAddr=10.77.0.12 CPUs=4 RealMemory=2048" in conf
    assert "PartitionName=a Nodes=a-0,a-1,a-2 MaxNodes=3" in conf
    assert "EnforcePartLimits=ALL" in conf and "ReturnToService=2" in conf
    assert "SlurmctldHost=host(10.77.0.1)" in conf
