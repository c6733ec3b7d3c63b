"""The dag-bench workload: presets, the random DAG, the batch, the mutation batches.

Design note
-----------
BENCHMARK.md defines the workload and this module is its executable form. A
:class:`DagSpec` names one configuration; :func:`build_workload` turns it into a
:class:`~streamdag.graph.NetworkGraph` (via ``from_edges``), the initial parameters and the
one fixed batch, all drawn from one ``numpy.random.default_rng(seed)`` in that order, so every
contender of a run — and every run with the same spec — sees the same numbers.

The random DAG: group ``i`` (in creation order) takes ``fan_in`` distinct predecessors drawn
uniformly from the ``window`` groups before it; the first ``fan_in`` groups read the network
input; groups without a successor feed the output. The wide-shallow variant (``levels`` set)
instead draws each group's predecessors from the previous of ``levels`` equal layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..graph import INPUT, NetworkGraph
from ..mutation import DuplicateDepth, DuplicateWidth, Mutation
from ..params import ParamStore

__all__ = [
    "MAX_BENCH_WIDTH",
    "PRESETS",
    "DagSpec",
    "Workload",
    "build_graph",
    "build_workload",
    "mutation_batch",
    "reference_loss",
    "resolve_spec",
]

#: The widest group the streamdag kernels serve (one warp-tile of neurons per group).
MAX_BENCH_WIDTH = 64
N_INPUTS = 64
N_CLASSES = 10
LR = 0.01


@dataclass(frozen=True)
class DagSpec:
    """One dag-bench configuration.

    Attributes:
        preset: the label records carry (``"S"``, ``"M"``, …, ``"custom"``, ``"sweep"``).
        groups: number of neuron groups ``G``.
        width: neurons per group ``W``.
        fan_in: predecessors per group.
        window: how many groups back the predecessors are drawn from.
        batch: batch size ``B``.
        seed: seed of ``numpy.random.default_rng``.
        levels: if set, a wide-shallow layered DAG of this many equal layers instead.
    """

    preset: str = "S"
    groups: int = 1024
    width: int = 16
    fan_in: int = 2
    window: int = 64
    batch: int = 256
    seed: int = 0
    levels: int | None = None

    def validate(self) -> DagSpec:
        """Raise :class:`ConfigError` for an impossible configuration; returns ``self``."""
        if self.groups < 1:
            raise ConfigError(f"--groups must be >= 1, got {self.groups}")
        if not 1 <= self.width <= MAX_BENCH_WIDTH:
            raise ConfigError(f"--width must be in 1..{MAX_BENCH_WIDTH} (the widest group the "
                              f"kernels serve), got {self.width}")
        if self.fan_in < 1:
            raise ConfigError(f"--fan-in must be >= 1, got {self.fan_in}")
        if self.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {self.batch}")
        if self.levels is None:
            if self.window < self.fan_in:
                raise ConfigError(f"--fan-in {self.fan_in} is larger than --window "
                                  f"{self.window}: a group cannot draw that many distinct "
                                  "predecessors")
        else:
            if self.levels < 1 or self.groups % self.levels:
                raise ConfigError(f"a layered DAG needs groups ({self.groups}) divisible by "
                                  f"levels ({self.levels})")
            if self.levels > 1 and self.groups // self.levels < self.fan_in:
                raise ConfigError(f"--fan-in {self.fan_in} is larger than a layer of "
                                  f"{self.groups // self.levels} groups")
        return self

    def key(self) -> tuple[int, ...]:
        """What makes two specs the same measurement (the label aside)."""
        return (self.groups, self.width, self.fan_in, self.window, self.batch, self.seed,
                -1 if self.levels is None else self.levels)

    def as_record(self) -> dict[str, Any]:
        """The spec's fields as they appear in a result record."""
        d = asdict(self)
        if d["levels"] is None:
            del d["levels"]
        return d


PRESETS: dict[str, DagSpec] = {
    "smoke": DagSpec("smoke", groups=64, width=8, fan_in=2, window=16, batch=32),
    "S": DagSpec("S", groups=1024),
    "M": DagSpec("M", groups=4096),
    "L": DagSpec("L", groups=16384),
    "wide": DagSpec("wide", groups=4096, levels=4, window=1024),
    "S64": DagSpec("S64", groups=1024, width=64),
}


def resolve_spec(preset: str | None, **overrides: int | None) -> DagSpec:
    """A preset (default ``S``) with the options given on the command line applied.

    Overridden presets are labelled ``"custom"``. Raises :class:`ConfigError` for an unknown
    preset or an impossible result.
    """
    name = preset or "S"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    spec = PRESETS[name]
    given = {k: v for k, v in overrides.items() if v is not None}
    changed = {k: v for k, v in given.items() if getattr(spec, k) != v}
    if changed:
        spec = replace(spec, preset="custom", **changed)
    return spec.validate()


def draw_preds(spec: DagSpec, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Every group's predecessor list (``INPUT`` = -1), drawn as the module doc says."""
    preds: list[tuple[int, ...]] = []
    if spec.levels is not None:
        per = spec.groups // spec.levels
        for i in range(spec.groups):
            layer = i // per
            if layer == 0:
                preds.append((INPUT,))
            else:
                lo = (layer - 1) * per
                pick = rng.choice(per, size=spec.fan_in, replace=False) + lo
                preds.append(tuple(sorted(int(p) for p in pick)))
        return preds
    for i in range(spec.groups):
        if i < spec.fan_in:
            preds.append((INPUT,))
            continue
        lo = max(0, i - spec.window)
        pick = rng.choice(i - lo, size=spec.fan_in, replace=False) + lo
        preds.append(tuple(sorted(int(p) for p in pick)))
    return preds


def build_graph(spec: DagSpec, rng: np.random.Generator) -> NetworkGraph:
    """The spec's random DAG as a :class:`NetworkGraph` (64 inputs, 10 classes)."""
    preds = draw_preds(spec, rng)
    return NetworkGraph.from_edges(n_inputs=N_INPUTS, n_classes=N_CLASSES,
                                   widths=[spec.width] * spec.groups, preds=preds)


@dataclass
class Workload:
    """Everything a contender starts from: structure, initial parameters, the batch."""

    spec: DagSpec
    graph: NetworkGraph
    params: ParamStore
    x: np.ndarray
    y: np.ndarray

    @property
    def n_levels(self) -> int:
        return len(self.graph.levels())


def build_workload(spec: DagSpec) -> Workload:
    """Graph, float32 parameters and one batch, from ``default_rng(spec.seed)``."""
    rng = np.random.default_rng(spec.seed)
    graph = build_graph(spec, rng)
    params = ParamStore.initialize(graph, rng)
    x = rng.standard_normal((spec.batch, N_INPUTS)).astype(np.float32)
    y = rng.integers(0, N_CLASSES, size=spec.batch).astype(np.int64)
    return Workload(spec, graph, params, x, y)


def mutation_batch(graph: NetworkGraph, seed: int, *, n_depth: int = 4,
                   n_width: int = 4) -> list[Mutation]:
    """``n_depth`` depth- then ``n_width`` width-duplications of distinct, seeded groups."""
    ids = graph.group_ids()
    n = min(len(ids), n_depth + n_width)
    pick = np.random.default_rng(seed).choice(ids, size=n, replace=False)
    return [DuplicateDepth(int(g)) if k < n_depth else DuplicateWidth(int(g))
            for k, g in enumerate(pick)]


def reference_loss(work: Workload, steps: int, *, lr: float = LR,
                   dtype: Any = np.float32) -> float:
    """The numpy reference: the loss computed in step ``steps`` (1-based), before its update.

    float32 by default, like every contender: float32 implementations agree with each other
    to ~1e-6 relative even at L, while all of them drift from a float64 run by ~4e-5 at S
    (weights rounded to float32 after each update), so float32 is the sharper reference.
    ``dtype=np.float64`` gives that float64 run, from the same float32 initial values.
    """
    from ..backends.reference import ReferenceBackend

    state = {k: (v if k == "param_shapes" else v.astype(dtype))
             for k, v in work.params.state_dict().items()}
    params = ParamStore.from_state_dict(state)
    backend = ReferenceBackend(dtype=dtype)
    x = work.x.astype(dtype)
    loss = float("nan")
    for _ in range(steps):
        loss = backend.step(work.graph, params, x, work.y, lr=lr).loss
    return loss
