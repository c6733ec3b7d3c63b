"""End to end: `streamdag train --dataset digits` with defaults learns and grows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamdag.cli import main


@pytest.mark.slow
def test_digits_with_defaults_reaches_95_percent_and_grows(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    rc = main(["--log-level", "warning", "train", "--dataset", "digits", "--out",
               str(tmp_path / "run"), "--summary-json", str(summary), "--no-progress"])
    assert rc == 0
    record = json.loads(summary.read_text())
    assert record["test_accuracy"] >= 0.95, record
    assert record["groups"] > 1, record
    assert record["mutations"] >= 1
