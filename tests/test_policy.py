from dataclasses import replace

from hypothesis import example, given, settings
from hypothesis import strategies as st

from accordion.model import Job, Node, NodeSetSpec, NodeState, Plan, Snapshot, Start, Stop, index_nodes, node_order
from accordion.policy import decide, fcfs

SPEC = NodeSetSpec("c", min_nodes=0, max_nodes=4, cpus=2, idle_timeout=60)


def nodes(**states):
    """nodes(idle=[0], busy=[1]) -> c-0 idle, c-1 busy, the rest absent."""
    out = {}
    for state, idx in states.items():
        for i in idx:
            out[i] = state
    result = []
    for i in range(SPEC.max_nodes):
        st_ = NodeState(out.get(i, "absent"))
        free = 2 if st_ in (NodeState.IDLE, NodeState.STARTING) else 0
        result.append(Node(f"c-{i}", "c", st_, 0.0, free))
    return tuple(result)


def job(i, n=1, cpn=1, running=False, **kw):
    return Job(str(i), "c", n, cpn, running, float(i), **kw)


def plan_for(node_list, jobs=(), now=10.0, spec=SPEC):
    return decide(Snapshot(now, (spec,), node_list, tuple(jobs)))


def started(plan):
    return [n for s in plan.start for n in s.nodes]


def stopped(plan):
    return [n for s in plan.stop for n in s.nodes]


def per_node(plan):
    """A plan node by node, as the controller and the simulator act on it (runs may be cut differently)."""
    assert all(run.nodes for run in [*plan.start, *plan.stop]), "a run is never empty"
    return (
        [(n, s.nodeset, s.reason) for s in plan.start for n in s.nodes],
        [(n, s.nodeset, s.reason, s.failed) for s in plan.stop for n in s.nodes],
    )


def test_nothing_to_do():
    p = plan_for(nodes())
    assert p.start == [] and p.stop == []


def test_pending_multi_node_job_gets_exactly_its_nodes():
    p = plan_for(nodes(), [job(1, n=2, cpn=2)])
    assert started(p) == ["c-0", "c-1"]
    assert "job 1 needs 2 nodes of 2 CPUs" in p.start[0].reason


def test_job_that_fits_on_idle_node_starts_nothing():
    p = plan_for(nodes(idle=[0]), [job(1)])
    assert p.start == []


def test_small_jobs_are_packed():
    p = plan_for(nodes(), [job(1), job(2), job(3)])
    assert started(p) == ["c-0", "c-1"]


def test_exclusive_job_wants_whole_node():
    p = plan_for(nodes(idle=[0]), [job(1), job(2, exclusive=True)])
    assert started(p) == ["c-1"]


def test_starting_nodes_count_as_capacity():
    p = plan_for(nodes(starting=[0, 1]), [job(1, n=2, cpn=2)])
    assert p.start == []


def test_job_partly_on_idle_node():
    p = plan_for(nodes(idle=[0], busy=[1]), [job(1, n=2, cpn=2)])
    assert started(p) == ["c-2"]


def test_job_that_cannot_fit_now_starts_nothing_and_idle_nodes_still_time_out():
    # c-3 alone cannot run the 2-node job, and no node can start: nothing starts. c-3 is kept through its
    # idle timeout, then removed: the job may wait for busy nodes for hours, and c-3 starts again (0.8 s)
    # once one of them frees up.
    waiting = [job(1, n=2, cpn=2)]
    assert plan_for(nodes(busy=[0, 1, 2], idle=[3]), waiting, now=59).start == []
    assert plan_for(nodes(busy=[0, 1, 2], idle=[3]), waiting, now=59).stop == []
    assert stopped(plan_for(nodes(busy=[0, 1, 2], idle=[3]), waiting, now=60)) == ["c-3"]
    assert started(plan_for(nodes(busy=[0, 1], idle=[2]), waiting, now=60)) == ["c-3"]


def test_the_oldest_job_waiting_for_busy_nodes_has_as_many_nodes_in_service_as_it_needs():
    # Slurm reserves nodes for it only among nodes in service (absent ones are down to it): with fewer, it
    # reserves none and lets later jobs pass it for as long as they come (tests/live/test_never_kill.py).
    big = job(1, n=4, cpn=2)
    p = plan_for(nodes(busy=[0, 1], idle=[2]), [big], now=60)
    assert started(p) == ["c-3"] and stopped(p) == []  # c-2 kept past its idle timeout
    assert p.start[0].reason == "job 1 waits for busy nodes: 4 kept in service for its reservation"
    # A later job that fits now gets its own node; the reservation counts it.
    p = plan_for(nodes(busy=[0]), [big, job(2)])
    assert per_node(p)[0] == [
        ("c-1", "c", "job 2 needs 1 node of 1 CPU"),
        ("c-2", "c", "job 1 waits for busy nodes: 4 kept in service for its reservation"),
        ("c-3", "c", "job 1 waits for busy nodes: 4 kept in service for its reservation"),
    ]
    # Only the oldest such job, and only while it waits: a 3-node job behind it changes nothing.
    assert started(plan_for(nodes(busy=[0, 1], idle=[2]), [job(1, n=3, cpn=2), job(2, n=4, cpn=2)], now=60)) == []
    assert len(stopped(plan_for(nodes(busy=[0, 1], idle=[2, 3]), [job(1, n=3, cpn=2)], now=60))) == 1  # 3 stay
    # Nor a job its scheduler reserves no nodes for (Grid Engine as set up here).
    assert plan_for(nodes(busy=[0, 1], idle=[2]), [job(1, n=4, cpn=2, reservable=False)], now=60).start == []
    # A job that could not run even once every busy node frees up (a node held by an administrator) has none.
    held = nodes(busy=[0, 1], idle=[2])[:3] + (Node("c-3", "c", NodeState.HELD, 0.0),)
    assert plan_for(held, [big], now=60).start == [] and stopped(plan_for(held, [big], now=60)) == ["c-2"]
    # The scheduler reserves for the next job instead, and so does the floor: c-2 stays for the 3-node job.
    p = plan_for(held, [big, job(2, n=3, cpn=2)], now=60)
    assert p.start == [] and stopped(p) == []
    p = plan_for(nodes(busy=[0, 1])[:3] + (Node("c-3", "c", NodeState.HELD, 0.0),), [big, job(2, n=3, cpn=2)], now=60)
    assert started(p) == ["c-2"] and p.start[0].reason == "job 2 waits for busy nodes: 3 kept in service for its reservation"


def test_oversized_cpus_ignored():
    p = plan_for(nodes(), [job(1, cpn=8)])
    assert p.start == []


def test_not_waiting_for_resources_is_not_demand():
    p = plan_for(nodes(), [job(1, wants_resources=False)])
    assert p.start == []


def test_idle_timeout_removes_oldest_idle_first():
    ns = list(nodes(idle=[0, 1]))
    ns[0] = Node("c-0", "c", NodeState.IDLE, 50.0, 2)
    ns[1] = Node("c-1", "c", NodeState.IDLE, 20.0, 2)
    assert plan_for(tuple(ns), now=79).stop == []  # c-1 idle 59 s
    assert stopped(plan_for(tuple(ns), now=80)) == ["c-1"]
    assert stopped(plan_for(tuple(ns), now=200)) == ["c-1", "c-0"]


def test_min_nodes_kept_and_started():
    spec = NodeSetSpec("c", min_nodes=1, max_nodes=4, cpus=2, idle_timeout=0)
    assert started(plan_for(nodes(), spec=spec)) == ["c-0"]
    assert stopped(plan_for(nodes(idle=[0, 1]), now=100, spec=spec)) == ["c-0"]


def test_resume_timeout_gives_up():
    p = plan_for(nodes(starting=[0]), now=31)
    assert len(p.stop) == 1 and p.stop[0].failed


def test_failed_nodes_are_not_restarted():
    p = plan_for(nodes(failed=[0]), [job(1)])
    assert started(p) == ["c-1"]


def test_pinned_up_and_down():
    spec = NodeSetSpec("c", 0, 4, 2, 60, pinned=3)
    assert started(plan_for(nodes(idle=[1]), spec=spec)) == ["c-0", "c-2"]
    spec = NodeSetSpec("c", 0, 4, 2, 60, pinned=1)
    p = plan_for(nodes(busy=[0], idle=[1, 2]), [job(9)], spec=spec)
    assert sorted(stopped(p)) == ["c-1", "c-2"] and p.start == []


@settings(max_examples=300, deadline=None)
@given(
    states=st.lists(st.sampled_from(list(NodeState)), min_size=4, max_size=4),
    jobs=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 3), st.booleans()), max_size=8),
    pinned=st.one_of(st.none(), st.integers(0, 4)),
    min_nodes=st.integers(0, 4),
)
def test_invariants(states, jobs, pinned, min_nodes):
    spec = NodeSetSpec("c", min_nodes, 4, 2, 30, pinned)
    ns = tuple(Node(f"c-{i}", "c", s, 0.0, 0 if s == NodeState.BUSY else 2) for i, s in enumerate(states))
    js = [job(i, n=n, cpn=c, running=r) for i, (n, c, r) in enumerate(jobs)]
    plan = plan_for(ns, js, now=100, spec=spec)
    by_name = {n.name: n.state for n in ns}
    new = started(plan)
    assert all(by_name[n] == NodeState.ABSENT for n in new)
    assert len(set(new)) == len(new)
    active = sum(s in (NodeState.IDLE, NodeState.BUSY, NodeState.STARTING, NodeState.UNRESPONSIVE) for s in states)
    assert active + len(new) <= 4
    gone = set(stopped(plan))
    assert not gone & set(new)
    if pinned is None:
        # Automatic scaling never takes a busy node away and keeps min_nodes.
        assert all(by_name[n] in (NodeState.IDLE, NodeState.STARTING) for n in gone)
        remaining = active + len(new) - len(gone)
        usable = sum(s not in (NodeState.FAILED, NodeState.DRAINING, NodeState.HELD) for s in states)
        assert remaining >= min(min_nodes, usable) or any(
            by_name[n] == NodeState.STARTING for n in gone
        )


@settings(max_examples=500, deadline=None)
@given(
    states=st.lists(st.sampled_from([NodeState.ABSENT, NodeState.IDLE, NodeState.BUSY, NodeState.STARTING]), min_size=4, max_size=4),
    jobs=st.lists(st.tuples(st.integers(1, 4), st.sets(st.sampled_from([f"c-{i}" for i in range(4)]), max_size=3)), max_size=5),
    since=st.sampled_from([0.0, 90.0]),
)
@example(states=[NodeState.BUSY, NodeState.BUSY, NodeState.ABSENT, NodeState.ABSENT], jobs=[(3, {"c-2"})], since=0.0)
def test_no_node_is_started_or_kept_for_a_job_that_excludes_it(states, jobs, since):
    # Excluded names (`--exclude`, a reservation a job is not in) are not modelled by `plain_decide`: checked here.
    ns = tuple(Node(f"c-{i}", "c", s, since, 0 if s == NodeState.BUSY else 2) for i, s in enumerate(states))
    js = {str(i): job(i, n=n, cpn=2, excluded=tuple(sorted(ex))) for i, (n, ex) in enumerate(jobs)}
    plan = plan_for(ns, js.values(), now=100)
    for start in plan.start:
        for_job = start.reason.split()[1]  # "job 3 needs ...", "job 3 waits for busy nodes: ..."
        assert not set(start.nodes) & set(js[for_job].excluded), (start, js[for_job])
    floors = [s for s in plan.start if "kept in service" in s.reason]
    if floors:
        head = js[floors[0].reason.split()[1]]
        up = [n.name for n in ns if n.state != NodeState.ABSENT and n.name not in head.excluded]
        gone = set(stopped(plan))
        # Kept for the head job: as many nodes it may use as it needs, none it excludes counted.
        assert len([n for n in up if n not in gone]) + len(started(plan)) >= head.nodes


def test_longest_absent_node_is_started_first():
    ns = list(nodes())
    ns[0] = Node("c-0", "c", NodeState.ABSENT, 50.0)  # just removed
    p = plan_for(tuple(ns), [job(1)], now=60)
    assert started(p) == ["c-1"]


def plain_decide(snapshot):
    """The policy written plainly (every list sorted, every slot kept, every job looked at): the optimised
    `decide` must make exactly the same plans."""
    name_order = lambda n: node_order(n.name)  # noqa: E731
    plan = Plan()
    for spec in snapshot.nodesets:
        now, cpus = snapshot.now, spec.cpus
        mine = [n for n in snapshot.nodes if n.nodeset == spec.name]
        of = lambda state: sorted((n for n in mine if n.state == state), key=name_order)  # noqa: E731
        starting = []
        for n in of(NodeState.STARTING):
            if now - n.since > snapshot.resume_timeout:
                reason = f"did not register within {snapshot.resume_timeout:.0f} s"
                plan.stop.append(Stop((n.name,), spec.name, reason, failed=True))
            else:
                starting.append(n)
        idle, busy, absent = of(NodeState.IDLE), of(NodeState.BUSY), of(NodeState.ABSENT)
        active = len(starting) + len(idle) + len(busy)
        oldest_absent = sorted(absent, key=lambda n: n.since)
        if spec.pinned is not None:
            target = max(0, min(spec.pinned, spec.max_nodes))
            reason = f"scaled to {target} by hand"
            if active < target:
                plan.start += [Start((n.name,), spec.name, reason) for n in oldest_absent[: target - active]]
            elif active > target:
                gone = (sorted(idle, key=lambda n: n.since) + starting[::-1] + busy[::-1])[: active - target]
                plan.stop += [Stop((n.name,), spec.name, reason) for n in gone]
            continue
        slots = [[n.name, n.free_cpus] for n in busy if n.free_cpus > 0] + [[n.name, cpus] for n in idle + starting]
        wanted, new_reasons = set(), []
        room = min(spec.max_nodes - active, len(absent))
        waiting = [j for j in snapshot.jobs if j.nodeset == spec.name and not j.running and j.wants_resources]
        head = None  # the oldest job that cannot start now but could once busy nodes free up
        for job in sorted(waiting, key=lambda j: (j.submit_time, node_order(j.id))):
            need = cpus if job.exclusive and job.cpus_per_node <= cpus else job.cpus_per_node
            usable = [s for s in slots if s[1] >= need][: max(job.nodes, 0)]
            new = job.nodes - len(usable)
            if need > cpus or new > room - len(new_reasons):
                if head is None and need <= cpus and job.nodes <= min(spec.max_nodes, active + room):
                    head = job
                continue
            for s in usable:
                s[1] -= need
                wanted.add(s[0])
            what = f"{job.nodes} node{'s' if job.nodes > 1 else ''} of {need} CPU{'s' if need > 1 else ''}"
            slots += [[None, cpus - need] for _ in range(new)]
            new_reasons += [f"job {job.id} needs {what}"] * max(new, 0)
        floor, why = spec.min_nodes, f"min_nodes is {spec.min_nodes}"
        if head is not None and floor < head.nodes:
            floor, why = head.nodes, f"job {head.id} waits for busy nodes: {head.nodes} kept in service for its reservation"
        while active + len(new_reasons) < floor and len(new_reasons) < len(absent):
            new_reasons.append(why)
        plan.start += [Start((n.name,), spec.name, r) for n, r in zip(oldest_absent, new_reasons)]
        removable = sorted(
            (n for n in idle if n.name not in wanted and now - n.since >= spec.idle_timeout),
            key=lambda n: (n.since, node_order(n.name)),
        )
        keep = max(0, floor - (active - len(removable)))
        for n in removable[: max(0, len(removable) - keep)]:
            plan.stop.append(Stop((n.name,), spec.name, f"idle {now - n.since:.0f} s"))
    return plan


# The oracle covers the node states and job fields the policy had before job shapes were read in full
# (unresponsive and held nodes, memory, node names, arrays and several node sets have tests of their own).
OLD_STATES = [NodeState.ABSENT, NodeState.STARTING, NodeState.IDLE, NodeState.BUSY, NodeState.DRAINING, NodeState.FAILED]
# Few distinct names, times and ids, so that ties (c-1 and c-01 sort alike) and every branch are reached.
NAMES = [f"{p}-{i}" for p in "cd" for i in range(6)] + ["c-01", "c-002", "c", "x7"]
random_nodes = st.lists(
    st.builds(
        Node,
        st.sampled_from(NAMES),
        st.sampled_from(["c", "c", "c", "d", "other"]),
        st.sampled_from([*OLD_STATES, NodeState.ABSENT, NodeState.ABSENT, NodeState.IDLE, NodeState.BUSY]),
        st.sampled_from([0.0, 5.0, 20.0, 50.0]),
        st.integers(0, 3),
    ),
    max_size=14,
    unique_by=lambda n: n.name,
)
random_jobs = st.lists(
    st.builds(
        Job,
        st.sampled_from(["1", "2", "10", "01", "a"]),
        st.sampled_from(["c", "c", "c", "d", "other"]),
        st.sampled_from([1, 1, 2, 3, 6]),
        st.integers(1, 4),
        st.sampled_from([False, False, False, True]),
        st.sampled_from([0.0, 1.0, 2.0]),
        st.sampled_from([True, True, True, False]),
        exclusive=st.booleans(),
    ),
    max_size=10,
)
random_specs = st.lists(
    st.builds(
        NodeSetSpec,
        st.sampled_from(["c", "c", "d"]),
        st.sampled_from([0, 0, 1, 3]),
        st.integers(0, 8),
        st.integers(1, 3),
        st.sampled_from([0, 10, 30]),
        st.sampled_from([None, None, None, 0, 2, 5]),
    ),
    min_size=1,
    max_size=2,
    unique_by=lambda s: s.name,
)


@settings(max_examples=1000, deadline=None)
@given(specs=random_specs, ns=random_nodes, js=random_jobs, now=st.sampled_from([10.0, 30.0, 100.0]))
def test_same_plans_as_the_plain_policy(specs, ns, js, now):
    s = Snapshot(now, tuple(specs), tuple(ns), tuple(js), resume_timeout=8.0)
    assert per_node(decide(s)) == per_node(plain_decide(s))


# The simulator's kind of snapshot: jobs take whole nodes, no busy node has CPUs left: the policy counts free
# nodes instead of fitting jobs node by node (`_fit_whole`), which must change no plan.
whole_nodes = random_nodes.map(lambda ns: [replace(n, free_cpus=0) if n.state == NodeState.BUSY else n for n in ns])
whole_node_jobs = random_jobs.map(lambda js: [replace(j, exclusive=True) for j in js])


@settings(max_examples=1000, deadline=None)
@given(specs=random_specs, ns=whole_nodes, js=whole_node_jobs, now=st.sampled_from([10.0, 30.0, 100.0]))
def test_counted_fits_make_the_plans_of_the_plain_policy(specs, ns, js, now):
    s = Snapshot(now, tuple(specs), tuple(ns), tuple(js), resume_timeout=8.0)
    assert per_node(decide(s)) == per_node(plain_decide(s))


@settings(max_examples=300, deadline=None)
@given(ns=random_nodes)
def test_snapshot_index_orders(ns):
    """A snapshot built without an index indexes its nodes itself, in the orders the policy relies on."""
    index = Snapshot(0.0, (), tuple(ns), ()).index
    assert index == index_nodes(ns)
    for nodeset, g in index.items():
        mine = sorted((n for n in ns if n.nodeset == nodeset), key=lambda n: node_order(n.name))
        of = lambda *states: tuple(n for n in mine if n.state in states)  # noqa: E731
        assert g.starting == of(NodeState.STARTING) and g.idle == of(NodeState.IDLE)
        assert g.busy == of(NodeState.BUSY, NodeState.UNRESPONSIVE)
        assert g.partly_free == tuple(n for n in of(NodeState.BUSY) if n.free_cpus > 0)
        assert g.absent == tuple(n.name for n in sorted(of(NodeState.ABSENT), key=lambda n: n.since))
        longest_idle = sorted(of(NodeState.IDLE), key=lambda n: n.since)
        assert [name for run in g.idle_runs for name in run.names] == [n.name for n in longest_idle]
        assert all(n.since == run.since for run in g.idle_runs for n in of(NodeState.IDLE) if n.name in run.names)
        assert len({run.since for run in g.idle_runs}) == len(g.idle_runs)
        assert g.draining == len(of(NodeState.DRAINING))


@settings(max_examples=300, deadline=None)
@given(js=random_jobs, in_order=st.booleans())
def test_fcfs_order(js, in_order):
    if in_order:  # the simulator's queue is already in order: a shortcut
        js = sorted(js, key=lambda j: (j.submit_time, node_order(j.id)))
    assert fcfs(js) == sorted(js, key=lambda j: (j.submit_time, node_order(j.id)))


def test_index_keeps_busy_and_unresponsive_nodes_in_one_name_order():
    """Unresponsive nodes are in service like busy ones: one list, in name order, and names that sort alike
    (c1, c01) in the order given, whatever their state."""
    ns = [Node("c01", "c", NodeState.UNRESPONSIVE, 0.0), Node("c1", "c", NodeState.BUSY, 0.0, 1), Node("c0", "c", NodeState.BUSY, 0.0)]
    g = index_nodes(ns)["c"]
    assert [n.name for n in g.busy] == ["c0", "c01", "c1"]
    assert [n.name for n in g.partly_free] == ["c1"]


def test_a_job_of_several_node_sets_takes_one_where_its_memory_fits():
    # -p a,b --mem=2G: a's busy nodes have CPUs left but 512 MB; counted as room by CPUs alone, a was chosen,
    # nothing was started, and the job waited for a's jobs to end while b could have run it.
    specs = (NodeSetSpec("a", 0, 2, 4, 60.0, None, 4096), NodeSetSpec("b", 0, 2, 4, 60.0, None, 4096))
    busy = tuple(Node(f"a-{i}", "a", NodeState.BUSY, 0.0, 2, 512) for i in range(2))
    absent = tuple(Node(f"b-{i}", "b", NodeState.ABSENT, 0.0) for i in range(2))
    big = Job("9", "a", 1, 1, False, 0.0, nodesets=("a", "b"), mem_per_node=2048)
    assert decide(Snapshot(100.0, specs, busy + absent, (big,))).start == [Start(("b-0",), "b", "job 9 needs 1 node of 1 CPU")]
    small = Job("9", "a", 1, 1, False, 0.0, nodesets=("a", "b"), mem_per_node=256)  # fits beside a's jobs
    assert decide(Snapshot(100.0, specs, busy + absent, (small,))).start == []


def test_a_job_of_several_node_sets_does_not_count_nodes_kept_for_an_older_job():
    # a's idle nodes are kept for the older 4-node job's reservation: the scheduler will not give them to a
    # later job either, so the later `-p a,b` job gets a node of b rather than waiting for the older one.
    specs = (NodeSetSpec("a", 0, 4, 2, 60.0), NodeSetSpec("b", 0, 4, 2, 60.0))
    nodes = tuple(Node(f"a-{i}", "a", NodeState.BUSY if i < 2 else NodeState.IDLE, 0.0) for i in range(4))
    nodes += tuple(Node(f"b-{i}", "b", NodeState.ABSENT, 0.0) for i in range(4))
    older = Job("10", "a", 4, 2, False, 0.0, nodesets=("a",))
    later = Job("11", "a", 1, 2, False, 5.0, nodesets=("a", "b"))
    plan = decide(Snapshot(100.0, specs, nodes, (later, older)))  # not in submission order
    assert plan.start == [Start(("b-0",), "b", "job 11 needs 1 node of 2 CPUs")] and plan.stop == []
    # With no older job, a's idle nodes are its own.
    assert decide(Snapshot(100.0, specs, nodes, (later,))).start == []


def test_names_a_job_excludes_are_no_capacity_for_its_floor():
    # A 2-node job that excludes c-1 to c-3 (a reservation it is not in) beside a busy c-0: it can never run
    # here (c-0 alone is left), so nothing is kept or started for it. A 3-node job beside busy c-0 and c-1 that
    # excludes c-2 has c-3 kept for it, not c-2.
    assert plan_for(nodes(busy=[0]), [job(1, n=2, excluded=("c-1", "c-2", "c-3"))]).start == []
    p = plan_for(nodes(busy=[0, 1]), [job(1, n=3, excluded=("c-2",))])
    assert started(p) == ["c-3"] and "kept in service" in p.start[0].reason


def test_the_floor_passes_over_a_job_its_excluded_names_leave_no_room():
    # The oldest blocked job excludes c-2 and c-3 beside busy c-0 and c-1: it can never run here, and the
    # scheduler reserves for the next one, a 3-node job, so the floor does too (it was dropped).
    p = plan_for(nodes(busy=[0, 1]), [job(1, n=3, excluded=("c-2", "c-3")), job(2, n=3)])
    assert started(p) == ["c-2"] and p.start[0].reason.startswith("job 2 waits for busy nodes")


def test_nodes_in_service_its_job_excludes_do_not_count_for_its_floor():
    # A 3-node job that excludes c-2 beside busy c-0 to c-2: Slurm reserves for it only once c-3 is in
    # service, so c-3 is started (the floor counted c-2, and started nothing). With c-2 idle past its timeout
    # instead, c-2 goes and c-3 is started (the floor kept c-2, which the job cannot use).
    p = plan_for(nodes(busy=[0, 1, 2]), [job(1, n=3, excluded=("c-2",))])
    assert started(p) == ["c-3"] and "kept in service" in p.start[0].reason
    p = plan_for(nodes(busy=[0, 1], idle=[2]), [job(1, n=3, excluded=("c-2",))], now=1000.0)
    assert started(p) == ["c-3"] and stopped(p) == ["c-2"]
