"""The contenders of dag-bench: one adapter per way of running a training step.

Design note
-----------
A :class:`Contender` is data — a name, where it runs, a function that says why it cannot
run here (or ``None``) and a function that builds a :class:`Runner` from a workload. A runner
owns its own copy of the graph and the host parameters, so a mutation batch applied to one
contender never touches another.

* ``numpy-serial``: streamdag's :class:`~streamdag.backends.reference.ReferenceBackend`;
* ``streamdag-*``: ``streamdag.backends.cuda.CudaBackend(mode=…, backward=…)`` behind the same
  :class:`BackendRunner` — reported as skipped until ``backend_status()["cuda"]`` is ``None``;
* ``torch-*``: :mod:`streamdag.backends.torch_baseline` (torch imported there, lazily).

A mutation is measured the way the trainer does it: bring the host parameters up to date
(``sync``; skipped for a backend that replays the batch on its own copy, the CUDA backend),
apply the batch with :class:`~streamdag.mutation.MutationQueue`, then let the runner catch
up — ``on_mutation`` for a streamdag backend, a rebuild of modules, optimizer and CUDA graph
for PyTorch (what a PyTorch user pays after every structural change).
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import Backend, ReferenceBackend, backend_status
from ..graph import NetworkGraph
from ..mutation import Mutation, MutationQueue
from ..params import ParamStore

__all__ = ["CONTENDERS", "BackendRunner", "Contender", "Runner", "TorchAdapter",
           "contender_names"]


class Runner(ABC):
    """One contender, ready to step on its own copy of a workload.

    Args:
        graph: the runner's own graph (mutations change it in place).
        params: the runner's own host parameters.
    """

    def __init__(self, graph: NetworkGraph, params: ParamStore) -> None:
        self.graph = graph
        self.params = params

    @abstractmethod
    def step(self) -> None:
        """One training step (may return before the device finishes)."""

    @abstractmethod
    def loss(self) -> float:
        """The loss computed by the last step, before its update."""

    def synchronize(self) -> None:  # noqa: B027 - host runners are always synchronous
        """Wait until the device has finished every step issued so far."""

    def timed_step(self) -> float:
        """One step from an idle device; its duration in milliseconds."""
        self.synchronize()
        t0 = time.perf_counter()
        self.step()
        self.synchronize()
        return (time.perf_counter() - t0) * 1e3

    @abstractmethod
    def sync_params(self) -> None:
        """Bring ``self.params`` (the host copy) up to date."""

    def device_memory(self) -> dict[str, int] | None:
        """Device bytes held and the bytes the step truly needs (parameters, optimizer
        state, activations, gradients), where the runner knows them."""
        return None

    #: whether :meth:`mutate` brings the host copy up to date first (not for a backend that
    #: replays the batch on its own copy, as the trainer does)
    syncs_before_mutation: bool = True

    @abstractmethod
    def after_mutation(self, report: Any) -> None:
        """Catch up with a mutation batch already applied to ``graph`` and ``params``."""

    def mutate(self, mutations: list[Mutation]) -> dict[str, float]:
        """Apply a mutation batch; returns the milliseconds of each phase."""
        t0 = time.perf_counter()
        if self.syncs_before_mutation:
            self.sync_params()
        t1 = time.perf_counter()
        queue = MutationQueue()
        queue.extend(mutations)
        report = queue.apply(self.graph, self.params)
        t2 = time.perf_counter()
        self.after_mutation(report)
        self.synchronize()
        t3 = time.perf_counter()
        return {"sync_ms": (t1 - t0) * 1e3, "apply_ms": (t2 - t1) * 1e3,
                "rebuild_ms": (t3 - t2) * 1e3}


class BackendRunner(Runner):
    """A streamdag :class:`~streamdag.backends.Backend` (the reference or the CUDA one).

    A device backend may return a lazy result whose ``loss`` waits for the device; it is
    read right after the step it belongs to (a later step overwrites it).
    """

    def __init__(self, backend: Backend, graph: NetworkGraph, params: ParamStore,
                 x: np.ndarray, y: np.ndarray, *, lr: float) -> None:
        super().__init__(graph, params)
        self.backend = backend
        self.syncs_before_mutation = not backend.replays_param_ops
        self.x, self.y, self.lr = x, y, lr
        self._outcome: Any = None
        self._loss: float | None = None

    def step(self) -> None:
        self._outcome = self.backend.step(self.graph, self.params, self.x, self.y, lr=self.lr,
                                          momentum=0.0)
        self._loss = None

    def loss(self) -> float:
        if self._loss is None:
            self._loss = float(self._outcome.loss) if self._outcome is not None else float("nan")
        return self._loss

    def synchronize(self) -> None:
        sync = getattr(self.backend, "synchronize", None)
        if callable(sync):
            sync()
        elif self._outcome is not None:
            self.loss()  # reading the loss waits for the step that computed it

    def sync_params(self) -> None:
        self.backend.sync_params(self.params)

    def device_memory(self) -> dict[str, int] | None:
        report = getattr(self.backend, "memory_report", None)
        if report is None:
            return None
        m = report()
        return {"held_bytes": int(m["total"]), "needed_bytes": int(m["needed"])}

    def after_mutation(self, report: Any) -> None:
        self.backend.on_mutation(self.graph, self.params, report)


class TorchAdapter(Runner):
    """A :mod:`~streamdag.backends.torch_baseline` runner; rebuilt after each mutation."""

    def __init__(self, kind: str, graph: NetworkGraph, params: ParamStore, x: np.ndarray,
                 y: np.ndarray, *, lr: float, device: str | None) -> None:
        super().__init__(graph, params)
        self.kind, self.x, self.y, self.lr, self.device = kind, x, y, lr, device
        self.inner = self._build()

    def _build(self) -> Any:
        from ..backends import torch_baseline

        return torch_baseline.make_runner(self.kind, self.graph, self.params, self.x, self.y,
                                          lr=self.lr, device=self.device)

    def step(self) -> None:
        self.inner.step()

    def loss(self) -> float:
        return float(self.inner.loss())

    def synchronize(self) -> None:
        self.inner.synchronize()

    def timed_step(self) -> float:
        return float(self.inner.timed_step())

    def sync_params(self) -> None:
        self.inner.export_params(self.params)

    def after_mutation(self, report: Any) -> None:
        self.inner = None  # free the old device buffers before building the new ones
        self.inner = self._build()


Build = Callable[[NetworkGraph, ParamStore, np.ndarray, np.ndarray, float, "str | None"],
                 Runner]


@dataclass(frozen=True)
class Contender:
    """A named way of running the step.

    Attributes:
        name: as in BENCHMARK.md (``numpy-serial``, ``torch-levels-graph``, …).
        unavailable: ``device -> None`` if it can run here, else the reason it cannot.
        build: ``(graph, params, x, y, lr, device) -> Runner`` on copies it may keep.
        cpu_ok: can run on a CPU-only machine (the ``smoke`` preset runs only these).
        capped: slow by design (the serial reference): timed for fewer steps rather than
            skipped when the time budget is short; the record says how many.
        family: ``"streamdag"`` or ``"baseline"`` (ratios are streamdag ÷ baseline).
    """

    name: str
    unavailable: Callable[[str | None], str | None]
    build: Build
    cpu_ok: bool = False
    capped: bool = False
    family: str = "baseline"


def _numpy_build(graph: NetworkGraph, params: ParamStore, x: np.ndarray, y: np.ndarray,
                 lr: float, device: str | None) -> Runner:
    return BackendRunner(ReferenceBackend(), graph, params, x, y, lr=lr)


def _torch_contender(kind: str) -> Contender:
    def unavailable(device: str | None) -> str | None:
        from ..backends import torch_baseline

        return torch_baseline.unavailable_reason(kind, device=device)

    def build(graph: NetworkGraph, params: ParamStore, x: np.ndarray, y: np.ndarray,
              lr: float, device: str | None) -> Runner:
        return TorchAdapter(kind, graph, params, x, y, lr=lr, device=device)

    return Contender(f"torch-{kind}", unavailable, build, cpu_ok=not kind.endswith("graph"))


def _streamdag_contender(name: str, mode: str, backward: str) -> Contender:
    def unavailable(device: str | None) -> str | None:
        if device == "cpu":
            return "the cuda backend needs a GPU"
        reason = backend_status()["cuda"]
        if reason is not None:
            return f"cuda backend unavailable: {reason}"
        modes = getattr(importlib.import_module("streamdag.backends.cuda"), "MODES", (mode,))
        if mode not in modes:
            return f"the cuda backend has no mode {mode!r} (it has {', '.join(modes)})"
        return None

    def build(graph: NetworkGraph, params: ParamStore, x: np.ndarray, y: np.ndarray,
              lr: float, device: str | None) -> Runner:
        module = importlib.import_module("streamdag.backends.cuda")
        backend: Backend = module.CudaBackend(mode=mode, backward=backward)
        return BackendRunner(backend, graph, params, x, y, lr=lr)

    return Contender(name, unavailable, build, family="streamdag")


CONTENDERS: dict[str, Contender] = {
    c.name: c for c in (
        Contender("numpy-serial", lambda device: None, _numpy_build, cpu_ok=True, capped=True),
        _torch_contender("eager"),
        _torch_contender("graph"),
        _torch_contender("levels"),
        _torch_contender("levels-graph"),
        _streamdag_contender("streamdag-streams", "streams", "pull"),
        _streamdag_contender("streamdag-streams-graph", "streams-graph", "pull"),
        _streamdag_contender("streamdag-graph", "graph", "pull"),
        _streamdag_contender("streamdag-fused", "fused", "pull"),
        _streamdag_contender("streamdag-fused-push", "fused", "push"),
        _streamdag_contender("streamdag-persistent", "persistent", "pull"),
        # the default: persistent or graph by the network's shape and by whether it grows
        # (CudaBackend's auto mode; a step timed without mutations counts as settled)
        _streamdag_contender("streamdag-auto", "auto", "pull"),
    )
}


def contender_names() -> list[str]:
    """Every known contender, in report order."""
    return list(CONTENDERS)
