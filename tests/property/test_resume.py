"""Checkpoints round-trip exactly, and an interrupted run resumes bit-identically.

Growth is on with a low threshold, short cooldown and width noise, so mutations (and the
RNG draws they consume) happen before and after every interruption point.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_network import assert_params_identical, dag_specs, random_params
from hypothesis import given, settings
from hypothesis import strategies as st

from streamdag.checkpoint import load_checkpoint, save_checkpoint
from streamdag.data import make_spirals
from streamdag.mutation import DuplicateDepth, DuplicateWidth, Prune, apply_mutations
from streamdag.train import CHECKPOINT_NAME, METRICS_NAME, TrainConfig, Trainer, TrainerCallback

DATA = make_spirals(n=400, seed=3)  # 320 train -> 10 batches of 32 per epoch
CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=5, init_width=6, max_groups=7,
                     threshold=0.0, every=4, cooldown=3, kind="mixed", noise=0.05,
                     checkpoint_every=0)


@settings(max_examples=30)
@given(spec=dag_specs(max_groups=6), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.float64]),
       ops=st.lists(st.tuples(st.sampled_from(["depth", "width", "prune"]),
                              st.integers(0, 100)), max_size=5))
def test_checkpoint_round_trip_is_exact(
    tmp_path_factory: pytest.TempPathFactory, spec, seed: int, dtype, ops
) -> None:
    graph = spec.build(max_groups=30)
    params = random_params(graph, seed, dtype=dtype, momentum=True)
    for kind, pick in ops:  # leave holes in the arenas and layouts that differ from fresh
        ids = graph.group_ids()
        g = ids[pick % len(ids)]
        m = {"depth": DuplicateDepth, "width": DuplicateWidth, "prune": Prune}[kind](g)
        if kind == "prune" and len(graph) == 1:
            continue
        apply_mutations(graph, params, [m])
    state = {"counters": {"step": seed}, "nested": [1.5, None, "x"], "rng": 2**70 + 1}
    extra = {"perm": np.arange(5), "losses": np.array([0.1, np.pi])}
    path = tmp_path_factory.mktemp("ck") / "c.npz"
    save_checkpoint(path, graph=graph, params=params, state=state, arrays=extra)
    ck = load_checkpoint(path)
    assert ck.graph == graph
    assert ck.graph.to_dict() == graph.to_dict()
    assert_params_identical(ck.params, params)
    assert ck.state == state
    assert sorted(ck.arrays) == ["losses", "perm"]
    for k, v in extra.items():
        assert ck.arrays[k].dtype == v.dtype and ck.arrays[k].tobytes() == v.tobytes()


def test_trainer_checkpoint_round_trip_restores_state(tmp_path: Path) -> None:
    t = Trainer(DATA, CONFIG, out_dir=tmp_path)
    t.fit(max_steps=17)
    assert t.counters.mutations > 0
    r = Trainer.resume(tmp_path, DATA)
    assert r.graph == t.graph
    assert_params_identical(r.params, t.params)
    assert r.state() == t.state()
    assert r.losses == t.losses
    assert r._perm.tobytes() == t._perm.tobytes()
    assert r.config == t.config


def _uninterrupted(tmp: Path) -> Trainer:
    t = Trainer(DATA, CONFIG, out_dir=tmp)
    t.fit()
    return t


def _metrics(run: Path) -> list[dict]:
    out = []
    for line in (run / METRICS_NAME).read_text().splitlines():
        rec = json.loads(line)
        rec.pop("seconds")
        out.append(rec)
    return out


def _assert_same_run(a: Trainer, b: Trainer) -> None:
    assert b.losses == a.losses  # exactly, step for step
    assert b.graph == a.graph
    assert_params_identical(b.params, a.params)
    assert b.counters.step == a.counters.step
    assert b.counters.mutations == a.counters.mutations
    assert b.rng.bit_generator.state == a.rng.bit_generator.state
    assert b.policy.state_dict() == a.policy.state_dict()
    assert _metrics(b.out_dir) == _metrics(a.out_dir)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    t = _uninterrupted(tmp_path_factory.mktemp("ref"))
    assert t.counters.mutations >= 3, "the test needs growth across the resume points"
    assert t.counters.step == 30
    return t


@pytest.mark.parametrize("stops", [[7], [10], [3, 14], [10, 10], [29]])
def test_max_steps_interruptions_resume_identically(
    tmp_path: Path, reference_run: Trainer, stops: list[int]
) -> None:
    """Stop after k steps (mid-epoch, or exactly at an epoch end), resume, maybe again."""
    t = Trainer(DATA, CONFIG, out_dir=tmp_path)
    summary = t.fit(max_steps=stops[0])
    assert summary.stopped_early
    for k in stops[1:]:
        t = Trainer.resume(tmp_path, DATA)
        t.fit(max_steps=k)
    t = Trainer.resume(tmp_path, DATA)
    summary = t.fit()
    assert not summary.stopped_early
    _assert_same_run(reference_run, t)


def test_fit_again_in_the_same_process_continues_identically(
    tmp_path: Path, reference_run: Trainer
) -> None:
    t = Trainer(DATA, CONFIG, out_dir=tmp_path)
    t.fit(max_steps=13)
    t.fit()
    _assert_same_run(reference_run, t)


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, trainer: Trainer, result) -> None:
        if trainer.counters.step == self.step:
            trainer.request_stop()


def test_request_stop_then_resume(tmp_path: Path, reference_run: Trainer) -> None:
    t = Trainer(DATA, CONFIG, out_dir=tmp_path, callbacks=[_StopAt(12)])
    summary = t.fit()
    assert summary.stopped_early and summary.steps == 12
    t = Trainer.resume(tmp_path, DATA)
    t.fit()
    _assert_same_run(reference_run, t)


class _Crash(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, trainer: Trainer, result) -> None:
        if trainer.counters.step == self.step:
            raise KeyboardInterrupt("simulated crash")


@pytest.mark.parametrize("crash_at", [9, 16, 23])
def test_crash_resumes_from_the_last_periodic_checkpoint(
    tmp_path: Path, reference_run: Trainer, crash_at: int
) -> None:
    """``checkpoint_every`` mid-epoch checkpoints: a crash loses only steps since the last."""
    cfg = TrainConfig(**{**CONFIG.to_dict(), "checkpoint_every": 4})
    t = Trainer(DATA, cfg, out_dir=tmp_path, callbacks=[_Crash(crash_at)])
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    ck = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    # the crashing step itself was not saved; epoch ends (every 10 steps) checkpoint too
    done = crash_at - 1
    assert ck.state["counters"]["step"] == max(4 * (done // 4), 10 * (done // 10))
    r = Trainer.resume(tmp_path, DATA)
    assert r.losses == reference_run.losses[: r.counters.step]
    r.fit()
    assert r.losses == reference_run.losses
    assert r.graph == reference_run.graph
    assert_params_identical(r.params, reference_run.params)


def test_resume_can_extend_the_run(tmp_path: Path, reference_run: Trainer) -> None:
    t = Trainer(DATA, CONFIG, out_dir=tmp_path)
    t.fit()
    r = Trainer.resume(tmp_path, DATA, epochs=4)
    summary = r.fit()
    assert summary.epochs == 4 and summary.steps == 40
    assert r.losses[:30] == reference_run.losses
    assert len((tmp_path / METRICS_NAME).read_text().splitlines()) == 4
