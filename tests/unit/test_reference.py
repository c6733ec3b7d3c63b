"""backends/reference.py: the kernel references, statistics, and argument checks."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_network import DagSpec, random_params

from streamdag.backends import get_backend
from streamdag.backends.reference import (
    ReferenceBackend,
    dense_bwd_ref,
    dense_fwd_ref,
    group_stats_ref,
    loss_and_gradients,
    sgd_momentum_ref,
    softmax_xent_ref,
)
from streamdag.errors import BackendError, ConfigError, DataError

NET = DagSpec(3, 3, (4, 5), ((-1,), (0, -1)))


def test_dense_fwd_and_bwd() -> None:
    x = np.array([[1.0, -2.0]])
    w = np.array([[1.0, 1.0], [2.0, 0.0]])
    b = np.array([0.5, -3.0])
    h = dense_fwd_ref(x, w, b, relu=True)
    np.testing.assert_array_equal(h, [[0.0, 0.0]])  # -0.5 and -1 clipped
    np.testing.assert_array_equal(dense_fwd_ref(x, w, b, relu=False), [[-0.5, -1.0]])
    dx, dw, db = dense_bwd_ref(x, w, np.array([[1.0, 0.0]]), np.array([[2.0, 3.0]]), relu=True)
    np.testing.assert_array_equal(db, [2.0, 0.0])  # the second neuron is off
    np.testing.assert_array_equal(dw, [[2.0, -4.0], [0.0, 0.0]])
    np.testing.assert_array_equal(dx, [[2.0, 2.0]])


def test_softmax_xent() -> None:
    logits = np.array([[0.0, 0.0], [10.0, -10.0]])
    loss, d, correct = softmax_xent_ref(logits, np.array([1, 0]))
    assert loss == pytest.approx((np.log(2) + np.log1p(np.exp(-20))) / 2)
    np.testing.assert_allclose(d.sum(axis=1), 0, atol=1e-15)
    np.testing.assert_allclose(d[0], [0.25, -0.25])
    assert correct == 1  # the tie picks class 0
    big = np.array([[1000.0, 0.0]])
    assert np.isfinite(softmax_xent_ref(big, np.array([1]))[0])


def test_sgd_momentum_pytorch_convention() -> None:
    w, v = np.array([1.0]), np.array([0.5])
    sgd_momentum_ref(w, np.array([2.0]), v, lr=0.1, momentum=0.9, weight_decay=0.1)
    assert v[0] == pytest.approx(0.9 * 0.5 + 2.0 + 0.1 * 1.0)
    assert w[0] == pytest.approx(1.0 - 0.1 * v[0])


def test_step_matches_loss_and_gradients_and_updates_in_place() -> None:
    g = NET.build()
    p = random_params(g, 0)
    x = np.random.default_rng(0).standard_normal((7, 3))
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    loss, grads, dh, correct = loss_and_gradients(g, p, x, y)
    w_before = {n: p.weight(n).copy() for n in p.nodes()}
    res = ReferenceBackend(dtype=np.float64).step(g, p, x, y, lr=0.1, momentum=0.0)
    assert res.loss == loss and res.correct == correct and res.batch == 7
    for n in p.nodes():
        np.testing.assert_allclose(p.weight(n), w_before[n] - 0.1 * grads[n][0], rtol=1e-12)
    assert res.stats.group_ids.tolist() == [0, 1]
    assert res.stats.grad_std[1] == pytest.approx(dh[1].std())


def test_group_stats_of_a_dead_group() -> None:
    g = NET.build()
    p = random_params(g, 0)
    p.bias(0)[...] = -1e6
    x = np.random.default_rng(1).standard_normal((5, 3))
    from streamdag.backends.reference import forward

    cache = forward(g, p, x)
    _, _, dh, _ = loss_and_gradients(g, p, x, np.zeros(5, np.int64))
    stats = group_stats_ref(g, dh, cache.outputs)
    assert stats.act_mean[0] == 0.0 and stats.act_mean[1] > 0
    assert stats.as_dict("act_mean")[0] == 0.0


def test_float32_training_and_prediction() -> None:
    g = NET.build()
    p = random_params(g, 0, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((4, 3))
    be = ReferenceBackend()
    assert be.predict(g, p, x).dtype == np.float32
    res = be.step(g, p, x, np.zeros(4, np.int64), lr=0.1)
    assert isinstance(res.loss, float)


def test_bad_batches() -> None:
    g = NET.build()
    p = random_params(g, 0)
    be = ReferenceBackend()
    with pytest.raises(DataError, match=r"\(batch, 3\)"):
        be.step(g, p, np.zeros((4, 2)), np.zeros(4, np.int64), lr=0.1)
    with pytest.raises(DataError, match="4 labels"):
        be.step(g, p, np.zeros((4, 3)), np.zeros(3, np.int64), lr=0.1)
    with pytest.raises(DataError, match=r"\(n, 3\)"):
        be.predict(g, p, np.zeros(3))


def test_get_backend() -> None:
    assert get_backend("reference").name == "reference"
    assert get_backend("auto").name in ("reference", "cuda")
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        get_backend("tpu")
    from streamdag.backends import backend_status

    if backend_status()["cuda"] is not None:
        with pytest.raises(BackendError, match="cuda backend cannot run here"):
            get_backend("cuda")
