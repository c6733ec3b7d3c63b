"""PyTorch baselines for dag-bench: the strongest PyTorch a user could write for a DAG.

Design note
-----------
torch is an optional extra: this is the one streamdag module that imports it, and only
inside functions, so ``import streamdag.backends.torch_baseline`` works without it and
:func:`unavailable_reason` says why a baseline cannot run.

Every baseline starts from a :class:`~streamdag.graph.NetworkGraph` and the float32 values of a
:class:`~streamdag.params.ParamStore`, trains with plain SGD on one fixed batch and computes
exactly the reference's math (``streamdag.backends.reference``): dense+ReLU groups, a linear
output, mean softmax cross-entropy. TF32 is switched off so the loss can be compared with the
numpy reference. Four ways to run a step:

* ``eager`` — one ``nn.Linear`` per group, forward in topological order with ``torch.cat``
  of the predecessors' outputs, autograd, ``torch.optim.SGD`` (the readable baseline);
* ``graph`` — the same whole step (forward, loss, backward, ``optimizer.step()``) captured
  in one CUDA graph, warm-up on a side stream as the PyTorch CUDA-graph docs do;
* ``levels`` — one batched matmul per DAG level: activations live in one feature-major
  buffer ``H`` (rows = neurons, columns = batch), each (level, width) bucket gathers its
  inputs with one ``index_select`` over a precomputed index tensor (padded to the bucket's
  largest fan-in with a row that is always zero), runs ``baddbmm`` and ReLU in place, and
  backward runs the same buckets in reverse with explicit gradients (``bmm`` for ``dW`` and
  ``dX``, ``index_add_`` to send ``dX`` to the predecessors). No Python work per group in a
  step, no autograd tape, no allocation in the steady state;
* ``levels-graph`` — that step captured in one CUDA graph.

Each runner exposes ``step()``, ``loss()`` (the loss computed by the last step, before its
update), ``synchronize()``, ``timed_step()`` (milliseconds: CUDA events on a GPU, a host clock
on the CPU) and ``export_params(params)`` (copy the current values back to the host store).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import numpy as np

from ..errors import BackendError, ConfigError
from ..graph import INPUT, OUTPUT, NetworkGraph
from ..params import ParamStore

__all__ = ["KINDS", "TorchRunner", "make_runner", "torch_device", "unavailable_reason",
           "versions"]

KINDS = ("eager", "graph", "levels", "levels-graph")
_GRAPH_WARMUP = 2  # side-stream iterations before capture (the docs use 3; 2 suffices here)


def _torch() -> Any:
    import torch

    # The correctness gate compares float32 losses with a float64 reference at 1e-4 relative:
    # TF32 matmuls (10-bit mantissa) would fail it, so every baseline runs in full float32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return torch


def unavailable_reason(kind: str, *, device: str | None = None) -> str | None:
    """``None`` if baseline ``kind`` can run here (on ``device``, default: best), else why not."""
    if kind not in KINDS:
        raise ConfigError(f"unknown torch baseline {kind!r}: use one of {', '.join(KINDS)}")
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install 'streamdag[torch]')"
    torch = _torch()
    dev = device or torch_device()
    if kind.endswith("graph") and (dev != "cuda" or not torch.cuda.is_available()):
        return "CUDA graph capture needs a CUDA GPU visible to torch"
    if dev == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    return None


def torch_device() -> str:
    """``"cuda"`` where torch sees a GPU, else ``"cpu"``."""
    return "cuda" if _torch().cuda.is_available() else "cpu"


def versions() -> dict[str, str | None]:
    """torch's version, its CUDA version and the GPU name (``None`` where absent)."""
    if importlib.util.find_spec("torch") is None:
        return {"torch": None, "torch_cuda": None, "gpu": None}
    torch = _torch()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "gpu": gpu}


class TorchRunner:
    """Common parts: device, fixed batch, timing, loss read-out."""

    def __init__(self, graph: NetworkGraph, x: np.ndarray, y: np.ndarray, *, lr: float,
                 device: str) -> None:
        self.torch = _torch()
        self.device = self.torch.device(device)
        self.graph = graph
        self.lr = float(lr)
        self.x = self.torch.as_tensor(np.ascontiguousarray(x, np.float32), device=self.device)
        self.y = self.torch.as_tensor(np.asarray(y, np.int64), device=self.device)
        self._loss: Any = None

    def step(self) -> None:
        raise NotImplementedError

    def loss(self) -> float:
        """The loss the last step computed (before its update); synchronizes."""
        if self._loss is None:
            raise BackendError("no step has run yet")
        return float(self._loss.item())

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def timed_step(self) -> float:
        """Run one step from an idle device; its duration in milliseconds."""
        if self.device.type == "cuda":
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            self.synchronize()
            start.record()
            self.step()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        self.step()
        return (time.perf_counter() - t0) * 1e3

    def export_params(self, params: ParamStore) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------- eager (per group)
class EagerRunner(TorchRunner):
    """One ``nn.Linear`` per group; autograd; ``torch.optim.SGD``."""

    def __init__(self, graph: NetworkGraph, params: ParamStore, x: np.ndarray, y: np.ndarray,
                 *, lr: float, device: str) -> None:
        super().__init__(graph, x, y, lr=lr, device=device)
        torch, nn = self.torch, self.torch.nn
        self.order = [*graph.topological_order(), OUTPUT]
        self.preds = [graph.preds(n) for n in self.order]
        self.layers = nn.ModuleList()
        for node in self.order:
            w, b = params.weight(node), params.bias(node)
            lin = nn.Linear(w.shape[1], w.shape[0], device=self.device)
            with torch.no_grad():
                lin.weight.copy_(torch.as_tensor(w))
                lin.bias.copy_(torch.as_tensor(b))
            self.layers.append(lin)
        self.opt = torch.optim.SGD(self.layers.parameters(), lr=self.lr, momentum=0.0,
                                   foreach=True)

    def _loss_fn(self) -> Any:
        torch = self.torch
        outs: dict[int, Any] = {INPUT: self.x}
        last = len(self.order) - 1
        for i, (node, preds, lin) in enumerate(zip(self.order, self.preds, self.layers,
                                                   strict=True)):
            xin = outs[preds[0]] if len(preds) == 1 else torch.cat([outs[p] for p in preds], 1)
            z = lin(xin)
            outs[node] = z if i == last else torch.relu(z)
        return torch.nn.functional.cross_entropy(outs[OUTPUT], self.y)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss_fn()
        loss.backward()
        self.opt.step()
        self._loss = loss.detach()

    def export_params(self, params: ParamStore) -> None:
        for node, lin in zip(self.order, self.layers, strict=True):
            params.weight(node)[...] = lin.weight.detach().cpu().numpy()
            params.bias(node)[...] = lin.bias.detach().cpu().numpy()


def _warm_up_on_side_stream(torch: Any, device: Any, step: Any) -> None:
    """Run ``step`` a few times on a side stream before a capture, as the PyTorch docs do
    (lazy initialisation and autotuning must not land in the graph)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(_GRAPH_WARMUP):
            step()
    torch.cuda.current_stream(device).wait_stream(side)


class GraphRunner(EagerRunner):
    """:class:`EagerRunner`'s whole step (optimizer included) captured in one CUDA graph."""

    def __init__(self, graph: NetworkGraph, params: ParamStore, x: np.ndarray, y: np.ndarray,
                 *, lr: float, device: str) -> None:
        super().__init__(graph, params, x, y, lr=lr, device=device)
        torch = self.torch
        weights = list(self.layers.parameters())
        initial = [p.detach().clone() for p in weights]
        _warm_up_on_side_stream(torch, self.device, super().step)
        self.cuda_graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.cuda_graph):
            static_loss = self._loss_fn()
            static_loss.backward()
            self.opt.step()
        # Warm-up trained the weights: start the timed run from the shared initial values.
        with torch.no_grad():
            for p, p0 in zip(weights, initial, strict=True):
                p.copy_(p0)
        self.synchronize()
        self._static_loss = static_loss.detach()

    def step(self) -> None:
        self.cuda_graph.replay()
        self._loss = self._static_loss


# ---------------------------------------------------------------------- level-batched
class LevelsRunner(TorchRunner):
    """One ``baddbmm`` per (level, width) bucket; explicit backward; see the module doc."""

    def __init__(self, graph: NetworkGraph, params: ParamStore, x: np.ndarray, y: np.ndarray,
                 *, lr: float, device: str) -> None:
        super().__init__(graph, x, y, lr=lr, device=device)
        torch = self.torch
        batch = x.shape[0]
        # Rows of H: the input's features, then every bucket's groups contiguously, then one
        # row that stays zero (the padding source).
        buckets: list[tuple[int, list[int]]] = []
        for level in graph.levels():
            by_width: dict[int, list[int]] = {}
            for g in level:
                by_width.setdefault(graph.width(g), []).append(g)
            buckets += [(w, gs) for w, gs in sorted(by_width.items())]
        row: dict[int, int] = {INPUT: 0}
        r = graph.n_inputs
        self.bucket_rows: list[tuple[int, int]] = []
        for w, gs in buckets:
            self.bucket_rows.append((r, r + w * len(gs)))
            for g in gs:
                row[g] = r
                r += w
        self.zero_row = r
        n_rows = r + 1

        def gather_index(nodes: list[int]) -> tuple[np.ndarray, int]:
            fan = max(graph.fan_in(n) for n in nodes)
            idx = np.full((len(nodes), fan), self.zero_row, np.int64)
            for k, n in enumerate(nodes):
                cols = [row[p] + j for p in graph.preds(n) for j in range(graph.width(p))]
                idx[k, : len(cols)] = cols
            return idx.ravel(), fan

        dev, f32 = self.device, torch.float32
        self.H = torch.zeros(n_rows, batch, device=dev, dtype=f32)
        self.dH = torch.zeros_like(self.H)
        self.H[: graph.n_inputs] = self.x.t()
        self.buckets: list[dict[str, Any]] = []
        for (w, gs), (r0, r1) in zip(buckets, self.bucket_rows, strict=True):
            idx, fan = gather_index(gs)
            wpad = np.zeros((len(gs), w, fan), np.float32)
            for k, g in enumerate(gs):
                wg = params.weight(g)
                wpad[k, :, : wg.shape[1]] = wg
            bias = np.stack([params.bias(g) for g in gs])[:, :, None]
            self.buckets.append({
                "groups": gs, "rows": (r0, r1), "n": len(gs), "w": w, "fan": fan,
                "idx": torch.as_tensor(idx, device=dev),
                "W": torch.as_tensor(wpad, device=dev),
                "b": torch.as_tensor(bias.astype(np.float32), device=dev),
                "X": torch.empty(len(gs), fan, batch, device=dev, dtype=f32),
                "dW": torch.zeros(len(gs), w, fan, device=dev, dtype=f32),
                "db": torch.zeros(len(gs), w, 1, device=dev, dtype=f32),
                "dX": torch.empty(len(gs), fan, batch, device=dev, dtype=f32),
                # Buckets fed by the input alone send no gradient anywhere.
                "send_dx": bool(((idx >= graph.n_inputs) & (idx != self.zero_row)).any()),
            })
        idx_o, fan_o = gather_index([OUTPUT])
        self.idx_o = torch.as_tensor(idx_o, device=dev)
        wo = params.weight(OUTPUT)
        wo_pad = np.zeros((wo.shape[0], fan_o), np.float32)
        wo_pad[:, : wo.shape[1]] = wo
        self.Wo = torch.as_tensor(wo_pad, device=dev)
        self.bo = torch.as_tensor(params.bias(OUTPUT)[:, None].astype(np.float32), device=dev)
        self.Xo = torch.empty(fan_o, batch, device=dev, dtype=f32)
        self.dWo = torch.zeros_like(self.Wo)
        self.dbo = torch.zeros_like(self.bo)
        self.onehot = torch.nn.functional.one_hot(self.y, graph.n_classes).to(f32)
        self.inv_batch = 1.0 / batch
        self.param_list = [t for b in self.buckets for t in (b["W"], b["b"])] + [self.Wo, self.bo]
        self.grad_list = [t for b in self.buckets for t in (b["dW"], b["db"])] + [self.dWo,
                                                                                   self.dbo]
        self._loss = torch.zeros((), device=dev, dtype=f32)

    def _view(self, t: Any, b: dict[str, Any]) -> Any:
        r0, r1 = b["rows"]
        return t[r0:r1].view(b["n"], b["w"], -1)

    def step(self) -> None:
        torch = self.torch
        with torch.no_grad():
            H, dH = self.H, self.dH
            for b in self.buckets:
                torch.index_select(H, 0, b["idx"], out=b["X"].view(-1, H.shape[1]))
                z = self._view(H, b)
                torch.baddbmm(b["b"], b["W"], b["X"], out=z)
                z.relu_()
            torch.index_select(H, 0, self.idx_o, out=self.Xo)
            logits = torch.addmm(self.bo, self.Wo, self.Xo).t()  # (batch, classes)
            logp = torch.log_softmax(logits, dim=1)
            self._loss.copy_((logp * self.onehot).sum() * -self.inv_batch)
            dlogits = torch.softmax(logits, dim=1).sub_(self.onehot).mul_(self.inv_batch).t()
            dH.zero_()
            torch.mm(dlogits, self.Xo.t(), out=self.dWo)
            torch.sum(dlogits, dim=1, keepdim=True, out=self.dbo)
            dH.index_add_(0, self.idx_o, torch.mm(self.Wo.t(), dlogits))
            for b in reversed(self.buckets):
                dz = self._view(dH, b)
                dz.masked_fill_(self._view(H, b) <= 0, 0.0)
                torch.bmm(dz, b["X"].transpose(1, 2), out=b["dW"])
                torch.sum(dz, dim=2, keepdim=True, out=b["db"])
                if b["send_dx"]:
                    torch.bmm(b["W"].transpose(1, 2), dz, out=b["dX"])
                    dH.index_add_(0, b["idx"], b["dX"].view(-1, H.shape[1]))
            torch._foreach_add_(self.param_list, self.grad_list, alpha=-self.lr)

    def loss(self) -> float:
        return float(self._loss.item())

    def export_params(self, params: ParamStore) -> None:
        for b in self.buckets:
            W, bias = b["W"].cpu().numpy(), b["b"].cpu().numpy()
            for k, g in enumerate(b["groups"]):
                cols = params.weight(g).shape[1]
                params.weight(g)[...] = W[k, :, :cols]
                params.bias(g)[...] = bias[k, :, 0]
        cols = params.weight(OUTPUT).shape[1]
        params.weight(OUTPUT)[...] = self.Wo.cpu().numpy()[:, :cols]
        params.bias(OUTPUT)[...] = self.bo.cpu().numpy()[:, 0]


class LevelsGraphRunner(LevelsRunner):
    """:class:`LevelsRunner`'s step captured in one CUDA graph."""

    def __init__(self, graph: NetworkGraph, params: ParamStore, x: np.ndarray, y: np.ndarray,
                 *, lr: float, device: str) -> None:
        super().__init__(graph, params, x, y, lr=lr, device=device)
        torch = self.torch
        initial = [p.clone() for p in self.param_list]
        _warm_up_on_side_stream(torch, self.device, super().step)
        self.cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.cuda_graph):
            super().step()
        with torch.no_grad():
            for p, p0 in zip(self.param_list, initial, strict=True):
                p.copy_(p0)
        self.synchronize()

    def step(self) -> None:
        self.cuda_graph.replay()


_RUNNERS: dict[str, type[TorchRunner]] = {
    "eager": EagerRunner, "graph": GraphRunner, "levels": LevelsRunner,
    "levels-graph": LevelsGraphRunner,
}


def make_runner(kind: str, graph: NetworkGraph, params: ParamStore, x: np.ndarray,
                y: np.ndarray, *, lr: float, device: str | None = None) -> TorchRunner:
    """A ready-to-step baseline of ``kind`` (one of :data:`KINDS`) from float32 parameters.

    Raises:
        BackendError: the baseline cannot run here (the message says why).
    """
    reason = unavailable_reason(kind, device=device)
    if reason is not None:
        raise BackendError(f"torch baseline {kind!r} cannot run here: {reason}")
    cls: Any = _RUNNERS[kind]
    runner: TorchRunner = cls(graph, params, x, y, lr=lr, device=device or torch_device())
    return runner
