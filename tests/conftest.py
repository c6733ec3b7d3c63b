"""Shared test setup: hypothesis profiles and the ``gpu`` marker.

Tests marked ``@pytest.mark.gpu`` run only where cuda.core can open device 0; elsewhere they
are skipped with the reason. With ``CI=true`` hypothesis loads its built-in ``ci`` profile
(derandomized, no deadline, no database); we register profiles that extend it.
"""

from __future__ import annotations

import functools
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "streamdag-ci",
    parent=settings.get_profile("ci"),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "streamdag-dev",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("streamdag-ci" if os.environ.get("CI") else "streamdag-dev")


@functools.cache
def gpu_unavailable_reason() -> str | None:
    """None when device 0 is usable through cuda.core, else why not."""
    try:
        from cuda.core import Device

        Device(0).set_current()
    except Exception as exc:  # no driver, no device, no cuda.core: all mean "skip"
        return f"no usable GPU ({type(exc).__name__}: {exc})".splitlines()[0][:200]
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
