"""streamdag.scheduler: run any DAG of GPU kernels on several CUDA streams or as a CUDA graph.

Build a :class:`TaskGraph`, plan it with :func:`make_plan` (pure Python: streams, events on
exactly the edges that need them, optional fusion), run the :class:`Plan` with an executor:
:func:`run_serial`, :func:`run_sim` (CPU) or :class:`CudaExecutor` (GPU, streams or graph).
See docs/scheduler.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamdag.scheduler.executors import run_serial, run_sim
from streamdag.scheduler.plan import EventSpec, Launch, Plan, StreamSpec, make_plan
from streamdag.scheduler.records import Collector, Observer, TaskRecord
from streamdag.scheduler.taskgraph import (
    Buf,
    DeviceLimits,
    KernelSpec,
    LaunchShape,
    Task,
    TaskGraph,
    TaskSpec,
)

if TYPE_CHECKING:
    from streamdag.scheduler.cuda import CudaExecutor

__all__ = [
    "Buf",
    "Collector",
    "CudaExecutor",
    "DeviceLimits",
    "EventSpec",
    "KernelSpec",
    "Launch",
    "LaunchShape",
    "Observer",
    "Plan",
    "StreamSpec",
    "Task",
    "TaskGraph",
    "TaskRecord",
    "TaskSpec",
    "make_plan",
    "run_serial",
    "run_sim",
]


def __getattr__(name: str) -> Any:  # CudaExecutor imports the driver: only when asked for
    if name == "CudaExecutor":
        from streamdag.scheduler.cuda import CudaExecutor

        return CudaExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
