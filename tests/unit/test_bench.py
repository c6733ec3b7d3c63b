"""dag-bench: workload definition, correctness gate, output format, bad input.

Runs with and without torch installed (torch contenders are then reported skipped).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from streamdag.backends.reference import ReferenceBackend
from streamdag.bench.contenders import CONTENDERS, BackendRunner, Contender
from streamdag.bench.dagbench import (
    PRESETS,
    DagSpec,
    build_workload,
    draw_preds,
    mutation_batch,
    reference_loss,
    resolve_spec,
)
from streamdag.bench.measure import Budget, measure
from streamdag.bench.report import REQUIRED_FIELDS, render_markdown
from streamdag.bench.suite import SuiteOptions, run_suite
from streamdag.cli import main
from streamdag.errors import ConfigError
from streamdag.graph import INPUT

HAS_TORCH = importlib.util.find_spec("torch") is not None
SMOKE = PRESETS["smoke"]


# ---------------------------------------------------------------------- workload
def test_random_dag_follows_the_definition() -> None:
    spec = DagSpec("t", groups=300, width=4, fan_in=3, window=10, batch=8, seed=5)
    preds = draw_preds(spec, np.random.default_rng(spec.seed))
    for i, ps in enumerate(preds):
        if i < spec.fan_in:
            assert ps == (INPUT,)
        else:
            assert len(set(ps)) == spec.fan_in
            assert all(max(0, i - spec.window) <= p < i for p in ps)
    assert draw_preds(spec, np.random.default_rng(5)) == preds  # seeded


def test_presets_match_benchmark_md_level_counts() -> None:
    # BENCHMARK.md: S has 78 levels with this generator.
    assert build_workload(PRESETS["S"]).n_levels == 78
    work = build_workload(PRESETS["wide"].__class__("w", groups=64, levels=4, window=16,
                                                    batch=8))
    assert work.n_levels == 4


def test_mutation_batch_is_seeded_and_half_depth_half_width() -> None:
    work = build_workload(SMOKE)
    a, b = mutation_batch(work.graph, 7), mutation_batch(work.graph, 7)
    assert a == b and len(a) == 8
    assert [m.kind for m in a] == ["depth"] * 4 + ["width"] * 4
    assert len({m.group for m in a}) == 8  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- gate
def _wrong_lr_contender() -> Contender:
    def build(graph, params, x, y, lr, device):  # type: ignore[no-untyped-def]
        return BackendRunner(ReferenceBackend(), graph, params, x, y, lr=lr * 3)

    return Contender("numpy-wrong-lr", lambda device: None, build, cpu_ok=True)


def test_gate_passes_the_reference_and_times_it() -> None:
    work = build_workload(SMOKE)
    rec = measure(CONTENDERS["numpy-serial"], work, reference_loss(work, 3), Budget())
    assert rec["status"] == "ok" and rec["steps"] == 20
    assert rec["p10_ms"] <= rec["median_ms"] <= rec["p90_ms"]
    assert rec["gate"]["rel_err"] <= 1e-4


def test_a_wrong_contender_fails_the_gate_and_is_not_timed() -> None:
    opts = SuiteOptions([SMOKE], ["numpy-serial", "numpy-wrong-lr"], progress=False,
                        registry={**CONTENDERS, "numpy-wrong-lr": _wrong_lr_contender()})
    records = run_suite(opts)
    bad = next(r for r in records if r["contender"] == "numpy-wrong-lr")
    assert bad["status"] == "failed"
    assert "correctness gate" in bad["reason"]
    assert bad["median_ms"] is None and bad["steps"] == 0
    good = next(r for r in records if r["contender"] == "numpy-serial")
    assert good["status"] == "ok"
    assert "numpy-wrong-lr | — |" in render_markdown(records)


def test_build_and_capture_is_reported_only_where_it_was_timed() -> None:
    # PyTorch graph contenders capture while built (setup_ms); streamdag's graph modes build
    # their graph in the first step, so their setup_ms is no capture time
    (rec,) = run_suite(SuiteOptions([SMOKE], ["numpy-serial"], progress=False))
    md = render_markdown([{**rec, "contender": "torch-graph", "setup_ms": 7.0},
                          {**rec, "contender": "streamdag-graph", "setup_ms": 7.0}])
    torch_row = next(line for line in md.splitlines() if line.startswith("| torch-graph"))
    ours = next(line for line in md.splitlines() if line.startswith("| streamdag-graph"))
    assert "build+capture 7" in torch_row and "build+capture" not in ours


def test_over_budget_contender_is_skipped_not_extrapolated() -> None:
    work = build_workload(SMOKE)
    slow = Contender("slow", lambda device: None, CONTENDERS["numpy-serial"].build)
    rec = measure(slow, work, reference_loss(work, 3), Budget(time_s=1e-4))
    assert rec["status"] == "skipped" and "over time budget" in rec["reason"]
    assert rec["median_ms"] is None
    capped = measure(CONTENDERS["numpy-serial"], work, reference_loss(work, 3),
                     Budget(time_s=1e-4))
    assert capped["status"] == "ok" and capped["steps"] == 5 and "note" in capped


def test_a_slow_first_step_alone_does_not_skip_a_contender() -> None:
    """A first step that builds something (streamdag's graph modes capture their CUDA graph
    in it) may take past the budget's share; only two such steps skip a contender."""
    work = build_workload(SMOKE)
    serial = CONTENDERS["numpy-serial"]

    def build_slow_first(*args, **kwargs):
        runner = serial.build(*args, **kwargs)
        plain, calls = runner.timed_step, []

        def timed_step() -> float:
            calls.append(1)
            return plain() + (1e6 if len(calls) == 1 else 0.0)  # as if it took 1,000 s

        runner.timed_step = timed_step
        return runner

    builds = Contender("builds", lambda device: None, build_slow_first)
    rec = measure(builds, work, reference_loss(work, 3), Budget(time_s=60))
    assert rec["status"] == "ok" and rec["steps"] == Budget().steps
    slow = Contender("slow", lambda device: None, serial.build)
    rec = measure(slow, work, reference_loss(work, 3), Budget(time_s=1e-4))
    assert rec["status"] == "skipped" and "first two steps" in rec["reason"]


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("kind", ["eager", "levels"])
def test_torch_cpu_baselines_pass_the_gate(kind: str) -> None:
    work = build_workload(DagSpec("t", groups=40, width=4, fan_in=2, window=8, batch=16))
    rec = measure(CONTENDERS[f"torch-{kind}"], work, reference_loss(work, 3),
                  Budget(device="cpu"))
    assert rec["status"] == "ok", rec
    assert rec["gate"]["rel_err"] < 1e-5


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_levels_round_trips_parameters() -> None:
    from streamdag.backends.torch_baseline import make_runner

    work = build_workload(SMOKE)
    runner = make_runner("levels", work.graph, work.params, work.x, work.y, lr=0.01,
                         device="cpu")
    back = work.params.copy()
    for _, w, _ in back.items():
        w[...] = 0
    runner.export_params(back)
    for node, w, b in work.params.items():
        np.testing.assert_array_equal(back.weight(node), w)
        np.testing.assert_array_equal(back.bias(node), b)


# ---------------------------------------------------------------------- CLI and format
def test_smoke_cli_writes_records_in_the_benchmark_format(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "smoke", "--mutation", "--mutation-repeats", "2",
                 "--no-progress", "--out", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    assert (out / "results.md").exists()
    steps = [r for r in records if r.get("kind") is None]
    muts = [r for r in records if r.get("kind") == "mutation"]
    names = {r["contender"] for r in steps}
    assert "numpy-serial" in names
    assert not any(n.endswith("graph") or n.startswith("streamdag-") for n in names)
    assert ("torch-eager" in names) == HAS_TORCH or "torch-eager" in names
    for r in records:
        for f in REQUIRED_FIELDS:
            assert f in r, f
        assert r["status"] in ("ok", "failed", "skipped")
        assert isinstance(r["versions"], dict) and "steps" in r
        if r["status"] == "ok":
            assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        else:
            assert r["median_ms"] is None and r["reason"]
    for r in steps:
        if r["contender"] == "numpy-serial" or HAS_TORCH:
            assert r["status"] == "ok", r
    assert {r["contender"] for r in muts} == names
    serial = next(r for r in muts if r["contender"] == "numpy-serial")
    assert serial["status"] == "ok" and serial["groups_after"] == SMOKE.groups + 16
    assert "## smoke" in (out / "results.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--preset", "XL"], "unknown preset"),
    (["--preset", "smoke", "--fan-in", "20"], "larger than --window"),
    (["--groups", "0"], "--groups must be >= 1"),
    (["--width", "65"], "--width must be in 1..64"),
    (["--width", "0"], "--width must be in 1..64"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--contenders", "numpy-serial,torch-jit"], "unknown contender 'torch-jit'"),
    (["--steps", "5"], "--steps must be >= 20"),
    (["--preset", "S,M", "--groups", "10"], "override one preset"),
    (["--gate-rtol", "0"], "--gate-rtol must be > 0"),
    (["--preset", "smoke", "--mutation-presets", "S"], "--mutation-presets names 'S'"),
])
def test_bad_input_is_one_line_and_no_work(argv: list[str], message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    assert main(["bench", *argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("streamdag: error:") and message in err[-1]
    assert not out.exists()


def test_resolve_spec_labels_overrides_custom() -> None:
    assert resolve_spec("M").preset == "M"
    spec = resolve_spec("S", width=32)
    assert spec.preset == "custom" and spec.width == 32 and spec.groups == 1024
    with pytest.raises(ConfigError):
        resolve_spec(None, fan_in=65)


def test_mutation_losses_are_checked_over_the_first_batches() -> None:
    from streamdag.bench.suite import MUTATION_CHECKED, _check_mutation_losses

    ref = {"contender": "numpy-serial", "status": "ok", "losses": [2.0] * 10}
    late = {"contender": "late", "status": "ok", "median_ms": 1.0,
            "losses": [2.0] * MUTATION_CHECKED + [2.1] * (10 - MUTATION_CHECKED)}
    early = {"contender": "early", "status": "ok", "median_ms": 1.0,
             "losses": [2.0, 2.1] + [2.0] * 8}
    _check_mutation_losses([ref, late, early], 1e-3)
    assert late["status"] == "ok"
    assert early["status"] == "failed" and "batch 1" in early["reason"]
