"""The reference backward matches central finite differences (float64) on random DAGs.

Five-point central differences with h = 1e-4 (truncation error O(h^4), round-off about
1e-16 / h = 1e-12). Relative error ``|a - b| / max(|a| + |b|, 1e-5)``: the floor sits above
the round-off of the differences, so an entry whose gradient is (near) zero is held to an
absolute 1e-11 instead of dividing round-off by nothing. Examples where a pre-activation is
within 1e-5 of 0 are rejected (a ReLU kink makes finite differences meaningless); an entry
whose perturbations flip any ReLU mask is skipped (and at most a few may be).
"""

from __future__ import annotations

import numpy as np
from helpers_network import DagSpec, dag_specs, pre_activations, random_params
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from streamdag.backends.reference import loss_and_gradients
from streamdag.graph import NetworkGraph
from streamdag.params import ParamStore

EPS = 1e-4
STENCIL = ((2, -1 / 12), (1, 8 / 12), (-1, -8 / 12), (-2, 1 / 12))  # f'(0) ~ sum c f(kh) / h
KINK = 1e-5
RTOL = 1e-6
FLOOR = 1e-5
MAX_ENTRIES = 120  # bigger networks: a seeded sample of entries


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a) + abs(b), FLOOR)


def masks(graph: NetworkGraph, params: ParamStore, x: np.ndarray) -> list[np.ndarray]:
    return [z > 0 for z in pre_activations(graph, params, x).values()]


@settings(max_examples=60)
@given(spec=dag_specs(max_groups=5, max_width=6, max_fan_in=3), seed=st.integers(0, 2**16))
def test_backward_matches_finite_differences(spec: DagSpec, seed: int) -> None:
    graph = spec.build()
    params = random_params(graph, seed, bias_scale=0.5)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, spec.n_inputs))
    y = rng.integers(0, spec.n_classes, 4)
    z = pre_activations(graph, params, x)
    assume(min(np.abs(v).min() for v in z.values()) > KINK)
    base_masks = masks(graph, params, x)
    _, grads, _, _ = loss_and_gradients(graph, params, x, y)

    entries = [(node, kind, i) for node in params.nodes() for kind in ("W", "b")
               for i in range((params.weight(node) if kind == "W" else params.bias(node)).size)]
    if len(entries) > MAX_ENTRIES:
        pick = rng.choice(len(entries), MAX_ENTRIES, replace=False)
        entries = [entries[k] for k in sorted(pick)]
    worst, skipped = (0.0, None), 0
    for node, kind, i in entries:
        arr = (params.weight(node) if kind == "W" else params.bias(node)).reshape(-1)
        old = arr[i]
        numeric, crossed = 0.0, False
        for k, c in STENCIL:
            arr[i] = old + k * EPS
            crossed |= not all(np.array_equal(a, b) for a, b in
                               zip(masks(graph, params, x), base_masks, strict=True))
            numeric += c * loss_and_gradients(graph, params, x, y)[0] / EPS
        arr[i] = old
        if crossed:
            skipped += 1
            continue
        analytic = float(grads[node][0 if kind == "W" else 1].reshape(-1)[i])
        err = rel_err(analytic, numeric)
        if err > worst[0]:
            worst = (err, (node, kind, i, analytic, numeric))
    assert worst[0] <= RTOL, f"worst relative error {worst[0]:.3g} at {worst[1]}"
    assert skipped <= len(entries) // 10, f"{skipped} of {len(entries)} entries near a kink"


def test_gradient_of_a_shared_predecessor_sums_over_successors() -> None:
    """A group read by two successors (and the output) gets the sum of their gradients."""
    spec = DagSpec(3, 3, (5, 4, 4), ((-1,), (0,), (0, -1)))
    graph = spec.build()
    params = random_params(graph, 7, bias_scale=0.5)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 3, 6)
    _, _, dh, _ = loss_and_gradients(graph, params, x, y)
    assert set(dh) == {0, 1, 2}
    h = {g: np.maximum(z, 0) for g, z in pre_activations(graph, params, x).items()}
    # dL/dh_0 from g1 (all its columns) and from g2 (its first block)
    dz1 = dh[1] * (h[1] > 0)
    dz2 = dh[2] * (h[2] > 0)
    expected = dz1 @ params.weight(1) + (dz2 @ params.weight(2))[:, :5]
    np.testing.assert_allclose(dh[0], expected, rtol=1e-12, atol=1e-15)
