"""Benchmark of streamdag.scheduler: planning time (CPU) and per-task cost on the GPU.

Planning: ``make_plan`` on random DAGs of 16,384 tasks (each task 2 predecessors drawn
from the previous 200; "chain": plus an edge from its immediate predecessor), 8 streams,
every policy, fused or not; best of 5, gc as the library leaves it. A task graph keeps what
planning derives from it alone (validation, launches, costs) until a task or dependency is
added, so these are re-plans of an unchanged graph (each also frees the plan before it).
"first plan": best of 3 first plans, each of a freshly built copy of the graph.
After a change (``bench_change``): a training step's shape at 4,096 groups, re-planned
after each of 6 batches of 8 depth duplications from the plan before, against a whole plan.

GPU (``--gpu``): DAGs of empty kernels, ``chain`` (n tasks in a line) and ``wide`` (levels
of 64 tasks, each depending on 2 random tasks of the previous level), n = 1,024 and
16,384, run by the cuda executor in streams mode (1 and 4 streams, critical_path) and in
graph mode. Per-task cost = wall time of R back-to-back runs (queued without sync, then one
sync) / (R * n), after one warm-up run. Floors: one empty launch (10,000 back to back on one
stream, per launch) and a one-node graph (2,000 replays, per replay). Also graph
instantiation and in-place update per node.

Usage: ``python tools/bench_scheduler.py [--gpu] [--json out.json] [--md out.md]``
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import random
import time
from typing import Any

import numpy as np

from streamdag.scheduler import TaskGraph, make_plan


def random_dag(n: int, kind: str, host: bool = True, seed: int = 1) -> TaskGraph:
    rng = random.Random(seed)
    tg = TaskGraph(f"{kind}-{n}")
    if host:
        ts = [tg.host(f"t{i}", _noop, fuse_key="k") for i in range(n)]
    else:
        from streamdag.scheduler.stdkernels import EMPTY

        ts = [tg.launch(f"t{i}", EMPTY, grid=1, block=32) for i in range(n)]
    if kind in ("chain", "random-chain"):
        for a, b in itertools.pairwise(ts):
            a.precede(b)
    if kind.startswith("random"):
        for i in range(1, n):
            for _ in range(2):
                ts[rng.randrange(max(0, i - 200), i)].precede(ts[i])
    if kind == "wide":
        width = 64
        for i in range(width, n):
            lvl = i // width
            for _ in range(2):
                ts[(lvl - 1) * width + rng.randrange(width)].precede(ts[i])
    return tg


def _noop(*_: Any) -> None:
    pass


def bench_planning() -> list[dict[str, Any]]:
    rows = []
    for kind in ("random", "random-chain"):
        tg = random_dag(16384, kind)
        edges = len(tg.edges())
        for policy in ("round_robin", "critical_path", "random"):
            for fuse in (False, True):
                best = float("inf")
                for _ in range(5):
                    t0 = time.perf_counter()
                    plan = make_plan(tg, streams=8, policy=policy, fuse=fuse)  # type: ignore[arg-type]
                    best = min(best, time.perf_counter() - t0)
                rows.append({"dag": kind, "tasks": 16384, "edges": edges, "policy": policy,
                             "fuse": fuse, "plan_ms": round(best * 1e3, 1),
                             "launches": len(plan.launches), "events": len(plan.events)})
    del tg, plan
    # first plans last: building a graph for each would perturb the timings above
    for row in rows:
        first = float("inf")
        for _ in range(3):
            fresh = random_dag(16384, row["dag"])
            t0 = time.perf_counter()
            first_plan = make_plan(fresh, streams=8, policy=row["policy"], fuse=row["fuse"])
            first = min(first, time.perf_counter() - t0)
            assert len(first_plan.events) == row["events"]
            del first_plan  # not while the next is timed
        row["first_plan_ms"] = round(first * 1e3, 1)
    return rows


def step_graph(fwd: list[tuple[int, int]], specs: dict[str, Any], tag: str) -> TaskGraph:
    """A training step's shape: forward tasks on the edges ``fwd``, the backward mirrored,
    an update after every backward task. Tasks named in ``specs`` reuse that spec (as the
    CUDA backend's ``streams`` mode rebuilds its step graph after a mutation batch)."""
    f = 1 + max(max(e) for e in fwd)
    tg = TaskGraph(tag)
    for name in [f"f{i}" for i in range(f)] + [f"b{i}" for i in range(f)] + ["update"]:
        kept = specs.get(name)
        if kept is not None and name != "update":
            tg.add(kept, checked=True)
        else:
            tg.host(name, _noop, f)  # the update's arguments hold a size: a new spec
        specs[name] = tg.specs[-1]
    edges = fwd + [(f + v, f + u) for u, v in fwd] + [(f + v, 2 * f) for v in range(f)]
    src, dst = zip(*edges, strict=True)
    tg.connect(src, dst)
    return tg


def bench_change(groups: int = 4096, batches: int = 6) -> list[dict[str, Any]]:
    """Re-plan after a change: a step graph of ``groups`` forward tasks (2 predecessors
    among the previous 64) planned on 4 streams (critical_path), then ``batches`` batches
    of 8 depth duplications (a new forward task after a random one, taking over its
    out-edges, and its backward task; the update replaced), each re-planned from the plan
    before (``previous=``) and, for comparison, planned whole."""
    rng = random.Random(1)
    fwd = [(rng.randrange(max(0, v - 64), v), v) for v in range(1, groups) for _ in range(2)]
    specs: dict[str, Any] = {}
    plan = make_plan(step_graph(fwd, specs, "step-0"), streams=4, policy="critical_path")
    rows = []
    for b in range(1, batches + 1):
        f = 1 + max(max(e) for e in fwd)
        for i in range(8):
            g, new = rng.randrange(f - 1), f + i
            fwd = [(new if u == g else u, v) for u, v in fwd] + [(g, new)]
        t0 = time.perf_counter()
        tg = step_graph(fwd, specs, f"step-{b}")
        t1 = time.perf_counter()
        plan = make_plan(tg, streams=4, policy="critical_path", previous=plan)
        t2 = time.perf_counter()
        whole = make_plan(tg, streams=4, policy="critical_path")
        t3 = time.perf_counter()
        rows.append({"batch": b, "tasks": len(tg), "graph_ms": round((t1 - t0) * 1e3, 1),
                     "replan_ms": round((t2 - t1) * 1e3, 1),
                     "whole_ms": round((t3 - t2) * 1e3, 1),
                     "replan_waits": sum(len(lau.waits) for lau in plan.launches),
                     "whole_waits": sum(len(lau.waits) for lau in whole.launches)})
    return rows


def bench_gpu() -> dict[str, Any]:
    from streamdag import driver, kernels
    from streamdag.scheduler import CudaExecutor

    gpu = driver.Gpu(0)
    mod = kernels.load("scheduler.cu", gpu)
    empty = gpu.kernel(mod, "empty")
    s = gpu.stream()
    cfg = driver.launch_config((1, 1, 1), (32, 1, 1), 0)
    launch = driver.launcher()  # the raw cuda.core launch, as the executor's hot loop uses it
    out: dict[str, Any] = {"gpu": gpu.name, "arch": gpu.arch}

    for _ in range(100):
        launch(s, cfg, empty)
    s.sync()
    reps = 10000
    t0 = time.perf_counter()
    for _ in range(reps):
        launch(s, cfg, empty)
    s.sync()
    out["floor_launch_us"] = round((time.perf_counter() - t0) / reps * 1e6, 2)

    gd = driver.graph_definition()
    driver.graph_kernel_node(gd, [], cfg, empty)
    g1 = driver.instantiate(gd)
    for _ in range(100):
        driver.graph_launch(g1, s)
    s.sync()
    reps = 2000
    t0 = time.perf_counter()
    for _ in range(reps):
        driver.graph_launch(g1, s)
    s.sync()
    out["floor_graph_1node_us"] = round((time.perf_counter() - t0) / reps * 1e6, 2)

    rows = []
    for kind in ("chain", "wide"):
        for n in (1024, 16384):
            tg = random_dag(n, kind, host=False)
            for mode, streams in (("streams", 1), ("streams", 4), ("graph", 4)):
                plan = make_plan(tg, streams=streams, policy="critical_path")
                t0 = time.perf_counter()
                ex = CudaExecutor(plan, {}, gpu=gpu, mode=mode)  # type: ignore[arg-type]
                bind_s = time.perf_counter() - t0
                ex.run()
                reps = 3 if (mode == "streams" and n > 2000) else 10
                t0 = time.perf_counter()
                for _ in range(reps):
                    ex.run(sync=False)
                ex.sync()
                per = (time.perf_counter() - t0) / (reps * n) * 1e6
                row = {"dag": kind, "tasks": n, "mode": mode, "streams": streams,
                       "events": len(plan.events), "per_task_us": round(per, 3),
                       "bind_ms": round(bind_s * 1e3, 1)}
                if mode == "graph":
                    t0 = time.perf_counter()
                    ex.update_args({"t0": ()})
                    row["update_per_node_us"] = round((time.perf_counter() - t0) / n * 1e6, 3)
                    row["instantiate_per_node_us"] = round(bind_s / n * 1e6, 3)
                rows.append(row)
                print(row, flush=True)
    out["rows"] = rows
    return out


def markdown(planning: list[dict[str, Any]], change: list[dict[str, Any]],
             gpu: dict[str, Any] | None) -> str:
    lines = [f"Measured {datetime.date.today()} on {platform.node()} "
             f"({platform.processor() or platform.machine()}), Python {platform.python_version()}.",
             "", "| DAG (16,384 tasks) | policy | fused | re-plan ms (unchanged graph) "
             "| first plan ms | launches | events |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dag']} ({r['edges']} edges) | {r['policy']} | {r['fuse']} | {r['plan_ms']} "
              f"| {r['first_plan_ms']} | {r['launches']} | {r['events']} |" for r in planning]
    lines += ["", "After a change (step graph, 8 depth duplications a batch, 4 streams):", "",
              "| batch | tasks | graph rebuilt ms | re-plan ms | whole plan ms | re-plan waits "
              "| whole plan waits |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['tasks']} | {r['graph_ms']} | {r['replan_ms']} "
              f"| {r['whole_ms']} | {r['replan_waits']} | {r['whole_waits']} |" for r in change]
    if gpu:
        lines += ["", f"GPU: {gpu['gpu']} ({gpu['arch']}). Floors: one empty launch "
                  f"{gpu['floor_launch_us']} µs; one-node graph replay "
                  f"{gpu['floor_graph_1node_us']} µs.", "",
                  "| DAG | tasks | mode | streams | events | µs per task | bind ms | "
                  "update µs/node |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['dag']} | {r['tasks']} | {r['mode']} | {r['streams']} | {r['events']} "
                  f"| {r['per_task_us']} | {r['bind_ms']} | {r.get('update_per_node_us', '')} |"
                  for r in gpu["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="also run the GPU benchmark")
    ap.add_argument("--json", help="write all figures as JSON here")
    ap.add_argument("--md", help="write markdown tables here")
    args = ap.parse_args()
    planning = bench_planning()
    change = bench_change()
    for r in planning + change:
        print(r, flush=True)
    gpu = bench_gpu() if args.gpu else None
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"planning": planning, "change": change, "gpu": gpu,
                       "numpy": np.__version__}, f, indent=1)
    md = markdown(planning, change, gpu)
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
