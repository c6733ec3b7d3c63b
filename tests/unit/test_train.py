"""train.py: config checks, the summary, metrics.jsonl, the lr schedule, callbacks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from streamdag.data import make_spirals
from streamdag.errors import CapacityError, ConfigError
from streamdag.train import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    TrainConfig,
    Trainer,
    TrainerCallback,
    TrainSummary,
)

DATA = make_spirals(n=200, seed=0)  # 160 train -> 5 batches of 32


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=32, threshold=0.0, every=2, cooldown=1, max_groups=4)
    return TrainConfig(**{**base, **kw})


def test_summary_fields_and_growth(tmp_path: Path) -> None:
    t = Trainer(DATA, _cfg(), out_dir=tmp_path)
    s = t.fit()
    assert isinstance(s, TrainSummary)
    assert s.steps == 10 and s.epochs == 2 and s.backend == "reference"
    assert s.groups == len(t.graph) and 1 < s.groups <= 4
    assert s.mutations == t.counters.mutations > 0
    assert 0.0 <= s.test_accuracy <= 1.0 and s.seconds >= 0 and not s.stopped_early
    assert set(s.to_dict()) >= {"test_accuracy", "groups", "mutations", "steps", "backend",
                                "seconds"}
    assert len(t.losses) == 10
    assert (tmp_path / CHECKPOINT_NAME).is_file()


def test_metrics_jsonl_one_record_per_epoch(tmp_path: Path) -> None:
    t = Trainer(DATA, _cfg(epochs=3), out_dir=tmp_path)
    t.fit()
    recs = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert [r["step"] for r in recs] == [5, 10, 15]
    keys = {"epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
            "groups", "levels", "parameters", "mutations", "seconds"}
    assert all(set(r) == keys for r in recs)
    assert recs[0]["train_loss"] == pytest.approx(float(np.mean(t.losses[:5])))
    assert recs[-1]["groups"] == len(t.graph)
    assert recs[-1]["parameters"] == t.params.n_parameters()
    assert all(0 <= r["train_accuracy"] <= 1 for r in recs)


def test_resume_truncates_metrics_written_after_the_checkpoint(tmp_path: Path) -> None:
    t = Trainer(DATA, _cfg(epochs=3), out_dir=tmp_path)
    t.fit(max_steps=7)
    with open(tmp_path / METRICS_NAME, "a") as f:
        f.write('{"epoch": 99}\n')  # a record the checkpoint never saw (crash after write)
    r = Trainer.resume(tmp_path, DATA)
    assert len((tmp_path / METRICS_NAME).read_text().splitlines()) == 1
    r.fit()
    assert len((tmp_path / METRICS_NAME).read_text().splitlines()) == 3


def test_a_resumed_backend_learns_how_many_steps_ago_the_network_grew(tmp_path: Path) -> None:
    # the backend of the run that stopped counted its steps since the last batch (the GPU's
    # auto mode chooses by that count); the resumed run's backend is told the same count
    from streamdag.backends.reference import ReferenceBackend

    class Counting(ReferenceBackend):
        def __init__(self) -> None:
            self.since: int | None = None
            self.told: list[int | None] = []

        def step(self, *args, **kw):  # type: ignore[no-untyped-def]
            self.since = None if self.since is None else self.since + 1
            return super().step(*args, **kw)

        def on_mutation(self, graph, params, report) -> None:  # type: ignore[no-untyped-def]
            self.since = 0

        def on_resume(self, steps_since_growth: int | None) -> None:
            self.told.append(steps_since_growth)

    for steps in (1, 4, 7):
        run = Trainer(DATA, _cfg(epochs=3), backend=Counting(), out_dir=tmp_path / str(steps))
        run.fit(max_steps=steps)
        resumed = Trainer.resume(tmp_path / str(steps), DATA, backend=Counting())
        assert resumed.backend.told == [run.backend.since], steps
    assert run.backend.since is not None and run.counters.grown_at > 0
    # a checkpoint whose last growth lies past its steps is refused, naming both
    from streamdag.checkpoint import load_checkpoint, save_checkpoint
    from streamdag.errors import CheckpointError

    file = tmp_path / "7" / CHECKPOINT_NAME
    ck = load_checkpoint(file)
    state = {**ck.state, "counters": {**ck.state["counters"], "grown_at": 99}}
    save_checkpoint(file, graph=ck.graph, params=ck.params, state=state, arrays=ck.arrays)
    with pytest.raises(CheckpointError, match=r"step 99.*steps done \(7\)"):
        Trainer.resume(file, DATA)


def test_lr_schedules() -> None:
    t = Trainer(DATA, _cfg(lr=0.2, lr_schedule="constant"))
    assert t.learning_rate() == 0.2
    t = Trainer(DATA, _cfg(lr=0.2, lr_schedule="cosine", epochs=2))
    total = 10
    for step, want in [(0, 0.2), (5, 0.1), (10, 0.0), (12, 0.0)]:
        t.counters.step = step
        assert t.learning_rate() == pytest.approx(
            0.5 * 0.2 * (1 + math.cos(math.pi * min(step / total, 1))), abs=1e-15)
        assert t.learning_rate() == pytest.approx(want, abs=1e-12)


def test_no_growth_keeps_the_structure() -> None:
    t = Trainer(DATA, _cfg(growth=False, init_groups=2))
    s = t.fit()
    assert s.groups == 2 and s.mutations == 0


def test_callbacks_see_steps_mutations_and_epochs() -> None:
    seen: dict[str, int] = {"start": 0, "step": 0, "mutation": 0, "epoch": 0}

    class Count(TrainerCallback):
        def on_fit_start(self, trainer): seen["start"] += 1
        def on_step(self, trainer, result): seen["step"] += 1
        def on_mutation(self, trainer, report): seen["mutation"] += len(report)
        def on_epoch_end(self, trainer, metrics): seen["epoch"] += 1

    t = Trainer(DATA, _cfg(), callbacks=[Count()])
    t.fit()
    assert seen == {"start": 1, "step": 10, "mutation": t.counters.mutations, "epoch": 2}


def test_same_seed_same_run_and_no_out_dir_writes_nothing(tmp_path: Path) -> None:
    a = Trainer(DATA, _cfg())
    b = Trainer(DATA, _cfg())
    a.fit()
    b.fit()
    assert a.losses == b.losses and a.graph == b.graph
    assert a.save() is None
    c = Trainer(DATA, _cfg(seed=1))
    c.fit()
    assert c.losses != a.losses


def test_cap_is_never_exceeded_in_training() -> None:
    t = Trainer(DATA, _cfg(epochs=4, max_groups=3, every=1, cooldown=0))
    t.fit()
    assert len(t.graph) == 3


@pytest.mark.parametrize("kw,error,match", [
    ({"epochs": 0}, ConfigError, "epochs"),
    ({"batch_size": 0}, ConfigError, "batch_size"),
    ({"lr": 0.0}, ConfigError, "lr"),
    ({"lr_schedule": "step"}, ConfigError, "lr_schedule"),
    ({"momentum": 1.0}, ConfigError, "momentum"),
    ({"noise": -1.0}, ConfigError, "noise"),
    ({"kind": "diagonal"}, ConfigError, "growth kind"),
    ({"max_groups": 1, "init_groups": 2}, CapacityError, "max_groups=1 is below"),
    ({"checkpoint_every": -1}, ConfigError, "checkpoint_every"),
    ({"dtype": "float16"}, ConfigError, "dtype must be float32 or float64"),
])
def test_config_checks(kw, error, match) -> None:
    with pytest.raises(error, match=match):
        TrainConfig(**kw)
    with pytest.raises(ConfigError, match="unknown config keys"):
        TrainConfig.from_dict({"epochs": 1, "colour": "red"})
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_float64_trains_and_a_backend_that_cannot_is_refused(tmp_path: Path) -> None:
    from streamdag.backends.reference import ReferenceBackend

    data = DATA
    t = Trainer(data, _cfg(epochs=1, dtype="float64"), out_dir=tmp_path / "run")
    assert t.params.dtype == np.float64
    t.fit()
    assert all(t.params.weight(n).dtype == np.float64 for n in t.params.nodes())
    resumed = Trainer.resume(tmp_path / "run", data, epochs=2)
    assert resumed.params.dtype == np.float64 and resumed.config.dtype == "float64"

    class Float32Only(ReferenceBackend):
        name = "float32-only"

        def trains(self, dtype: np.dtype) -> bool:
            return dtype == np.float32

    with pytest.raises(ConfigError, match="float32-only backend does not train float64"):
        Trainer(data, _cfg(dtype="float64"), backend=Float32Only())
    with pytest.raises(ConfigError, match="float32-only backend does not train float64"):
        Trainer.resume(tmp_path / "run", data, backend=Float32Only())
