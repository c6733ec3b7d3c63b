"""Training backends: ``reference`` (numpy, serial) and, where a GPU is usable, ``cuda``.

:func:`get_backend` picks one by name; ``"auto"`` takes ``cuda`` when it can run here and
falls back to ``reference`` otherwise. :func:`backend_status` says why a backend cannot run.
"""

from __future__ import annotations

import importlib

from ..errors import BackendError, ConfigError
from .base import Backend, GroupStats, StepResult
from .reference import ReferenceBackend

__all__ = ["Backend", "GroupStats", "ReferenceBackend", "StepResult", "backend_status",
           "get_backend"]

BACKENDS = ("reference", "cuda")


def _cuda_unavailable_reason() -> str | None:
    try:
        module = importlib.import_module("streamdag.backends.cuda")
    except ModuleNotFoundError as exc:
        if exc.name == "streamdag.backends.cuda":
            return "the cuda training backend is not part of this streamdag version yet"
        return f"missing package {exc.name}"
    reason: str | None = module.unavailable_reason()
    return reason


def backend_status() -> dict[str, str | None]:
    """``{name: None if it can run here, else why not}``."""
    return {"reference": None, "cuda": _cuda_unavailable_reason()}


def get_backend(name: str = "auto", *, cuda_mode: str | None = None,
                dtype: str = "float32") -> Backend:
    """A backend by name: ``"auto"``, ``"reference"`` or ``"cuda"``.

    Args:
        cuda_mode: the ``mode`` of the cuda backend (default: its own, ``"auto"``); ignored
            where ``name="auto"`` falls back to the reference.
        dtype: the parameters' dtype, ``"float32"`` or ``"float64"`` (the cuda backend
            trains float64 in its ``streams`` modes only; its ``auto`` mode runs
            ``streams-graph``).

    Raises:
        BackendError: ``cuda`` was asked for and cannot run here (the message says why).
        ConfigError: an unknown name or cuda mode, or a cuda mode with ``name="reference"``.
    """
    if cuda_mode is not None:
        from .cuda import MODES

        if cuda_mode not in MODES:
            raise ConfigError(f"unknown cuda mode {cuda_mode!r}: use one of {', '.join(MODES)}")
        if name == "reference" and cuda_mode != "auto":
            raise ConfigError(f"a cuda mode ({cuda_mode!r}) was given for the reference backend")
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")
    if name == "reference":
        return ReferenceBackend(dtype=dtype)
    if name in ("cuda", "auto"):
        reason = _cuda_unavailable_reason()
        if reason is None:
            module = importlib.import_module("streamdag.backends.cuda")
            backend: Backend = module.CudaBackend(mode=cuda_mode or "auto", dtype=dtype)
            return backend
        if name == "cuda":
            raise BackendError(f"the cuda backend cannot run here: {reason}")
        return ReferenceBackend(dtype=dtype)
    raise ConfigError(f"unknown backend {name!r}: use auto, {', '.join(BACKENDS)}")
