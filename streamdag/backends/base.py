"""What every training backend provides, and the records it returns.

A backend runs training steps on a (graph, params) pair that the trainer owns. Backends
that keep parameters elsewhere (a GPU) mirror the :class:`~streamdag.params.ParamStore`
and hand it back up to date through :meth:`Backend.sync_params`; the host copy is then the
one checkpoints and mutations use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..graph import NetworkGraph
from ..mutation import MutationReport
from ..params import ParamStore

__all__ = ["Backend", "GroupStats", "StepOutcome", "StepResult"]


@dataclass(frozen=True)
class GroupStats:
    """Per-group statistics of one step, aligned with ``group_ids``.

    Attributes:
        group_ids: ids of the groups, ascending.
        grad_std: ``std(dL/dh_g)`` over batch and neurons.
        act_mean: ``mean(h_g)`` over batch and neurons (0 for a dead group).
    """

    group_ids: np.ndarray
    grad_std: np.ndarray
    act_mean: np.ndarray

    def as_dict(self, field: str = "grad_std") -> dict[int, float]:
        values = getattr(self, field)
        return {int(g): float(v) for g, v in zip(self.group_ids, values, strict=True)}


@dataclass(frozen=True)
class StepResult:
    """The outcome of one training step (before its update was applied)."""

    loss: float
    correct: int
    batch: int
    stats: GroupStats


class StepOutcome(Protocol):
    """What :meth:`Backend.step` returns: a :class:`StepResult` or a lazy device equivalent
    (reading a field may synchronise with the device)."""

    @property
    def loss(self) -> float: ...
    @property
    def correct(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def stats(self) -> GroupStats: ...


class Backend(ABC):
    """Runs training steps and predictions for a network."""

    name: str = "backend"

    @abstractmethod
    def step(
        self, graph: NetworkGraph, params: ParamStore, x: np.ndarray, y: np.ndarray, *,
        lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
    ) -> StepOutcome:
        """Forward, loss, backward and SGD update on one batch."""

    @abstractmethod
    def predict(self, graph: NetworkGraph, params: ParamStore, x: np.ndarray) -> np.ndarray:
        """Logits for ``x``."""

    def on_mutation(  # noqa: B027 - optional hook, host backends need nothing
        self, graph: NetworkGraph, params: ParamStore, report: MutationReport
    ) -> None:
        """Called after a mutation batch was applied to the host graph and params."""

    def sync_params(self, params: ParamStore) -> None:  # noqa: B027 - optional hook
        """Bring the host ``params`` up to date (no-op for host backends)."""
