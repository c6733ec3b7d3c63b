"""The CUDA executor against ``serial`` on real kernels (run on a GPU machine).

Random DAGs of ``mix2``/``reduce_mean`` tasks, each writing its own buffer from its
predecessors' buffers, run in streams mode and in graph mode (fused or not, any policy)
and must match the numpy references run serially. Plus graph replay, in-place argument
updates, device-limit checks and observer records.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamdag.errors import BackendError, KernelArgumentError, LaunchConfigError, SchedulerError
from streamdag.scheduler import (
    Buf,
    Collector,
    CudaExecutor,
    DeviceLimits,
    TaskGraph,
    make_plan,
    run_serial,
)
from streamdag.scheduler.stdkernels import MIX2, REDUCE_MEAN, SAXPY

pytestmark = pytest.mark.gpu
N = 2048  # elements per buffer


@pytest.fixture(scope="module")
def gpu():
    from streamdag.driver import Gpu

    return Gpu(0)


def kernel_dag(seed: int, n_tasks: int) -> tuple[TaskGraph, dict[str, np.ndarray]]:
    rng = random.Random(seed)
    gen = np.random.default_rng(seed)
    host = {"x0": gen.standard_normal(N).astype(np.float32)}
    tg = TaskGraph(f"kdag-{seed}")
    tasks = []
    for v in range(n_tasks):
        k = min(v, rng.choice([0, 1, 1, 2, 2, 3]))
        preds = rng.sample(range(max(0, v - 12), v), min(k, v - max(0, v - 12)))
        ins = [f"b{u}" for u in preds] + ["x0", "x0"]
        host[f"b{v}"] = np.zeros(N, np.float32)
        if preds and rng.random() < 0.15:
            t = tg.launch(f"t{v}", REDUCE_MEAN, Buf(ins[0]), Buf(f"b{v}"), np.uint32(N),
                          grid=1, block=256)
        else:
            a, b = np.float32(rng.uniform(0.3, 0.7)), np.float32(rng.uniform(0.3, 0.7))
            t = tg.launch(f"t{v}", MIX2, a, Buf(ins[0]), b, Buf(ins[1]), Buf(f"b{v}"),
                          np.uint32(N), grid=8, block=256)
        tasks.append(t)
        for u in preds:
            tasks[u].precede(t)
    return tg, host


def expected(tg: TaskGraph, host: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    want = {k: v.copy() for k, v in host.items()}
    run_serial(make_plan(tg, streams=1), want)
    return want


def to_device(gpu, host):
    return {k: gpu.to_device(v) for k, v in host.items()}


def check_same(gpu, dev, want) -> None:
    for k, ref in want.items():
        got = gpu.download(dev[k], np.empty_like(ref))
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=f"buffer {k}")


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 200), st.integers(1, 8),
       st.sampled_from(["round_robin", "critical_path", "random"]), st.booleans())
def test_random_kernel_dags_match_serial_in_stream_and_graph_mode(
    gpu, seed, n_tasks, streams, policy, fuse
) -> None:
    tg, host = kernel_dag(seed, n_tasks)
    want = expected(tg, host)
    plan = make_plan(tg, streams=streams, policy=policy, fuse=fuse, seed=seed)
    for mode in ("streams", "graph"):
        dev = to_device(gpu, host)
        ex = CudaExecutor(plan, dev, gpu=gpu, mode=mode)
        ex.run()
        check_same(gpu, dev, want)


def test_fusion_really_fuses_and_matches(gpu) -> None:
    tg, host = kernel_dag(7, 300)
    plan = make_plan(tg, streams=4, fuse=True)
    assert any(lau.fused for lau in plan.launches)
    want = expected(tg, host)
    dev = to_device(gpu, host)
    CudaExecutor(plan, dev, gpu=gpu, mode="streams").run()
    check_same(gpu, dev, want)


def test_graph_replays_100_times_with_the_same_result(gpu) -> None:
    tg, host = kernel_dag(11, 150)
    want = expected(tg, host)
    dev = to_device(gpu, host)
    ex = CudaExecutor(make_plan(tg, streams=4), dev, gpu=gpu, mode="graph")
    for _ in range(100):
        ex.run(sync=False)
    ex.sync()
    check_same(gpu, dev, want)
    for _ in range(20):  # and each single replay too
        ex.run()
    check_same(gpu, dev, want)
    assert ex.instantiations == 1


@pytest.mark.parametrize("fuse", [False, True])
def test_argument_updates_take_effect_without_reinstantiation(gpu, fuse) -> None:
    tg, host = kernel_dag(5, 60)
    host["alt"] = np.full(N, 3.0, np.float32)
    plan = make_plan(tg, streams=3, fuse=fuse)
    dev = to_device(gpu, host)
    ex = CudaExecutor(plan, dev, gpu=gpu, mode="graph")
    ex.run()
    check_same(gpu, dev, expected(tg, host))
    # change scalars and a buffer of a few mix2 tasks, in the executor and (for the
    # reference) in a copy of the task graph built the same way
    changed = {}
    for spec in plan.tasks[:10]:
        if spec.kernel is MIX2:
            _a, _x, b, y, out, n = spec.args
            changed[spec.name] = (np.float32(0.9), Buf("alt"), b, y, out, n)
    assert changed
    ex.update_args(changed)
    ex.run()
    assert ex.instantiations == 1 and ex.updates == 1
    tg2, _ = kernel_dag(5, 60)
    for name, args in changed.items():
        i = tg2.task(name).index
        tg2.specs[i] = dataclasses.replace(tg2.specs[i], args=args)
    check_same(gpu, dev, expected(tg2, host))
    with pytest.raises(KernelArgumentError):
        ex.update_args({next(iter(changed)): (0.9, Buf("alt"), np.float32(1), Buf("x0"),
                                               Buf("b0"), np.uint32(N))})
    with pytest.raises(SchedulerError):
        ex.update_args({"nope": ()})


def test_streams_mode_runs_back_to_back_and_observes(gpu) -> None:
    tg, host = kernel_dag(3, 80)
    want = expected(tg, host)
    dev = to_device(gpu, host)
    col = Collector()
    plan = make_plan(tg, streams=4, policy="round_robin")
    ex = CudaExecutor(plan, dev, gpu=gpu, mode="streams", observer=col)
    for _ in range(10):
        ex.run(sync=False)
    ex.run()
    check_same(gpu, dev, want)
    (records,) = col.runs
    assert len(records) == len(plan.launches)
    assert {r.stream for r in records} == {lau.stream for lau in plan.launches}
    assert all(r.dur_us > 0 and r.start_us >= 0 for r in records)
    for r in records:  # a launch starts after every launch it waited on ended
        for e in r.waited:
            p = records[plan.events[e].launch]
            assert r.start_us >= p.start_us + p.dur_us - 1.0


def test_graph_mode_observes_every_launch(gpu) -> None:
    tg, host = kernel_dag(5, 60)
    want = expected(tg, host)
    dev = to_device(gpu, host)
    col = Collector()
    plan = make_plan(tg, streams=4, fuse=True)
    ex = CudaExecutor(plan, dev, gpu=gpu, mode="graph")
    ex.run()  # unobserved: the plain graph
    ex.observer = col
    ex.run()
    check_same(gpu, dev, want)  # every task overwrites its output: runs are idempotent
    (records,) = col.runs
    assert [r.launch for r in records] == [lau.id for lau in plan.launches]
    assert [r.tasks for r in records] == [
        tuple(plan.tasks[t].name for t in lau.tasks) for lau in plan.launches]
    assert all(r.executor == "cuda-graph" and r.stream == -1 for r in records)
    assert all(r.dur_us > 0 and r.start_us >= 0 for r in records)
    for lau in plan.launches:  # a node starts after each of its dependencies ended
        r = records[lau.id]
        for p in lau.preds:
            assert r.start_us >= records[p].start_us + records[p].dur_us - 1.0
    assert ex.instantiations == 1


@pytest.mark.parametrize("mode", ["streams", "graph"])
def test_a_replanned_graph_takes_over_the_launches_it_shares(gpu, mode) -> None:
    tg, host = kernel_dag(13, 120)
    dev = to_device(gpu, host)
    old = CudaExecutor(make_plan(tg, streams=4), dev, gpu=gpu, mode=mode)
    old.run()
    # the graph grows (the same specs, 10 new tasks reading earlier outputs) and buffer x0
    # moves (same values, a new device buffer): only the new tasks and those naming x0 are
    # bound again, and the result is the grown graph's
    grown = TaskGraph("grown")
    for spec in tg.specs:
        grown.add(spec)
    src, dst = zip(*tg.edges(), strict=True)
    grown.connect(src, dst)
    n = len(tg.specs)
    for j in range(10):
        host[f"new{j}"] = np.zeros(N, np.float32)
        t = grown.launch(f"new{j}", MIX2, np.float32(0.5), Buf(f"b{7 * j}"), np.float32(0.25),
                         Buf(f"b{n - 1 - j}"), Buf(f"new{j}"), np.uint32(N), grid=8, block=256)
        grown.connect([7 * j, n - 1 - j], [t.index, t.index])
    dev2 = {**dev, "x0": gpu.to_device(host["x0"])}
    dev2.update({f"new{j}": gpu.to_device(host[f"new{j}"]) for j in range(10)})
    new = CudaExecutor(make_plan(grown, streams=4), dev2, mode=mode, reuse=old)
    names_x0 = sum(any(a == Buf("x0") for a in spec.args) for spec in tg.specs)
    assert 0 < names_x0 < n and new.rebound == 10 + names_x0
    assert new.gpu is gpu
    new.run()
    check_same(gpu, dev2, expected(grown, host))
    with pytest.raises(SchedulerError, match="replaced"):
        old.run()
    with pytest.raises(SchedulerError, match="replaced already"):
        CudaExecutor(make_plan(grown, streams=4), dev2, mode=mode, reuse=old)


def test_device_limits_are_checked_before_anything_launches(gpu) -> None:
    lim = gpu.limits()
    assert lim.threads_per_block == 1024 and lim.shmem_bytes >= 48 * 1024
    loose = DeviceLimits(shmem_bytes=10**9)
    tg = TaskGraph()
    tg.launch("big", SAXPY, np.float32(1), Buf("x"), Buf("y"), np.uint32(1), grid=1, block=32,
              shmem_bytes=lim.shmem_bytes + 1, limits=loose)
    dev = {"x": gpu.alloc(4), "y": gpu.alloc(4)}
    with pytest.raises(LaunchConfigError, match="shared memory"):
        CudaExecutor(make_plan(tg), dev, gpu=gpu)
    with pytest.raises(SchedulerError, match="no device buffer bound to 'y'"):
        tg2 = TaskGraph()
        tg2.launch("k", SAXPY, np.float32(1), Buf("x"), Buf("y"), np.uint32(1), grid=1,
                   block=32)
        CudaExecutor(make_plan(tg2), {"x": dev["x"]}, gpu=gpu)


def test_upload_many_lands_every_range_or_none(gpu) -> None:
    rng = np.random.default_rng(3)
    bufs = [gpu.alloc(4 * n) for n in (37, 1, 1000)]
    for b in bufs:
        gpu.memset(b, 0)
    parts = [rng.standard_normal(13).astype(np.float32), np.zeros(0, np.float32),
             np.array([7], dtype=np.int32), rng.integers(0, 9, (20, 7)).astype(np.int32)]
    gpu.upload_many([(bufs[0], 4 * 5, parts[0]), (bufs[1], 0, parts[1]), (bufs[1], 0, parts[2]),
                     (bufs[2], 4 * 3, parts[3])])
    got = [gpu.download_range(b, 0, np.empty(b.size // 4, np.float32)) for b in bufs]
    assert np.array_equal(got[0][5:18], parts[0]) and not got[0][18:].any()
    assert np.array_equal(got[1].view(np.int32), parts[2])
    assert np.array_equal(got[2].view(np.int32)[3:143], parts[3].ravel())
    # a range past a buffer's end is refused before anything is copied
    with pytest.raises(BackendError, match="outside a buffer"):
        gpu.upload_many([(bufs[0], 0, np.ones(37, np.float32)), (bufs[1], 0, parts[0])])
    assert np.array_equal(gpu.download_range(bufs[0], 0, np.empty(37, np.float32))[5:18],
                          parts[0])
