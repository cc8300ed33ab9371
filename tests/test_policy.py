from hypothesis import given, settings
from hypothesis import strategies as st

from accordion.model import Job, Node, NodeSetSpec, NodeState, Snapshot
from accordion.policy import decide

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


def test_nothing_to_do():
    p = plan_for(nodes())
    assert p.start == [] and p.stop == []


def test_pending_multi_node_job_gets_exactly_its_nodes():
    p = plan_for(nodes(), [job(1, n=2, cpn=2)])
    assert [s.node for s in p.start] == ["c-0", "c-1"]
    assert "job 1 needs 2 nodes of 2 CPUs" in p.start[0].reason


def test_job_that_fits_on_idle_node_starts_nothing():
    p = plan_for(nodes(idle=[0]), [job(1)])
    assert p.start == []


def test_small_jobs_are_packed():
    p = plan_for(nodes(), [job(1), job(2), job(3)])
    assert [s.node for s in p.start] == ["c-0", "c-1"]


def test_exclusive_job_wants_whole_node():
    p = plan_for(nodes(idle=[0]), [job(1), job(2, exclusive=True)])
    assert [s.node for s in p.start] == ["c-1"]


def test_starting_nodes_count_as_capacity():
    p = plan_for(nodes(starting=[0, 1]), [job(1, n=2, cpn=2)])
    assert p.start == []


def test_job_partly_on_idle_node():
    p = plan_for(nodes(idle=[0], busy=[1]), [job(1, n=2, cpn=2)])
    assert [s.node for s in p.start] == ["c-2"]


def test_job_that_cannot_fit_now_starts_nothing_and_keeps_idle_nodes():
    p = plan_for(nodes(busy=[0, 1, 2], idle=[3]), [job(1, n=2, cpn=2)], now=1000)
    assert p.start == [] and p.stop == []


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
    assert [s.node for s in plan_for(tuple(ns), now=80).stop] == ["c-1"]
    assert [s.node for s in plan_for(tuple(ns), now=200).stop] == ["c-1", "c-0"]


def test_min_nodes_kept_and_started():
    spec = NodeSetSpec("c", min_nodes=1, max_nodes=4, cpus=2, idle_timeout=0)
    assert [s.node for s in plan_for(nodes(), spec=spec).start] == ["c-0"]
    assert [s.node for s in plan_for(nodes(idle=[0, 1]), now=100, spec=spec).stop] == ["c-0"]


def test_resume_timeout_gives_up():
    p = plan_for(nodes(starting=[0]), now=31)
    assert len(p.stop) == 1 and p.stop[0].failed


def test_failed_nodes_are_not_restarted():
    p = plan_for(nodes(failed=[0]), [job(1)])
    assert [s.node for s in p.start] == ["c-1"]


def test_pinned_up_and_down():
    spec = NodeSetSpec("c", 0, 4, 2, 60, pinned=3)
    assert [s.node for s in plan_for(nodes(idle=[1]), spec=spec).start] == ["c-0", "c-2"]
    spec = NodeSetSpec("c", 0, 4, 2, 60, pinned=1)
    p = plan_for(nodes(busy=[0], idle=[1, 2]), [job(9)], spec=spec)
    assert sorted(s.node for s in p.stop) == ["c-1", "c-2"] and p.start == []


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
    started = [s.node for s in plan.start]
    assert all(by_name[n] == NodeState.ABSENT for n in started)
    assert len(set(started)) == len(started)
    active = sum(s in (NodeState.IDLE, NodeState.BUSY, NodeState.STARTING) for s in states)
    assert active + len(started) <= 4
    stopped = {s.node for s in plan.stop}
    assert not stopped & set(started)
    if pinned is None:
        # Automatic scaling never takes a busy node away and keeps min_nodes.
        assert all(by_name[n] in (NodeState.IDLE, NodeState.STARTING) for n in stopped)
        remaining = active + len(started) - len(stopped)
        usable = sum(s not in (NodeState.FAILED, NodeState.DRAINING) for s in states)
        assert remaining >= min(min_nodes, usable) or any(
            by_name[n] == NodeState.STARTING for n in stopped
        )


def test_longest_absent_node_is_started_first():
    ns = list(nodes())
    ns[0] = Node("c-0", "c", NodeState.ABSENT, 50.0)  # just removed
    p = plan_for(tuple(ns), [job(1)], now=60)
    assert [s.node for s in p.start] == ["c-1"]
