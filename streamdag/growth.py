"""When and where the network grows: criteria, marking, selection, the cap.

Design note
-----------
After each step a backend reports per-group statistics (:class:`GroupStats`). A
:class:`Criterion` turns them into one smoothed *score* per group; the default,
:class:`GradStdCriterion`, is the EMA of ``std(dL/dh_g)``. Other criteria plug in by
subclassing :class:`Criterion` (``update``, ``scores``, ``forget``, state for checkpoints).

Every ``every`` steps :meth:`GrowthPolicy.propose` turns scores into mutations:

1. **mark** groups whose score exceeds ``threshold`` and that are out of cooldown;
2. **select** (:func:`select_closest_to_input`): among marked groups joined by edges between
   marked groups, only the one closest to the input (smallest depth, ties by id) survives;
3. **cap** (:func:`apply_cap`): each duplication adds a group; when there is room for fewer
   than were selected, the highest scores win;
4. **kind**: ``depth`` or ``width`` duplication, by ``kind`` (``mixed`` draws depth with
   probability ``depth_fraction``, from the trainer's seeded RNG);
5. optionally **prune** groups whose mean activation stayed below ``prune_below`` (dead).

A group that was just created or duplicated is in cooldown for ``cooldown`` steps: an
identity copy receives its parent's gradient and would otherwise be marked at once.

With the built-in criterion, a backend that keeps the scores itself (a
:class:`~streamdag.backends.base.ScoreTracker`, e.g. the CUDA backend) can be attached
(:meth:`GrowthPolicy.attach`): the EMAs are then updated on the device inside each step, and
``propose`` asks it only for the groups passing the thresholds — the same scores, bit for
bit, without per-group statistics crossing to the host every step. The criteria objects are
brought up to date whenever the policy's state is read (checkpoints) or it is detached.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends.base import GroupStats, ScoreTracker
from .errors import ConfigError
from .graph import NetworkGraph
from .mutation import DuplicateDepth, DuplicateWidth, Mutation, MutationReport, Prune

__all__ = [
    "Criterion",
    "GradStdCriterion",
    "GrowthPolicy",
    "apply_cap",
    "select_closest_to_input",
]


class Criterion(ABC):
    """Turns per-step group statistics into a smoothed score per group."""

    name: str = "criterion"

    @abstractmethod
    def update(self, stats: GroupStats) -> None:
        """Fold one step's statistics in."""

    @abstractmethod
    def scores(self) -> dict[int, float]:
        """Current score of every group seen so far."""

    @abstractmethod
    def forget(self, group_ids: Iterable[int]) -> None:
        """Drop groups (removed, or re-initialised by a mutation)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class EmaCriterion(Criterion):
    """Exponential moving average of one :class:`GroupStats` field.

    The first observation of a group sets its score; later ones blend in with weight
    ``1 - decay``.
    """

    field = "grad_std"

    def __init__(self, *, decay: float = 0.9) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._ema: dict[int, float] = {}

    def update(self, stats: GroupStats) -> None:
        values = getattr(stats, self.field)
        d = self.decay
        for g, v in zip(stats.group_ids.tolist(), values.tolist(), strict=True):
            old = self._ema.get(g)
            self._ema[g] = v if old is None else d * old + (1.0 - d) * v

    def scores(self) -> dict[int, float]:
        return dict(self._ema)

    def forget(self, group_ids: Iterable[int]) -> None:
        for g in group_ids:
            self._ema.pop(g, None)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "ema": [[g, v] for g, v in sorted(self._ema.items())]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.decay = float(state["decay"])
        self._ema = {int(g): float(v) for g, v in state["ema"]}

    def load_scores(self, scores: Mapping[int, float]) -> None:
        """Replace every score (from a :class:`~streamdag.backends.base.ScoreTracker`)."""
        self._ema = {int(g): float(v) for g, v in scores.items()}


class GradStdCriterion(EmaCriterion):
    """EMA of ``std(dL/dh_g)``: the criterion of the proposal (noisy gradients → grow)."""

    name = "grad_std"
    field = "grad_std"


class ActMeanCriterion(EmaCriterion):
    """EMA of the mean activation; the policy prunes on it (a dead group scores 0)."""

    name = "act_mean"
    field = "act_mean"


def select_closest_to_input(graph: NetworkGraph, marked: Iterable[int]) -> list[int]:
    """One group per run of consecutive marked groups: the one closest to the input.

    Marked groups joined by an edge (either direction) form a run; each run keeps its member
    with the smallest depth, ties broken by the smaller id. Returns ids ascending.
    """
    m = set(marked)
    depth: dict[int, int] | None = None  # read only for a run of two or more: after a
    seen: set[int] = set()                # batch, reading them costs a repair
    chosen: list[int] = []
    for start in sorted(m):
        if start in seen:
            continue
        run, stack = [], [start]
        seen.add(start)
        while stack:
            g = stack.pop()
            run.append(g)
            for n in (*graph.preds(g), *graph.succs(g)):
                if n in m and n not in seen:
                    seen.add(n)
                    stack.append(n)
        if len(run) == 1:
            chosen.append(run[0])
            continue
        if depth is None:
            depth = graph.depths()
        chosen.append(min(run, key=lambda g: (depth[g], g)))
    return sorted(chosen)


def apply_cap(candidates: Iterable[int], scores: Mapping[int, float], room: int) -> list[int]:
    """Keep at most ``room`` candidates, highest score first (ties by smaller id).

    Returns the kept ids ascending.
    """
    ranked = sorted(candidates, key=lambda g: (-scores[g], g))
    return sorted(ranked[: max(room, 0)])


@dataclass
class GrowthPolicy:
    """Decides which groups duplicate (and which are pruned) between iterations.

    Args:
        threshold: a group is marked when its score exceeds this.
        every: consider growth every this many steps.
        cooldown: steps a new or just-duplicated group cannot be marked.
        kind: ``"depth"``, ``"width"`` or ``"mixed"``.
        depth_fraction: in ``mixed``, the probability of a depth-wise duplication.
        prune_below: prune groups whose smoothed mean activation is below this (None: never).
        criterion: the scoring criterion (default: :class:`GradStdCriterion`).
    """

    threshold: float = 0.0004
    every: int = 10
    cooldown: int = 60
    kind: str = "mixed"
    depth_fraction: float = 0.5
    prune_below: float | None = None
    criterion: Criterion | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("depth", "width", "mixed"):
            raise ConfigError(f"growth kind must be depth, width or mixed, got {self.kind!r}")
        if not 0.0 <= self.depth_fraction <= 1.0:
            raise ConfigError(f"depth_fraction must be in [0, 1], got {self.depth_fraction}")
        if self.every < 1 or self.cooldown < 0:
            raise ConfigError(f"every must be >= 1 and cooldown >= 0, got {self.every}, "
                              f"{self.cooldown}")
        if self.threshold < 0:
            raise ConfigError(f"threshold must be >= 0, got {self.threshold}")
        if self.criterion is None:
            self.criterion = GradStdCriterion()
        self._activity = ActMeanCriterion()
        self._cool_until: dict[int, int] = {}
        self._tracker: ScoreTracker | None = None

    # ------------------------------------------------------------------ device scores
    def attach(self, tracker: object) -> bool:
        """Let ``tracker`` keep the scores, if it can and the criterion is the built-in one.

        Returns whether it was attached. Until :meth:`detach`, :meth:`observe` does nothing
        (the tracker folds each step in itself) and :meth:`propose` asks the tracker.
        """
        if self._tracker is not None:
            return self._tracker is tracker
        if type(self.criterion) is not GradStdCriterion or not isinstance(tracker, ScoreTracker):
            return False
        assert isinstance(self.criterion, GradStdCriterion)
        tracker.track_scores((self.criterion.decay, self._activity.decay),
                             self.criterion.scores(), self._activity.scores())
        self._tracker = tracker
        return True

    def detach(self) -> None:
        """Take the scores back from the tracker into the criteria; host scoring again."""
        if self._tracker is None:
            return
        self._pull_scores()
        self._tracker.untrack_scores()
        self._tracker = None

    @property
    def attached(self) -> bool:
        return self._tracker is not None

    def _pull_scores(self) -> None:
        if self._tracker is not None:
            assert isinstance(self.criterion, GradStdCriterion)
            std, act = self._tracker.read_scores()
            self.criterion.load_scores(std)
            # the host keeps activity scores only when it prunes; so does the state then
            self._activity.load_scores(act if self.prune_below is not None else {})

    # ------------------------------------------------------------------ growing
    def observe(self, stats: GroupStats) -> None:
        """Fold one step's statistics into the criterion (attached: the tracker did)."""
        assert self.criterion is not None
        if self._tracker is not None:
            return
        self.criterion.update(stats)
        if self.prune_below is not None:
            self._activity.update(stats)

    def propose(
        self, graph: NetworkGraph, step: int, rng: np.random.Generator
    ) -> list[Mutation]:
        """The mutations to apply after ``step`` (empty between ``every`` boundaries)."""
        assert self.criterion is not None
        if (step + 1) % self.every:
            return []
        # groups whose score passes the threshold, and (pruning) whose activity is below
        if self._tracker is not None:
            above = self._tracker.scores_passing("grad_std", self.threshold)
            dead_ids: Iterable[int] = () if self.prune_below is None else \
                self._tracker.scores_passing("act_mean", self.prune_below)
        else:
            scores = self.criterion.scores()
            above = {g: v for g, v in scores.items() if v > self.threshold}
            dead_ids = () if self.prune_below is None else [
                g for g, v in self._activity.scores().items()
                if v < self.prune_below and g in scores]
        ready = [g for g in graph.group_ids() if self._cool_until.get(g, -1) <= step]
        out: list[Mutation] = []
        pruned: set[int] = set()
        if self.prune_below is not None:
            dead_set = set(dead_ids)
            dead = [g for g in ready if g in dead_set]
            # never prune a whole network away
            pruned = set(dead[: max(len(graph) - 1, 0)])
            out += [Prune(g) for g in sorted(pruned)]
        marked = [g for g in ready if g not in pruned and g in above]
        chosen = select_closest_to_input(graph, marked)
        if graph.max_groups is not None:
            chosen = apply_cap(chosen, above, graph.max_groups - len(graph) + len(pruned))
        for g in chosen:
            depth = self.kind == "depth" or (
                self.kind == "mixed" and rng.random() < self.depth_fraction)
            out.append(DuplicateDepth(g) if depth else DuplicateWidth(g))
        return out

    def notify(self, report: MutationReport, step: int) -> None:
        """Start cooldowns and reset scores after a batch was applied."""
        assert self.criterion is not None
        touched: list[int] = []
        for m, new in report.applied:
            if isinstance(m, DuplicateDepth | DuplicateWidth):
                touched += [m.group] + ([new] if new is not None else [])
        for g in touched:
            self._cool_until[g] = step + 1 + self.cooldown
        if self._tracker is not None:
            self._tracker.forget_scores([*touched, *report.removed])
        else:
            self.criterion.forget([*touched, *report.removed])
            self._activity.forget([*touched, *report.removed])
        for g in report.removed:
            self._cool_until.pop(g, None)

    def state_dict(self) -> dict[str, Any]:
        assert self.criterion is not None
        self._pull_scores()
        return {
            "criterion": self.criterion.state_dict(),
            "activity": self._activity.state_dict(),
            "cool_until": [[g, s] for g, s in sorted(self._cool_until.items())],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        assert self.criterion is not None
        tracker = self._tracker
        self.detach()
        self.criterion.load_state_dict(state["criterion"])
        self._activity.load_state_dict(state["activity"])
        self._cool_until = {int(g): int(s) for g, s in state["cool_until"]}
        if tracker is not None:
            self.attach(tracker)
