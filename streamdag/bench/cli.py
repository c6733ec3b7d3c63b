"""``streamdag bench``: run dag-bench and write results.json, results.md and plots.

Examples::

    streamdag bench --preset smoke --out /tmp/smoke          # CPU, seconds
    streamdag bench --preset S,M,L --mutation --sweep --out results
    streamdag bench --groups 2048 --width 32 --contenders numpy-serial,torch-levels
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import structlog

from .contenders import contender_names
from .dagbench import PRESETS, resolve_spec
from .measure import GATE_RTOL, Budget
from .suite import MIN_STEPS, SuiteOptions, run_suite, select_contenders

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register the ``bench`` subcommand."""
    p = subparsers.add_parser(
        "bench", help="dag-bench: streamdag vs serial numpy and PyTorch on random DAGs",
        description="Measure every contender in one process on the same random DAG, initial "
                    "parameters and batch (BENCHMARK.md). Presets: "
                    + ", ".join(f"{k} (G={v.groups}, W={v.width})" for k, v in PRESETS.items()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default=None,
                   help="comma list of presets (default S); options below override a single "
                        "preset's values")
    p.add_argument("--groups", type=int, default=None, help="number of groups G")
    p.add_argument("--width", type=int, default=None, help="neurons per group W (1..64)")
    p.add_argument("--fan-in", type=int, default=None, help="predecessors per group")
    p.add_argument("--window", type=int, default=None,
                   help="predecessors are drawn from this many groups back")
    p.add_argument("--batch", type=int, default=None, help="batch size")
    p.add_argument("--seed", type=int, default=None, help="seed of the DAG, parameters, batch")
    p.add_argument("--contenders", default=None,
                   help="comma list (default: all; CPU-capable ones for smoke): "
                        + ", ".join(contender_names()))
    p.add_argument("--steps", type=int, default=MIN_STEPS, help=f"timed steps (>= {MIN_STEPS})")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the gate")
    p.add_argument("--budget-s", type=float, default=60.0,
                   help="time budget per contender and configuration; past it a contender is "
                        "skipped (the serial reference is timed for fewer steps instead)")
    p.add_argument("--sweep", action="store_true",
                   help="scaling sweep: G in 256..16384 at W=16, W in 4..64 at G=1024")
    p.add_argument("--mutation", action="store_true",
                   help="mutation benchmark: 8 duplications + the next step, per contender")
    p.add_argument("--mutation-repeats", type=int, default=3)
    p.add_argument("--mutation-presets", default=None,
                   help="comma list: run the mutation benchmark on these presets only")
    p.add_argument("--gate-rtol", type=float, default=GATE_RTOL,
                   help="relative tolerance of the correctness gate (BENCHMARK.md: 1e-4)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: runs/bench-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate everything, run the suite, write the results; returns the exit status."""
    log = structlog.get_logger("streamdag.bench")
    names = [n.strip() for n in (args.preset or "S").split(",") if n.strip()]
    overrides = {"groups": args.groups, "width": args.width, "fan_in": args.fan_in,
                 "window": args.window, "batch": args.batch, "seed": args.seed}
    if len(names) > 1 and any(v is not None for v in overrides.values()):
        from ..errors import ConfigError

        raise ConfigError("options like --groups override one preset, not a list of presets")
    specs = [resolve_spec(n if args.preset else None, **overrides) for n in names]
    smoke = names == ["smoke"]
    contenders = select_contenders(args.contenders, cpu_only=smoke)
    opts = SuiteOptions(
        specs=specs, contenders=contenders,
        budget=Budget(steps=args.steps, warmup=args.warmup, time_s=args.budget_s,
                      device="cpu" if smoke else None, gate_rtol=args.gate_rtol),
        mutation=args.mutation or args.mutation_presets is not None,
        mutation_presets=(None if args.mutation_presets is None else
                          [m.strip() for m in args.mutation_presets.split(",") if m.strip()]),
        mutation_repeats=args.mutation_repeats, sweep=args.sweep,
        progress=not args.no_progress).validate()
    out = args.out or Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    records = run_suite(opts)
    from .report import write_results

    paths = write_results(records, out)
    failed = [f"{r['preset']}/{r['contender']}" for r in records if r["status"] == "failed"]
    log.info("bench done", out=str(out), records=len(records), files=[p.name for p in paths],
             failed=failed or None)
    return 0
