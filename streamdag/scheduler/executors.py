"""CPU executors: ``serial`` (the definition of the right answer) and ``sim``.

Design note. Both run a :class:`~streamdag.scheduler.plan.Plan` over host buffers (a dict of
numpy arrays); kernel tasks run their spec's ``ref``, host tasks their callable, a fused
launch its members one after another. ``serial`` issues launches in plan order on one
thread, ignoring streams. ``sim`` gives every stream its own thread and honours only what a
GPU would: stream order and the plan's events (a ``threading.Event`` set at record, waited
before the launch). Optional random delays shuffle the interleaving, so a dependency the
plan fails to enforce shows up as a different result, not as luck.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from streamdag.errors import SchedulerError
from streamdag.scheduler.plan import Launch, Plan
from streamdag.scheduler.records import Observer, TaskRecord
from streamdag.scheduler.taskgraph import Buf, TaskSpec

__all__ = ["bind_host", "run_serial", "run_sim"]

Call = tuple[Callable[..., None], tuple[Any, ...]]


def _host_call(spec: TaskSpec, buffers: Mapping[str, Any]) -> Call:
    fn = spec.fn
    if fn is None:
        assert spec.kernel is not None
        fn = spec.kernel.ref
        if fn is None:
            raise SchedulerError(
                f"task {spec.name!r}: kernel {spec.kernel.name} has no host reference (ref=)"
            )
    args = []
    for a in spec.args:
        if isinstance(a, Buf):
            try:
                a = buffers[a.name]
            except KeyError:
                raise SchedulerError(f"task {spec.name!r}: no buffer bound to {a.name!r}") from None
        args.append(a)
    return fn, tuple(args)


def bind_host(plan: Plan, buffers: Mapping[str, Any]) -> list[list[Call]]:
    """Per launch, the host calls to make (checked before anything runs)."""
    calls = [_host_call(spec, buffers) for spec in plan.tasks]
    return [[calls[t] for t in lau.tasks] for lau in plan.launches]


def _names(plan: Plan, lau: Launch) -> tuple[str, ...]:
    return tuple(plan.tasks[t].name for t in lau.tasks)


def run_serial(
    plan: Plan, buffers: Mapping[str, Any], *, observer: Observer | None = None
) -> None:
    """Run ``plan`` in plan order on this thread (streams and events ignored)."""
    bound = bind_host(plan, buffers)
    stamps: list[tuple[int, int]] = []
    t_run = time.perf_counter_ns()
    for calls in bound:
        t0 = time.perf_counter_ns()
        for fn, args in calls:
            fn(*args)
        stamps.append((t0, time.perf_counter_ns()))
    if observer is not None:
        observer.on_run([
            TaskRecord("serial", lau.id, _names(plan, lau), 0, (t0 - t_run) / 1e3,
                       (t1 - t0) / 1e3, ())
            for lau, (t0, t1) in zip(plan.launches, stamps, strict=True)
        ])


def run_sim(
    plan: Plan,
    buffers: Mapping[str, Any],
    *,
    max_delay_s: float = 0.0,
    seed: int = 0,
    observer: Observer | None = None,
    timeout_s: float = 60.0,
    delay: Callable[[Launch], float] | None = None,
) -> None:
    """Run ``plan`` with one thread per stream and real record/wait event semantics.

    Args:
        plan: the plan.
        buffers: name -> numpy array.
        max_delay_s: before each launch, sleep a uniform random time up to this.
        seed: seeds the delays (one generator per stream).
        observer: receives the run's records after all threads finished.
        timeout_s: longest wait on one event before the run is declared stuck.
        delay: instead of random delays, the delay (s) before a given launch.

    Raises:
        SchedulerError: a wait timed out (a plan that waits on an event never recorded).
        Exception: the first exception a task raised (the run is abandoned).
    """
    bound = bind_host(plan, buffers)
    events = [threading.Event() for _ in plan.events]
    abort = threading.Event()
    errors: list[BaseException] = []
    stamps: dict[int, tuple[int, int]] = {}
    t_run = time.perf_counter_ns()

    def worker(stream: int, launches: tuple[int, ...]) -> None:
        rng = random.Random(seed * 1_000_003 + stream)
        try:
            for li in launches:
                lau = plan.launches[li]
                for e in lau.waits:
                    if not events[e].wait(timeout_s):
                        raise SchedulerError(f"stream {stream}: event {e} never recorded")
                if abort.is_set():
                    return
                d = delay(lau) if delay is not None else rng.random() * max_delay_s
                if d > 0:
                    time.sleep(d)
                t0 = time.perf_counter_ns()
                for fn, args in bound[li]:
                    fn(*args)
                stamps[li] = (t0, time.perf_counter_ns())
                if lau.record >= 0:
                    events[lau.record].set()
        except BaseException as exc:
            errors.append(exc)
            abort.set()
            for ev in events:  # release the other streams so they stop
                ev.set()

    threads = [
        threading.Thread(target=worker, args=(st.id, st.launches), name=f"sim-stream-{st.id}")
        for st in plan.streams
        if st.launches
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    if observer is not None:
        observer.on_run([
            TaskRecord("sim", lau.id, _names(plan, lau), lau.stream,
                       (stamps[lau.id][0] - t_run) / 1e3,
                       (stamps[lau.id][1] - stamps[lau.id][0]) / 1e3, lau.waits)
            for lau in plan.launches
        ])
