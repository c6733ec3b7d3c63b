"""Unit tests of task graphs, planning and the CPU executors: API, errors, fusion, sim."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from streamdag.errors import (
    ConfigError,
    KernelArgumentError,
    LaunchConfigError,
    SchedulerError,
    TaskCycleError,
    UnknownTaskError,
)
from streamdag.scheduler import (
    Buf,
    Collector,
    KernelSpec,
    LaunchShape,
    TaskGraph,
    make_plan,
    run_serial,
    run_sim,
)
from streamdag.scheduler.plan import _Memo


def copy_add(dst: np.ndarray, src: np.ndarray, k: float) -> None:
    dst[:] = src + k


def diamond() -> TaskGraph:
    tg = TaskGraph("diamond")
    a = tg.host("a", copy_add, Buf("a"), Buf("x"), 1.0)
    b = tg.host("b", copy_add, Buf("b"), Buf("a"), 2.0)
    c = tg.host("c", copy_add, Buf("c"), Buf("a"), 3.0)
    d = tg.host("d", lambda d, b, c: np.add(b, c, out=d), Buf("d"), Buf("b"), Buf("c"))
    a.precede(b, c)
    d.succeed(b, c)
    return tg


def buffers() -> dict[str, np.ndarray]:
    return {k: np.zeros(4) for k in "xabcd"}


def test_diamond_plans_one_event_per_needed_edge() -> None:
    plan = make_plan(diamond(), streams=2, policy="round_robin")
    assert [plan.launches[i].stream for i in range(4)] == [0, 0, 1, 0]
    # a->c crosses streams (one event), c->d crosses back (one event); a->b, b->d do not
    assert sorted(plan.cross_stream_waits()) == [(0, 2), (2, 3)]
    assert len(plan.events) == 2
    bufs = buffers()
    run_sim(plan, bufs, max_delay_s=1e-3)
    np.testing.assert_array_equal(bufs["d"], 7.0)


def test_single_stream_has_no_events() -> None:
    plan = make_plan(diamond(), streams=1)
    assert plan.events == () and all(lau.stream == 0 for lau in plan.launches)


def test_implied_wait_is_not_recorded() -> None:
    # a (s0) -> b (s1) -> c (s2), and a -> c: c waits on b only, which already follows a
    tg = TaskGraph()
    a, b, c = (tg.host(n, lambda: None) for n in "abc")
    a.precede(b, c)
    b.precede(c)
    for seed in range(50):  # find a seed that spreads a, b, c over three streams
        plan = make_plan(tg, streams=3, policy="random", seed=seed)
        if len({lau.stream for lau in plan.launches}) == 3:
            assert sorted(plan.cross_stream_waits()) == [(0, 1), (1, 2)]
            break
    else:
        pytest.fail("no seed spread three tasks over three streams")


def test_broken_plan_is_caught_by_sim() -> None:
    plan = make_plan(diamond(), streams=2, policy="round_robin")
    want = buffers()
    run_serial(plan, want)
    # drop c's wait on a: with a delayed, c reads a before a wrote it
    broken_launches = tuple(
        lau._replace(waits=()) if lau.id == 2 else lau for lau in plan.launches
    )
    broken = dataclasses.replace(plan, launches=broken_launches)
    got = buffers()
    run_sim(broken, got, delay=lambda lau: 0.05 if lau.id == 0 else 0.0)
    assert not np.array_equal(got["d"], want["d"])
    good = buffers()
    run_sim(plan, good, delay=lambda lau: 0.05 if lau.id == 0 else 0.0)
    np.testing.assert_array_equal(good["d"], want["d"])


def test_cycle_is_a_typed_error_naming_the_cycle() -> None:
    tg = TaskGraph("cyc")
    a, b, c, d = (tg.host(n, lambda: None) for n in "abcd")
    d.precede(a)
    a.precede(b)
    b.precede(c)
    c.precede(a)
    with pytest.raises(TaskCycleError, match=r"a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c"):
        tg.validate()
    with pytest.raises(TaskCycleError):
        make_plan(tg)


def test_unknown_task_is_a_typed_error() -> None:
    tg = TaskGraph()
    a = tg.host("a", lambda: None)
    a.precede("nope")
    with pytest.raises(UnknownTaskError, match="nope"):
        tg.validate()
    other = TaskGraph().host("z", lambda: None)
    with pytest.raises(UnknownTaskError):
        a.precede(other)
    with pytest.raises(SchedulerError, match="already has"):
        tg.host("a", lambda: None)


def test_named_dependencies_resolve() -> None:
    tg = TaskGraph()
    tg.host("a", lambda: None)
    tg.host("b", lambda: None).succeed("a")
    assert tg.validate() == [0, 1] and tg.edges() == [(0, 1)]


def test_a_graph_rebuilt_from_kept_specs_and_bulk_edges_plans_the_same() -> None:
    # what the CUDA backend's streams mode does after a mutation: the same spec objects,
    # the edges in one connect() call
    tg = diamond()
    again = TaskGraph("diamond")
    for spec in tg.specs:
        again.add(spec)
    src, dst = zip(*tg.edges(), strict=True)
    again.connect(src, dst)
    assert again.edges() == tg.edges() and again.validate() == tg.validate()
    bufs = buffers()
    run_sim(make_plan(again, streams=2), bufs, max_delay_s=1e-3)
    np.testing.assert_array_equal(bufs["d"], 7.0)
    assert again.specs[0] is tg.specs[0]
    with pytest.raises(SchedulerError, match="already has"):
        again.add(tg.specs[0])
    with pytest.raises(SchedulerError, match="outside"):
        again.connect([0], [4])
    with pytest.raises(SchedulerError, match="2 sources but 1 targets"):
        again.connect([0, 1], [2])
    assert again.edges() == tg.edges()  # a refused connect adds nothing
    with pytest.raises(SchedulerError, match="not callable"):
        TaskGraph().add(dataclasses.replace(tg.specs[0], name="z", fn=None))


SAXPY = KernelSpec("scheduler.cu", "saxpy", ("float", "const float*", "float*", "unsigned int"),
                   grouped=True)


def test_kernel_arguments_are_checked_before_launch() -> None:
    tg = TaskGraph()
    ok = (np.float32(2), Buf("x"), Buf("y"), np.uint32(8))
    tg.launch("ok", SAXPY, *ok, grid=1, block=32)
    with pytest.raises(KernelArgumentError, match=r"np\.float32, got float"):
        tg.launch("f", SAXPY, 2.0, Buf("x"), Buf("y"), np.uint32(8), grid=1, block=32)
    with pytest.raises(KernelArgumentError, match=r"np\.uint32, got int"):
        tg.launch("i", SAXPY, np.float32(2), Buf("x"), Buf("y"), 8, grid=1, block=32)
    with pytest.raises(KernelArgumentError, match="must be a Buf"):
        tg.launch("p", SAXPY, np.float32(2), 1234, Buf("y"), np.uint32(8), grid=1, block=32)
    with pytest.raises(KernelArgumentError, match="takes 4"):
        tg.launch("n", SAXPY, np.float32(2), grid=1, block=32)
    with pytest.raises(KernelArgumentError, match="not supported"):
        KernelSpec("f.cu", "k", ("struct foo",))
    with pytest.raises(KernelArgumentError, match=r"np\.float32, got float"):  # add() too
        tg.add(dataclasses.replace(tg.specs[0], name="copy", args=(2.0, *ok[1:])))
    assert len(tg) == 1


@pytest.mark.parametrize(
    ("grid", "block", "shmem", "match"),
    [
        (1, 1025, 0, "block.x"),
        (1, (32, 32, 2), 0, "threads"),
        (1, (1, 1, 65), 0, "block.z"),
        ((1, 65536), 32, 0, "grid.y"),
        (2**31, 32, 0, "grid.x"),
        (0, 32, 0, "grid.x"),
        (1, 32, 48 * 1024 + 1, "shared memory"),
        ((1, 1, 1, 1), 32, 0, "1 to 3"),
    ],
)
def test_launch_config_past_limits_is_a_typed_error(grid, block, shmem, match) -> None:
    with pytest.raises(LaunchConfigError, match=match):
        TaskGraph().launch("k", SAXPY, np.float32(1), Buf("x"), Buf("y"), np.uint32(1),
                           grid=grid, block=block, shmem_bytes=shmem)


def test_launch_shape_pads_dims() -> None:
    assert LaunchShape.of(4, (128, 2)) == LaunchShape((4, 1, 1), (128, 2, 1), 0)


def test_launch_shapes_are_remembered_and_lists_and_bad_shapes_still_work() -> None:
    assert LaunchShape.of((4, 2), 128) is LaunchShape.of((4, 2), 128)  # made once
    assert LaunchShape.of([4, 2], [128]) == LaunchShape.of((4, 2), 128)  # unhashable dims
    for _ in range(2):  # a shape past the limits raises every time, never remembered
        with pytest.raises(LaunchConfigError, match=r"block\.x"):
            LaunchShape.of(1, 1025)


def test_fusion_groups_same_level_same_key() -> None:
    tg = TaskGraph()
    src = tg.host("src", lambda: None)
    ks = [tg.host(f"k{i}", lambda: None, fuse_key="k") for i in range(5)]
    other = tg.host("o", lambda: None, fuse_key="other")
    src.precede(*ks, other)
    plan = make_plan(tg, streams=2, fuse=True)
    assert [len(lau.tasks) for lau in plan.launches] == [1, 5, 1]
    assert plan.launches[1].preds == (0,)
    nofuse = make_plan(tg, streams=2, fuse=False)
    assert len(nofuse.launches) == 7


def test_fusion_needs_grouped_kernel_and_same_shape() -> None:
    tg = TaskGraph()
    args = (np.float32(1), Buf("x"), Buf("y"), np.uint32(1))
    plain = dataclasses.replace(SAXPY, grouped=False)
    tg.launch("a", SAXPY, *args, grid=2, block=64)
    tg.launch("b", SAXPY, *args, grid=2, block=64)
    tg.launch("c", SAXPY, *args, grid=3, block=64)  # other shape
    tg.launch("d", plain, *args, grid=2, block=64)  # no grouped variant
    tg.launch("e", SAXPY, *args, grid=(2, 2), block=64)  # 2-D grid: y is taken
    plan = make_plan(tg, streams=1, fuse=True)
    assert sorted(len(lau.tasks) for lau in plan.launches) == [1, 1, 1, 2]


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        make_plan(diamond(), streams=0)
    with pytest.raises(ConfigError):
        make_plan(diamond(), policy="fastest")  # type: ignore[arg-type]


def test_observer_gets_one_record_per_launch_after_the_run() -> None:
    col = Collector()
    plan = make_plan(diamond(), streams=2, policy="round_robin")
    run_sim(plan, buffers(), observer=col)
    run_serial(plan, buffers(), observer=col)
    sim, serial = col.runs
    assert [r.tasks for r in sim] == [("a",), ("b",), ("c",), ("d",)]
    assert [r.stream for r in sim] == [0, 0, 1, 0]
    assert sim[2].waited == plan.launches[2].waits
    assert all(r.dur_us >= 0 and r.start_us >= 0 for r in sim + serial)
    assert {r.executor for r in serial} == {"serial"}


def test_missing_buffer_and_missing_ref_are_scheduler_errors() -> None:
    with pytest.raises(SchedulerError, match="no buffer bound to 'x'"):
        run_serial(make_plan(diamond()), {"a": np.zeros(4)})
    tg = TaskGraph()
    tg.launch("k", SAXPY, np.float32(1), Buf("x"), Buf("y"), np.uint32(1), grid=1, block=32)
    with pytest.raises(SchedulerError, match="no host reference"):
        run_serial(make_plan(tg), {"x": np.zeros(1), "y": np.zeros(1)})


def test_sim_reports_task_exceptions() -> None:
    tg = TaskGraph()
    tg.host("boom", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_sim(make_plan(tg), {})


def test_dot_exports() -> None:
    tg = diamond()
    assert '"a" -> "b";' in tg.to_dot()
    dot = make_plan(tg, streams=2, policy="round_robin").to_dot()
    assert "cluster_s1" in dot and "style=dashed" in dot


def test_critical_path_keeps_a_chain_on_one_stream() -> None:
    tg = TaskGraph()
    chain = [tg.host(f"c{i}", lambda: None) for i in range(10)]
    for x, y in itertools.pairwise(chain):
        x.precede(y)
    side = [tg.host(f"s{i}", lambda: None) for i in range(6)]
    chain[0].precede(*side)
    plan = make_plan(tg, streams=4, policy="critical_path")
    where = plan.task_launch()
    assert len({plan.launches[where[i]].stream for i in range(10)}) == 1
    assert len({plan.launches[where[10 + i]].stream for i in range(6)}) > 1


def test_replanning_after_a_change_sees_the_change() -> None:
    """Planning caches what it derives from a task graph; adding a task or an edge must
    invalidate it: the re-plan equals the plan of a graph built with the change from the
    start."""

    def build(extra: bool) -> TaskGraph:
        tg = diamond()
        if extra:
            e = tg.host("e", copy_add, Buf("e"), Buf("d"), 1.0, fuse_key="k")
            tg.task("a").precede(e)
            tg.task("d").precede("e")
        return tg

    for policy, fuse in itertools.product(("round_robin", "critical_path", "random"),
                                          (False, True)):
        tg = build(False)
        first = make_plan(tg, streams=3, policy=policy, fuse=fuse)
        assert make_plan(tg, streams=3, policy=policy, fuse=fuse) == first  # cached: same
        order = tg.validate()
        order.append(99)  # validate() hands out a copy
        assert tg.validate() == order[:-1]
        e = tg.host("e", copy_add, Buf("e"), Buf("d"), 1.0, fuse_key="k")
        tg.task("a").precede(e)
        tg.task("d").precede("e")  # by name: resolved at the next validate
        again = make_plan(tg, streams=3, policy=policy, fuse=fuse)
        fresh = make_plan(build(True), streams=3, policy=policy, fuse=fuse)
        assert again.launches == fresh.launches and again.events == fresh.events
        assert len(again.tasks) == 5


def ordered_edges(tg: TaskGraph, plan) -> bool:
    """Every edge of ``tg`` happens-before in ``plan`` (stream order plus waits), by vector
    clocks walked here independently of the planner: O(launches x streams)."""
    s = plan.num_streams
    last = [-1] * s  # per stream: its last launch so far
    clock = np.zeros((len(plan.launches), s), np.int64)  # 1 + last launch known per stream
    for lau in plan.launches:
        c = clock[last[lau.stream]].copy() if last[lau.stream] >= 0 else np.zeros(s, np.int64)
        for e in lau.waits:
            u = plan.events[e].launch
            np.maximum(c, clock[u], out=c)
        c[lau.stream] = lau.id + 1
        clock[lau.id] = c
        last[lau.stream] = lau.id
    where = plan.task_launch()
    return all(clock[where[v], plan.launches[where[u]].stream] > where[u]
               for u, v in tg.edges())


@pytest.mark.parametrize("n", [100, 300, 40_000])
def test_a_replan_reads_the_clocks_of_any_size_of_plan(n) -> None:
    """A whole plan keeps its clocks packed (fields of 1, 2 or 4 bytes as the launch count
    needs); the first re-plan after it unpacks them (_replan, not a whole plan again). Below
    and past 255 and 32,767 launches, the re-plan of a graph with one task more, between
    two tasks far apart, orders every edge."""
    rng = np.random.default_rng(n)
    tg = TaskGraph(f"n{n}")
    tasks = [tg.host(f"t{i}", copy_add, Buf("x"), Buf("x"), 0.0) for i in range(n)]
    src = np.arange(1, n) - 1 - rng.integers(0, 30, n - 1).clip(max=np.arange(n - 1))
    tg.connect(src, np.arange(1, n))
    plan = make_plan(tg, streams=3, policy="random", seed=1)
    assert plan.events and ordered_edges(tg, plan)
    again = TaskGraph(f"n{n}+1")
    for spec in tg.specs:
        again.add(spec, checked=True)
    new = again.host("new", copy_add, Buf("x"), Buf("x"), 0.0)
    u, v = tasks[n // 3].index, tasks[2 * n // 3].index
    again.connect([*src, u, new.index], [*np.arange(1, n), new.index, v])
    replan = make_plan(again, streams=3, previous=plan)
    assert isinstance(replan.memo, _Memo)  # planned as a change
    assert replan.launches[replan.task_launch()[new.index]].preds  # placed after tasks[u]
    assert ordered_edges(again, replan)
