"""dag-bench: the same-run comparison of streamdag against serial numpy and PyTorch.

``streamdag bench`` (:mod:`streamdag.bench.cli`) runs it; BENCHMARK.md is the specification.
Modules: :mod:`~.dagbench` (workload), :mod:`~.contenders` (adapters), :mod:`~.measure`
(gate and timing), :mod:`~.suite` (a whole run), :mod:`~.report` (JSON, Markdown, plots).
"""

from __future__ import annotations

from .contenders import CONTENDERS, Contender
from .dagbench import PRESETS, DagSpec, build_workload
from .measure import Budget
from .report import write_results
from .suite import SuiteOptions, run_suite

__all__ = ["CONTENDERS", "PRESETS", "Budget", "Contender", "DagSpec", "SuiteOptions",
           "build_workload", "run_suite", "write_results"]
