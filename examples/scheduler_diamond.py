"""A diamond of kernels run by streamdag.scheduler: serial, sim, CUDA streams, CUDA graph.

    a: y  = 2*x + y          (saxpy)
    b: u  = 0.5*y + 0.25*x   (mix2)      a -> b, a -> c
    c: v  = 0.3*y + 0.7*x    (mix2)
    d: w  = u + v            (mix2)      b -> d, c -> d
    e: m  = mean(w)          (reduce_mean)

Run ``python examples/scheduler_diamond.py`` (CPU executors; the CUDA ones too where a GPU
is present) and ``--dot`` to write the plan's picture next to this file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import numpy as np

from streamdag.scheduler import Buf, TaskGraph, make_plan, run_serial, run_sim
from streamdag.scheduler.stdkernels import MIX2, REDUCE_MEAN, SAXPY

N = 1 << 16
GRID, BLOCK = 64, 256


def build() -> TaskGraph:
    f, n = np.float32, np.uint32(N)
    tg = TaskGraph("diamond")
    a = tg.launch("a", SAXPY, f(2), Buf("x"), Buf("y"), n, grid=GRID, block=BLOCK)
    b = tg.launch("b", MIX2, f(0.5), Buf("y"), f(0.25), Buf("x"), Buf("u"), n,
                  grid=GRID, block=BLOCK)
    c = tg.launch("c", MIX2, f(0.3), Buf("y"), f(0.7), Buf("x"), Buf("v"), n,
                  grid=GRID, block=BLOCK)
    d = tg.launch("d", MIX2, f(1), Buf("u"), f(1), Buf("v"), Buf("w"), n, grid=GRID, block=BLOCK)
    e = tg.launch("e", REDUCE_MEAN, Buf("w"), Buf("m"), n, grid=1, block=256)
    a.precede(b, c)
    d.succeed(b, c)
    d.precede(e)
    return tg


def host_buffers() -> dict[str, np.ndarray]:
    x = np.linspace(0, 1, N, dtype=np.float32)
    bufs = {k: np.zeros(N, np.float32) for k in ("y", "u", "v", "w")}
    bufs["x"], bufs["m"] = x, np.zeros(1, np.float32)
    return bufs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dot", action="store_true", help="write scheduler_diamond.dot (and .png)")
    args = ap.parse_args()
    tg = build()
    plan = make_plan(tg, streams=4, policy="round_robin")
    print(plan.summary())
    for lau in plan.launches:
        names = ",".join(plan.tasks[t].name for t in lau.tasks)
        print(f"  launch {lau.id}: {names:3} stream {lau.stream} waits {lau.waits} "
              f"records {lau.record}")

    ref = host_buffers()
    run_serial(plan, ref)
    sim = host_buffers()
    run_sim(plan, sim, max_delay_s=1e-3)
    print(f"serial mean = {ref['m'][0]:.6f}, sim mean = {sim['m'][0]:.6f}")
    assert np.array_equal(ref["m"], sim["m"])

    try:
        from streamdag.driver import Gpu
        from streamdag.errors import BackendError

        gpu = Gpu(0)
    except BackendError as exc:
        print(f"no GPU here ({str(exc).splitlines()[0][:80]}): CUDA executors skipped")
    else:
        from streamdag.scheduler import CudaExecutor

        for mode in ("streams", "graph"):
            dev = {k: gpu.to_device(v) for k, v in host_buffers().items()}
            CudaExecutor(plan, dev, gpu=gpu, mode=mode).run()  # type: ignore[arg-type]
            m = gpu.download(dev["m"], np.zeros(1, np.float32))
            print(f"cuda {mode} on {gpu.name}: mean = {m[0]:.6f}")
            np.testing.assert_allclose(m, ref["m"], rtol=1e-5)

    if args.dot:
        here = Path(__file__).with_suffix("")
        here.with_suffix(".dot").write_text(plan.to_dot())
        if shutil.which("dot"):
            subprocess.run(["dot", "-Tpng", str(here.with_suffix(".dot")), "-o",
                            str(here.with_suffix(".png"))], check=True)
        print(f"wrote {here.with_suffix('.dot')}")


if __name__ == "__main__":
    main()
