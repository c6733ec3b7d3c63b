"""What every training backend provides, and the records it returns.

A backend runs training steps on a (graph, params) pair that the trainer owns. Backends
that keep parameters elsewhere (a GPU) mirror the :class:`~streamdag.params.ParamStore`
and hand it back up to date through :meth:`Backend.sync_params`; checkpoints and evaluation
use that host copy.

Two optional capabilities keep a growing network's state on the device:

* :attr:`Backend.replays_param_ops`: the backend replays a mutation batch's
  :class:`~streamdag.params.ParamOp` log on its own copy, so the trainer applies a batch to
  the host store *without* syncing it first (the host values of a group may then be stale;
  the structure and slot layout are always current), and parameters never leave the device.
* :class:`ScoreTracker`: the backend keeps the growth scores (the EMAs of
  :class:`~streamdag.growth.GradStdCriterion` and the activity) itself, updated inside each
  step, and answers only "which groups pass this threshold" — so per-group statistics do not
  cross to the host every step (:meth:`GrowthPolicy.attach <streamdag.growth.GrowthPolicy.attach>`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..graph import NetworkGraph
from ..mutation import MutationReport
from ..params import ParamStore

__all__ = ["Backend", "GroupStats", "ScoreTracker", "StepOutcome", "StepResult"]


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


@runtime_checkable
class ScoreTracker(Protocol):
    """A backend that keeps the two growth EMAs per group itself (see the module note).

    Scores are the host criteria's, bit for bit: ``field`` ``"grad_std"`` is the EMA of
    ``std(dL/dh_g)``, ``"act_mean"`` that of ``mean(h_g)``; a group's first observation sets
    them, later ones blend in with weight ``1 - decay``.
    """

    def track_scores(self, decays: tuple[float, float], grad_std: Mapping[int, float],
                     act_mean: Mapping[int, float]) -> None:
        """Start keeping the EMAs (decays of grad_std and act_mean), from these values."""

    def untrack_scores(self) -> None:
        """Stop keeping them."""

    def scores_passing(self, field: str, threshold: float) -> dict[int, float]:
        """Observed groups whose ``grad_std`` EMA is above (``act_mean``: below) threshold."""

    def forget_scores(self, group_ids: Iterable[int]) -> None:
        """Drop these groups' EMAs (they restart at the next observation)."""

    def read_scores(self) -> tuple[dict[int, float], dict[int, float]]:
        """Every observed group's (grad_std EMA, act_mean EMA)."""


class Backend(ABC):
    """Runs training steps and predictions for a network."""

    name: str = "backend"
    #: replays mutation batches on its own parameter copy (see the module note)
    replays_param_ops: bool = False

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

    def on_resume(self, steps_since_growth: int | None) -> None:  # noqa: B027 - optional hook
        """Called when training resumes from a checkpoint, before the first step: the steps
        run since the last mutation batch (``None``: no batch yet), as the backend of the
        run that stopped counted them through :meth:`step` and :meth:`on_mutation`."""

    def sync_params(self, params: ParamStore) -> None:  # noqa: B027 - optional hook
        """Bring the host ``params`` up to date (no-op for host backends)."""

    def trains(self, dtype: np.dtype) -> bool:
        """Whether this backend trains parameters of ``dtype`` (host backends: any float)."""
        return True
