"""Duplication (and pruning a dead group) leaves the network's function unchanged.

float64 parameters, the reference forward on random inputs, noise off: the logits before
and after differ by at most 1e-9.
"""

from __future__ import annotations

import numpy as np
from helpers_network import DagSpec, dag_specs, logits, random_params
from hypothesis import given, settings
from hypothesis import strategies as st

from streamdag.mutation import DuplicateDepth, DuplicateWidth, Prune, apply_mutations

ATOL = 1e-9


def _inputs(spec: DagSpec, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1).standard_normal((32, spec.n_inputs))


@settings(max_examples=60)
@given(spec=dag_specs(), seed=st.integers(0, 2**16), data=st.data())
def test_one_duplication_preserves_outputs(spec: DagSpec, seed: int, data: st.DataObject) -> None:
    graph = spec.build()
    params = random_params(graph, seed, bias_scale=0.5)
    x = _inputs(spec, seed)
    before = logits(graph, params, x)
    kind = data.draw(st.sampled_from([DuplicateDepth, DuplicateWidth]))
    g = data.draw(st.sampled_from(graph.group_ids()))
    report = apply_mutations(graph, params, [kind(g)], noise=0.0)
    (new,) = report.created
    assert new == len(spec.widths)
    assert graph.width(new) == graph.width(g)
    after = logits(graph, params, x)
    np.testing.assert_allclose(after, before, rtol=0, atol=ATOL)


@settings(max_examples=40)
@given(spec=dag_specs(max_groups=5), seed=st.integers(0, 2**16),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 1000)), min_size=2, max_size=6))
def test_duplication_sequences_preserve_outputs(
    spec: DagSpec, seed: int, ops: list[tuple[bool, int]]
) -> None:
    graph = spec.build()
    params = random_params(graph, seed, bias_scale=0.5)
    x = _inputs(spec, seed)
    before = logits(graph, params, x)
    for depth, pick in ops:
        ids = graph.group_ids()
        g = ids[pick % len(ids)]
        apply_mutations(graph, params, [DuplicateDepth(g) if depth else DuplicateWidth(g)])
        graph.validate()
        params.validate(graph)
    np.testing.assert_allclose(logits(graph, params, x), before, rtol=0, atol=ATOL)


@settings(max_examples=30)
@given(spec=dag_specs(max_groups=5), seed=st.integers(0, 2**16),
       picks=st.lists(st.integers(0, 1000), min_size=2, max_size=4))
def test_batch_of_duplications_preserves_outputs(
    spec: DagSpec, seed: int, picks: list[int]
) -> None:
    """Several duplications in one atomic batch (later ones may act on earlier twins)."""
    graph = spec.build()
    params = random_params(graph, seed, bias_scale=0.5)
    x = _inputs(spec, seed)
    before = logits(graph, params, x)
    ids = graph.group_ids()
    batch = [(DuplicateDepth if k % 2 else DuplicateWidth)(ids[k % len(ids)]) for k in picks]
    apply_mutations(graph, params, batch)
    np.testing.assert_allclose(logits(graph, params, x), before, rtol=0, atol=ATOL)


def test_width_noise_breaks_symmetry_but_not_exactness_when_off() -> None:
    from streamdag.graph import NetworkGraph

    graph = NetworkGraph.chain(n_inputs=3, n_classes=2, widths=[4, 4])
    params = random_params(graph, 0)
    x = np.random.default_rng(0).standard_normal((8, 3))
    before = logits(graph, params, x)
    report = apply_mutations(graph, params, [DuplicateWidth(0)], noise=0.1,
                             rng=np.random.default_rng(1))
    (twin,) = report.created
    assert not np.array_equal(params.weight(twin), params.weight(0))
    assert np.abs(logits(graph, params, x) - before).max() > 0


@settings(max_examples=60)
@given(spec=dag_specs(min_groups=2), seed=st.integers(0, 2**16), data=st.data())
def test_pruning_a_dead_group_preserves_outputs(
    spec: DagSpec, seed: int, data: st.DataObject
) -> None:
    graph = spec.build()
    params = random_params(graph, seed, bias_scale=0.5)
    g = data.draw(st.sampled_from(graph.group_ids()))
    params.bias(g)[...] = -1e6  # h_g = 0 for every input we feed
    x = _inputs(spec, seed)
    before = logits(graph, params, x)
    report = apply_mutations(graph, params, [Prune(g)])
    assert report.removed == (g,)
    assert g not in graph
    graph.validate()
    params.validate(graph)
    np.testing.assert_allclose(logits(graph, params, x), before, rtol=0, atol=ATOL)
