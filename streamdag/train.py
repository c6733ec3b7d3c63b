"""The training loop: epochs of mini-batch steps, growth between iterations, checkpoints.

Design note
-----------
One :class:`Trainer` owns the network (graph + params), the growth policy, one seeded RNG
(batch order, duplication kinds, symmetry-breaking noise) and the counters. An iteration is:

1. ``backend.step`` on the next mini-batch (forward, loss, backward, SGD update, statistics);
2. ``policy.observe`` the statistics; ``policy.propose`` mutations onto the queue;
3. apply the queue as one atomic batch, tell the backend and the policy.

On a GPU backend the statistics and the growth scores stay on the device (the policy is
attached to the backend, which folds each step in itself) and a batch is applied to the host
store without a download first: the device replays it (``Backend.replays_param_ops``). The
host parameters are brought up to date only to evaluate and to checkpoint.

Everything the next iteration depends on is in the checkpoint, written atomically at each
epoch's end (and every ``checkpoint_every`` steps if set, and when a stop is requested), so
:meth:`Trainer.resume` continues bit-identically: same batches, same mutations, same
losses. Metrics go to ``metrics.jsonl`` (one record per epoch), truncated on resume to the
records the checkpoint had seen. Observers (progress bars, tracers) hook in through
:class:`TrainerCallback`; the trainer itself never prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from .backends.base import Backend, StepOutcome
from .backends.reference import ReferenceBackend, softmax_xent_ref
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Dataset
from .errors import CapacityError, CheckpointError, ConfigError, DataError, StreamDagError
from .graph import NetworkGraph
from .growth import GrowthPolicy
from .mutation import MutationQueue, MutationReport
from .params import ParamStore

__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "TrainConfig", "TrainSummary", "Trainer",
           "TrainerCallback"]

log = structlog.get_logger("streamdag.train")

CHECKPOINT_NAME = "checkpoint.npz"
METRICS_NAME = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a run (all keyword arguments have working defaults).

    Attributes:
        epochs: passes over the training set.
        batch_size: examples per step.
        lr, momentum, weight_decay: SGD with momentum.
        lr_schedule: ``"constant"`` or ``"cosine"`` (from ``lr`` down to 0 over the run).
        seed: seeds the initial weights, batch order and every growth decision.
        init_width, init_groups: the starting network, a chain of ``init_groups`` groups.
        max_groups: the global cap on groups (None: no cap).
        growth: whether the network grows at all.
        threshold, every, cooldown, kind, depth_fraction, prune_below: the growth policy.
        noise: symmetry-breaking noise of width duplications (relative std; 0 = exact).
        checkpoint_every: also checkpoint every this many steps (0: at epoch ends only).
        dtype: ``"float32"`` (default) or ``"float64"``, the parameters and the arithmetic.
            float32 training amplifies one rounding difference until a growth decision
            flips, so two backends that sum in another order part after a few hundred
            steps; float64 pushes that far past a run's length (docs/cuda-backend.md,
            "Digits"). The cuda backend runs float64 in its ``streams`` modes only.
    """

    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.1
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 3e-4
    seed: int = 0
    init_width: int = 16
    init_groups: int = 1
    max_groups: int | None = 48
    growth: bool = True
    # the growth policy's own defaults, so the two cannot drift apart
    threshold: float = GrowthPolicy.threshold
    every: int = GrowthPolicy.every
    cooldown: int = GrowthPolicy.cooldown
    kind: str = GrowthPolicy.kind
    depth_fraction: float = GrowthPolicy.depth_fraction
    prune_below: float | None = GrowthPolicy.prune_below
    noise: float = 0.01
    checkpoint_every: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.lr_schedule in ("constant", "cosine"), "lr_schedule must be constant or cosine"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.init_groups >= 1, "init_groups must be >= 1"),
            (self.noise >= 0, "noise must be >= 0"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.dtype in ("float32", "float64"), "dtype must be float32 or float64"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"{msg} (config: {self.to_dict()})")
        if self.max_groups is not None and self.max_groups < self.init_groups:
            raise CapacityError(f"max_groups={self.max_groups} is below the starting size of "
                                f"{self.init_groups} groups")
        self.policy()  # validates threshold, every, cooldown, kind, depth_fraction

    def policy(self) -> GrowthPolicy:
        return GrowthPolicy(threshold=self.threshold, every=self.every, cooldown=self.cooldown,
                            kind=self.kind, depth_fraction=self.depth_fraction,
                            prune_below=self.prune_below)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class TrainSummary:
    """The outcome of :meth:`Trainer.fit`."""

    test_accuracy: float
    test_loss: float
    groups: int
    mutations: int
    steps: int
    epochs: int
    backend: str
    seconds: float
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainerCallback:
    """Observer of a training run; override what you need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_step(self, trainer: Trainer, result: StepOutcome) -> None: ...
    def on_mutation(self, trainer: Trainer, report: MutationReport) -> None: ...
    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...


@dataclass
class _Counters:
    epoch: int = 0          # epochs completed
    batch: int = 0          # batches completed within the current epoch
    step: int = 0           # steps completed overall
    mutations: int = 0      # mutations applied overall
    metrics_lines: int = 0  # records in metrics.jsonl
    epoch_correct: int = 0  # correct training predictions so far in the current epoch
    seconds: float = 0.0    # training time so far (across resumes)
    grown_at: int = -1      # steps completed when the last mutation batch came (-1: none)


class Trainer:
    """Trains a growing network on a dataset.

    Args:
        dataset: train/test arrays (:func:`streamdag.data.load_dataset`).
        config: hyper-parameters.
        backend: the step implementation (default: the numpy reference).
        out_dir: where checkpoints and metrics go (None: nowhere).
        callbacks: observers.

    Example:
        >>> from streamdag import Trainer, TrainConfig, load_dataset
        >>> t = Trainer(load_dataset("spirals"), TrainConfig(epochs=1))
        >>> summary = t.fit()
        >>> summary.steps
        25
    """

    def __init__(
        self, dataset: Dataset, config: TrainConfig | None = None, *,
        backend: Backend | None = None, out_dir: str | Path | None = None,
        callbacks: list[TrainerCallback] | None = None,
    ) -> None:
        self.config = config or TrainConfig()
        self.dataset = dataset
        self.backend = backend or ReferenceBackend(dtype=self.config.dtype)
        if not self.backend.trains(np.dtype(self.config.dtype)):
            raise ConfigError(f"the {self.backend.name} backend does not train "
                              f"{self.config.dtype} parameters (the config's dtype)")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.callbacks = list(callbacks or [])
        c = self.config
        self.rng = np.random.default_rng(c.seed)
        self.graph = NetworkGraph.chain(n_inputs=dataset.n_features, n_classes=dataset.n_classes,
                                        widths=[c.init_width] * c.init_groups,
                                        max_groups=c.max_groups)
        self.params = ParamStore.initialize(self.graph, self.rng, dtype=c.dtype)
        self.policy = c.policy()
        self.queue = MutationQueue()
        self.counters = _Counters()
        self.losses: list[float] = []
        self._perm = self._new_permutation()
        self._stop = False

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(
        cls, path: str | Path, dataset: Dataset, *, backend: Backend | None = None,
        out_dir: str | Path | None = None, callbacks: list[TrainerCallback] | None = None,
        epochs: int | None = None,
    ) -> Trainer:
        """Continue from a checkpoint file (or a run directory holding ``checkpoint.npz``).

        ``epochs`` may extend the run; every other setting comes from the checkpoint.
        """
        path = Path(path)
        file = path / CHECKPOINT_NAME if path.is_dir() else path
        ck = load_checkpoint(file)
        try:
            config = TrainConfig.from_dict(dict(ck.state["config"]))
            counters = _Counters(**ck.state["counters"])
            rng_state = ck.state["rng"]
            policy_state = ck.state["policy"]
            perm = ck.arrays["perm"]
            losses = ck.arrays["losses"]
        except (KeyError, TypeError, ValueError) as exc:  # ValueError: ConfigError, CapacityError
            raise CheckpointError(f"{file}: trainer state is incomplete or malformed "
                                  f"({exc!r})") from None
        if epochs is not None:  # the caller's value: a bad one is a ConfigError, not the file's
            config = dataclasses.replace(config, epochs=epochs)
        if (ck.graph.n_inputs, ck.graph.n_classes) != (dataset.n_features, dataset.n_classes):
            raise DataError(
                f"{file}: the network takes {ck.graph.n_inputs} features and {ck.graph.n_classes}"
                f" classes, the dataset {dataset.name!r} has {dataset.n_features} and "
                f"{dataset.n_classes}")
        if perm.shape != (len(dataset.y_train),):
            raise DataError(f"{file}: the checkpoint was trained on {perm.shape[0]} examples, "
                            f"the dataset has {len(dataset.y_train)}")
        self = cls(dataset, config, backend=backend,
                   out_dir=out_dir if out_dir is not None else file.parent, callbacks=callbacks)
        self.graph, self.params = ck.graph, ck.params.copy()
        if self.params.dtype != np.dtype(config.dtype):
            raise CheckpointError(f"{file}: parameters are {self.params.dtype}, the config "
                                  f"says {config.dtype}")
        try:
            self.rng.bit_generator.state = rng_state
            self.policy.load_state_dict(policy_state)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{file}: the RNG or growth-policy state is malformed "
                                  f"({exc!r})") from None
        if counters.grown_at > counters.step:
            raise CheckpointError(f"{file}: the last growth (step {counters.grown_at}) is past "
                                  f"the steps done ({counters.step})")
        self.counters = counters
        # a backend whose choices follow growth (the GPU's auto mode) makes the same ones
        self.backend.on_resume(None if counters.grown_at < 0
                               else counters.step - counters.grown_at)
        self._perm = perm.astype(np.int64)
        self.losses = [float(v) for v in losses]
        self._truncate_metrics()
        return self

    # ------------------------------------------------------------------ running
    def request_stop(self) -> None:
        """Stop after the current step, checkpoint, and return from :meth:`fit`."""
        self._stop = True

    def fit(self, *, max_steps: int | None = None) -> TrainSummary:
        """Train until ``config.epochs`` epochs are done (or ``max_steps`` more steps).

        Returns the final test accuracy and counts. A stop request (or ``max_steps``)
        checkpoints and returns early with ``stopped_early=True``.
        """
        c = self.config
        self._stop = False
        steps_left = max_steps
        if c.growth:  # a backend that keeps the growth scores itself (the GPU) does so
            self.policy.attach(self.backend)
        for cb in self.callbacks:
            cb.on_fit_start(self)
        n = len(self.dataset.y_train)
        n_batches = -(-n // c.batch_size)
        t0 = time.perf_counter()
        base_seconds = self.counters.seconds
        # An epoch's metrics cover all its steps, also those before a stop or resume.
        epoch_loss = self.losses[len(self.losses) - self.counters.batch:]
        stopped = False
        while self.counters.epoch < c.epochs:
            while self.counters.batch < n_batches:
                if self._stop or steps_left == 0:
                    stopped = True
                    break
                result = self._iteration()
                epoch_loss.append(result.loss)
                self.counters.epoch_correct += result.correct
                if steps_left is not None:
                    steps_left -= 1
                self.counters.seconds = base_seconds + time.perf_counter() - t0
                if c.checkpoint_every and self.counters.step % c.checkpoint_every == 0:
                    self.save()
            if stopped:
                break
            self.counters.seconds = base_seconds + time.perf_counter() - t0
            self._end_epoch(epoch_loss, self.counters.epoch_correct)
            epoch_loss = []
        self.counters.seconds = base_seconds + time.perf_counter() - t0
        self.save()
        test_loss, test_acc = self.evaluate(self.dataset.x_test, self.dataset.y_test)
        return TrainSummary(test_acc, test_loss, len(self.graph), self.counters.mutations,
                            self.counters.step, self.counters.epoch, self.backend.name,
                            round(self.counters.seconds, 3), stopped)

    def _iteration(self) -> StepOutcome:
        c = self.config
        lo = self.counters.batch * c.batch_size
        idx = self._perm[lo : lo + c.batch_size]
        result = self.backend.step(self.graph, self.params, self.dataset.x_train[idx],
                                   self.dataset.y_train[idx], lr=self.learning_rate(),
                                   momentum=c.momentum,
                                   weight_decay=c.weight_decay)
        if not np.isfinite(result.loss):
            self.request_stop()
            log.error("loss is not finite; stopping", step=self.counters.step, loss=result.loss)
        self.losses.append(result.loss)
        step = self.counters.step
        if c.growth:
            self.policy.observe(result.stats)
            self.queue.extend(self.policy.propose(self.graph, step, self.rng))
        if len(self.queue):
            self._apply_queue(step)
        self.counters.step += 1
        self.counters.batch += 1
        for cb in self.callbacks:
            cb.on_step(self, result)
        return result

    def learning_rate(self) -> float:
        """The learning rate of the next step, by ``config.lr_schedule``."""
        c = self.config
        if c.lr_schedule == "constant":
            return c.lr
        total = c.epochs * -(-len(self.dataset.y_train) // c.batch_size)
        return 0.5 * c.lr * (1.0 + math.cos(math.pi * min(self.counters.step / total, 1.0)))

    def _apply_queue(self, step: int) -> None:
        if not self.backend.replays_param_ops:  # else the device replays the batch itself
            self.backend.sync_params(self.params)
        try:
            report = self.queue.apply(self.graph, self.params, step=step, rng=self.rng,
                                      noise=self.config.noise)
        except StreamDagError as exc:
            # A refused batch leaves the network as it was; training goes on.
            log.warning("mutation batch refused", step=step, error=str(exc))
            return
        self.counters.mutations += len(report)
        self.counters.grown_at = step + 1  # the batch follows step `step`
        self.policy.notify(report, step)
        self.backend.on_mutation(self.graph, self.params, report)
        if structlog.is_configured():  # routine events stay quiet until an app configures logs
            log.debug("network mutated", step=step, groups=len(self.graph),
                      mutations=[f"{m.kind}:{m.__dict__}" for m, _ in report.applied])
        for cb in self.callbacks:
            cb.on_mutation(self, report)

    def _end_epoch(self, losses: list[float], correct: int) -> None:
        test_loss, test_acc = self.evaluate(self.dataset.x_test, self.dataset.y_test)
        n = len(losses)
        metrics = {
            "epoch": self.counters.epoch + 1,
            "step": self.counters.step,
            "train_loss": float(np.mean(losses)) if n else float("nan"),
            "train_accuracy": correct / max(1, min(n * self.config.batch_size,
                                                   len(self.dataset.y_train))),
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "groups": len(self.graph),
            "levels": len(self.graph.levels()),
            "parameters": self.params.n_parameters(),
            "mutations": self.counters.mutations,
            "seconds": round(self.counters.seconds, 3),
        }
        self.counters.epoch += 1
        self.counters.batch = 0
        self.counters.epoch_correct = 0
        self._perm = self._new_permutation()
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / METRICS_NAME, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            self.counters.metrics_lines += 1
        self.save()
        for cb in self.callbacks:
            cb.on_epoch_end(self, metrics)

    def evaluate(self, x: np.ndarray, y: np.ndarray, *, batch: int = 1024) -> tuple[float, float]:
        """Mean loss and accuracy of the current network on ``(x, y)``."""
        self.backend.sync_params(self.params)
        total, correct = 0.0, 0
        for lo in range(0, len(y), batch):
            logits = self.backend.predict(self.graph, self.params, x[lo : lo + batch])
            loss, _, c = softmax_xent_ref(logits.astype(np.float64), y[lo : lo + batch])
            total += loss * len(y[lo : lo + batch])
            correct += c
        return total / max(len(y), 1), correct / max(len(y), 1)

    # ------------------------------------------------------------------ state
    def _new_permutation(self) -> np.ndarray:
        return self.rng.permutation(len(self.dataset.y_train)).astype(np.int64)

    def state(self) -> dict[str, Any]:
        """The JSON-able trainer state a checkpoint stores (besides graph and params)."""
        return {
            "config": self.config.to_dict(),
            "counters": dataclasses.asdict(self.counters),
            "rng": self.rng.bit_generator.state,
            "policy": self.policy.state_dict(),
            "dataset": self.dataset.name,
            "backend": self.backend.name,
        }

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write a checkpoint (default: ``out_dir/checkpoint.npz``); None without out_dir."""
        if path is None:
            if self.out_dir is None:
                return None
            path = self.out_dir / CHECKPOINT_NAME
        self.backend.sync_params(self.params)
        return save_checkpoint(path, graph=self.graph, params=self.params, state=self.state(),
                               arrays={"perm": self._perm,
                                       "losses": np.asarray(self.losses, dtype=np.float64)})

    def _truncate_metrics(self) -> None:
        if self.out_dir is None:
            return
        f = self.out_dir / METRICS_NAME
        if not f.exists():
            return
        lines = f.read_text().splitlines(keepends=True)[: self.counters.metrics_lines]
        f.write_text("".join(lines))
