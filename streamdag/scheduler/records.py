"""What executors report: one plain frozen record per launch, handed over after a run.

Design note. Executors never call the observer while work is in flight: they keep raw
timestamps (``perf_counter_ns`` on the CPU, timing events on the GPU) and, after the run
has synchronised, turn them into :class:`TaskRecord` s and call ``observer.on_run`` once.
A later profiler turns records into Perfetto JSON; nothing here knows about that format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Collector", "Observer", "TaskRecord"]


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One launch as it ran.

    Attributes:
        executor: ``"serial"``, ``"sim"``, ``"cuda-streams"`` or ``"cuda-graph"``.
        launch: the launch's index in the plan.
        tasks: names of the tasks it ran (several when fused).
        stream: the stream it ran on.
        start_us: start, in µs since the run began (GPU: since an event recorded first).
        dur_us: duration in µs.
        waited: event ids the stream waited on before it.
    """

    executor: str
    launch: int
    tasks: tuple[str, ...]
    stream: int
    start_us: float
    dur_us: float
    waited: tuple[int, ...] = ()


class Observer(Protocol):
    """Receives the records of each run, after the run has finished."""

    def on_run(self, records: Sequence[TaskRecord]) -> None: ...


@dataclass
class Collector:
    """An observer that keeps every run's records (``runs[-1]`` is the latest)."""

    runs: list[tuple[TaskRecord, ...]] = field(default_factory=list)

    def on_run(self, records: Sequence[TaskRecord]) -> None:
        self.runs.append(tuple(records))
