"""cli.py: `streamdag train` / `info`, and every user error as one line, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamdag.cli import main
from streamdag.train import CHECKPOINT_NAME, METRICS_NAME

FAST = ["--dataset", "spirals"]


def train(*args: str) -> int:
    return main(["--log-level", "error", "train", "--no-progress", *args])


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``streamdag: error:`` line; asserts no traceback and nothing else on stderr."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("streamdag: error: ")
    return lines[0]


def test_train_writes_summary_checkpoint_metrics_and_dot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, summary = tmp_path / "run", tmp_path / "s" / "summary.json"
    rc = main(["train", "--dataset", "spirals", "--epochs", "2", "--out", str(out),
               "--summary-json", str(summary), "--no-progress"])
    assert rc == 0
    record = json.loads(summary.read_text())
    assert set(record) == {"test_accuracy", "groups", "mutations", "steps", "backend",
                           "seconds"}
    assert record["steps"] == 50 and record["backend"] == "reference"
    assert 0 <= record["test_accuracy"] <= 1 and record["groups"] >= 1
    assert (out / CHECKPOINT_NAME).is_file()
    assert len((out / METRICS_NAME).read_text().splitlines()) == 2
    assert (out / "network.dot").read_text().startswith("digraph network {")
    assert "Traceback" not in capsys.readouterr().err


def test_resume_extends_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert train(*FAST, "--epochs", "1", "--out", str(out)) == 0
    s = tmp_path / "s.json"
    assert train("--resume", str(out), "--epochs", "2", "--summary-json", str(s)) == 0
    assert json.loads(s.read_text())["steps"] == 50
    assert len((out / METRICS_NAME).read_text().splitlines()) == 2


def test_a_float64_run_resumes_in_float64(tmp_path: Path) -> None:
    from streamdag.checkpoint import load_checkpoint

    out = tmp_path / "run"
    assert train(*FAST, "--epochs", "1", "--dtype", "float64", "--out", str(out)) == 0
    s = tmp_path / "s.json"
    assert train("--resume", str(out), "--epochs", "2", "--summary-json", str(s)) == 0
    assert json.loads(s.read_text())["steps"] == 50
    ck = load_checkpoint(out / CHECKPOINT_NAME)
    assert ck.params.dtype == np.float64 and ck.state["config"]["dtype"] == "float64"


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("streamdag 0.1.0")
    assert "backend reference  ok" in out and "backend cuda" in out


def test_out_holding_a_checkpoint_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert train(*FAST, "--epochs", "1", "--out", str(out)) == 0
    capsys.readouterr()
    blob = (out / CHECKPOINT_NAME).read_bytes()
    assert train(*FAST, "--epochs", "1", "--out", str(out)) != 0
    line = _error_line(capsys)
    assert "already holds a checkpoint" in line and str(out) in line
    assert (out / CHECKPOINT_NAME).read_bytes() == blob


def test_resume_into_another_run_dir_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert train(*FAST, "--epochs", "1", "--out", str(d)) == 0
    capsys.readouterr()
    blob = (b / CHECKPOINT_NAME).read_bytes()
    assert train("--resume", str(a), "--out", str(b), "--epochs", "2") != 0
    assert "already holds a checkpoint" in _error_line(capsys)
    assert (b / CHECKPOINT_NAME).read_bytes() == blob


def test_resume_into_its_own_directory_is_allowed(tmp_path: Path) -> None:
    a = tmp_path / "a"
    assert train(*FAST, "--epochs", "1", "--out", str(a)) == 0
    assert train("--resume", str(a), "--out", str(a), "--epochs", "2") == 0


def _bad_npz(tmp_path: Path) -> Path:
    p = tmp_path / "bad.npz"
    x = np.zeros((20, 2))
    x[3, 1] = np.nan
    np.savez(p, X=x, y=np.arange(20) % 2)
    return p


def _run(tmp_path: Path, *args: str) -> Path:
    run = tmp_path / "run"
    assert train(*FAST, "--epochs", "1", "--out", str(run), *args) == 0
    return run


def _truncated_checkpoint(tmp_path: Path) -> Path:
    run = tmp_path / "cut"
    assert train(*FAST, "--epochs", "1", "--out", str(run)) == 0
    blob = (run / CHECKPOINT_NAME).read_bytes()
    (run / CHECKPOINT_NAME).write_bytes(blob[: len(blob) // 2])
    return run


def _corrupt_checkpoint(tmp_path: Path, what: str) -> Path:
    run = tmp_path / what
    assert train(*FAST, "--epochs", "1", "--out", str(run)) == 0
    with np.load(run / CHECKPOINT_NAME) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    if what == "rng":
        meta["state"]["rng"] = {"bit_generator": "MT19937"}
    elif what == "json":
        arrays["meta"] = arrays["meta"][:-5]
    elif what == "shapes":
        arrays["param_weight"] = arrays["param_weight"][:-3]
    if what != "json":
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(run / CHECKPOINT_NAME, "wb") as f:
        np.savez(f, **arrays)
    return run


@pytest.mark.parametrize("make_args,expect", [
    (lambda t: ["--resume", str(_corrupt_checkpoint(t, "rng"))], "RNG"),
    (lambda t: ["--resume", str(_corrupt_checkpoint(t, "json"))], "meta"),
    (lambda t: ["--resume", str(_corrupt_checkpoint(t, "shapes"))], "param_weight"),
    (lambda t: ["--resume", str(t / "missing")], "missing"),
    (lambda t: ["--resume", str(_truncated_checkpoint(t))], "truncated"),
    (lambda t: ["--dataset", str(t / "nope.npz"), "--out", str(t / "o")], "nope.npz"),
    (lambda t: ["--dataset", str(_bad_npz(t)), "--out", str(t / "o")], "row 3, column 1"),
    (lambda t: ["--dataset", "imagenet", "--out", str(t / "o")], "unknown dataset"),
    (lambda t: ["--dataset", "spirals", "--epochs", "0", "--out", str(t / "o")], "epochs"),
    (lambda t: ["--dataset", "spirals", "--max-groups", "0", "--out", str(t / "o")],
     "max_groups=0"),
    (lambda t: ["--dataset", "spirals", "--growth-kind", "depth", "--depth-fraction", "2",
                "--out", str(t / "o")], "depth_fraction"),
    (lambda t: ["--dataset", "spirals", "--init-width", "0", "--out", str(t / "o")], "width"),
    (lambda t: ["--backend", "cuda", "--dataset", "spirals", "--out", str(t / "o")], "cuda"),
    (lambda t: ["--backend", "reference", "--cuda-mode", "graph", "--dataset", "spirals",
                "--out", str(t / "o")], "cuda mode ('graph') was given for the reference"),
    (lambda t: ["--resume", str(_run(t, "--dtype", "float64")), "--dtype", "float32"],
     "the checkpoint's run trains float64"),
])
def test_user_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_args, expect: str
) -> None:
    args = make_args(tmp_path)
    if args[:2] == ["--backend", "cuda"]:
        from streamdag.backends import backend_status

        if backend_status()["cuda"] is None:
            pytest.skip("cuda can run here")
    capsys.readouterr()
    rc = train(*args)
    assert rc != 0
    assert expect in _error_line(capsys)


def test_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "taken"
    f.write_text("not a directory")
    assert train(*FAST, "--epochs", "1", "--out", str(f)) != 0
    assert "taken" in _error_line(capsys)
    assert f.read_text() == "not a directory"


def test_resume_of_a_npz_dataset_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "mine.npz"
    np.savez(data, X=rng.standard_normal((60, 3)), y=np.arange(60) % 3)
    run = tmp_path / "run"
    assert train("--dataset", str(data), "--epochs", "1", "--out", str(run)) == 0
    rc = train("--resume", str(run), "--dataset", str(data), "--epochs", "2")
    assert rc == 0, capsys.readouterr().err


def test_retain_freed_memory_tunes_glibc_or_says_it_did_not() -> None:
    import platform

    from streamdag.hostmem import retain_freed_memory

    took = retain_freed_memory()
    assert took is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_cuda_mode_is_checked_before_any_backend_is_made() -> None:
    from streamdag.backends import get_backend
    from streamdag.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown cuda mode 'fastest'"):
        get_backend("auto", cuda_mode="fastest")
    assert get_backend("reference", cuda_mode="auto").name == "reference"  # the default
    with pytest.raises(ConfigError, match="dtype must be float32 or float64"):
        get_backend("reference", dtype="float16")


@pytest.mark.parametrize("mode", ["persistent", "fused", "graph"])
def test_float64_is_refused_where_the_cuda_backend_has_no_float64_kernels(mode: str) -> None:
    from streamdag.backends.cuda import CudaBackend
    from streamdag.errors import ConfigError

    with pytest.raises(ConfigError, match="float64 parameters train in the streams modes"):
        CudaBackend(mode=mode, dtype=np.float64)
    with pytest.raises(ConfigError, match="dtype must be float32 or float64"):
        CudaBackend(dtype=np.float16)
