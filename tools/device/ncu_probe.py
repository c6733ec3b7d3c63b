"""Two steps of the persistent and fused modes at dag-bench M, for ncu_probe.sh to profile."""

from __future__ import annotations

from streamdag.backends.cuda import CudaBackend
from streamdag.bench.dagbench import build_workload, resolve_spec

work = build_workload(resolve_spec("M"))
for mode in ("persistent",):
    backend = CudaBackend(mode=mode)
    g, p = work.graph.copy(), work.params.copy()
    for _ in range(2):
        print(mode, backend.step(g, p, work.x, work.y, lr=0.01).loss)
