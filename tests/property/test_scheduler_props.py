"""Property tests of planning and the CPU executors, on random DAGs.

The happens-before relation of a plan is checked independently of the planner: a brute-force
reachability closure over same-stream order plus event waits (bitsets), on which every DAG
edge must hold and no wait may be implied by the others.
"""

from __future__ import annotations

import math
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamdag.scheduler import Buf, Plan, TaskGraph, make_plan, run_serial, run_sim
from streamdag.scheduler.plan import REPLAN_WAITS, _memo, _replan

POLICIES = ["round_robin", "critical_path", "random"]
MOD = 1_000_003


def step(state: np.ndarray, v: int, preds: tuple[int, ...], salt: int) -> None:
    """state[v] from its predecessors' values: any stale read changes the answer."""
    acc = v * 7919 + salt
    for u in preds:
        acc = (acc * 31 + int(state[u])) % MOD
    state[v] = acc + 1  # never 0, the initial value


def random_dag(seed: int, n: int, density: float, fuse_keys: int) -> tuple[TaskGraph, int]:
    """A DAG on n tasks; insertion order is shuffled so it is not a topological order."""
    rng = random.Random(seed)
    preds: list[list[int]] = [[] for _ in range(n)]
    for j in range(1, n):
        k = min(j, int(rng.random() * density * 2 + 0.5))
        for _ in range(k):
            i = rng.randrange(max(0, j - 16), j) if rng.random() < 0.8 else rng.randrange(j)
            if i not in preds[j]:
                preds[j].append(i)
    tg = TaskGraph(f"random-{seed}")
    order = list(range(n))
    rng.shuffle(order)
    tasks = {}
    for v in order:
        key = rng.randrange(fuse_keys) if fuse_keys else None
        tasks[v] = tg.host(f"t{v}", step, Buf("state"), v, tuple(preds[v]), seed % 97,
                           fuse_key=key)
    for v in range(n):
        if preds[v]:
            tasks[v].succeed(*(tasks[u] for u in preds[v]))
    return tg, n


dag_params = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(1, 300),  # tasks
    st.floats(0.0, 2.5),  # density
    st.integers(0, 3),  # fuse keys (0: host tasks not fusable)
)


def reach_sets(plan: Plan) -> tuple[list[int], list[list[int]]]:
    """Per launch, a bitset of launches that happen before it; and in-edges (HB graph)."""
    m = len(plan.launches)
    into: list[list[int]] = [[] for _ in range(m)]
    for st_ in plan.streams:
        for a, b in zip(st_.launches, st_.launches[1:], strict=False):
            into[b].append(a)
    for p, c in plan.cross_stream_waits():
        into[c].append(p)
    reach = [0] * m
    for li in range(m):  # in-edges all come from earlier launches (checked below)
        r = 0
        for u in into[li]:
            assert u < li, "happens-before edge goes backwards in plan order"
            r |= reach[u] | (1 << u)
        reach[li] = r
    return reach, into


@settings(max_examples=150)
@given(dag_params, st.integers(1, 8), st.sampled_from(POLICIES), st.booleans())
def test_plan_orders_every_edge_with_no_redundant_event(params, streams, policy, fuse) -> None:
    tg, _ = random_dag(*params)
    check_plan(tg, make_plan(tg, streams=streams, policy=policy, fuse=fuse, seed=params[0]))


def check_plan(tg: TaskGraph, plan: Plan, *, minimal: bool = True) -> None:
    """Every task in one launch, every edge ordered, no unused event, no redundant one
    (``minimal``: a re-plan may keep some), fused launches of one key (against the
    brute-force happens-before closure)."""
    n = len(tg.specs)
    where = plan.task_launch()
    assert sorted(t for lau in plan.launches for t in lau.tasks) == list(range(n))
    reach, into = reach_sets(plan)
    for u, v in tg.edges():
        lu, lv = where[u], where[v]
        assert lu != lv, "fusion merged dependent tasks"
        assert reach[lv] >> lu & 1, f"edge {u}->{v} not ordered"
    waited = set()
    for p, c in plan.cross_stream_waits():
        assert plan.launches[p].stream != plan.launches[c].stream, "event on a same-stream edge"
        others = [x for x in into[c] if x != p]
        implied = any(x == p or (reach[x] >> p & 1) for x in others)
        assert not (minimal and implied), f"wait {p}->{c} is redundant"
        waited.add(plan.launches[p].record)
    assert waited == set(range(len(plan.events))), "an event nobody waits on"
    for lau in plan.launches:  # fused members share a key and are pairwise independent
        if lau.fused:
            keys = {plan.tasks[t].fusion_key for t in lau.tasks}
            assert len(keys) == 1 and None not in keys


@settings(max_examples=25)
@given(dag_params, st.integers(1, 8), st.sampled_from(POLICIES))
def test_plans_are_deterministic(params, streams, policy) -> None:
    tg, _ = random_dag(*params)
    a = make_plan(tg, streams=streams, policy=policy, seed=params[0], fuse=True)
    b = make_plan(tg, streams=streams, policy=policy, seed=params[0], fuse=True)
    assert a == b


@settings(max_examples=80)
@given(
    st.tuples(st.integers(0, 2**31 - 1), st.integers(1, 120), st.floats(0.0, 2.5),
              st.integers(0, 3)),
    st.integers(1, 8),
    st.sampled_from(POLICIES),
    st.booleans(),
)
def test_sim_with_random_delays_equals_serial(params, streams, policy, fuse) -> None:
    tg, n = random_dag(*params)
    plan = make_plan(tg, streams=streams, policy=policy, fuse=fuse, seed=params[0])
    want = np.zeros(n, np.int64)
    run_serial(make_plan(tg, streams=1), {"state": want})
    got = np.zeros(n, np.int64)
    run_sim(plan, {"state": got}, max_delay_s=2e-4, seed=params[0])
    assert (want > 0).all()
    np.testing.assert_array_equal(got, want)


def changed(tg: TaskGraph, plan: Plan, rng: random.Random, tag: str, state: int
            ) -> TaskGraph:
    """``tg`` changed as a growth batch changes the CUDA backend's step graph: tasks dropped
    with their edges, up to 5 new tasks each between kept ones in ``plan``'s order (state
    slots ``state`` on), the kept ones the same spec objects."""
    order = [t for lau in plan.launches for t in lau.tasks]
    keep = [t for t in order if rng.random() < 0.9]
    again = TaskGraph(tag)
    index = {}
    for t in keep:
        spec = tg.specs[t]
        if rng.random() < 0.05:  # a new spec of the same name: new arguments, same task
            again.host(spec.name, step, *spec.args)
        else:
            again.add(spec)
        index[t] = len(index)
    src = [index[u] for u, v in tg.edges() if u in index and v in index]
    dst = [index[v] for u, v in tg.edges() if u in index and v in index]
    for i in range(rng.randrange(0, 6)):
        at = rng.randrange(len(keep) + 1)
        again.host(f"{tag}-new{i}", step, Buf("state"), state + i, (), 0,
                   fuse_key=rng.choice([None, 0]))
        new = len(again.specs) - 1
        for u in rng.sample(keep[:at], min(at, rng.randrange(3))):
            src.append(index[u])
            dst.append(new)
        for v in rng.sample(keep[at:], min(len(keep) - at, rng.randrange(3))):
            src.append(new)
            dst.append(index[v])
    if src:
        again.connect(src, dst)
    return again


@settings(max_examples=100)
@given(dag_params, st.integers(1, 8), st.sampled_from(POLICIES), st.booleans(),
       st.integers(0, 2**31 - 1), st.integers(1, 3))
def test_a_replan_after_a_change_places_only_the_new_tasks(params, streams, policy, fuse,
                                                           seed, rounds) -> None:
    """make_plan(previous=...) after each of a few changes (see ``changed``): the new plan
    orders every edge and runs as the serial one does; each kept task that leads its
    launch stays on its stream, a new launch with predecessors goes on its latest one's;
    and unfused, the kept tasks keep their order and every wait between two of them stays
    (only the change was planned)."""
    tg, n = random_dag(*params)
    first = make_plan(tg, streams=streams, policy=policy, fuse=fuse, seed=params[0])
    rng = random.Random(seed)
    for r in range(rounds):
        again = changed(tg, first, rng, f"round{r}", n + 5 * r)
        second = make_plan(again, streams=streams, policy=policy, fuse=fuse, seed=params[0],
                           previous=first)
        if not fuse and again.specs:  # planned as the change, or whole past the bound
            replan = _replan(again, first, max_waits=math.inf)
            assert replan is not None, "a change between kept tasks fits the old order"
            check_plan(again, replan, minimal=False)
            assert_kept_as_planned(first, replan)
            waits = sum(len(lau.waits) for lau in replan.launches)
            bounded = waits <= REPLAN_WAITS * _memo(replan).base + 16
            assert (second == replan) == bounded
        check_plan(again, second, minimal=fuse or not again.specs or second != replan)
        was = {first.tasks[t].name: lau.stream for lau in first.launches for t in lau.tasks}
        for lau in second.launches:
            lead = second.tasks[lau.tasks[0]].name
            if lead in was:
                assert lau.stream == was[lead]
            elif lau.preds:
                assert lau.stream == second.launches[lau.preds[-1]].stream
        assert_runs_as_serial(again, second, n + 5 * rounds, seed)
        tg, first = again, second
    if not fuse:  # nothing changed: the same plan
        assert make_plan(tg, streams=streams, policy=policy, seed=params[0],
                         previous=first) == first


def assert_kept_as_planned(first: Plan, second: Plan) -> None:
    """The tasks of both plans keep their order and every wait between two of them."""
    def named(plan: Plan, li: int) -> str:
        return plan.tasks[plan.launches[li].tasks[0]].name

    old = [named(first, li) for li in range(len(first.launches))]
    now = [named(second, li) for li in range(len(second.launches))]
    assert [t for t in now if t in set(old)] == [t for t in old if t in set(now)]
    before = {(named(first, p), named(first, c)) for p, c in first.cross_stream_waits()}
    after = {(named(second, p), named(second, c)) for p, c in second.cross_stream_waits()}
    assert {(p, c) for p, c in before if p in set(now) and c in set(now)} <= after


def assert_runs_as_serial(tg: TaskGraph, plan: Plan, size: int, seed: int) -> None:
    want = np.zeros(size, np.int64)
    run_serial(make_plan(tg, streams=1), {"state": want})
    got = np.zeros(size, np.int64)
    run_sim(plan, {"state": got}, max_delay_s=1e-4, seed=seed)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=150)
@given(st.integers(0, 2**31), st.integers(1, 150), st.integers(0, 8))
def test_reduced_preds_keep_the_order_and_drop_every_implied_edge(seed: int, n: int,
                                                                 fan: int) -> None:
    # the graph mode of the CUDA executor captures each launch after its reduced
    # predecessors only: the same ancestors as the DAG's, and no edge another path implies
    from streamdag.scheduler.cuda import reduced_preds

    rng = random.Random(seed)
    preds = [tuple(sorted(rng.sample(range(i), min(i, rng.randint(0, fan)))))
             for i in range(n)]
    reduced = reduced_preds(preds)

    def ancestors(edges: list[tuple[int, ...]] | list[list[int]]) -> list[set[int]]:
        anc: list[set[int]] = []
        for ps in edges:
            anc.append(set().union(*([anc[p] | {p} for p in ps] or [set()])))
        return anc

    full = ancestors(preds)
    assert ancestors(reduced) == full
    for i, ps in enumerate(reduced):
        assert set(ps) <= set(preds[i])
        assert not any(p in full[q] for p in ps for q in ps if q != p), i
