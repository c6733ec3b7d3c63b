"""A whole dag-bench run: presets, mutation benchmark, scaling sweep → a list of records.

Every configuration is built once (:func:`~streamdag.bench.dagbench.build_workload`), its
numpy reference loss computed once, and every contender measured on it in this one process.
A configuration the sweep shares with a preset (the sweep's G=1,024/W=16 point is ``S``) is
measured once and reused.
"""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import structlog

from .. import __version__
from ..errors import ConfigError
from .contenders import CONTENDERS, Contender
from .dagbench import PRESETS, DagSpec, Workload, build_workload, reference_loss
from .measure import GATE_STEPS, Budget, measure, measure_mutation

__all__ = ["SWEEP_GROUPS", "SWEEP_WIDTHS", "SuiteOptions", "environment", "run_suite",
           "select_contenders"]

SWEEP_GROUPS = (256, 1024, 4096, 16384)
SWEEP_WIDTHS = (4, 8, 16, 32, 64)
MIN_STEPS = 20

log = structlog.get_logger("streamdag.bench")


@dataclass
class SuiteOptions:
    """What to run.

    Attributes:
        specs: the configurations (presets or custom) to measure.
        contenders: contender names, in report order.
        budget: steps and time budget per contender.
        mutation: also run the mutation benchmark on each spec (or on ``mutation_presets``).
        mutation_presets: limit the mutation benchmark to specs with these labels.
        mutation_repeats: mutation batches per contender.
        sweep: also run the scaling sweep (groups, then width).
        progress: show a tqdm bar on stderr.
        registry: name → contender (tests add deliberately wrong ones).
    """

    specs: list[DagSpec]
    contenders: list[str]
    budget: Budget = field(default_factory=Budget)
    mutation: bool = False
    mutation_presets: list[str] | None = None
    mutation_repeats: int = 3
    sweep: bool = False
    progress: bool = True
    registry: dict[str, Contender] = field(default_factory=lambda: dict(CONTENDERS))

    def validate(self) -> SuiteOptions:
        """Raise :class:`ConfigError` before any work for options that cannot run."""
        if not self.specs:
            raise ConfigError("nothing to run: no preset or configuration")
        for s in self.specs:
            s.validate()
        unknown = [c for c in self.contenders if c not in self.registry]
        if unknown:
            raise ConfigError(f"unknown contender {unknown[0]!r}: use "
                              f"{', '.join(self.registry)}")
        if not self.contenders:
            raise ConfigError("no contenders selected")
        if self.budget.steps < MIN_STEPS:
            raise ConfigError(f"--steps must be >= {MIN_STEPS} (BENCHMARK.md: the median of at "
                              f"least {MIN_STEPS} steps), got {self.budget.steps}")
        if self.budget.time_s <= 0:
            raise ConfigError(f"--budget-s must be > 0, got {self.budget.time_s}")
        if self.budget.gate_rtol <= 0:
            raise ConfigError(f"--gate-rtol must be > 0, got {self.budget.gate_rtol}")
        labels = {s.preset for s in self.specs}
        for m in self.mutation_presets or []:
            if m not in labels:
                raise ConfigError(f"--mutation-presets names {m!r}, which this run does not "
                                  f"measure ({', '.join(sorted(labels))})")
        if self.mutation_repeats < 1:
            raise ConfigError(f"--mutation-repeats must be >= 1, got {self.mutation_repeats}")
        return self


def select_contenders(names: str | None, *, cpu_only: bool,
                      registry: dict[str, Contender] | None = None) -> list[str]:
    """Parse ``--contenders`` (comma list); ``None`` means all (CPU-capable ones if
    ``cpu_only``). Unknown names raise :class:`ConfigError`."""
    reg = registry or CONTENDERS
    if names is None:
        return [n for n, c in reg.items() if c.cpu_ok or not cpu_only]
    picked = [n.strip() for n in names.split(",") if n.strip()]
    for n in picked:
        if n not in reg:
            raise ConfigError(f"unknown contender {n!r}: use {', '.join(reg)}")
    return picked


def environment(device: str | None) -> dict[str, Any]:
    """``gpu``, ``date`` and ``versions`` for every record of the run."""
    from ..backends import torch_baseline

    tv = torch_baseline.versions()
    gpu = tv["gpu"] if device != "cpu" else None
    if gpu is None and device != "cpu":
        try:
            from ..driver import Gpu

            gpu = Gpu(0).name
        except Exception:  # no driver, no GPU: the record says gpu null
            gpu = None
    versions = {"streamdag": __version__, "python": sys.version.split()[0],
                "numpy": np.__version__, "torch": tv["torch"], "torch_cuda": tv["torch_cuda"],
                "platform": platform.platform(terse=True), "tf32": False}
    return {"gpu": gpu, "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
            "versions": versions}


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Any]:
    from tqdm import tqdm

    bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True,
               disable=None if enabled else True)
    try:
        yield bar
    finally:
        bar.close()


def _sweep_specs(base: DagSpec) -> list[DagSpec]:
    out = [replace(base, preset="sweep", groups=g) for g in SWEEP_GROUPS]
    out += [replace(base, preset="sweep", width=w) for w in SWEEP_WIDTHS]
    return out


def run_suite(opts: SuiteOptions) -> list[dict[str, Any]]:
    """Run everything ``opts`` asks for; returns the records in run order."""
    opts.validate()
    env = environment(opts.budget.device)
    plan: list[DagSpec] = []
    seen: set[tuple[int, ...]] = set()
    for s in opts.specs + (_sweep_specs(PRESETS["S"]) if opts.sweep else []):
        if s.key() not in seen:
            seen.add(s.key())
            plan.append(s)
    mut_specs = [s for s in opts.specs if opts.mutation and (
        opts.mutation_presets is None or s.preset in opts.mutation_presets)]
    total = len(plan) * len(opts.contenders) + len(mut_specs) * len(opts.contenders)
    records: list[dict[str, Any]] = []
    with _progress(total, opts.progress) as bar:
        for spec in plan:
            work = build_workload(spec)
            ref = reference_loss(work, GATE_STEPS)
            log.info("configuration", preset=spec.preset, groups=spec.groups, width=spec.width,
                     levels=work.n_levels, reference_loss=round(ref, 6))
            for name in opts.contenders:
                bar.set_description(f"{spec.preset} G={spec.groups} W={spec.width} {name}")
                rec = measure(opts.registry[name], work, ref, opts.budget)
                records.append(_record(spec, work, name, rec, env))
                _log_record(records[-1])
                bar.update(1)
        for spec in mut_specs:
            work = build_workload(spec)
            group: list[dict[str, Any]] = []
            for name in opts.contenders:
                bar.set_description(f"mutation {spec.preset} {name}")
                rec = measure_mutation(opts.registry[name], work, opts.budget,
                                       repeats=opts.mutation_repeats)
                group.append(_record(spec, work, name, rec, env, kind="mutation"))
                _log_record(group[-1])
                bar.update(1)
            _check_mutation_losses(group, opts.budget.gate_rtol)
            records += group
    return records


def _record(spec: DagSpec, work: Workload, contender: str, rec: dict[str, Any],
            env: dict[str, Any], *, kind: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "preset": spec.preset, "groups": spec.groups, "width": spec.width,
        "fan_in": spec.fan_in, "window": spec.window, "batch": spec.batch, "seed": spec.seed,
        "dag_levels": work.n_levels, "contender": contender,
    }
    if spec.levels is not None:
        out["layers"] = spec.levels
    if kind is not None:
        out["kind"] = kind
    out.update(rec)
    out.update(env)
    return out


#: mutation batches whose first loss after the change is cross-checked against numpy-serial.
#: A wrong batch shows at once; later, float32 drift does too: over 10 batches at M (about
#: 25 steps) the GPU contenders drifted up to 0.8e-3 to 3.6e-3 from numpy-serial (PyTorch's
#: 0.8e-3 to 3.3e-3) and the streamdag modes up to 1.2e-3 from each other, where over the
#: first 3 all were within 6e-4 of numpy-serial (H100, 2026-11-24).
MUTATION_CHECKED = 3


def _check_mutation_losses(group: list[dict[str, Any]], rtol: float) -> None:
    """Cross-check the first loss after each of the first :data:`MUTATION_CHECKED`
    changes against numpy-serial's, if it ran."""
    ref = next((r for r in group if r["contender"] == "numpy-serial" and r["status"] == "ok"),
               None)
    if ref is None:
        return
    for r in group:
        if r is ref or r["status"] != "ok":
            continue
        checked = zip(r["losses"][:MUTATION_CHECKED], ref["losses"], strict=False)
        for k, (a, b) in enumerate(checked):
            rel = abs(a - b) / max(abs(b), 1e-30)
            if not rel <= rtol:
                r.update(status="failed", median_ms=None, p10_ms=None, p90_ms=None,
                         reason=f"after mutation batch {k}: loss {a:.7g} vs numpy-serial "
                                f"{b:.7g} (relative error {rel:.2e})")
                break


def _log_record(r: dict[str, Any]) -> None:
    fields = {"preset": r["preset"], "groups": r["groups"], "width": r["width"],
              "contender": r["contender"], "status": r["status"]}
    if r.get("kind"):
        fields["kind"] = r["kind"]
    if r["status"] == "ok":
        fields["median_ms"] = round(r["median_ms"], 3)
    else:
        fields["reason"] = r.get("reason")
    log.info("measured", **fields)
