"""checkpoint.py: atomic writes, and every malformed file is a CheckpointError naming it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers_network import assert_params_identical

from streamdag.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from streamdag.data import make_spirals
from streamdag.errors import CheckpointError, ConfigError, DataError
from streamdag.train import CHECKPOINT_NAME, TrainConfig, Trainer

DATA = make_spirals(n=200, seed=1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(epochs=1, batch_size=16, threshold=0.0, every=3, cooldown=2, max_groups=5)
    t = Trainer(DATA, cfg, out_dir=out)
    t.fit()
    assert t.counters.mutations > 0
    return out


def _arrays(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / CHECKPOINT_NAME, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _meta(arrays: dict[str, np.ndarray]) -> dict:
    return json.loads(bytes(arrays["meta"]).decode())


def _write(path: Path, arrays: dict[str, np.ndarray], meta: dict | None = None) -> Path:
    if meta is not None:
        arrays = {**arrays, "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path, run_dir: Path) -> None:
    ck = load_checkpoint(run_dir / CHECKPOINT_NAME)
    dest = tmp_path / "sub" / "c.npz"
    save_checkpoint(dest, graph=ck.graph, params=ck.params, state=ck.state)
    save_checkpoint(dest, graph=ck.graph, params=ck.params, state={"again": 1})
    assert [p.name for p in dest.parent.iterdir()] == ["c.npz"]
    again = load_checkpoint(dest)
    assert again.state == {"again": 1}
    assert_params_identical(again.params, ck.params)


def test_reserved_array_names_are_refused(tmp_path: Path, run_dir: Path) -> None:
    ck = load_checkpoint(run_dir / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "c.npz", graph=ck.graph, params=ck.params,
                        arrays={"param_weight": np.zeros(3)})
    assert not list(tmp_path.iterdir())


def test_resume_with_a_bad_epochs_override_is_a_config_error(run_dir: Path) -> None:
    with pytest.raises(ConfigError, match="epochs"):
        Trainer.resume(run_dir, DATA, epochs=0)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "nope.npz")


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_truncated_checkpoint(tmp_path: Path, run_dir: Path, fraction: float) -> None:
    blob = (run_dir / CHECKPOINT_NAME).read_bytes()
    bad = tmp_path / "cut.npz"
    bad.write_bytes(blob[: int(len(blob) * fraction)])
    with pytest.raises(CheckpointError, match=r"cut\.npz"):
        load_checkpoint(bad)


@pytest.mark.parametrize("cut", [1, 2, 4, 22, 23, 100])
def test_checkpoint_missing_its_last_bytes(tmp_path: Path, run_dir: Path, cut: int) -> None:
    blob = (run_dir / CHECKPOINT_NAME).read_bytes()
    bad = tmp_path / "cut.npz"
    bad.write_bytes(blob[:-cut])
    with pytest.raises(CheckpointError, match=r"cut\.npz"):
        load_checkpoint(bad)


def test_flipped_bytes_in_the_data(tmp_path: Path, run_dir: Path) -> None:
    blob = bytearray((run_dir / CHECKPOINT_NAME).read_bytes())
    mid = len(blob) // 2
    blob[mid : mid + 8] = bytes(8)
    bad = tmp_path / "flip.npz"
    bad.write_bytes(bytes(blob))
    # Either the zip's CRC check or the parameter checks catch it; never garbage loaded
    # silently as a different network (if it loads, it must equal the original).
    try:
        ck = load_checkpoint(bad)
    except CheckpointError as exc:
        assert "flip.npz" in str(exc)
    else:
        orig = load_checkpoint(run_dir / CHECKPOINT_NAME)
        assert ck.graph == orig.graph


def test_not_a_zip(tmp_path: Path) -> None:
    bad = tmp_path / "text.npz"
    bad.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"text\.npz"):
        load_checkpoint(bad)


def test_plain_npz_without_meta(tmp_path: Path) -> None:
    bad = _write(tmp_path / "plain.npz", {"X": np.zeros((3, 2))})
    with pytest.raises(CheckpointError, match="meta"):
        load_checkpoint(bad)


def test_meta_not_json(tmp_path: Path, run_dir: Path) -> None:
    arrays = _arrays(run_dir)
    arrays["meta"] = np.frombuffer(b'{"format": 1, "graph": {', np.uint8)
    with pytest.raises(CheckpointError, match="meta"):
        load_checkpoint(_write(tmp_path / "m.npz", arrays))


def test_meta_not_utf8(tmp_path: Path, run_dir: Path) -> None:
    arrays = _arrays(run_dir)
    arrays["meta"] = np.frombuffer(b"\xff\xfe\x00garbage", np.uint8)
    with pytest.raises(CheckpointError, match="meta"):
        load_checkpoint(_write(tmp_path / "m.npz", arrays))


@pytest.mark.parametrize("meta", [[], "text", 3, {"format": 99}, {"format": "1"}])
def test_meta_of_the_wrong_kind_or_version(tmp_path: Path, run_dir: Path, meta: object) -> None:
    arrays = _arrays(run_dir)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(_write(tmp_path / "m.npz", arrays))


def _graph_edits() -> list[tuple[str, object]]:
    return [
        ("drop graph", lambda m: m.pop("graph")),
        ("drop groups", lambda m: m["graph"].pop("groups")),
        ("widths changed", lambda m: [g.__setitem__(1, g[1] + 1) for g in m["graph"]["groups"]]),
        ("unknown predecessor", lambda m: m["graph"]["groups"][0].__setitem__(2, [999])),
        ("cycle", lambda m: m["graph"]["groups"][0].__setitem__(2, [m["graph"]["groups"][-1][0]])),
        ("output preds wrong", lambda m: m["graph"].__setitem__("output_preds", [])),
        ("n_inputs text", lambda m: m["graph"].__setitem__("n_inputs", "two")),
        ("max_groups text", lambda m: m["graph"].__setitem__("max_groups", "many")),
        ("max_groups below size", lambda m: m["graph"].__setitem__("max_groups", 1)),
        ("group not a list", lambda m: m["graph"]["groups"].append(7)),
        ("graph a list", lambda m: m.__setitem__("graph", [1, 2])),
        ("state a list", lambda m: m.__setitem__("state", [1, 2])),
        ("next_id reused", lambda m: m["graph"].__setitem__("next_id", 0)),
    ]


@pytest.mark.parametrize("name,edit", _graph_edits(), ids=[n for n, _ in _graph_edits()])
def test_inconsistent_meta(tmp_path: Path, run_dir: Path, name: str, edit) -> None:
    arrays = _arrays(run_dir)
    meta = _meta(arrays)
    assert meta["format"] == FORMAT_VERSION
    edit(meta)
    bad = _write(tmp_path / "m.npz", arrays, meta)
    with pytest.raises(CheckpointError, match=r"m\.npz"):
        load_checkpoint(bad)


def _array_edits() -> list[tuple[str, object]]:
    return [
        ("weights short", lambda a: a.__setitem__("param_weight", a["param_weight"][:-1])),
        ("bias long", lambda a: a.__setitem__("param_bias", np.append(a["param_bias"], 0))),
        ("momentum 2-D", lambda a: a.__setitem__("param_weight_mom",
                                                 a["param_weight_mom"].reshape(1, -1))),
        ("dtype mix", lambda a: a.__setitem__("param_bias_mom",
                                              a["param_bias_mom"].astype(np.float64))),
        ("integer weights", lambda a: a.update(
            {k: a[k].astype(np.int32) for k in ("param_weight", "param_bias",
                                                "param_weight_mom", "param_bias_mom")})),
        ("shapes 1-D", lambda a: a.__setitem__("param_shapes", a["param_shapes"].ravel())),
        ("shapes zero rows", lambda a: a["param_shapes"].__setitem__((0, 1), 0)),
        ("shape swapped", lambda a: a["param_shapes"].__setitem__(
            0, a["param_shapes"][0][[0, 2, 1]])),
        ("input has params", lambda a: a["param_shapes"].__setitem__((0, 0), -1)),
        ("unknown node", lambda a: a["param_shapes"].__setitem__((0, 0), 999)),
        ("missing bias", lambda a: a.pop("param_bias")),
        ("missing shapes", lambda a: a.pop("param_shapes")),
    ]


@pytest.mark.parametrize("name,edit", _array_edits(), ids=[n for n, _ in _array_edits()])
def test_malformed_parameter_arrays(tmp_path: Path, run_dir: Path, name: str, edit) -> None:
    arrays = _arrays(run_dir)
    arrays["param_shapes"] = arrays["param_shapes"].copy()
    edit(arrays)
    bad = _write(tmp_path / "p.npz", arrays)
    with pytest.raises(CheckpointError, match=r"p\.npz"):
        load_checkpoint(bad)


def _state_edits() -> list[tuple[str, object]]:
    return [
        ("no config", lambda s: s.pop("config")),
        ("unknown config key", lambda s: s["config"].__setitem__("bogus", 1)),
        ("config out of range", lambda s: s["config"].__setitem__("epochs", 0)),
        ("counters unknown key", lambda s: s["counters"].__setitem__("bogus", 1)),
        ("rng garbage", lambda s: s.__setitem__("rng", {"bit_generator": "nope"})),
        ("rng wrong type", lambda s: s.__setitem__("rng", 5)),
        ("policy missing", lambda s: s.pop("policy")),
        ("policy malformed", lambda s: s["policy"].__setitem__("cool_until", [[1]])),
    ]


@pytest.mark.parametrize("name,edit", _state_edits(), ids=[n for n, _ in _state_edits()])
def test_resume_with_malformed_trainer_state(
    tmp_path: Path, run_dir: Path, name: str, edit
) -> None:
    arrays = _arrays(run_dir)
    meta = _meta(arrays)
    edit(meta["state"])
    bad = _write(tmp_path / CHECKPOINT_NAME, arrays, meta)
    with pytest.raises(CheckpointError, match=re.escape(CHECKPOINT_NAME)):
        Trainer.resume(bad, DATA)


def test_resume_with_missing_extra_arrays(tmp_path: Path, run_dir: Path) -> None:
    arrays = _arrays(run_dir)
    del arrays["extra_perm"]
    bad = _write(tmp_path / CHECKPOINT_NAME, arrays)
    with pytest.raises(CheckpointError, match="perm"):
        Trainer.resume(bad, DATA)


def test_resume_on_another_dataset_is_refused(run_dir: Path) -> None:
    with pytest.raises(DataError, match="features"):
        Trainer.resume(run_dir, make_spirals(n=200).__class__(
            "other", np.zeros((10, 3), np.float32), np.zeros(10, np.int64),
            np.zeros((2, 3), np.float32), np.zeros(2, np.int64), 2))
    with pytest.raises(DataError, match="examples"):
        Trainer.resume(run_dir, make_spirals(n=300, seed=1))


def test_resume_of_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer.resume(tmp_path / "missing", DATA)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer.resume(tmp_path, DATA)  # a directory without checkpoint.npz
