"""Kernel specs of ``kernels/scheduler.cu`` paired with their numpy references.

Each ``X`` here is a :class:`KernelSpec` whose ``ref`` is ``X_ref``: the CPU executors run the
reference, the CUDA executor the kernel, and tests compare the two. Parameter types are read
from the source, so a signature change there is caught when this module is imported.
"""

from __future__ import annotations

import numpy as np

from streamdag.scheduler.taskgraph import KernelSpec

__all__ = ["EMPTY", "MIX2", "REDUCE_MEAN", "SAXPY"]


def empty_ref() -> None:
    """Nothing, like the kernel."""


def saxpy_ref(a: np.float32, x: np.ndarray, y: np.ndarray, n: np.uint32) -> None:
    """``y[:n] = a*x[:n] + y[:n]`` in float32."""
    y[:n] = a * x[:n] + y[:n]


def mix2_ref(a: np.float32, x: np.ndarray, b: np.float32, y: np.ndarray, out: np.ndarray,
             n: np.uint32) -> None:
    """``out[:n] = a*x[:n] + b*y[:n]`` in float32."""
    out[:n] = a * x[:n] + b * y[:n]


def reduce_mean_ref(x: np.ndarray, out: np.ndarray, n: np.uint32) -> None:
    """``out[0] = mean(x[:n])`` (float64 accumulation: the kernel's tree order differs)."""
    out[0] = np.float32(x[:n].astype(np.float64).mean())


EMPTY = KernelSpec.from_source("scheduler.cu", "empty", ref=empty_ref)
SAXPY = KernelSpec.from_source("scheduler.cu", "saxpy", ref=saxpy_ref)
MIX2 = KernelSpec.from_source("scheduler.cu", "mix2", ref=mix2_ref)
REDUCE_MEAN = KernelSpec.from_source("scheduler.cu", "reduce_mean", ref=reduce_mean_ref)
