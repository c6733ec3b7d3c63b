"""Measuring contenders: correctness gate, warm-up, timed steps, mutation cost.

Design note
-----------
One contender on one workload gives one record (see BENCHMARK.md, "Results format"):

1. ``skipped`` if it cannot run here (the record's ``reason`` says why);
2. build it on copies of the shared graph and float32 parameters (``setup_ms``: for graph
   contenders this includes warm-up and CUDA-graph capture);
3. **correctness gate**: run :data:`GATE_STEPS` steps; the loss computed in the last of them
   (before its update) must equal the numpy reference's within :data:`GATE_RTOL` relative,
   else ``failed`` and not timed;
4. warm-up steps, then timed steps, each from an idle device (PyTorch on a GPU: CUDA events
   around the step; streamdag runners: a host clock from idle to idle again, which also
   counts their host work and the sync; a host clock on the CPU); median, p10 and p90 in
   milliseconds.

Time budget: a contender whose estimated ``steps × step time`` exceeds the budget is
``skipped`` with reason "over time budget" — except a ``capped`` one (the serial reference),
which is timed for fewer steps (at least :data:`MIN_CAPPED_STEPS`) and says so in ``note``.
The estimate is the fastest gate step; a contender whose first two steps each take more
than twice the budget's share is skipped at once (one slow step is not enough: streamdag's
graph modes build their CUDA graph in their first). No number is ever extrapolated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from ..errors import StreamDagError
from .contenders import Contender, Runner
from .dagbench import LR, Workload, mutation_batch

__all__ = ["GATE_RTOL", "GATE_STEPS", "Budget", "measure", "measure_mutation", "spread"]

GATE_STEPS = 3
GATE_RTOL = 1e-4
MIN_CAPPED_STEPS = 5

log = structlog.get_logger("streamdag.bench")


@dataclass(frozen=True)
class Budget:
    """How long to measure each contender.

    Attributes:
        steps: timed steps (at least 20 per BENCHMARK.md).
        warmup: untimed steps after the gate.
        time_s: wall-clock budget for one contender's gate, warm-up and timed steps.
        device: ``"cpu"`` forces torch baselines onto the CPU (the smoke preset).
        gate_rtol: the correctness gate's relative tolerance (BENCHMARK.md: 1e-4).
    """

    steps: int = 20
    warmup: int = 2
    time_s: float = 60.0
    device: str | None = None
    gate_rtol: float = GATE_RTOL


def spread(times_ms: list[float]) -> dict[str, float]:
    """``median_ms``, ``p10_ms``, ``p90_ms`` of a list of durations."""
    a = np.asarray(times_ms, np.float64)
    return {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90))}


def _empty(status: str, reason: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"status": status, "median_ms": None, "p10_ms": None,
                           "p90_ms": None, "steps": 0}
    if reason is not None:
        rec["reason"] = reason
    return rec


def _build(contender: Contender, work: Workload, budget: Budget) -> Runner:
    return contender.build(work.graph.copy(), work.params.copy(), work.x, work.y, LR,
                           budget.device)


def _failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def measure(contender: Contender, work: Workload, reference: float,
            budget: Budget) -> dict[str, Any]:
    """Gate and time one contender; returns the record's contender-specific fields."""
    reason = contender.unavailable(budget.device)
    if reason is not None:
        return _empty("skipped", reason)
    t_start = time.perf_counter()
    try:
        runner = _build(contender, work, budget)
        setup_ms = (time.perf_counter() - t_start) * 1e3
        gate_ms: list[float] = []
        for k in range(GATE_STEPS):
            gate_ms.append(runner.timed_step())
            # Two steps each slower than twice the budget's share cannot be warm-up alone
            # (one can: streamdag's graph modes build their CUDA graph in their first step)
            if (k == 1 and not contender.capped
                    and min(gate_ms) * budget.steps > 2e3 * budget.time_s):
                return _empty("skipped", f"over time budget: the first two steps took "
                              f"{gate_ms[0]:.0f} and {gate_ms[1]:.0f} ms, {budget.steps} "
                              f"steps would exceed {budget.time_s:.0f} s")
        loss = runner.loss()
    except (StreamDagError, RuntimeError, MemoryError, ValueError) as exc:
        log.warning("contender failed", contender=contender.name, error=_failure(exc))
        return _empty("failed", _failure(exc))
    rel = abs(loss - reference) / max(abs(reference), 1e-30)
    gate = {"loss": loss, "reference": reference, "rel_err": rel, "steps": GATE_STEPS,
            "rtol": budget.gate_rtol}
    if not math.isfinite(loss) or not rel <= budget.gate_rtol:
        rec = _empty("failed", f"correctness gate: loss after {GATE_STEPS} steps {loss:.7g} "
                               f"vs reference {reference:.7g} (relative error {rel:.2e} > "
                               f"{budget.gate_rtol:g})")
        rec["gate"] = gate
        return rec
    est_ms = min(gate_ms)
    steps = budget.steps
    note = None
    if est_ms * (steps + budget.warmup) > 1e3 * budget.time_s:
        if not contender.capped:
            rec = _empty("skipped", f"over time budget: {est_ms:.0f} ms/step × {steps} steps "
                                    f"> {budget.time_s:.0f} s")
            rec["gate"] = gate
            return rec
        steps = max(MIN_CAPPED_STEPS, int(1e3 * budget.time_s / est_ms) - budget.warmup)
        steps = min(steps, budget.steps)
        note = f"serial reference: {steps} timed steps (time budget {budget.time_s:.0f} s)"
    warmup = budget.warmup if note is None else 1
    try:
        for _ in range(warmup):
            runner.step()
        times = [runner.timed_step() for _ in range(steps)]
    except (StreamDagError, RuntimeError, MemoryError) as exc:
        return _empty("failed", _failure(exc))
    rec = {"status": "ok", **spread(times), "steps": steps, "setup_ms": setup_ms,
           "gate": gate}
    memory = runner.device_memory()
    if memory is not None:
        rec["device_memory"] = memory
    if note is not None:
        rec["note"] = note
    return rec


def measure_mutation(contender: Contender, work: Workload, budget: Budget, *,
                     repeats: int = 3, seed: int = 1000,
                     on_repeat: Callable[[], None] | None = None) -> dict[str, Any]:
    """Time a batch of 8 duplications plus the first step after it, ``repeats`` times.

    Each repeat draws its batch from ``seed + repeat`` on the runner's current graph, so all
    contenders see the same sequence of changes. ``losses`` holds the loss of each first
    step after a change, for a cross-check against the reference.
    """
    reason = contender.unavailable(budget.device)
    if reason is not None:
        return _empty("skipped", reason)
    t_start = time.perf_counter()
    totals: list[float] = []
    phases: dict[str, list[float]] = {}
    losses: list[float] = []
    try:
        runner = _build(contender, work, budget)
        for _ in range(GATE_STEPS):
            runner.step()
        runner.synchronize()
        for r in range(repeats):
            if time.perf_counter() - t_start > budget.time_s and totals:
                break
            batch = mutation_batch(runner.graph, seed + r)
            runner.synchronize()
            t0 = time.perf_counter()
            ph = runner.mutate(batch)
            t1 = time.perf_counter()
            runner.step()
            runner.synchronize()
            t2 = time.perf_counter()
            ph["first_step_ms"] = (t2 - t1) * 1e3
            totals.append((t2 - t0) * 1e3)
            losses.append(runner.loss())
            for k, v in ph.items():
                phases.setdefault(k, []).append(v)
            runner.step()  # one ordinary step between batches
            if on_repeat is not None:
                on_repeat()
    except (StreamDagError, RuntimeError, MemoryError, ValueError) as exc:
        return _empty("failed", _failure(exc))
    return {"status": "ok", **spread(totals), "steps": len(totals),
            "phases_ms": {k: float(np.median(v)) for k, v in phases.items()},
            "mutations": 8, "groups_after": len(runner.graph), "losses": losses}
