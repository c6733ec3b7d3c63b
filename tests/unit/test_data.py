"""data.py: loaders, seeded stratified splits, and malformed .npz files as DataError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamdag.data import load_dataset, load_digits, load_npz, make_spirals, split
from streamdag.errors import ConfigError, DataError


def test_spirals_shapes_dtypes_and_standardisation() -> None:
    d = make_spirals(n=400, seed=2)
    assert d.name == "spirals" and d.n_classes == 2 and d.n_features == 2
    assert len(d.y_train) + len(d.y_test) == 400 and len(d.y_test) == 80
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=0), 1, atol=1e-5)
    assert np.bincount(d.y_test).tolist() == [40, 40]  # stratified


def test_digits() -> None:
    d = load_digits()
    assert (d.n_features, d.n_classes) == (64, 10)
    assert len(d.y_train) + len(d.y_test) == 1797
    assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0  # scaled as a whole, not per pixel
    assert set(np.unique(d.y_test)) == set(range(10))


def test_split_is_deterministic_and_seeded() -> None:
    a, b, c = (make_spirals(n=300, seed=0), make_spirals(n=300, seed=0),
               make_spirals(n=300, seed=1))
    for f in ("x_train", "y_train", "x_test", "y_test"):
        assert getattr(a, f).tobytes() == getattr(b, f).tobytes()
    assert a.x_train.tobytes() != c.x_train.tobytes()
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.arange(20) % 2
    s1 = split(x, y, name="t", seed=4, test_fraction=0.25)
    s2 = split(x, y, name="t", seed=4, test_fraction=0.25)
    s3 = split(x, y, name="t", seed=5, test_fraction=0.25)
    assert s1.x_test.tobytes() == s2.x_test.tobytes()
    assert s1.x_test.tobytes() != s3.x_test.tobytes()
    # train and test partition the rows
    rows = {tuple(r) for r in np.concatenate([s1.x_train, s1.x_test]).tolist()}
    assert len(rows) == 20


def _npz(tmp_path: Path, name: str = "d.npz", **arrays: np.ndarray) -> Path:
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def test_npz_round_trip_and_label_mapping(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3))
    y = np.repeat([7, -2, 11], [20, 15, 15])
    d = load_dataset(str(_npz(tmp_path, X=x, y=y)))
    assert d.name == "d" and d.n_classes == 3 and d.n_features == 3
    assert set(np.unique(np.concatenate([d.y_train, d.y_test]))) == {0, 1, 2}
    # float labels that are whole numbers are accepted
    d2 = load_npz(_npz(tmp_path, "f.npz", X=x, y=y.astype(np.float64)))
    assert d2.y_train.tobytes() == d.y_train.tobytes()


@pytest.mark.parametrize("arrays,match", [
    ({"X": np.zeros((10, 2))}, "missing array"),
    ({"y": np.zeros(10, np.int64)}, "missing array"),
    ({"X": np.zeros(10), "y": np.zeros(10, np.int64)}, "2-D"),
    ({"X": np.zeros((10, 2, 2)), "y": np.zeros(10, np.int64)}, "2-D"),
    ({"X": np.zeros((0, 2)), "y": np.zeros(0, np.int64)}, "non-empty"),
    ({"X": np.zeros((10, 0)), "y": np.zeros(10, np.int64)}, "non-empty"),
    ({"X": np.zeros((10, 2)), "y": np.zeros(9, np.int64)}, "10 labels"),
    ({"X": np.zeros((10, 2)), "y": np.zeros((10, 1), np.int64)}, "10 labels"),
    ({"X": np.array([["a", "b"]] * 10), "y": np.arange(10) % 2}, "numeric"),
    ({"X": np.zeros((10, 2)), "y": np.linspace(0, 1, 10)}, "integer labels"),
    ({"X": np.zeros((10, 2)), "y": np.array([0, 1] * 4 + [np.nan, 1])}, "integer labels"),
    ({"X": np.zeros((10, 2)), "y": np.array(["a", "b"] * 5)}, "integer labels"),
    ({"X": np.zeros((10, 2)), "y": np.zeros(10, np.int64)}, "2 classes"),
])
def test_malformed_npz(tmp_path: Path, arrays: dict, match: str) -> None:
    p = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_npz(p)
    assert "d.npz" in str(info.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_features_name_the_first_bad_cell(tmp_path: Path, value: float) -> None:
    x = np.zeros((10, 3))
    x[6, 2] = value
    x[8, 0] = value
    with pytest.raises(DataError, match=r"2 NaN/Inf values, first at row 6, column 2"):
        load_npz(_npz(tmp_path, X=x, y=np.arange(10) % 2))


def test_not_an_npz(tmp_path: Path) -> None:
    p = tmp_path / "junk.npz"
    p.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(DataError, match=r"junk\.npz"):
        load_npz(p)
    q = tmp_path / "pickled.npz"
    np.savez(q, X=np.array([object()] * 4, dtype=object), y=np.arange(4) % 2)
    with pytest.raises(DataError, match=r"pickled\.npz"):
        load_npz(q)


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_too_few_samples_and_bad_fraction() -> None:
    with pytest.raises(DataError, match="too few"):
        split(np.zeros((2, 1)), np.array([0, 1]), name="t", seed=0, test_fraction=0.2)
    with pytest.raises(ConfigError, match="test_fraction"):
        split(np.zeros((4, 1)), np.array([0, 1, 0, 1]), name="t", seed=0, test_fraction=1.0)
    with pytest.raises(ConfigError, match="n >= 4"):
        make_spirals(n=3)
