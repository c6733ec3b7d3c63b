"""Per-batch cost of growing at a dag-bench preset on the GPU (a development probe).

Usage (GPU machine, repo root):
``python3 tools/mutation_probe.py [PRESET] [BATCHES] [MODE]`` (default M, 30, persistent).
For each batch of 8 duplications (``mutation_batch(graph, 1000 + r)``, as
``streamdag bench --mutation-presets`` draws them): the time to apply it on the host, the
backend's catch-up (``on_mutation``: the replay and the tables built on the device), the
first step after it, the depth repairs run in all that (with the seeds they started from;
none when the tables go in the graph's flow order), whether the tables went level by level,
and the device buffers allocated. Then the medians; in ``auto`` mode, then the steps until
the network counts as settled, and the step that settles it (see ``settle``). The process
keeps freed host memory, as the ``streamdag`` command does. See docs/cuda-backend.md ("The
cost of a mutation batch").
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from streamdag.backends.cuda import CudaBackend
from streamdag.bench.dagbench import build_workload, mutation_batch, resolve_spec
from streamdag.graph import NetworkGraph
from streamdag.hostmem import retain_freed_memory
from streamdag.mutation import MutationQueue


def main(preset: str = "M", batches: int = 30, mode: str = "persistent") -> None:
    retain_freed_memory()
    work = build_workload(resolve_spec(preset))
    g, p = work.graph, work.params
    backend = CudaBackend(mode=mode)
    for _ in range(5):
        backend.step(g, p, work.x, work.y, lr=0.01)
    backend.synchronize()
    allocs: list[str] = []
    alloc = backend._alloc

    def logged_alloc(name: str, nbytes: int) -> Any:
        allocs.append(name)
        return alloc(name, nbytes)

    repairs: list[int] = []  # the seeds of each depth repair
    repair = NetworkGraph._repair_depths

    def counted(self: NetworkGraph) -> None:
        repairs.append(len(self._depth_seeds))
        repair(self)

    backend._alloc = logged_alloc  # type: ignore[method-assign]
    NetworkGraph._repair_depths = counted  # type: ignore[method-assign]
    rows = []
    for r in range(batches):
        batch = mutation_batch(g, 1000 + r)
        backend.synchronize()
        allocs.clear()
        repairs.clear()
        t0 = time.perf_counter()
        queue = MutationQueue()
        queue.extend(batch)
        report = queue.apply(g, p)
        t1 = time.perf_counter()
        backend.on_mutation(g, p, report)
        backend.synchronize()
        t2 = time.perf_counter()
        backend.step(g, p, work.x, work.y, lr=0.01)
        backend.synchronize()
        t3 = time.perf_counter()
        backend.step(g, p, work.x, work.y, lr=0.01)  # an ordinary step between batches
        ms = [1e3 * (t3 - t0), 1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2)]
        rows.append(ms)
        print(f"{r:3d} total {ms[0]:6.2f} apply {ms[1]:5.2f} catch-up {ms[2]:5.2f} "
              f"step {ms[3]:5.2f} ms; depth repairs {len(repairs)} (seeds {sum(repairs)}); "
              f"by level {backend._tables.by_level}; allocated {allocs}",
              flush=True)
    if mode in ("graph", "fused") or getattr(backend, "active_mode", "") == "graph":
        print(f"graph captures that updated the executable graph in place: "
              f"{getattr(backend, '_graph_updates', 'n/a')} of {batches}")
    med = np.median(np.array(rows), axis=0)
    print(f"median: total {med[0]:.2f} apply {med[1]:.2f} catch-up {med[2]:.2f} "
          f"step {med[3]:.2f} ms")
    if mode == "auto":
        settle(backend, g, p, work.x, work.y)


def settle(backend: CudaBackend, g: NetworkGraph, p: Any, x: Any, y: Any) -> None:
    """``auto`` mode after the last batch: the steps while it still counts as growing, the
    step that ends that phase (its tables rebuilt, maybe level by level, and the mode chosen
    again: a graph capture) and the steps after it, each timed from an idle device."""

    def timed() -> float:
        backend.synchronize()
        t0 = time.perf_counter()
        backend.step(g, p, x, y, lr=0.01)
        backend.synchronize()
        return 1e3 * (time.perf_counter() - t0)

    growing = []
    while backend.growing:  # the last of these is the step that settles
        mode = backend.active_mode
        growing.append(timed())
    after = [timed() for _ in range(30)]
    print(f"auto: {len(growing) - 1} more steps growing ({mode}, median "
          f"{np.median(growing[:-1]):.3f} ms), the settling step {growing[-1]:.2f} ms, then "
          f"{backend.active_mode} (median {np.median(after):.3f} ms; by level "
          f"{backend._tables.by_level})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "M",
         int(sys.argv[2]) if len(sys.argv) > 2 else 30,
         sys.argv[3] if len(sys.argv) > 3 else "persistent")
