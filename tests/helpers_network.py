"""Shared helpers for the core tests: random DAGs (hypothesis strategies), parameters,
snapshots that compare bit for bit, and a float64 forward pass.

Imported as ``helpers_network`` (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from streamdag.backends.reference import forward
from streamdag.graph import INPUT, OUTPUT, NetworkGraph
from streamdag.params import ParamStore


@dataclass(frozen=True)
class DagSpec:
    """What ``NetworkGraph.from_edges`` takes: widths and ordered predecessor lists."""

    n_inputs: int
    n_classes: int
    widths: tuple[int, ...]
    preds: tuple[tuple[int, ...], ...]

    def build(self, *, max_groups: int | None = None) -> NetworkGraph:
        return NetworkGraph.from_edges(n_inputs=self.n_inputs, n_classes=self.n_classes,
                                       widths=list(self.widths),
                                       preds=[list(p) for p in self.preds],
                                       max_groups=max_groups)


@st.composite
def dag_specs(
    draw: st.DrawFn, *, min_groups: int = 1, max_groups: int = 8, max_width: int = 16,
    max_fan_in: int = 4, max_inputs: int = 6,
) -> DagSpec:
    """A random DAG: group ``i`` reads 1..``max_fan_in`` distinct nodes among input, 0..i-1.

    Predecessor lists are in random order (the column order of ``W`` follows them).
    """
    n = draw(st.integers(min_groups, max_groups))
    widths = tuple(draw(st.lists(st.integers(1, max_width), min_size=n, max_size=n)))
    preds = []
    for i in range(n):
        choices = [INPUT, *range(i)]
        k = draw(st.integers(1, min(max_fan_in, len(choices))))
        preds.append(tuple(draw(st.permutations(choices))[:k]))
    return DagSpec(draw(st.integers(1, max_inputs)), draw(st.integers(2, 4)), widths,
                   tuple(preds))


def random_params(
    graph: NetworkGraph, seed: int, *, dtype: Any = np.float64, bias_scale: float = 0.1,
    momentum: bool = False,
) -> ParamStore:
    """He-initialised parameters with random biases (and random momenta if asked)."""
    rng = np.random.default_rng(seed)
    p = ParamStore.initialize(graph, rng, dtype=dtype)
    for node in p.nodes():
        p.bias(node)[...] = rng.standard_normal(p.bias(node).shape) * bias_scale
        if momentum:
            p.weight_momentum(node)[...] = rng.standard_normal(p.weight(node).shape)
            p.bias_momentum(node)[...] = rng.standard_normal(p.bias(node).shape)
    return p


def logits(graph: NetworkGraph, params: ParamStore, x: np.ndarray) -> np.ndarray:
    return forward(graph, params, x.astype(params.dtype)).logits


def pre_activations(graph: NetworkGraph, params: ParamStore, x: np.ndarray) -> dict[int, Any]:
    """``z_g`` of every group (before the ReLU), from the reference forward's inputs."""
    cache = forward(graph, params, x.astype(params.dtype))
    return {g: cache.inputs[g] @ params.weight(g).T + params.bias(g)
            for g in graph.group_ids()}


@dataclass(frozen=True)
class Snapshot:
    """The graph description and a copy of every node's four arrays."""

    graph: dict[str, Any]
    arrays: dict[int, tuple[np.ndarray, ...]]


def snapshot(graph: NetworkGraph, params: ParamStore) -> Snapshot:
    arrays = {n: (params.weight(n).copy(), params.bias(n).copy(),
                  params.weight_momentum(n).copy(), params.bias_momentum(n).copy())
              for n in params.nodes()}
    return Snapshot(graph.to_dict(), arrays)


def assert_params_identical(a: ParamStore, b: ParamStore) -> None:
    """Same nodes; weights, biases and momenta equal bit for bit (dtype included)."""
    assert a.nodes() == b.nodes()
    assert a.dtype == b.dtype
    for n in a.nodes():
        for get in (ParamStore.weight, ParamStore.bias, ParamStore.weight_momentum,
                    ParamStore.bias_momentum):
            x, y = get(a, n), get(b, n)
            assert x.shape == y.shape, f"node {n}: {get.__name__} shape {x.shape} != {y.shape}"
            assert x.tobytes() == y.tobytes(), f"node {n}: {get.__name__} differs"


def assert_unchanged(before: Snapshot, graph: NetworkGraph, params: ParamStore) -> None:
    """``graph`` and ``params`` are bit-identical to ``before``."""
    after = snapshot(graph, params)
    assert after.graph == before.graph
    assert sorted(after.arrays) == sorted(before.arrays)
    for n, arrs in before.arrays.items():
        for name, x, y in zip(("W", "b", "vW", "vb"), arrs, after.arrays[n], strict=True):
            assert x.shape == y.shape and x.tobytes() == y.tobytes(), f"node {n}: {name} changed"


def depths_from_spec(spec: DagSpec) -> dict[int, int]:
    """Longest-path depths computed straight from the predecessor lists (input = 0)."""
    d = {INPUT: 0}
    for i, ps in enumerate(spec.preds):  # preds only name earlier groups
        d[i] = 1 + max(d[p] for p in ps)
    return d


__all__ = [
    "INPUT",
    "OUTPUT",
    "DagSpec",
    "Snapshot",
    "assert_params_identical",
    "assert_unchanged",
    "dag_specs",
    "depths_from_spec",
    "logits",
    "pre_activations",
    "random_params",
    "snapshot",
]
