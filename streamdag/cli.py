"""The ``streamdag`` command line.

``streamdag train`` trains a growing network; ``streamdag info`` says what this machine can
run. Other subcommands (``bench``) register themselves through :data:`SUBCOMMANDS`.

The CLI is the one place that configures structlog (human-readable lines on stderr, or JSON
with ``--log-json``) and turns a :class:`~streamdag.errors.StreamDagError` into one readable
line and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from . import __version__
from .errors import ConfigError, StreamDagError
from .hostmem import retain_freed_memory
from .train import TrainerCallback

__all__ = ["main"]

# name -> module exposing add_parser(subparsers) -> None and run(args) -> int
SUBCOMMANDS: dict[str, str] = {"bench": "streamdag.bench.cli"}

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _configure_logging(level: str, json_lines: bool) -> None:
    from tqdm import tqdm

    class _TqdmWriter:
        """Writes log lines above any live progress bar instead of through it."""

        def msg(self, message: str) -> None:
            tqdm.write(message, file=sys.stderr)

        log = debug = info = warning = warn = error = critical = exception = msg

    renderer: Any = (structlog.processors.JSONRenderer() if json_lines
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso" if json_lines else "%H:%M:%S"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=lambda *_: _TqdmWriter(),
        cache_logger_on_first_use=True,
    )


def _add_train_parser(sub: Any) -> None:
    from .train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train", help="train a growing network",
        description="Train a generalized network that starts from a single group and grows "
                    "by duplicating groups whose gradients are noisy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default=None,
                   help="digits, spirals, or a path to a .npz with arrays X and y (default: "
                        "digits; with --resume, the checkpoint's, which a .npz run must name)")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "cuda"],
                   help="auto uses cuda when a GPU is usable, else the numpy reference")
    p.add_argument("--cuda-mode", default="auto", choices=_cuda_modes(),
                   help="how the cuda backend runs a step: auto picks persistent or graph by "
                        "the network's shape and by whether it is growing (see "
                        "docs/cuda-backend.md)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="parameters and arithmetic (default: float32; with --resume, the "
                        "checkpoint's). In float32, runs on two backends part after a few "
                        "hundred steps (rounding differences grow until a growth decision "
                        "flips); in float64 digits grows the same network on both. The cuda "
                        "backend runs float64 in its streams modes only (auto: "
                        "streams-graph)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"passes over the training set (default: {d.epochs}; with --resume, "
                        "the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=d.lr_schedule)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--init-width", type=int, default=d.init_width,
                   help="neurons in the starting group")
    p.add_argument("--max-groups", type=int, default=d.max_groups,
                   help="global cap on the number of groups")
    g = p.add_argument_group("growth")
    g.add_argument("--no-growth", action="store_true", help="keep the starting structure")
    g.add_argument("--threshold", type=float, default=d.threshold,
                   help="mark a group when its EMA of std(dL/dh) exceeds this")
    g.add_argument("--grow-every", type=int, default=d.every,
                   help="consider growth every N steps")
    g.add_argument("--cooldown", type=int, default=d.cooldown,
                   help="steps a new or just-duplicated group cannot be marked")
    g.add_argument("--growth-kind", choices=["depth", "width", "mixed"], default=d.kind)
    g.add_argument("--depth-fraction", type=float, default=d.depth_fraction,
                   help="with --growth-kind mixed, the share of depth-wise duplications")
    g.add_argument("--noise", type=float, default=d.noise,
                   help="symmetry-breaking noise of width duplications (0: exact copies)")
    g.add_argument("--prune-below", type=float, default=None,
                   help="prune groups whose mean activation stays below this (default: never)")
    p.add_argument("--out", type=Path, default=None,
                   help="run directory for checkpoint.npz, metrics.jsonl and network.dot "
                        "(default: runs/<dataset>-<time>)")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue the run in DIR (its checkpoint.npz); --epochs may extend it")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="also checkpoint every N steps (0: at epoch ends only)")
    p.add_argument("--summary-json", type=Path, default=None, metavar="PATH",
                   help="write {test_accuracy, groups, mutations, steps, backend, seconds}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _cuda_modes() -> list[str]:
    from .backends.cuda import MODES

    return list(MODES)


def _config_from_args(a: argparse.Namespace) -> Any:
    from .train import TrainConfig

    return TrainConfig(
        epochs=a.epochs if a.epochs is not None else TrainConfig().epochs,
        batch_size=a.batch_size, lr=a.lr, lr_schedule=a.lr_schedule,
        momentum=a.momentum, weight_decay=a.weight_decay, seed=a.seed,
        init_width=a.init_width, max_groups=a.max_groups, growth=not a.no_growth,
        threshold=a.threshold, every=a.grow_every, cooldown=a.cooldown, kind=a.growth_kind,
        depth_fraction=a.depth_fraction, noise=a.noise, prune_below=a.prune_below,
        checkpoint_every=a.checkpoint_every, dtype=a.dtype or "float32")


def _run_train(a: argparse.Namespace) -> int:
    from .backends import get_backend
    from .data import load_dataset
    from .train import CHECKPOINT_NAME, Trainer

    log = structlog.get_logger("streamdag.cli")
    if a.resume is not None:
        ck = a.resume / CHECKPOINT_NAME if a.resume.is_dir() else a.resume
        from .checkpoint import load_checkpoint

        if a.out is not None:
            _check_out_dir(a.out, allow=ck)
        state = load_checkpoint(ck).state
        dtype = str(state.get("config", {}).get("dtype", "float32"))
        if a.dtype is not None and a.dtype != dtype:
            raise ConfigError(f"--dtype {a.dtype}: the checkpoint's run trains {dtype} "
                              "(a run keeps its dtype)")
        backend = get_backend(a.backend, cuda_mode=a.cuda_mode, dtype=dtype)
        ds_name = a.dataset or state.get("dataset", "digits")
        ds = load_dataset(ds_name, seed=int(state.get("config", {}).get("seed", a.seed)))
        trainer = Trainer.resume(ck, ds, backend=backend, out_dir=a.out, epochs=a.epochs)
        log.info("resumed", checkpoint=str(ck), step=trainer.counters.step,
                 groups=len(trainer.graph))
    else:
        dataset = a.dataset or "digits"
        out = a.out or Path("runs") / f"{Path(dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        _check_out_dir(out)
        config = _config_from_args(a)
        backend = get_backend(a.backend, cuda_mode=a.cuda_mode, dtype=config.dtype)
        ds = load_dataset(dataset, seed=a.seed)
        trainer = Trainer(ds, config, backend=backend, out_dir=out)
    log.info("training", dataset=ds.name, backend=backend.name, out=str(trainer.out_dir),
             train=len(ds.y_train), test=len(ds.y_test), epochs=trainer.config.epochs)
    if not a.no_progress:
        trainer.callbacks.append(_ProgressBar())
    previous = _install_stop_handler(trainer.request_stop)
    try:
        summary = trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert trainer.out_dir is not None
    (trainer.out_dir / "network.dot").write_text(trainer.graph.to_dot() + "\n")
    record = {"test_accuracy": summary.test_accuracy, "groups": summary.groups,
              "mutations": summary.mutations, "steps": summary.steps,
              "backend": summary.backend, "seconds": summary.seconds}
    if a.summary_json is not None:
        a.summary_json.parent.mkdir(parents=True, exist_ok=True)
        a.summary_json.write_text(json.dumps(record, indent=2) + "\n")
    if summary.stopped_early:
        log.warning("stopped early; checkpoint saved", out=str(trainer.out_dir),
                    resume=f"streamdag train --resume {trainer.out_dir}")
        return EXIT_INTERRUPTED
    log.info("done", **record, out=str(trainer.out_dir))
    return 0


def _check_out_dir(out: Path, *, allow: Path | None = None) -> None:
    """Refuse a run directory that is a file, or that holds a checkpoint other than ``allow``
    (a user's trained model is never overwritten)."""
    from .train import CHECKPOINT_NAME

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; choose another --out")
    ck = out / CHECKPOINT_NAME
    if ck.exists() and (allow is None or ck.resolve() != allow.resolve()):
        raise ConfigError(f"{out} already holds a checkpoint: continue it with --resume "
                          f"{out}, or choose another --out")


def _install_stop_handler(stop: Callable[[], None]) -> Any:
    """First Ctrl-C: finish the step, checkpoint, exit. Second: stop at once."""

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        structlog.get_logger("streamdag.cli").warning(
            "interrupt: stopping after this step (Ctrl-C again to abort now)")
        stop()

    return signal.signal(signal.SIGINT, handler)


class _ProgressBar(TrainerCallback):
    """A tqdm bar over all steps: epoch, loss, test accuracy, groups."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.acc = float("nan")

    def on_fit_start(self, trainer: Any) -> None:
        from tqdm import tqdm

        c = trainer.config
        per_epoch = -(-len(trainer.dataset.y_train) // c.batch_size)
        self.bar = tqdm(total=c.epochs * per_epoch, initial=trainer.counters.step,
                        unit="step", file=sys.stderr, dynamic_ncols=True)

    def on_step(self, trainer: Any, result: Any) -> None:
        self.bar.update(1)
        self.bar.set_postfix(epoch=trainer.counters.epoch + 1, loss=f"{result.loss:.4f}",
                             acc=f"{self.acc:.3f}", groups=len(trainer.graph), refresh=False)

    def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
        self.acc = metrics["test_accuracy"]
        if trainer.counters.epoch >= trainer.config.epochs:
            self.bar.close()


def _add_info_parser(sub: Any) -> None:
    p = sub.add_parser("info", help="versions and which backends can run here")
    p.set_defaults(func=_run_info)


def _run_info(a: argparse.Namespace) -> int:
    from .backends import backend_status

    print(f"streamdag {__version__} (python {sys.version.split()[0]})")
    for name, reason in backend_status().items():
        print(f"  backend {name:10s} {'ok' if reason is None else 'unavailable: ' + reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamdag",
        description="Train growing DAGs of many small neuron groups, on a GPU or the CPU.")
    parser.add_argument("--version", action="version", version=f"streamdag {__version__}")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-json", action="store_true", help="log JSON lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_parser(sub)
    _add_info_parser(sub)
    for mod in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name is None or not mod.startswith(exc.name):
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamdag`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level, args.log_json)
    if os.environ.get("STREAMDAG_RETAIN_FREED_MEMORY", "1") != "0":
        retain_freed_memory()  # growing networks free and re-take host memory every batch
    try:
        return int(args.func(args))
    except StreamDagError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"streamdag: error: {first}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("streamdag: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
