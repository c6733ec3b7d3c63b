"""Writing a dag-bench run: ``results.json``, ``results.md`` and log–log plots.

``results.json`` is the list of records BENCHMARK.md specifies (plus ``reason``, ``steps``
and a few diagnostic fields). ``results.md`` has one table per configuration with every
contender's median and p10–p90 spread, and a ratio table — each streamdag contender's speedup
over each baseline measured in the same run. Plots need matplotlib (the ``viz`` extra); without
it they are skipped with a warning.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

from .dagbench import PRESETS
from .measure import GATE_RTOL, GATE_STEPS

__all__ = ["REQUIRED_FIELDS", "render_markdown", "write_plots", "write_results"]

REQUIRED_FIELDS = ("preset", "groups", "width", "fan_in", "batch", "contender", "status",
                   "median_ms", "p10_ms", "p90_ms", "gpu", "date", "versions")

log = structlog.get_logger("streamdag.bench")


def write_results(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write ``results.json``, ``results.md`` and the plots; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "results.md"]
    paths[0].write_text(json.dumps(records, indent=1) + "\n")
    plots = write_plots(records, out_dir)
    paths[1].write_text(render_markdown(records, plots=[p.name for p in plots]))
    return paths + plots


def _ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}" if v >= 1 else f"{v:.3f}"


def _config_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r.get("kind"), r["preset"], r["groups"], r["width"], r["fan_in"], r["window"],
            r["batch"], r.get("layers"))


def _groups(records: Iterable[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(_config_key(r), []).append(r)
    return out


def _title(r: dict[str, Any]) -> str:
    layout = (f"{r['layers']} layers" if r.get("layers") else
              f"fan-in {r['fan_in']}, window {r['window']}")
    return (f"{r['preset']} — {r['groups']:,} groups × {r['width']}, {layout}, batch {r['batch']}, "
            f"{r['dag_levels']:,} levels")


def _status(r: dict[str, Any]) -> str:
    if r["status"] == "ok":
        return "ok"
    return f"{r['status']}: {r.get('reason', '')}".replace("|", "/")


def _step_table(rs: list[dict[str, Any]]) -> list[str]:
    serial = next((r for r in rs if r["contender"] == "numpy-serial" and r["status"] == "ok"),
                  None)
    mutation = rs[0].get("kind") == "mutation"
    head = ("| contender | median ms | p10–p90 ms | " + ("repeats" if mutation else "steps")
            + " | × vs numpy-serial | " + ("phases (median ms)" if mutation else "note") + " |")
    lines = [head, "|---|---:|---:|---:|---:|---|"]
    for r in rs:
        if r["status"] != "ok":
            lines.append(f"| {r['contender']} | — | — | — | — | {_status(r)} |")
            continue
        ratio = (f"{serial['median_ms'] / r['median_ms']:.1f}×" if serial is not None
                 else "—")
        if mutation:
            extra = ", ".join(f"{k[:-3]} {_ms(v)}" for k, v in r.get("phases_ms", {}).items())
        else:
            extra = r.get("note", "")
            # PyTorch's graph contenders capture while they are built; streamdag's capture
            # (or build their graph definition) in their first step, which setup_ms omits
            if r.get("setup_ms") is not None and r["contender"].startswith("torch-") and (
                    "graph" in r["contender"]):
                extra = (extra + "; " if extra else "") + f"build+capture {_ms(r['setup_ms'])} ms"
            mem = r.get("device_memory")
            if mem and mem["needed_bytes"]:
                extra = (extra + "; " if extra else "") + (
                    f"device {mem['held_bytes'] / 2**20:,.0f} MiB held for "
                    f"{mem['needed_bytes'] / 2**20:,.0f} MiB needed")
        lines.append(f"| {r['contender']} | {_ms(r['median_ms'])} | {_ms(r['p10_ms'])}–"
                     f"{_ms(r['p90_ms'])} | {r['steps']} | {ratio} | {extra} |")
    return lines


def _ratio_table(rs: list[dict[str, Any]]) -> list[str]:
    ours = [r for r in rs if r["contender"].startswith("streamdag-")]
    base = [r for r in rs if not r["contender"].startswith("streamdag-") and r["status"] == "ok"]
    if not ours or not base:
        return []
    lines = ["", "Speedup of each streamdag contender over each baseline (baseline median ÷ "
             "streamdag median):", "",
             "| streamdag contender | " + " | ".join(b["contender"] for b in base) + " |",
             "|---|" + "---:|" * len(base)]
    for r in ours:
        if r["status"] != "ok":
            cells = ["—"] * len(base)
        else:
            cells = [f"{b['median_ms'] / r['median_ms']:.2f}×" for b in base]
        lines.append(f"| {r['contender']} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(records: list[dict[str, Any]], *, plots: Iterable[str] = ()) -> str:
    """The Markdown report of a run (see the module doc)."""
    if not records:
        return "# dag-bench results\n\nNo records.\n"
    first = records[0]
    v = first["versions"]
    rtols = {r["gate"]["rtol"] for r in records if r.get("gate")}
    rtol = max(rtols) if rtols else GATE_RTOL
    lines = [
        "# dag-bench results", "",
        f"GPU: **{first['gpu'] or 'none (CPU only)'}** · date {first['date']} · streamdag "
        f"{v['streamdag']} · python {v['python']} · numpy {v['numpy']} · torch "
        f"{v['torch'] or 'not installed'}" + (f" (CUDA {v['torch_cuda']})"
                                            if v.get("torch_cuda") else ""), "",
        "One step = forward + softmax cross-entropy + backward + SGD update (lr 0.01, "
        "momentum 0, float32, TF32 off) on one fixed batch, all contenders in one process on "
        "the same DAG, initial parameters and batch. Median and p10–p90 over the timed steps, "
        "each from an idle device (PyTorch on the GPU: CUDA events around the step; "
        "streamdag: `perf_counter` from an idle device until the device is idle again, host "
        "launch work and the final sync included; CPU: `perf_counter`). "
        f"Correctness gate: the loss computed in step {GATE_STEPS} equals the float32 numpy "
        f"reference's within {rtol:g} relative, or the contender is reported failed "
        "and not timed." + ("" if rtol == GATE_RTOL else f" (BENCHMARK.md asks for "
                            f"{GATE_RTOL:g}; see docs/benchmark.md for why this run used "
                            f"{rtol:g}.)"), "",
    ]
    for rs in _groups(r for r in records if r.get("kind") != "mutation").values():
        lines += [f"## {_title(rs[0])}", "", *_step_table(rs), *_ratio_table(rs), ""]
    muts = _groups(r for r in records if r.get("kind") == "mutation")
    for rs in muts.values():
        lines += [f"## Mutation: 8 duplications (4 depth + 4 width) and the first step after "
                  f"them — {_title(rs[0])}", "",
                  "From the end of a step to the end of the first step after the change: "
                  "host parameters brought up to date (`sync`), `MutationQueue.apply` "
                  "(`apply`), then the contender catching up (`rebuild`: `on_mutation` for "
                  "streamdag, new modules + optimizer + CUDA-graph capture for PyTorch), then "
                  "the step.", "", *_step_table(rs), *_ratio_table(rs), ""]
    sweep = _sweep_table(records)
    if sweep:
        lines += ["## Scaling sweep (median ms per step)", "", *sweep, ""]
    for p in plots:
        lines += [f"![{p}]({p})", ""]
    return "\n".join(lines)


def _sweep_points(records: list[dict[str, Any]], axis: str) -> list[dict[str, Any]]:
    base = PRESETS["S"]
    fixed = {"fan_in": base.fan_in, "window": base.window, "batch": base.batch}
    fixed["width" if axis == "groups" else "groups"] = (base.width if axis == "groups"
                                                        else base.groups)
    return [r for r in records if r.get("kind") is None and "layers" not in r
            and all(r[k] == v for k, v in fixed.items())]


def _sweep_table(records: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for axis in ("groups", "width"):
        pts = _sweep_points(records, axis)
        xs = sorted({r[axis] for r in pts})
        if len(xs) < 2:
            continue
        names = list(dict.fromkeys(r["contender"] for r in pts))
        lines += [f"| contender \\ {axis} | " + " | ".join(f"{x:,}" for x in xs) + " |",
                  "|---|" + "---:|" * len(xs)]
        for n in names:
            cell = {r[axis]: _ms(r["median_ms"]) if r["status"] == "ok" else r["status"]
                    for r in pts if r["contender"] == n}
            lines.append(f"| {n} | " + " | ".join(cell.get(x, "") for x in xs) + " |")
        lines.append("")
    return lines


def write_plots(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Log–log plots of step time against groups and against width (if matplotlib is here)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install 'streamdag[viz]')")
        return []
    written: list[Path] = []
    for axis, label in (("groups", "groups G (W=16)"), ("width", "group width W (G=1,024)")):
        pts = [r for r in _sweep_points(records, axis) if r["status"] == "ok"]
        if len({r[axis] for r in pts}) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for name in dict.fromkeys(r["contender"] for r in pts):
            mine = sorted((r[axis], r["median_ms"]) for r in pts if r["contender"] == name)
            ax.loglog([x for x, _ in mine], [y for _, y in mine], marker="o", label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("median step time (ms)")
        gpu = records[0]["gpu"] or "CPU"
        ax.set_title(f"dag-bench step time vs {axis} — {gpu}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"scaling_{axis}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
