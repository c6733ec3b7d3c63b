"""The serial numpy reference: the executable definition of a training step.

Every other backend is tested against this module. It is written to be obviously right,
not fast: one group at a time in topological order, activations as ``(batch, width)``
arrays, float32 for training and float64 for gradient checks.

Math (DESIGN.md, "Definitions"), with ``x_g = concat(h_p for p in P(g))``:

* forward: ``z_g = x_g @ W_gᵀ + b_g``, ``h_g = ReLU(z_g)``; the output is linear;
* loss: softmax cross-entropy, mean over the batch;
* backward: ``dL/dh_g = Σ_s dL/dx_s[:, cols(g)]`` over successors ``s``;
  ``dz = dh ⊙ [z > 0]``, ``dW = dzᵀ x``, ``db = Σ_batch dz``, ``dx = dz W``;
* update (SGD with momentum, PyTorch's convention): ``v ← μ v + (dW + λ W)``, ``W ← W - η v``;
* gradient statistic: ``std(dL/dh_g)`` over batch and neurons (population std), and the
  mean activation ``mean(h_g)`` (a dead group has 0), for every group.

Kernel pairs: ``dense_fwd`` ↔ :func:`dense_fwd_ref`, ``dense_bwd`` ↔ :func:`dense_bwd_ref`,
``softmax_xent`` ↔ :func:`softmax_xent_ref`, ``sgd_momentum`` ↔ :func:`sgd_momentum_ref`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from ..graph import INPUT, OUTPUT, NetworkGraph
from ..params import ParamStore
from .base import Backend, GroupStats, StepResult

__all__ = [
    "ForwardCache",
    "ReferenceBackend",
    "dense_bwd_ref",
    "dense_fwd_ref",
    "group_stats_ref",
    "loss_and_gradients",
    "sgd_momentum_ref",
    "softmax_xent_ref",
]


def dense_fwd_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray, *, relu: bool) -> np.ndarray:
    """``ReLU(x @ wᵀ + b)`` (no ReLU when ``relu`` is False); ``x`` is ``(batch, fan_in)``."""
    z = x @ w.T + b
    return np.maximum(z, 0) if relu else z


def dense_bwd_ref(
    x: np.ndarray, w: np.ndarray, h: np.ndarray, dh: np.ndarray, *, relu: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a dense(+ReLU) group: returns ``(dx, dW, db)``.

    ``h`` is the group's output (for the ReLU mask ``h > 0``, equal to ``z > 0``).
    """
    dz = dh * (h > 0) if relu else dh
    return dz @ w, dz.T @ x, dz.sum(axis=0)


def softmax_xent_ref(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, int]:
    """Mean softmax cross-entropy; returns ``(loss, dL/dlogits, n_correct)``."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    rows = np.arange(n)
    loss = float(np.mean(np.log(s[:, 0]) - z[rows, y]))
    d = e / s
    d[rows, y] -= 1
    correct = int((logits.argmax(axis=1) == y).sum())
    return loss, d / n, correct


def sgd_momentum_ref(
    w: np.ndarray, dw: np.ndarray, v: np.ndarray, *, lr: float, momentum: float,
    weight_decay: float = 0.0,
) -> None:
    """In place: ``v ← μ v + (dw + λ w)``; ``w ← w - η v``."""
    g = dw + weight_decay * w if weight_decay else dw
    v *= momentum
    v += g
    w -= lr * v


@dataclass
class ForwardCache:
    """What backward needs from forward: each node's input and output."""

    inputs: dict[int, np.ndarray]
    outputs: dict[int, np.ndarray]
    logits: np.ndarray


def forward(graph: NetworkGraph, params: ParamStore, x: np.ndarray) -> ForwardCache:
    """Run the network on ``x``; returns every group's input and output."""
    outs: dict[int, np.ndarray] = {INPUT: x}
    ins: dict[int, np.ndarray] = {}
    for node in [*graph.topological_order(), OUTPUT]:
        preds = graph.preds(node)
        xin = outs[preds[0]] if len(preds) == 1 else np.concatenate(
            [outs[p] for p in preds], axis=1)
        ins[node] = xin
        outs[node] = dense_fwd_ref(xin, params.weight(node), params.bias(node),
                                   relu=node != OUTPUT)
    return ForwardCache(ins, outs, outs[OUTPUT])


def backward(
    graph: NetworkGraph, params: ParamStore, cache: ForwardCache, dlogits: np.ndarray
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, np.ndarray]]:
    """Returns ``({node: (dW, db)}, {group: dL/dh_g})``."""
    dh: dict[int, np.ndarray] = {OUTPUT: dlogits}
    grads: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for node in [OUTPUT, *reversed(graph.topological_order())]:
        dx, dw, db = dense_bwd_ref(cache.inputs[node], params.weight(node),
                                   cache.outputs[node], dh[node], relu=node != OUTPUT)
        grads[node] = (dw, db)
        col = 0
        for p in graph.preds(node):
            wp = graph.width(p)
            if p != INPUT:
                block = dx[:, col : col + wp]
                dh[p] = dh[p] + block if p in dh else block.copy()
            col += wp
    del dh[OUTPUT]
    return grads, dh


def loss_and_gradients(
    graph: NetworkGraph, params: ParamStore, x: np.ndarray, y: np.ndarray
) -> tuple[float, dict[int, tuple[np.ndarray, np.ndarray]], dict[int, np.ndarray], int]:
    """Forward + loss + backward: ``(loss, {node: (dW, db)}, {group: dL/dh}, n_correct)``."""
    cache = forward(graph, params, x.astype(params.dtype, copy=False))
    loss, dlogits, correct = softmax_xent_ref(cache.logits, y)
    grads, dh = backward(graph, params, cache, dlogits)
    return loss, grads, dh, correct


class ReferenceBackend(Backend):
    """Serial numpy training step on the host.

    Args:
        dtype: ``np.float32`` (default) or ``np.float64``; parameters must match.
    """

    name = "reference"

    def __init__(self, *, dtype: Any = np.float32) -> None:
        self.dtype = np.dtype(dtype)

    def step(
        self, graph: NetworkGraph, params: ParamStore, x: np.ndarray, y: np.ndarray, *,
        lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
    ) -> StepResult:
        _check_batch(graph, x, y)
        cache = forward(graph, params, x.astype(params.dtype, copy=False))
        loss, dlogits, correct = softmax_xent_ref(cache.logits, y)
        grads, dh = backward(graph, params, cache, dlogits)
        for node, (dw, db) in grads.items():
            sgd_momentum_ref(params.weight(node), dw, params.weight_momentum(node), lr=lr,
                             momentum=momentum, weight_decay=weight_decay)
            sgd_momentum_ref(params.bias(node), db, params.bias_momentum(node), lr=lr,
                             momentum=momentum)
        return StepResult(loss, correct, len(y), group_stats_ref(graph, dh, cache.outputs))

    def predict(self, graph: NetworkGraph, params: ParamStore, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != graph.n_inputs:
            raise DataError(f"expected inputs of shape (n, {graph.n_inputs}), got {x.shape}")
        return forward(graph, params, x.astype(params.dtype, copy=False)).logits


def group_stats_ref(
    graph: NetworkGraph, dh: dict[int, np.ndarray], outs: dict[int, np.ndarray]
) -> GroupStats:
    """Per group, ``std(dL/dh_g)`` and ``mean(h_g)`` over batch and neurons."""
    ids = graph.group_ids()
    std = np.array([float(dh[g].std(dtype=np.float64)) for g in ids])
    act = np.array([float(outs[g].mean(dtype=np.float64)) for g in ids])
    return GroupStats(np.array(ids, dtype=np.int64), std, act)


def _check_batch(graph: NetworkGraph, x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 2 or x.shape[1] != graph.n_inputs:
        raise DataError(f"expected inputs of shape (batch, {graph.n_inputs}), got {x.shape}")
    if y.shape != (x.shape[0],):
        raise DataError(f"expected {x.shape[0]} labels, got shape {y.shape}")
