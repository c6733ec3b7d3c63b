"""Steady steps of ``persistent`` against ``graph`` over DAG shapes: what ``auto``'s settled
rule (``streamdag.backends.cuda.auto_mode``) was fitted to. A development probe.

Usage (GPU machine, repo root): ``python3 tools/auto_probe.py`` prints, per shape, the
levels, each mode's best-of-3 median step (30 steps from an idle device, CUDA events), their
ratio (> 1: graph faster), the time of a step that captures the graph anew, and whether the
two modes' first 5 losses are bitwise equal.
"""

from __future__ import annotations

import time

import numpy as np

from streamdag import driver
from streamdag.backends.cuda import CudaBackend
from streamdag.bench.dagbench import build_workload, resolve_spec

SHAPES = [dict(groups=48, window=8, batch=64), dict(groups=256), dict(groups=1024),
          dict(groups=4096), dict(groups=16384),
          *[dict(groups=g, window=w) for g in (1024, 4096) for w in (8, 16, 32)],
          dict(groups=1024, levels=128, window=1024), dict(groups=1024, levels=64, window=1024),
          *[dict(groups=g, width=w) for g in (1024, 4096) for w in (8, 12, 20, 24, 28, 32, 40)]]


def timed(b: CudaBackend, g, p, w, n: int) -> float:
    ts = []
    for _ in range(n):
        b.synchronize()
        e0, e1 = b.gpu.event(timing=True), b.gpu.event(timing=True)
        driver.record(b.stream, e0)
        b.step(g, p, w.x, w.y, lr=0.01)
        driver.record(b.stream, e1)
        b.synchronize()
        ts.append(driver.elapsed_ms(e0, e1))
    return float(np.median(ts))


def main() -> None:
    for shape in SHAPES:
        w = build_workload(resolve_spec("S", **shape))
        res, losses = {}, {}
        for mode in ("persistent", "graph"):
            g, p = w.graph.copy(), w.params.copy()
            b = CudaBackend(mode=mode)
            losses[mode] = [b.step(g, p, w.x, w.y, lr=0.01).loss for _ in range(5)]
            res[mode] = min(timed(b, g, p, w, 30) for _ in range(3))
            if mode == "graph":
                caps = []
                for _ in range(3):  # a step that captures and instantiates the graph again
                    b.synchronize()
                    b._graph_key = b._graph_exe = None
                    t0 = time.perf_counter()
                    _ = b.step(g, p, w.x, w.y, lr=0.01).loss
                    caps.append((time.perf_counter() - t0) * 1e3 - res["graph"])
                res["capture"] = float(np.median(caps))
            levels = b._tables.n_levels - 2
        print(f"{shape}: {levels} levels ({len(w.graph) / max(levels, 1):.1f} a level) "
              f"persistent {res['persistent']:.3f} ms, graph {res['graph']:.3f} ms, ratio "
              f"{res['persistent'] / res['graph']:.3f}; capture {res['capture']:.1f} ms; "
              f"losses bitwise equal {losses['persistent'] == losses['graph']}", flush=True)


if __name__ == "__main__":
    main()
