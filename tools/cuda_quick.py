"""Quick look at the CUDA backend on dag-bench presets: step time per mode, mutation cost,
device memory. Not the benchmark (``streamdag bench`` is); a development probe.

    python tools/cuda_quick.py S M L
    python tools/cuda_quick.py --float64 S M    # the modes with float64 kernels, in float64
"""

from __future__ import annotations

import sys
import time

import numpy as np

from streamdag.backends.cuda import CudaBackend
from streamdag.bench.dagbench import build_workload, mutation_batch, resolve_spec
from streamdag.mutation import apply_mutations
from streamdag.params import ParamStore


def phases(b: CudaBackend, g, p, x, y, reps: int = 20) -> str:
    """Median ms of each phase of a persistent step, timed with CUDA events (a probe: it
    calls the backend's internals and trains the copy it is given)."""
    from streamdag import driver

    _ = b.step(g, p, x, y, lr=0.01).loss
    batch = len(y)
    out = {}
    for name, fn in [("fwd", lambda: b._launch_persistent(batch, forward_only=True)),
                     ("fwd+bwd+update", lambda: b._launch_persistent(batch, forward_only=False)),
                     ("update", lambda: b._launch_update(b.stream, batch))]:
        ts = []
        for _ in range(reps):
            e0, e1 = b.gpu.event(timing=True), b.gpu.event(timing=True)
            driver.record(b.stream, e0)
            fn()
            driver.record(b.stream, e1)
            ts.append(driver.elapsed_ms(e0, e1))
        out[name] = float(np.median(ts))
    return ", ".join(f"{k} {v:.3f} ms" for k, v in out.items())


def task_trace(b: CudaBackend, g, p, x, y) -> str:
    """Per-task wait and compute time of block 0 in one persistent step (clock64 probe)."""
    t = b._tables
    n = t.n_nodes
    b._bufs["trace"] = b.gpu.alloc(8 * 8 * n)
    b.gpu.memset(b._bufs["trace"], 0)
    _ = b.step(g, p, x, y, lr=0.01).loss
    tr = np.zeros((2 * n, 4), np.int64)
    b.gpu.download(b._bufs.pop("trace"), tr)
    ghz = 1.98e3  # cycles per microsecond at the H100's boost clock
    out = []
    for name, rows in (("fwd", tr[1 : n - 1]), ("bwd", tr[n + 1 : 2 * n - 1])):
        rows = rows[rows[:, 0] > 0]
        wait = (rows[:, 1] - rows[:, 0]) / ghz
        comp = (rows[:, 2] - rows[:, 1]) / ghz
        span = (rows[:, 2].max() - rows[:, 0].min()) / ghz
        out.append(f"{name}: {len(rows)} tasks, span {span:.0f} us, compute median "
                   f"{np.median(comp):.2f} us p90 {np.percentile(comp, 90):.2f}, wait median "
                   f"{np.median(wait):.2f} us p90 {np.percentile(wait, 90):.2f}")
    return "; ".join(out)


def in_dtype(p: ParamStore, dtype: type) -> ParamStore:
    """A copy of ``p`` with its values in ``dtype``."""
    return ParamStore.from_state_dict({k: v.astype(dtype) if v.dtype.kind == "f" else v
                                       for k, v in p.state_dict().items()})


def main(presets: list[str], dtype: type = np.float32) -> None:
    f64 = dtype is np.float64
    for preset in presets:
        work = build_workload(resolve_spec(preset))
        print(f"== {preset}: {len(work.graph)} groups, {work.n_levels} levels, "
              f"batch {len(work.y)}, {np.dtype(dtype)}", flush=True)
        ref = None
        for mode, bwd, rows, flow, threads in [("persistent", "pull", None, True, 512),
                                               ("persistent", "pull", None, False, 512),
                                               ("graph", "pull", None, True, 512),
                                               ("graph", "push", None, True, 512),
                                               ("streams", "pull", None, True, 512),
                                               ("streams-graph", "pull", None, True, 512)]:
            if (f64 and not mode.startswith("streams")) or (not f64 and mode == "streams-graph"):
                continue  # float64: only the streams modes can; float32: one is enough
            g, p = work.graph.copy(), in_dtype(work.params, dtype)
            b = CudaBackend(mode=mode, backward=bwd, rows_per_block=rows, dataflow=flow,
                            step_threads=threads, dtype=dtype)
            losses = [b.step(g, p, work.x, work.y, lr=0.01).loss for _ in range(3)]
            if ref is None:
                ref = losses
            n = (30 if preset != "L" else 10) if not mode.startswith("streams") else 3
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = b.step(g, p, work.x, work.y, lr=0.01)
                _ = r.loss  # synchronise
                times.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            for _ in range(n):
                r = b.step(g, p, work.x, work.y, lr=0.01)
            _ = r.loss
            pipelined = (time.perf_counter() - t0) * 1e3 / n
            muts = mutation_batch(g, 1)
            t0 = time.perf_counter()
            t1 = time.perf_counter()  # no sync: the device replays the batch (as the trainer)
            rep = apply_mutations(g, p, muts, step=0)
            t2 = time.perf_counter()
            b.on_mutation(g, p, rep)
            t3 = time.perf_counter()
            _ = b.step(g, p, work.x, work.y, lr=0.01).loss
            t4 = time.perf_counter()
            mut_ms = (t4 - t0) * 1e3
            parts = f"(apply {1e3 * (t2 - t1):.1f}, device update (replay + tables) " \
                    f"{1e3 * (t3 - t2):.1f}, step {1e3 * (t4 - t3):.1f})"
            mem = b.memory_report()
            if mode == "persistent" and flow and preset != "L":
                print("   phases:", phases(b, g, p, work.x, work.y), flush=True)
                print("   tasks:", task_trace(b, g, p, work.x, work.y), flush=True)
            print(f"{mode:10s} {bwd:4s} rows={rows} dataflow={flow} threads={threads} "
                  f"losses {[f'{v:.6f}' for v in losses]} "
                  f"(rel vs first mode {abs(losses[2] - ref[2]) / ref[2]:.2e}) "
                  f"step median {np.median(times):.3f} ms p10 {np.percentile(times, 10):.3f} "
                  f"p90 {np.percentile(times, 90):.3f}; pipelined {pipelined:.3f} ms/step; "
                  f"8 dups + step {mut_ms:.2f} ms {parts}; device MiB {mem['total'] / 2**20:.1f} "
                  f"needed {mem['needed'] / 2**20:.1f}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main([a for a in args if a != "--float64"] or ["S", "M"],
         np.float64 if "--float64" in args else np.float32)
