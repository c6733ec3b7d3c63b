"""Trace the growth decisions of a digits training run (a development probe).

Usage: ``python3 tools/growth_trace.py BACKEND [ULPS [DTYPE]]`` trains ``streamdag train
--dataset digits --backend BACKEND --dtype DTYPE`` (the README's run; DTYPE float32 by
default) in a temporary folder and prints, at every step where the policy proposed
mutations, the training loss and the mutations. With ULPS > 0, weights 20..39 of the initial
weight arena (input columns of the first group, pixels that are not always zero) are first
moved up by that many ulps of DTYPE: how far a rounding-sized difference carries. Compare two
runs' output with ``diff``.

What it showed (2026-11-24; docs/cuda-backend.md): the reference with a one-ulp change
diverges from the unchanged reference as the CUDA backend does (losses 1e-7 apart until
step ~150, 1e-4 by step 219, 10% from step ~300) and makes a different 47th mutation, as
the CUDA backend does. In float64 (2026-11-25) the one-ulp change leaves every mutation as
it was: the losses are 1e-14 apart at step 219 and 1e-8 at the last mutation (step 429).
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import numpy as np

import streamdag.growth as growth
import streamdag.params as params
import streamdag.train as train
from streamdag.cli import main as cli_main


def main(backend: str, ulps: int = 0, dtype: str = "float32") -> int:
    initialize = params.ParamStore.initialize.__func__  # type: ignore[attr-defined]

    def perturbed(cls: Any, *args: Any, **kwargs: Any) -> Any:
        p = initialize(cls, *args, **kwargs)
        w = p.arenas()["weight"]
        for _ in range(ulps):
            w[20:40] = np.nextafter(w[20:40], w.dtype.type(np.inf))
        return p

    propose = growth.GrowthPolicy.propose
    apply_queue = train.Trainer._apply_queue
    pending: list[str] = []

    def traced_propose(self: Any, graph: Any, step: int, rng: Any) -> Any:
        out = propose(self, graph, step, rng)
        if out:
            pending[:] = [f"step {step}: " + ", ".join(
                f"{type(m).__name__}({getattr(m, 'group', '')})" for m in out)]
        return out

    def traced_apply(self: Any, step: int) -> None:
        loss = self.losses[-1] if self.losses else float("nan")
        print(f"{pending[0] if pending else f'step {step}'}; loss {loss!r}", flush=True)
        apply_queue(self, step)

    params.ParamStore.initialize = classmethod(perturbed)  # type: ignore[method-assign,assignment]
    growth.GrowthPolicy.propose = traced_propose  # type: ignore[method-assign]
    train.Trainer._apply_queue = traced_apply  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as out:
        return cli_main(["--log-level", "warning", "train", "--dataset", "digits", "--backend",
                         backend, "--dtype", dtype, "--no-progress", "--out", out])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "reference",
                  int(sys.argv[2]) if len(sys.argv) > 2 else 0,
                  sys.argv[3] if len(sys.argv) > 3 else "float32"))
