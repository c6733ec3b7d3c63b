"""Checkpoints: graph + parameters + optimizer state + RNG + trainer state, in one file.

Format: a NumPy ``.npz`` (a zip of arrays, read with ``allow_pickle=False``). The array
``meta`` holds UTF-8 JSON: the format version, the graph (:meth:`NetworkGraph.to_dict`) and
the trainer's state (config, counters, RNG state, growth state). The parameter arenas are
stored compacted (:meth:`ParamStore.state_dict`); other arrays the trainer needs (the epoch's
permutation, the loss history) ride along by name.

Writes are atomic: the file is written beside its destination, flushed to disk and renamed
over it, so a crash leaves the previous checkpoint intact. Every way a file can be wrong —
missing, truncated, not a zip, missing arrays, inconsistent shapes, a graph that fails
validation — raises :class:`~streamdag.errors.CheckpointError` naming the file and the part.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import CheckpointError, StreamDagError
from .graph import NetworkGraph
from .params import ParamStore

__all__ = ["FORMAT_VERSION", "Checkpoint", "load_checkpoint", "save_checkpoint"]

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """What a checkpoint file holds."""

    graph: NetworkGraph
    params: ParamStore
    state: dict[str, Any]
    arrays: dict[str, np.ndarray]


def save_checkpoint(
    path: str | Path, *, graph: NetworkGraph, params: ParamStore,
    state: dict[str, Any] | None = None, arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a checkpoint atomically to ``path``; returns the path."""
    path = Path(path)
    meta = {
        "format": FORMAT_VERSION,
        "streamdag": __version__,
        "graph": graph.to_dict(),
        "state": state or {},
    }
    payload: dict[str, np.ndarray] = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        **params.state_dict(),
    }
    for k, v in (arrays or {}).items():
        if k in payload:
            raise ValueError(f"checkpoint array name {k!r} is reserved")
        payload[f"extra_{k}"] = np.asarray(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint file there")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or not a streamdag checkpoint ({exc})") from None
    if "meta" not in data:
        raise CheckpointError(f"{path}: no 'meta' record; not a streamdag checkpoint")
    try:
        meta = json.loads(bytes(data.pop("meta")).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: the 'meta' record is corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: checkpoint format {got!r}, this streamdag reads "
                              f"format {FORMAT_VERSION}")
    try:
        graph = NetworkGraph.from_dict(meta["graph"])
    except (KeyError, StreamDagError) as exc:
        raise CheckpointError(f"{path}: the graph is invalid: {exc}") from None
    try:
        params = ParamStore.from_state_dict(data)
        params.validate(graph)
    except StreamDagError as exc:
        raise CheckpointError(f"{path}: the parameters are invalid: {exc}") from None
    arrays = {k.removeprefix("extra_"): v for k, v in data.items() if k.startswith("extra_")}
    state = meta.get("state", {})
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the trainer state is malformed")
    return Checkpoint(graph, params, state, arrays)
