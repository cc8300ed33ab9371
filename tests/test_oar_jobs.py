"""OAR job shapes: resource hierarchies, node sets by resource properties, core-only requests."""

import json

from accordion.config import ClusterConfig
from accordion.model import SchedState
from accordion.paths import ClusterPaths
from accordion.schedulers.oar import OarScheduler, Request, combine, host_view, job_filter, parse_levels, place

CONFIG = ClusterConfig.model_validate(
    {
        "name": "t",
        "scheduler": "oar",
        "nodesets": [
            {"name": "compute", "name_base": "hpc-node", "max_nodes": 2, "cpus": 2},
            {"name": "big", "name_base": "big-node", "max_nodes": 1, "cpus": 4},
        ],
    }
)
SETS = CONFIG.nodesets
DEFAULT = "(desktop_computing = 'NO') AND drain='NO'"  # what OAR's admission rules give a job without -p


def test_hierarchies():
    assert parse_levels([("host", 2), ("core", 4)]) == Request(nodes=2, cpus_per_node=4)
    assert parse_levels([("core", 8)]) == Request(nodes=1, cpus_per_node=1, cpus=8)  # any hosts
    assert parse_levels([("network_address", 2)]) == Request(2, 1, exclusive=True)  # `nodes=2`: whole hosts
    assert parse_levels([("host", 1)]) == Request(1, 1, exclusive=True)
    assert parse_levels([("cpu", 1), ("core", 2)]) == Request(1, 2)  # one cpu per node here
    assert parse_levels([("host", -2), ("core", -1)]) == Request(1, 1)  # BEST, ALL: at least one
    assert parse_levels([("switch", 2), ("host", 1), ("core", 2)]) == Request(2, 2)
    assert combine([Request(1, 4), Request(2, 1)]) == Request(3, 4)
    assert combine([Request(1, 2), Request(1, 1, cpus=3)]) == Request(2, 2, cpus=5)


def test_node_sets_by_shape_and_properties():
    anywhere = None  # no property: every core of every host
    assert place([(Request(1, 2), anywhere)], SETS) == (("compute", "big"), ())
    assert place([(Request(1, 4), anywhere)], SETS) == (("big",), ())  # 4 cores on one host
    assert place([(Request(2, 1, exclusive=True), anywhere)], SETS) == (("compute",), ())  # big has one node
    assert place([(Request(1, 1, cpus=4), anywhere)], SETS) == (("compute", "big"), ())  # 2 x 2 or 1 x 4
    assert place([(Request(1, 1, cpus=8), anywhere)], SETS) == ((), ())  # fits no node set alone
    big = {"big-node-0": 4}  # what `nodeset='big'` matches
    assert place([(Request(1, 2), big)], SETS) == (("big",), ())
    one = {"hpc-node-1": 2}  # `host='hpc-node-1'`
    assert place([(Request(1, 2), one)], SETS) == (("compute",), ("hpc-node-0",))
    few = {"hpc-node-0": 1, "hpc-node-1": 2}  # a property matching one core of hpc-node-0
    assert place([(Request(1, 2), few)], SETS) == (("compute",), ("hpc-node-0",))
    assert place([(Request(1, 1, cpus=3), few)], SETS) == (("compute",), ())


def test_filter_is_built_as_oar_builds_it():
    assert job_filter({"properties": DEFAULT}, {"property": "type = 'default'"}) == f"'1' AND ( {DEFAULT} AND type = 'default' )"
    assert job_filter({"properties": ""}, {"property": None}) == "'1' AND ( '1' AND '1' )"


def resource(host, state="Alive", jobs=None, drain="NO", last=0):
    return {"host": host, "state": state, "jobs": jobs, "drain": drain, "last_job_date": last}


def test_host_states():
    n = "hpc-node-0"
    v = host_view(n, [resource(n, last=100), resource(n)])
    assert v.state == SchedState.IDLE and v.free_cpus == 2 and v.idle_since == 100
    assert host_view(n, [resource(n, jobs="5"), resource(n)]).state == SchedState.BUSY
    assert host_view(n, [resource(n, jobs="5", drain="YES"), resource(n, drain="YES")]).state == SchedState.DRAINING
    assert host_view(n, [resource(n, drain="YES")] * 2).state == SchedState.DRAINED
    v = host_view(n, [resource(n, "Absent")] * 2)
    assert v.state == SchedState.UNKNOWN and v.marked_absent
    v = host_view(n, [resource(n, "Absent", jobs="7")] * 2)  # jobs first: still being killed
    assert v.state == SchedState.BUSY and v.marked_absent and v.free_cpus == 0
    v = host_view(n, [resource(n, "Suspected")] * 2)
    assert v.state == SchedState.UNKNOWN and not v.responding and not v.marked_absent
    v = host_view(n, [resource(n, "Dead")] * 2)
    assert v.state == SchedState.HELD and v.held


def group(moldable, levels, prop="type = 'default'"):
    return {"moldable": moldable, "property": prop, "levels": levels}


def row(id, groups, state="Waiting", properties=DEFAULT, hosts=None, blocked=False, assigned=0):
    return {"id": id, "state": state, "submitted": 1000 + id, "properties": properties, "assigned": assigned,
            "blocked": blocked, "groups": groups, "hosts": hosts}


class Database:
    """Stands in for OAR's database: the job rows, and the cores per host each filter matches."""

    def __init__(self, rows, matches):
        self.rows, self.matches, self.filters = rows, matches, []

    def select(self, sql, keep_going=False):
        if not keep_going:
            return json.dumps(self.rows)
        out = []
        for k, line in enumerate(s for s in sql.splitlines() if s.startswith("SELECT")):
            f = line.split(" WHERE state <> 'Dead' AND ", 1)[1]
            self.filters.append(f)
            if f in self.matches:  # others: the statement failed
                out.append(f"{k}||0")
                out += [f"{k}|{h}|{n}" for h, n in self.matches[f].items()]
        return "\n".join(out) + "\n"


def jobs(rows, matches):
    sched = OarScheduler(CONFIG, ClusterPaths("t"), provider=None)
    db = Database(rows, matches)
    sched._select = db.select
    return {j.id: j for j in sched._jobs()}, db


def test_jobs_read_in_full():
    core = "type = 'default'"
    big = "(nodeset='big') AND type = 'default'"
    where = lambda props, prop=core: job_filter({"properties": props}, {"property": prop})  # noqa: E731
    rows = [
        row(1, [group(1, [["host", 1], ["core", 2]])]),
        row(2, [group(2, [["core", 8]])]),  # more cores than any one node set has
        row(3, [group(3, [["core", 4]])]),
        row(4, [group(4, [["host", 1], ["core", 2]], big)]),  # `-l "{nodeset='big'}/host=1/core=2"`
        row(5, [group(5, [["host", 1], ["core", 2]])], properties=f"((host='hpc-node-1') AND {DEFAULT[1:]}"),
        row(6, [group(6, [["host", 1]])], blocked=True),
        row(7, [group(7, [["host", 3], ["core", 2]]), group(8, [["core", 2]])]),  # -l ... -l ...: the first that fits
        row(8, [group(9, [["host", 1], ["core", 2]])], state="Running", hosts=["big-node-0"], assigned=9),
        row(9, [group(10, [["host", 1], ["core", 1]])], properties="broken("),
    ]
    everything = {"hpc-node-0": 2, "hpc-node-1": 2, "big-node-0": 4}
    matches = {
        where(DEFAULT): everything,
        where(DEFAULT, big): {"big-node-0": 4},
        where(rows[4]["properties"]): {"hpc-node-1": 2},
    }
    found, db = jobs(rows, matches)
    assert set(db.filters) == set(matches) | {where("broken(")}  # each filter once, running jobs' none

    j = found["1"]
    assert (j.nodesets, j.nodeset, j.nodes, j.cpus_per_node, j.cpus, j.wants_resources) == (("compute", "big"), "compute", 1, 2, 0, True)
    j = found["2"]
    assert j.nodesets == () and not j.wants_resources and "no node set" in j.reason
    j = found["3"]
    assert (j.nodesets, j.nodes, j.cpus_per_node, j.cpus) == (("compute", "big"), 1, 1, 4)
    assert found["4"].nodesets == ("big",) and found["4"].nodeset == "big"
    j = found["5"]
    assert j.nodesets == ("compute",) and j.excluded == ("hpc-node-0",)
    j = found["6"]
    assert j.exclusive and not j.wants_resources and "dependency" in j.reason
    j = found["7"]
    assert (j.nodesets, j.nodes, j.cpus) == (("compute", "big"), 1, 2)  # 3 hosts fit in no node set: `core=2`
    j = found["8"]
    assert j.running and j.nodeset == "big" and j.node_names == ("big-node-0",) and not j.wants_resources
    j = found["9"]  # not evaluated (the statement failed): any node set its shape fits
    assert j.nodesets == ("compute", "big") and j.wants_resources
