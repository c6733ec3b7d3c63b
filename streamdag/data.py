"""Datasets: scikit-learn's digits, synthetic two spirals, and user ``.npz`` files.

Every loader returns a :class:`Dataset` split into train and test parts, features
standardised with the *training* mean and std (float32), labels ``0 … n_classes-1`` (int64).
The split is stratified and seeded, so the same seed gives the same split everywhere.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError

__all__ = ["DATASETS", "Dataset", "load_dataset", "load_digits", "load_npz", "make_spirals"]


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays plus a name."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"features={self.n_features}, classes={self.n_classes})")


def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes; ships with sklearn)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    # Pixels are 0..16; per-pixel standardisation would blow up the near-constant border
    # pixels, so scale the image as a whole instead.
    return split(np.asarray(d.data) / 16.0, np.asarray(d.target), name="digits", seed=seed,
                 test_fraction=test_fraction, standardize=False)


def make_spirals(
    *, n: int = 2000, noise: float = 0.2, turns: float = 1.75, seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """Two interleaved spirals in the plane: a classic for deep, narrow networks."""
    if n < 4:
        raise ConfigError(f"spirals needs n >= 4, got {n}")
    rng = np.random.default_rng(seed)
    half = n // 2
    t = np.sqrt(rng.random(half)) * turns * 2 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (turns * 2 * np.pi)
    x = np.concatenate([arm, -arm]) + rng.standard_normal((2 * half, 2)) * noise / 5
    y = np.concatenate([np.zeros(half, np.int64), np.ones(half, np.int64)])
    return split(x, y, name="spirals", seed=seed, test_fraction=test_fraction)


def load_npz(path: str | Path, *, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """A user ``.npz`` with ``X`` (n × features, numeric) and ``y`` (n integer labels).

    Labels may be any integers; they are mapped to ``0 … k-1`` in sorted order.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = {"X", "y"} - set(f.files)
            if missing:
                raise DataError(f"{p}: missing array(s) {sorted(missing)}; found {f.files}")
            x, y = f["X"], f["y"]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{p}: not a readable .npz file ({exc})") from None
    return split(x, y, name=p.stem, seed=seed, test_fraction=test_fraction, where=str(p))


def split(
    x: np.ndarray, y: np.ndarray, *, name: str, seed: int, test_fraction: float,
    where: str | None = None, standardize: bool = True,
) -> Dataset:
    """Validate, stratify-split and (unless ``standardize=False``) standardise ``(x, y)``."""
    where = where or name
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{where}: X must be a non-empty 2-D array (n, features), got {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{where}: y must be 1-D with {x.shape[0]} labels, got {y.shape}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: X must be numeric, got dtype {x.dtype}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{where}: y must hold integer labels, got dtype {y.dtype}")
    bad = ~np.isfinite(x.astype(np.float64))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{where}: X has {int(bad.sum())} NaN/Inf values, first at row {r}, "
                        f"column {c}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    classes, y = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{where}: need at least 2 classes, found {len(classes)}")
    rng = np.random.default_rng(seed)
    test_idx: list[np.ndarray] = []
    for c in range(len(classes)):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test_idx.append(idx[: round(len(idx) * test_fraction)])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(y)), test)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{where}: {len(y)} samples are too few to split")
    x = x.astype(np.float64)
    if standardize:
        mean = x[train].mean(axis=0)
        std = x[train].std(axis=0)
        std[std == 0] = 1.0
        x = (x - mean) / std
    x = x.astype(np.float32)
    return Dataset(name, x[train], y[train].astype(np.int64), x[test],
                   y[test].astype(np.int64), len(classes))


DATASETS = ("digits", "spirals")


def load_dataset(name: str, *, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """``"digits"``, ``"spirals"``, or a path to a ``.npz`` file."""
    if name == "digits":
        return load_digits(seed=seed, test_fraction=test_fraction)
    if name == "spirals":
        return make_spirals(seed=seed, test_fraction=test_fraction)
    if name.endswith(".npz") or Path(name).exists():
        return load_npz(name, seed=seed, test_fraction=test_fraction)
    raise DataError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or a .npz path")
