"""Benchmark of streamdag.scheduler: planning time (CPU) and per-task cost on the GPU.

Planning: ``make_plan`` on random DAGs of 16,384 tasks (each task 2 predecessors drawn
from the previous 200; "chain": plus an edge from its immediate predecessor), 8 streams,
every policy, fused or not; best of 5, gc as the library leaves it. A task graph keeps what
planning derives from it alone (validation, launches, costs) until a task or dependency is
added, so these are re-plans of an unchanged graph (each also frees the plan before it).
"first plan": best of 3 first plans, each of a freshly built copy of the graph.

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


def markdown(planning: list[dict[str, Any]], gpu: dict[str, Any] | None) -> str:
    lines = [f"Measured {datetime.date.today()} on {platform.node()} "
             f"({platform.processor() or platform.machine()}), Python {platform.python_version()}.",
             "", "| DAG (16,384 tasks) | policy | fused | re-plan ms (unchanged graph) "
             "| first plan ms | launches | events |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dag']} ({r['edges']} edges) | {r['policy']} | {r['fuse']} | {r['plan_ms']} "
              f"| {r['first_plan_ms']} | {r['launches']} | {r['events']} |" for r in planning]
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
    for r in planning:
        print(r, flush=True)
    gpu = bench_gpu() if args.gpu else None
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"planning": planning, "gpu": gpu, "numpy": np.__version__}, f, indent=1)
    md = markdown(planning, gpu)
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
