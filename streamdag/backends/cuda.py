"""The CUDA training backend: the whole step on the GPU, checked against the reference.

Design note
-----------
State on the device (all through :mod:`streamdag.driver`):

* the four parameter arenas, byte-for-byte mirrors of the host
  :class:`~streamdag.params.ParamStore` arenas (same offsets, same spare capacity);
* node tables (the layout of :class:`NetTables`): node 0 is the input, then the groups
  level by level, the output last; per node its width, fan-in, arena offsets, predecessor
  and successor lists and a column map. ``kernels/tables.cu`` builds them on the device from
  :class:`~streamdag.backends.tables.TableInputs` (the groups sorted by level and the
  graph's per-id columns, uploaded as they are), byte for byte what ``NetTables.build``
  makes on the host; the host keeps only their :class:`TableShape`. ``streams`` mode, which
  plans one task per node on the host, builds them on the host. For the persistent step
  the groups go in the graph's flow order instead (``NetworkGraph.flow_order``, a
  topological order that a batch of duplications keeps by insertion): then a batch costs
  no depth computation on the host (see ``_flow_tables``);
* activation, ``dL/dh`` and ``dL/dz`` arenas laid out row-major over the batch (a batch row
  of the whole network is contiguous), with spare capacity in rows and columns so growth
  rarely reallocates;
* ``weight_t``: each node's weights transposed (fan-in × width, same offsets), which the
  dataflow forward reads coalesced; the update kernel writes it with the weights, and
  ``sd_transpose_weights`` rebuilds it after an upload or a mutation batch.

A step is a handful of launches whose shape depends on ``mode``:

* ``auto`` (default): ``graph`` or ``persistent``, chosen again whenever the tables are
  rebuilt, by the network's shape and by whether it is growing (a mutation batch in the
  last :data:`AUTO_QUIET_STEPS` steps; see :func:`auto_mode`). ``graph`` where the levels
  hold 24 groups or more on average or the groups are 48 neurons wide or more on average,
  where the persistent kernel, in which every block reads every weight, is 1.25-1.8x
  slower. Elsewhere ``persistent`` while growing: a batch costs it no graph re-capture (at
  M 4.7 ms a batch against 15.3 on an H100). Settled (the step that ends the growing phase
  rebuilds the tables level by level where needed, and captures the graph: 17-27 ms at M,
  once), ``graph`` also where it measured faster than ``persistent`` in networks of 1,024
  groups or more: where fewer than half the groups are 16 or 32 wide (widths 8, 20, 24, 28:
  1.25-1.35x), and where most are 16 wide in 4,096 or more at 14 or more a level (dag-bench
  M: 1.78 against 1.85 ms); ``persistent`` elsewhere (dag-bench S: 0.49 against 0.53 ms;
  width 32 at M: 4.30 against 4.76). A network that never grew counts as settled.

* ``persistent``: one launch runs forward, loss and pull backward of the whole DAG
  for a slice of batch rows per block — rows are independent until the weight gradient, so
  no block ever waits for another. Inside a block, ``sd_step_flow`` walks the DAG as a
  dataflow: a free warp takes the next group in topological order and waits (per-node flags
  in shared memory) only for that group's own inputs; ``dataflow=False`` (or a graph too large for
  the flags) uses ``sd_step_rows``, which separates whole levels with ``__syncthreads``.
  Then ``sd_wgrad_update`` (weight gradient, SGD step, growth statistics; one block per tile
  of one node's weights, all nodes at once) and ``sd_reduce_loss``. Three launches a step.
* ``fused``: one grouped launch per DAG level and phase (``sd_forward_tiled`` /
  ``sd_backward_tiled``, or ``sd_backward_push``, over a level's node slice; tiles of 32, 16
  or 8 batch rows, the shorter where a level is too small to fill the GPU (but none shorter
  than a block has row groups for the network's widest group: 16 rows for 16-wide), and the
  ``*_many`` build of the same kernels for launches of more blocks than it holds at once,
  the ``*_wide`` build, with float4 weight staging, for networks of groups 32 wide or more;
  the output's forward split over its columns), then the same weight-gradient and loss
  launches: about ``2 × levels + 5`` launches. On sm_90+ the tiled launches start early
  (programmatic dependent launch): each loads its tables and weights while the kernel ahead
  finishes, and waits for it only before reading activations or gradients.
* ``graph``: the ``fused`` sequence captured once as a CUDA graph and replayed; re-captured
  after a mutation (the executable graph updated in place when the batch left the levels,
  and where the branches below start, as they were). With the pull backward, the weight
  gradient goes in runs of levels on branches of the graph beside the backward chain, each
  as soon as the backward has passed the shallowest level that reads its weights
  (:func:`wgrad_chunks`).
* ``streams``: the literal design, through :mod:`streamdag.scheduler`: one task per group
  for its forward and one for its backward (plus softmax, one weight-update task for all
  groups, the loss), planned on ``streams`` CUDA streams with an event on every cross-stream
  edge the transitive reduction keeps, launched one by one from Python. After a mutation
  the surviving groups' tasks keep their order, streams, waits and bound launches, and only
  the new tasks and the edges the old plan does not order are planned (a task names its
  group through ``task_nodes``, not by table index; see ``_launch_streams``). It is the
  baseline the other modes beat.
* ``streams-graph``: the same task plan replayed as one CUDA graph (a kernel node per task,
  the plan's dependencies as edges; :class:`~streamdag.scheduler.CudaExecutor` in graph
  mode, which captures each launch after its transitively reduced predecessors), captured
  and instantiated again after a mutation (240 ms a batch at M on an H100).

Kernels and their reference functions are listed in ``kernels/network.cu``.

float64. ``CudaBackend(dtype=np.float64)`` trains float64 parameters with the float64 build
of the kernels the ``streams`` modes run (``kernels/network64.cu``, ``growth64.cu``: the
same source with ``sd_real = double``); the tiled level kernels and the persistent step are
float32 only, so the other modes are refused and ``auto`` runs ``streams-graph``: at M on an
H100 its step takes 8.3 ms against ``streams``' 62, and a batch plus the step after it
397 ms against 177, so it is ahead from a batch every five steps on (the growth policy's
``every`` defaults to 10). Buffers are sized by the element (``_esize``); a float64
prediction runs the forward one level slice a launch (``_launch_forward_levels``). It exists
for runs whose grown structure must not depend on the backend: float32 training amplifies a
rounding difference until a growth decision flips (docs/cuda-backend.md, "Digits").

Growing. A mutation batch is applied to the host store without downloading it first: the
backend replays the batch's :class:`~streamdag.params.ParamOp` log on the device
(``kernels/growth.cu``: zeroed slots, strided column copies, identities, relative noise),
growing an arena when the host's grew and moving slots as the host's compaction moved them
(``sd_move_slots``; a batch begins with one when the arena is mostly holes), so parameters
and momenta of surviving groups never leave the device; only host-made values (noise
draws) go up, with the op table and the table inputs, in one staged copy, and the tables
are rebuilt on the device (at M a batch's catch-up went from ~2.0–2.4 to ~1.0–1.3 ms of
host time on an H100 machine: ~60 numpy calls over every edge and column became a dozen
over the groups, five launches and one small read-back). The host store's values are stale
until :meth:`CudaBackend.sync_params` (evaluation, checkpoints);
its slot layout is always current.

Growth scores. Attached to a :class:`~streamdag.growth.GrowthPolicy` (it is a
:class:`~streamdag.backends.base.ScoreTracker`), the backend keeps both EMAs per group on
the device (``sd_ema_update`` after each step, float64, bit-identical to the host criteria),
moves them to the new group slots after a rebuild (``sd_ema_remap``), and answers a proposal
with the compacted list of groups past the threshold (``sd_ema_select``): per step nothing
but the loss crosses to the host.

Results (:class:`DeviceStepResult`) are fetched lazily: reading ``loss`` or ``stats``
synchronises; a benchmark that never reads them measures the step alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import BackendError, ConfigError, DataError, DeviceMemoryError, StreamDagError
from ..graph import OUTPUT, NetworkGraph
from ..mutation import MutationReport
from ..params import ParamOp, ParamStore
from .base import Backend, GroupStats
from .tables import MAX_INT32, WG_THREADS, NetTables, TableInputs, TableShape, width_mix

__all__ = ["MODES", "CudaBackend", "DeviceStepResult", "NetTables", "auto_mode", "tile_rows",
           "unavailable_reason"]

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

MODES = ("auto", "persistent", "fused", "graph", "streams", "streams-graph")
BACKWARDS = ("pull", "push")
KERNEL_FILE = "network.cu"
KERNEL_FILE_F64 = "network64.cu"  # network.cu in float64: the streams modes' kernels
GROWTH_FILE, GROWTH_FILE_F64 = "growth.cu", "growth64.cu"
F64_MODES = ("streams", "streams-graph")  # the modes float64 parameters can train in
FWD_ROWS = 8      # SD_FWD_ROWS
BWD_ROWS = 8      # SD_BWD_ROWS
LEVEL_THREADS = 128
TILE_ROWS = 32      # SD_TR: batch rows of a tiled level kernel's block, at most
TILE_FILL = 2       # blocks per SM a tiled level launch should reach; fewer: shorter tiles
TILE_MIN_ROWS = 8   # the shortest tile (a power of two; see tile_rows)
TILE_MINB = 4       # SD_TILE_MINB: blocks per SM of sd_*_tiled; launches of more use *_many
TILE_WIDE_WIDTH = 32  # networks with a group this wide launch sd_*_tiled_wide instead
AUTO_LEVEL_GROUPS = 24  # auto mode: groups per level (mean) from which graph mode runs
AUTO_WIDTH = 48         # auto mode: group width (mean) from which graph mode runs
# auto mode: steps after a mutation batch that count as growing. The step that ends that
# phase at M costs 17-27 ms (H100: tables level by level, a graph capture), and graph mode's
# steps there save 0.04-0.07 ms each (~250-650 steps to pay for it; this is the low end):
# switching after about as many steps as pay for it costs at most about twice what the best
# choice in hindsight would have (the ski-rental bound).
AUTO_QUIET_STEPS = 256
AUTO_SETTLED_GROUPS = 1024  # settled (see auto_mode): graph mode possible from this many groups
AUTO_M_GROUPS = 4096        # ... for 16-wide groups from this many groups
AUTO_M_LEVEL_GROUPS = 14    # ... at this many groups per level (mean) or more
TILE_THREADS = 256  # SD_TILE_THREADS
SPLIT_COLS = 256    # input columns of one block of the output's split-K forward (× SD_TK)
WG_CHUNKS = 16      # graph mode: runs of levels the weight gradient is launched in (< 2: one
                    # launch after the backward chain)
STEP_THREADS = 512  # default SD_STEP_THREADS
SMEM_LIMIT = 48 * 1024  # dynamic shared memory without an opt-in
# struct SdParamOp and enum SdOpKind in kernels/growth.cu
OP_ZERO, OP_COPY_COLS, OP_COPY_BIAS, OP_IDENTITY, OP_SET, OP_ADD, OP_NOISE = range(7)
OP_DTYPE = np.dtype([("kind", np.int32), ("dst", np.int32), ("dst_stride", np.int32),
                     ("src", np.int32), ("src_stride", np.int32), ("rows", np.int32),
                     ("ncols", np.int32), ("aux", np.int32), ("scale", np.float64)], align=True)


def unavailable_reason(ordinal: int = 0) -> str | None:
    """None when device ``ordinal`` can run this backend, else why not."""
    from .. import driver

    try:
        driver.Gpu(ordinal)
    except BackendError as exc:
        return str(exc).splitlines()[0]
    return None


class DeviceStepResult:
    """A step's loss, accuracy and statistics, fetched from the device on first access."""

    def __init__(self, backend: CudaBackend, generation: int, batch: int) -> None:
        self._backend = backend
        self._generation = generation
        self.batch = batch
        self._loss: float | None = None
        self._correct = 0
        self._stats: GroupStats | None = None

    def _fetch_scalars(self) -> None:
        if self._loss is None:
            self._check_fresh()
            self._loss, self._correct = self._backend._read_loss()

    def _check_fresh(self) -> None:
        if self._backend._generation != self._generation:
            raise BackendError("this step's results were overwritten by a later step; read "
                               "them before the next step")

    @property
    def loss(self) -> float:
        self._fetch_scalars()
        assert self._loss is not None
        return self._loss

    @property
    def correct(self) -> int:
        self._fetch_scalars()
        return self._correct

    @property
    def stats(self) -> GroupStats:
        if self._stats is None:
            self._check_fresh()
            self._stats = self._backend._read_stats()
        return self._stats


def auto_mode(t: TableShape, *, growing: bool = False) -> str:
    """What ``mode="auto"`` runs for tables of shape ``t`` (level by level), while the network
    is ``growing`` (a mutation batch in the last :data:`AUTO_QUIET_STEPS` steps) or settled.

    ``"graph"`` always where the levels hold :data:`AUTO_LEVEL_GROUPS` groups or more on
    average, or the groups are :data:`AUTO_WIDTH` neurons wide or more on average: there the
    persistent kernel, where every block reads every weight, is 1.25-1.8x slower. Otherwise
    ``"persistent"`` while growing: a batch costs it no re-capture (at M 4.7 ms a batch
    against 15.3 for graph mode). Settled, in networks of :data:`AUTO_SETTLED_GROUPS` groups
    or more, ``"graph"`` also where fewer than half the groups are 16 or 32 wide (the widths
    the persistent kernel serves well), and where half or more are 16 wide at
    :data:`AUTO_M_LEVEL_GROUPS` groups a level or more in :data:`AUTO_M_GROUPS` groups or
    more; else ``"persistent"``.

    Measured on an H100 with the probe now in ``tools/auto_probe.py`` (2026-11-24; best of 3 ×
    30 steps, batch 256; persistent ÷ graph, > 1: graph faster; dag-bench DAGs, window 64
    unless named):

    - 4,096 groups (15.2 a level) at widths 8 / 12 / 16 / 20 / 24 / 28 / 32 / 40: 1.35 /
      1.12 / 1.04 / 1.26 / 1.28 / 1.27 / 0.90 / 1.03;
    - 1,024 groups (13.1 a level) at the same widths: 1.25 / 1.01 / 0.93 / 1.26 / 1.33 /
      1.30 / 0.99 / 1.09; at width 4: 1.08 (the bench's sweep, 0.332 / 0.306 ms);
    - width 16: 16,384 groups at 15.4 a level (L) 1.01; 4,096 at 8.2 / 4.5 / 2.7 a level
      0.87 / 0.88 / 0.88; 1,024 at 16 / 7.9 / 8.0 / 4.3 / 2.6 a level 0.97 / 0.84 / 0.88 /
      0.82 / 0.83; 256 at 8.8 0.82; 48 at 2.1 (batch 64) 0.94.

    A second run of the tool, on the final code, gave the same picture within ±0.12 (M 1.02;
    width 8 at 1,024 groups 1.13; width 12 there 0.99, the rule's one small miss seen).
    Untested: narrow or odd widths below 1,024 groups (persistent is kept there), and
    networks that mix widths. Before the sixth session's successor lists, layers of 128 /
    64 / 32 / 16 groups at 4,096 × 16 measured 1.83 / 1.73 / 1.25 / 0.87, which set
    :data:`AUTO_LEVEL_GROUPS`.
    """
    if not t.by_level:
        raise ValueError("auto_mode needs tables built level by level")
    return _auto_mode(len(t.group_ids), t.n_levels - 2, t.mean_width, t.share16, t.share32,
                      growing=growing)


def tile_rows(batch: int, nodes: int, fill: float, max_width: int) -> int:
    """Batch rows of a tiled level kernel's block (a power of two) for a level of ``nodes``
    nodes: :data:`TILE_ROWS`, halved while the level's blocks (``nodes`` × tiles of the
    batch) are fewer than ``fill``, but never below :data:`TILE_MIN_ROWS` nor below the
    row groups a block has for the network's widest group (:data:`TILE_THREADS` //
    ``max_width``: 16 rows for 16-wide groups, 32 for 9-wide ones). A shorter tile leaves
    threads idle and makes twice the blocks, too many to stay resident (:data:`TILE_MINB`
    an SM) beside the level before them, which is where they stage their weights early
    (H200, graph mode, 16-wide groups: 8-row tiles made dag-bench M 8% slower, S 6%)."""
    min_rows = min(TILE_ROWS, max(TILE_MIN_ROWS, TILE_THREADS // max(1, max_width)))
    tr = TILE_ROWS
    while tr // 2 >= min_rows and nodes * math.ceil(batch / tr) < fill:
        tr //= 2
    return tr


def reader_levels(inp: TableInputs) -> np.ndarray:
    """Per node index of tables built level by level from ``inp``: the shallowest level
    whose pull backward reads the node's weights — its predecessors' levels, the input's
    left out (it has no backward) — or the node's own level where no other level does. Once
    the backward has finished that level, the node's weights may be updated."""
    starts = inp.level_start
    node_level = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    out = len(starts) - 2
    level_of = np.full(len(inp.width) + 1, out, np.int64)  # INPUT (-1) reads the last
    level_of[inp.order] = node_level[1:-1]
    reader = node_level.astype(np.int64)
    if len(inp.order):
        counts, first = inp.count[inp.order], inp.start[inp.order]
        seg = np.zeros(len(counts), np.intp)  # each group's first entry in the gathered list
        np.cumsum(counts[:-1], out=seg[1:])
        entries = np.repeat(first - seg, counts) + np.arange(int(counts.sum()))  # pool indices
        pred_levels = level_of[inp.pool[entries]]
        np.minimum(reader[1:-1], np.minimum.reduceat(pred_levels, seg), out=reader[1:-1])
    if len(inp.out_preds):
        reader[-1] = min(out, int(level_of[inp.out_preds].min()))
    return reader


def wgrad_chunks(level_start: np.ndarray, reader: np.ndarray, tile_start: np.ndarray,
                 chunks: int) -> list[tuple[int, int, int]]:
    """Graph mode's weight-gradient launches beside the backward chain: ``(fork level,
    first tile, tiles)``, where the launch may start once the pull backward has finished
    ``fork level`` (1: the whole chain; the output's level: the loss), in the order the
    backward reaches them.

    The levels go in runs, deep to shallow: the output alone, then up to ``chunks - 1`` (at
    least one) of the groups' levels. A run's launch waits for the shallowest level that
    reads its nodes' weights (``reader``, from :func:`reader_levels`): its update rewrites
    them. ``tile_start[n]`` is node ``n``'s first tile, ``tile_start[n_nodes]`` the number
    of tiles. Runs with the same fork level next to each other are one launch.
    """
    out = len(level_start) - 2
    bounds = np.unique(np.concatenate([[out + 1],
                                       np.linspace(out, 1, max(chunks - 1, 1) + 1).round()]))
    found: list[tuple[int, int, int]] = []
    for lo, hi in zip(bounds[-2::-1].astype(int), bounds[:0:-1].astype(int), strict=True):
        n0, n1 = int(level_start[lo]), int(level_start[hi])  # levels lo .. hi - 1
        t0, t1 = int(tile_start[n0]), int(tile_start[n1])
        if t1 == t0:
            continue
        fork = max(1, int(reader[n0:n1].min()))
        if found and found[-1][0] == fork and found[-1][1] == t1:  # the run before it
            found[-1] = (fork, t0, found[-1][2] + t1 - t0)
        else:
            found.append((fork, t0, t1 - t0))
    return sorted(found, key=lambda c: -c[0])


def _auto_mode(groups: int, levels: int, mean_width: float, share16: float, share32: float,
               *, growing: bool = False) -> str:
    """:func:`auto_mode` for ``groups`` groups over ``levels`` levels (those of the groups:
    the input's and the output's not counted), of ``mean_width`` on average, ``share16``
    and ``share32`` of them 16 and 32 wide. More levels never turn its answer from
    ``persistent`` to ``graph`` (a lower bound on them may stand in)."""
    if groups == 0:
        return "persistent"
    per_level = groups / max(levels, 1)
    if per_level >= AUTO_LEVEL_GROUPS or mean_width >= AUTO_WIDTH:
        return "graph"
    if growing or groups < AUTO_SETTLED_GROUPS:
        return "persistent"
    if share16 + share32 < 0.5 or (share16 >= 0.5 and groups >= AUTO_M_GROUPS
                                   and per_level >= AUTO_M_LEVEL_GROUPS):
        return "graph"
    return "persistent"


class CudaBackend(Backend):
    """Training steps on an NVIDIA GPU.

    Args:
        mode: ``"auto"`` (default: ``persistent`` or ``graph`` by the network's shape,
            :attr:`active_mode` says which), ``"persistent"``, ``"fused"``, ``"graph"``,
            ``"streams"`` or ``"streams-graph"`` (see the module note).
        backward: ``"pull"`` (deterministic gather, default) or ``"push"`` (atomic adds;
            ``fused``/``graph`` modes only).
        device: the CUDA device ordinal.
        rows_per_block: batch rows per block in ``persistent`` mode (default: spread the
            batch over the multiprocessors).
        streams: CUDA streams of the ``streams`` modes.
        step_threads: block size of the ``persistent`` kernels (more threads, more groups in
            flight, but fewer registers each: 1024 threads spill).
        dataflow: in ``persistent`` mode, let each group wait only for its own inputs
            (per-node flags in shared memory: up to ~55k nodes on an H100) instead of for
            the whole previous level.
        dtype: ``np.float32`` (default) or ``np.float64``, the parameters' dtype (see
            :class:`~streamdag.params.ParamStore`). float64 trains in the ``streams``
            modes only (``auto`` runs ``streams-graph``):
            for runs whose grown structure must not depend on the order a sum is taken in
            (float32 training amplifies a rounding difference until a growth decision
            flips; see docs/cuda-backend.md).

    Raises:
        BackendError: no usable GPU, or a kernel failed to compile (with NVRTC's log).
    """

    name = "cuda"
    replays_param_ops = True

    def __init__(self, *, mode: str = "auto", backward: str = "pull", device: int = 0,
                 rows_per_block: int | None = None, dataflow: bool = True,
                 step_threads: int = STEP_THREADS, streams: int = 4,
                 dtype: Any = np.float32) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown cuda mode {mode!r}: use one of {', '.join(MODES)}")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be float32 or float64, got {self.dtype}")
        f64 = self._f64 = self.dtype == np.float64
        if f64 and mode not in (*F64_MODES, "auto"):
            raise ConfigError(f"float64 parameters train in the streams modes only "
                              f"({', '.join(F64_MODES)} or auto), not {mode}")
        if backward not in BACKWARDS:
            raise ConfigError(f"backward must be pull or push, got {backward!r}")
        if backward == "push" and mode in ("auto", "persistent", "streams", "streams-graph"):
            raise ConfigError(f"push backward needs mode fused or graph ({mode} pulls)")
        from .. import driver, kernels

        self.mode, self.backward = mode, backward
        # the mode a step runs: ``mode`` itself, or auto's choice for the current tables
        self.active_mode = mode if mode != "auto" else "streams-graph" if f64 else "persistent"
        self.name = f"cuda-{mode}" + ("-push" if backward == "push" else "") + (
            "-float64" if f64 else "")
        self._drv = driver
        self.gpu = driver.Gpu(device)
        self.stream = self.gpu.stream()
        if step_threads not in (256, 512, 1024):
            raise ConfigError(f"step_threads must be 256, 512 or 1024, got {step_threads}")
        self._step_threads = step_threads
        self._streams = streams
        # the element's size and the kernels' build (float64: network64.cu, growth64.cu)
        self._esize = self.dtype.itemsize
        self._kernel_file = KERNEL_FILE_F64 if f64 else KERNEL_FILE
        module = kernels.load(self._kernel_file, self.gpu,
                              defines=[] if f64 else [f"SD_STEP_THREADS={step_threads}"])
        self._k = {n: self.gpu.kernel(module, n) for n in (
            "sd_forward", "sd_softmax_xent", "sd_backward_pull", "sd_backward_push",
            "sd_wgrad_update", "sd_reduce_loss", "sd_transpose_weights", "sd_scatter_input",
            "sd_gather_output", *(() if f64 else (
                "sd_forward_tiled", "sd_splitk_finish", "sd_backward_tiled",
                "sd_forward_tiled_many", "sd_backward_tiled_many", "sd_forward_tiled_wide",
                "sd_backward_tiled_wide", "sd_step_rows", "sd_step_flow")))}
        tables = kernels.load("tables.cu", self.gpu)
        self._tk = {n: self.gpu.kernel(tables, n) for n in (
            "sd_tab_nodes", "sd_tab_edges", "sd_tab_scan", "sd_tab_fill", "sd_tab_sort")}
        growth = kernels.load(GROWTH_FILE_F64 if f64 else GROWTH_FILE, self.gpu)
        self._gk = {n: self.gpu.kernel(growth, n) for n in (
            "sd_copy2d", "sd_move_slots", "sd_replay", "sd_ema_update", "sd_ema_remap",
            "sd_ema_select")}
        self._n_sms = self.gpu.multiprocessors
        # the tiled level kernels start early (programmatic dependent launch, sm_90+): each
        # stages its tables and weights while the level before it finishes (see _launch_levels)
        self._early = int(self.gpu.arch.removeprefix("sm_")) >= 90
        self._rows_per_block = rows_per_block
        self._dataflow = dataflow
        self._flow_smem = SMEM_LIMIT  # dynamic shared memory sd_step_flow may use
        self._smem_optin = self.gpu.shared_memory_optin
        self._bufs: dict[str, Any] = {}
        # what the device's table buffers hold; the tables themselves in streams mode only,
        # which plans a task per node on the host (the others build them on the device)
        self._tables: TableShape | None = None
        self._host_tables: NetTables | None = None
        self._table_inputs: TableInputs | None = None  # what the device tables came from
        self._graph_key: tuple[int, int] | None = None  # (structure version, batch)
        self._graph_exe: Any = None
        self._graph_updates = 0  # captures that updated the executable graph in place
        self._wgrad_branches = 0  # weight-gradient runs the last capture branched off
        self._graph_topology: tuple[Any, ...] | None = None  # of the graph captured
        self._executor: Any = None  # streams mode: a bound scheduler CudaExecutor
        self._executor_key: tuple[int, int] | None = None
        # streams mode: each node's task key (1 the output, 2 + id a group) by table index,
        # and the task specs of the last plan by name, for the batch size they were made for
        self._stream_keys: np.ndarray | None = None
        self._stream_specs: dict[str, Any] = {}
        self._stream_specs_batch = 0
        self._structure = 0          # bumps on every rebuild of the tables
        self._layout: tuple[int, int] | None = None  # (id(params), layout_version) mirrored
        self._act_capacity = 0       # floats in each activation arena
        self._batch_capacity = 0
        self._hyper: tuple[float, float, float] | None = None
        # the last training batch uploaded (shape and dtype, bytes; the labels likewise) with
        # the buffers holding it, and the structure version its input was last scattered for
        self._batch_key: tuple[Any, ...] | None = None
        self._scattered = -1
        self._generation = 0
        self._params: ParamStore | None = None
        self._configs: dict[tuple[Any, ...], Any] = {}
        self._last_batch = 0
        self._graph_n: tuple[Any, ...] = ()
        self._graph: NetworkGraph | None = None
        # the persistent step's launches (kernel, config, args) and what they were made for
        self._step_launches: tuple[Any, ...] | None = None
        self._since_batch: int | None = None  # auto mode: steps since the last mutation batch
        self._device_newer = False   # the device holds values the host store has not seen
        self._wt_stale = True        # weight_t (W^T per node) must be rebuilt from weight
        # growth scores (ScoreTracker): decays while tracking; the group ids the EMA buffers
        # are laid out for; values to start from; groups to forget at the next layout
        self._ema_decays: tuple[float, float] | None = None
        self._ema_ids: np.ndarray | None = None
        self._ema_init: tuple[dict[int, float], dict[int, float]] | None = None
        self._ema_forget: set[int] = set()

    # ------------------------------------------------------------------ Backend API
    def step(
        self, graph: NetworkGraph, params: ParamStore, x: np.ndarray, y: np.ndarray, *,
        lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
    ) -> DeviceStepResult:
        if self._since_batch is not None:
            self._since_batch += 1
            if self._since_batch == AUTO_QUIET_STEPS and self.mode == "auto" and not self._f64:
                self._graph_n = ()  # settled: tables rebuilt, the mode chosen again
        batch = self._prepare(graph, params, x, y)
        self._set_hyper(lr, momentum, weight_decay)
        self._refresh_weight_t()
        mode = self.active_mode
        if mode == "persistent":
            self._launch_persistent(batch, forward_only=False)
        elif mode in ("streams", "streams-graph"):
            self._launch_streams(batch)
        elif mode == "fused":
            self._ensure_split_buffer(batch)
            self._launch_levels(self.stream, batch)
        else:
            self._ensure_split_buffer(batch)
            self._launch_graph(batch)
        if self._ema_decays is not None:
            self._launch_ema_update()
        self._device_newer = params.values_elsewhere = True
        self._generation += 1
        return DeviceStepResult(self, self._generation, batch)

    def predict(self, graph: NetworkGraph, params: ParamStore, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != graph.n_inputs:
            raise DataError(f"expected inputs of shape (n, {graph.n_inputs}), got {x.shape}")
        batch = self._prepare(graph, params, x, None)
        self._refresh_weight_t()
        if self.dtype == np.float64:
            self._launch_forward_levels(batch)
        else:
            self._launch_persistent(batch, forward_only=True)
        t = self._tables
        assert t is not None
        out = self._buf("logits", batch * graph.n_classes * self._esize)
        self._launch(self._k["sd_gather_output"], (math.ceil(batch * graph.n_classes / 256),),
                     (256,), 0, self._b("act"), out, np.int32(t.out_act),
                     np.int32(graph.n_classes), np.int32(batch), np.int32(t.row_stride))
        logits = np.empty((batch, graph.n_classes), self.dtype)
        self.gpu.download_range(out, 0, logits, stream=self.stream)
        self._generation += 1
        return logits

    def on_mutation(self, graph: NetworkGraph, params: ParamStore, report: MutationReport
                    ) -> None:
        """Replay the batch on the device copy (a store not mirrored yet is uploaded whole at
        the next step) and rebuild the tables."""
        arrays: dict[str, np.ndarray] = {}
        n_ops = 0
        self._since_batch = 0
        if self._params is params and self._layout is not None:
            arrays, n_ops = self._replay_ops(params, report.param_ops)
        try:  # the op records go up with the tables, in one copy
            self._rebuild(graph, params, arrays)
        except BaseException:
            if n_ops:  # the batch must reach the device's parameters all the same
                self._put_many(arrays)
                self._launch_replay(n_ops)
            raise
        if n_ops:
            self._launch_replay(n_ops)

    def on_resume(self, steps_since_growth: int | None) -> None:
        """Count as the stopped run's backend did: ``auto`` mode chooses by whether the
        network grew in the last :data:`AUTO_QUIET_STEPS` steps, and a resumed run must
        choose as the run that never stopped would (the same modes, the same results)."""
        if steps_since_growth is not None and steps_since_growth < 0:
            raise ValueError(f"steps_since_growth must be >= 0, got {steps_since_growth}")
        self._since_batch = steps_since_growth

    @property
    def growing(self) -> bool:
        """Whether a mutation batch came in the last :data:`AUTO_QUIET_STEPS` steps (what
        ``auto`` mode chooses by, with the network's shape: :func:`auto_mode`)."""
        return self._since_batch is not None and self._since_batch < AUTO_QUIET_STEPS

    def trains(self, dtype: np.dtype) -> bool:
        return np.dtype(dtype) == self.dtype

    def synchronize(self) -> None:
        """Wait until every step issued so far has finished on the device."""
        self.stream.sync()

    def sync_params(self, params: ParamStore) -> None:
        if self._params is not params or self._layout is None:
            return
        if self._layout[1] != params.layout_version:
            self._follow_growth(params, self._layout[1])
        for kind, arr in params.arenas().items():
            self.gpu.download_range(self._b(kind), 0, arr, stream=self.stream)
        self._device_newer = params.values_elsewhere = False

    def memory_report(self) -> dict[str, int]:
        """Device bytes held, by buffer, and ``needed``: what the step truly uses."""
        held = {k: int(v.size) for k, v in self._bufs.items()}
        t, p = self._tables, self._params
        need = 0
        if t is not None and p is not None:
            n_w = sum(p.slot(n).w_size for n in p.nodes())
            n_b = sum(p.slot(n).rows for n in p.nodes())
            need = self._esize * (2 * (n_w + n_b) + 3 * self._last_batch * t.row_stride)
        return {**held, "total": sum(held.values()), "needed": need}

    # ------------------------------------------------------------------ preparation
    def _prepare(self, graph: NetworkGraph, params: ParamStore, x: np.ndarray,
                 y: np.ndarray | None) -> int:
        if params.dtype != self.dtype:
            raise ConfigError(f"this cuda backend trains {self.dtype} parameters, got "
                              f"{params.dtype} (CudaBackend(dtype=...) chooses)")
        if (self._tables is None or self._params is not params or self._graph is not graph
                or self._graph_n != (graph.version, params.moved_version)):
            self._rebuild(graph, params)
        if self._layout != (id(params), params.layout_version):
            if self._params is params and self._device_newer and self._layout is not None:
                self._follow_growth(params, self._layout[1])
            else:
                self._upload_params(params)
        self._sync_ema()
        if x.ndim != 2 or x.shape[1] != graph.n_inputs:
            raise DataError(f"expected inputs of shape (batch, {graph.n_inputs}), got {x.shape}")
        batch = int(x.shape[0])
        if batch < 1:
            raise DataError("empty batch")
        if y is not None and y.shape != (batch,):
            raise DataError(f"expected {batch} labels, got shape {y.shape}")
        self._ensure_batch(batch)
        self._last_batch = batch
        # the batch of the last step, if it is this one (same dtype, shape and bytes: a
        # bytes comparison costs half of np.array_equal's, and a step's host work before its
        # first launch is time the GPU waits)
        key, held = self._batch_key, (self._bufs["x"], self._bufs["labels"])
        if y is None or key is None or not (
                key[4][0] is held[0] and key[4][1] is held[1] and key[0] == (x.shape, x.dtype)
                and key[2] == (y.shape, y.dtype) and key[1] == x.tobytes()
                and key[3] == y.tobytes()):
            self._upload_batch(np.ascontiguousarray(x, dtype=self.dtype), y)
            self._batch_key = None if y is None else (
                (x.shape, x.dtype), x.tobytes(), (y.shape, y.dtype), y.tobytes(), held)
        elif self._scattered != self._structure:  # same batch, on the device already
            self._scatter_input(batch, graph.n_inputs)
        return batch

    def _rebuild(self, graph: NetworkGraph, params: ParamStore,
                 also: Mapping[str, np.ndarray] | None = None) -> None:
        """Rebuild the tables — on the device, or in ``streams`` mode on the host — and
        upload what they need, with the arrays ``also`` (into the buffers they name), in
        one staged copy."""
        self._tables = self._host_tables = self._table_inputs = None  # until rebuilt
        if self._f64 or self.mode in ("streams", "streams-graph"):
            h = NetTables.build(graph, params)
            # a task names its node by a key that survives mutations (task_nodes[key] is
            # its table index; task_nodes[0] the row stride), so a group's tasks keep their
            # arguments while the tables move and grow
            ids = graph.level_arrays().ids
            keys = np.concatenate([[0], ids + 2, [1]]).astype(np.int32)  # the input: unused
            task_nodes = np.zeros(graph.next_id + 2, np.int32)
            task_nodes[keys[1:]] = np.arange(1, len(keys), dtype=np.int32)
            task_nodes[0] = h.row_stride
            self._stream_keys = keys
            # float64's predict walks the levels (_launch_forward_levels): sd_forward's key
            # table for them, the row stride, then each level's first node
            levels = ({"level_nodes": np.concatenate([[h.row_stride], h.level_start[1:-1]])
                       .astype(np.int32)} if self._f64 else {})
            self._put_many({**(also or {}), "task_nodes": task_nodes, **levels, **{
                name: getattr(h, name) for name in (
                    "nodes", "preds", "succs", "succ_node", "colmap", "level_start", "tiles",
                    "group_ids")}})
            t, self._host_tables = h.shape, h
        else:
            flow = self._flow_tables(graph)
            inp = TableInputs.build(graph, params, flow=flow)
            if self.mode == "auto" and not flow:
                # the flow order, taken now while the depths are fresh: batches keep it, so
                # the growing phase's flow-order tables (see _flow_tables) need no depths
                graph.flow_order()
            self._table_inputs = inp
            shape = self._build_tables(inp, also or {})
            if shape is None:  # a node without a slot: let the host name it
                params.offsets(np.append(inp.order, OUTPUT))
                raise BackendError("a node has no parameter slot")
            t = shape
        # what a step compares to know the tables still hold: the graph and its version, and
        # the slots (only a compaction moves them outside a batch; on_mutation rebuilds after)
        self._graph, self._graph_n = graph, (graph.version, params.moved_version)
        self._structure += 1
        self._tables = t
        if self.mode == "auto" and not self._f64:  # float64: streams-graph, always
            self.active_mode = (auto_mode(t, growing=self.growing) if t.by_level
                                else "persistent")
        self._buf("grad_std", self._esize * max(len(t.group_ids), 1))
        self._buf("act_mean", self._esize * max(len(t.group_ids), 1))
        self._scattered = -1  # the input columns move with the row stride
        if self._batch_capacity:
            self._ensure_batch(self._batch_capacity)

    def _flow_tables(self, graph: NetworkGraph) -> bool:
        """Whether to build the tables in the graph's flow order rather than level by
        level: then a mutation batch of duplications costs no depth computation on the host
        (``NetworkGraph.flow_order``). Only for the persistent step's dataflow kernel, which
        needs some topological order and no levels, and only where its flags are sure to
        fit in shared memory (``sd_step_rows``, its fallback, walks levels). Under ``auto``,
        only when the levels known without repairing any depth — a lower bound: a batch of
        duplications only adds levels — already rule the level kernels out (with no depths
        known, it computes them)."""
        if self.mode not in ("persistent", "auto") or not self._dataflow or self._f64:
            return False
        if 4 * (len(graph) + 2) + SMEM_LIMIT // 2 > self._smem_optin:  # flags + partials
            return False
        if self.mode == "persistent":
            return True
        bound = graph.depth_bound(compute=True)
        assert bound is not None
        cols = graph.id_columns(depths=False)
        widths = cols.width[cols.alive]
        mix = width_mix(widths)
        return _auto_mode(len(widths), bound - 1, mix["mean_width"], mix["share16"],
                          mix["share32"], growing=self.growing) == "persistent"

    def _build_tables(self, inp: TableInputs, also: Mapping[str, np.ndarray]
                      ) -> TableShape | None:
        """The tables ``NetTables.build`` would make, built by ``kernels/tables.cu`` from
        ``inp`` (uploaded with ``also``); one wait for the inputs to go up and one for the
        sums that size the last tables. ``None`` if a node has no parameter slot."""
        n, i32 = inp.n_nodes, np.int32
        self._put_many({**also, "tab_order": inp.order, "tab_perm": inp.perm,
                        "tab_offs": inp.offsets, "tab_out": inp.out_preds,
                        "tab_width": inp.width, "tab_start": inp.start,
                        "tab_count": inp.count, "tab_pool": inp.pool,
                        "level_start": inp.level_start, "group_ids": inp.group_ids})
        b = self._buf
        nodes, pos = b("nodes", 48 * n), b("tab_pos", 4 * len(inp.width))
        cursor, n_tiles, tile_start = b("tab_cursor", 4 * n), b("tab_ntiles", 4 * n), b(
            "tab_tstart", 4 * n)
        totals = b("tab_totals", 48)
        ins = {k: self._b(f"tab_{k}") for k in (
            "order", "perm", "offs", "out", "width", "start", "count", "pool")}
        n_out = i32(len(inp.out_preds))
        warps = (math.ceil(32 * n / 256),)
        k = self._tk
        self.gpu.memset(totals, 0, stream=self.stream)
        self._launch(k["sd_tab_nodes"], (math.ceil(n / 256),), (256,), 0, nodes, i32(n),
                     i32(inp.n_inputs), i32(inp.n_classes), ins["order"], ins["width"],
                     ins["count"], ins["offs"], np.int64(len(inp.offsets)), n_out, pos,
                     cursor, totals)
        self._launch(k["sd_tab_edges"], warps, (256,), 0, nodes, i32(n), i32(inp.n_inputs),
                     ins["order"], ins["width"], ins["start"], ins["count"], ins["pool"],
                     ins["out"], n_out, pos, n_tiles)
        self._launch(k["sd_tab_scan"], (1,), (1024,), 0, nodes, i32(n), n_tiles, tile_start,
                     totals)
        sums = np.empty(6, np.int64)
        self.gpu.download_range(totals, 0, sums, stream=self.stream)
        n_cols, n_tile, _, no_slot, row_stride, n_edges = (int(v) for v in sums)
        if no_slot:
            return None
        if max(n_cols, row_stride) > MAX_INT32:
            raise ConfigError("the network is too large for 32-bit kernel tables")
        preds, succs = b("preds", 4 * n_edges), b("succs", 16 * n_edges)
        succ_node, colmap, tiles = b("succ_node", 4 * n_edges), b("colmap", 4 * n_cols), b(
            "tiles", 16 * n_tile)
        self._launch(k["sd_tab_fill"], warps, (256,), 0, nodes, i32(n), ins["order"],
                     ins["start"], ins["count"], ins["pool"], ins["out"], n_out, ins["perm"],
                     pos, n_tiles, tile_start, cursor, preds, colmap, succs, succ_node, tiles)
        self._launch(k["sd_tab_sort"], (math.ceil(n / 256),), (256,), 0, nodes, i32(n), succs,
                     succ_node)
        return inp.shape(n_tile, row_stride)

    def _upload_params(self, params: ParamStore) -> None:
        if params.values_elsewhere:
            raise BackendError(
                "this parameter store's values are stale: another device mirror trained "
                "them and has not written them back; call that backend's sync_params(params) "
                "first (or set params.values_elsewhere = False to train from the stale "
                "values)")
        for kind, arr in params.arenas().items():
            buf = self._buf(kind, arr.nbytes, exact=True)
            self.gpu.upload_range(buf, 0, arr, stream=self.stream)
        self._params = params
        self._layout = (id(params), params.layout_version)
        self._device_newer = False
        self._wt_stale = True

    # ------------------------------------------------------------------ mutations on the device
    def _replay_ops(self, params: ParamStore, ops: tuple[ParamOp, ...]
                    ) -> tuple[dict[str, np.ndarray], int]:
        """What applies a committed batch's ops to the device arenas, in order, by offset:
        the arrays to upload (a table of ``SdParamOp`` records, host-made values) and the
        number of records, for one ``sd_replay`` launch (``kernels/growth.cu``) once they
        are up. Arenas are grown or moved first, as the host's were."""
        self._follow_growth(params, self._layout[1] if self._layout else 0)
        staged: list[np.ndarray] = []
        top = 0

        def stage(v: np.ndarray) -> int:  # float offset of host values in the staging buffer
            nonlocal top
            a = np.ascontiguousarray(v, dtype=self.dtype).ravel()
            staged.append(a)
            top += a.size
            return top - a.size

        recs: list[tuple[float, ...]] = []
        for op in ops:
            s, src = op.slot, op.src_slot
            if op.kind == "free":
                continue
            if s is None or (op.kind in ("copy_cols", "copy_bias") and src is None):
                raise BackendError(f"parameter op {op.kind!r} of node {op.dst} lacks its slots")
            if op.kind == "alloc":
                recs.append((OP_ZERO, s.w_off, 0, 0, 0, s.rows, s.w_size, s.b_off, 0.0))
            elif op.kind == "copy_cols":
                assert src is not None
                recs.append((OP_COPY_COLS, s.w_off + op.dst_col, s.cols, src.w_off + op.src_col,
                             src.cols, op.rows, op.ncols, 0, op.scale))
            elif op.kind == "copy_bias":
                assert src is not None
                recs.append((OP_COPY_BIAS, s.b_off, 0, src.b_off, 0, op.rows, 0, 0, 0.0))
            elif op.kind == "identity":
                recs.append((OP_IDENTITY, s.w_off, 0, 0, 0, s.rows, 0, 0, 0.0))
            elif op.kind == "set":
                recs.append((OP_SET, s.w_off, 0, stage(op.values[0]), 0, 0, s.w_size, 0, 0.0))
                recs.append((OP_SET, s.b_off, 0, stage(op.values[1]), 0, 0, s.rows, 1, 0.0))
            elif op.kind == "add_weights":
                recs.append((OP_ADD, s.w_off, 0, stage(op.values[0]), 0, 0, s.w_size, 0, 0.0))
            elif op.kind == "add_noise":
                recs.append((OP_NOISE, s.w_off, 0, stage(op.values[0]), 0, 0, s.w_size, 0,
                             op.scale))
            else:
                raise BackendError(f"cannot replay parameter op {op.kind!r} on the device")
        self._layout = (id(params), params.layout_version)
        self._device_newer = params.values_elsewhere = True
        self._wt_stale = True
        if not recs:
            return {}, 0
        return ({"param_ops": np.array(recs, dtype=OP_DTYPE),
                 **({"staging": np.concatenate(staged)} if staged else {})}, len(recs))

    def _launch_replay(self, n_ops: int) -> None:
        """``sd_replay`` of the ``n_ops`` records in ``param_ops`` (see :meth:`_replay_ops`)."""
        self._launch(self._gk["sd_replay"], (1,), (256,), 0, self._b("param_ops"),
                     np.int32(n_ops), *(self._b(k) for k in (
                         "weight", "weight_mom", "bias", "bias_mom")),
                     self._bufs.get("staging", self._b("param_ops")))

    def _refresh_weight_t(self) -> None:
        """Rebuild weight_t, the transposed weights the dataflow forward reads, if stale
        (the weight-gradient kernel keeps it current between mutations)."""
        t = self._tables
        assert t is not None
        wt = self._buf("weight_t", self._b("weight").size, exact=True)
        if self._wt_stale and t.n_nodes > 1:
            self._launch(self._k["sd_transpose_weights"], (t.n_nodes - 1,), (256,), 0,
                         self._b("nodes"), self._b("weight"), wt)
        self._wt_stale = False

    def _follow_growth(self, params: ParamStore, mirrored: int) -> None:
        """Follow what the host store's layout did since version ``mirrored`` without its
        values: move the device's slots as each compaction moved the host's (a batch
        begins with one when the arena is mostly holes), then grow arenas that grew (a
        refused batch grows them too)."""
        if params.moved_version > mirrored:
            compactions = params.moves_since(mirrored)
            if compactions is None:
                raise BackendError(
                    "the parameter store was compacted more often than it remembers since "
                    "the GPU last followed it, so the GPU's newer values cannot be placed; "
                    "call sync_params(params) before changing the store outside a mutation "
                    "batch")
            for version, moves in compactions:
                self._put("moves", moves)

                def move(kind: str, new: Any, old: Any, n: int = len(moves)) -> None:
                    col = 0 if kind.startswith("weight") else 3  # the weight or bias ranges
                    self._launch(self._gk["sd_move_slots"], (self._blocks(256 * n),), (256,), 0,
                                 self._b("moves"), np.int32(n), np.int32(col), new, old)

                self._replace_arenas({kind: max(arr.nbytes, self._b(kind).size)
                                      for kind, arr in params.arenas().items()}, move)
                # followed this far: a later failure must not replay these moves again
                self._layout = (id(params), version)
        grown = {kind: arr.nbytes for kind, arr in params.arenas().items()
                 if self._b(kind).size < arr.nbytes}
        if grown:
            self._replace_arenas(grown, lambda kind, new, old: self._copy2d(
                new, old, 0, 0, 0, 0, 1, old.size // self._esize))
        self._layout = (id(params), params.layout_version)

    def _replace_arenas(self, sizes: Mapping[str, int],
                        fill: Callable[[str, Any, Any], None]) -> None:
        """New device arenas of ``sizes[kind]`` bytes, zeroed, each filled by
        ``fill(kind, new, old)``; the old ones are freed. All are allocated before any is
        filled: on allocation failure the device keeps its old arenas, all consistent."""
        new: dict[str, Any] = {}
        try:
            for kind, nbytes in sizes.items():
                new[kind] = self._alloc(kind, nbytes)
        except DeviceMemoryError:
            for buf in new.values():
                buf.close()
            raise
        for kind, buf in new.items():
            self.gpu.memset(buf, 0, stream=self.stream)
            fill(kind, buf, self._b(kind))
        self.stream.sync()
        for kind, buf in new.items():
            self._bufs.pop(kind).close()
            self._bufs[kind] = buf
        self._graph_key = None  # capture again (updating the graph: see _launch_graph)
        self._executor_key = None
        self._wt_stale = True

    @staticmethod
    def _blocks(n: int) -> int:
        return max(1, min(math.ceil(n / 256), 4096))

    def _copy2d(self, dst: Any, src: Any, dst_off: int, dst_stride: int, src_off: int,
                src_stride: int, rows: int, ncols: int, scale: float = 1.0, *,
                accumulate: bool = False) -> None:
        """``dst[dst_off + r*dst_stride + c] (+)= scale * src[src_off + r*src_stride + c]``."""
        if rows * ncols == 0:
            return
        i32 = np.int32
        self._launch(self._gk["sd_copy2d"], (self._blocks(rows * ncols),), (256,), 0, dst, src,
                     i32(dst_off), i32(dst_stride), i32(src_off), i32(src_stride), i32(rows),
                     i32(ncols), self.dtype.type(scale), i32(accumulate))

    # ------------------------------------------------------------------ growth scores
    def track_scores(self, decays: tuple[float, float], grad_std: Mapping[int, float],
                     act_mean: Mapping[int, float]) -> None:
        """Keep the growth EMAs on the device from now on (see the module note)."""
        self._ema_decays = (float(decays[0]), float(decays[1]))
        self._ema_init = (dict(grad_std), dict(act_mean))
        self._ema_ids = None
        self._ema_forget.clear()

    def untrack_scores(self) -> None:
        self._ema_decays = None
        self._ema_init = None
        self._ema_ids = None
        self._ema_forget.clear()

    def forget_scores(self, group_ids: Iterable[int]) -> None:
        ids = [int(g) for g in group_ids]
        if self._ema_init is not None:
            for d in self._ema_init:
                for g in ids:
                    d.pop(g, None)
        else:
            self._ema_forget.update(ids)

    def scores_passing(self, field: str, threshold: float) -> dict[int, float]:
        """Groups whose ``grad_std`` EMA is above (``act_mean``: below) ``threshold``."""
        if field not in ("grad_std", "act_mean"):
            raise ConfigError(f"field must be grad_std or act_mean, got {field!r}")
        n = self._sync_ema()
        if n == 0:
            return {}
        count = self._buf("ema_count", 4)
        ids, vals = self._buf("ema_out_ids", 4 * n), self._buf("ema_out_vals", 8 * n)
        self.gpu.memset(count, 0, stream=self.stream)
        self._launch(self._gk["sd_ema_select"], (math.ceil(n / 256),), (256,), 0,
                     self._b("ema"), self._b("ema_seen"), np.int32(n), self._b("group_ids"),
                     np.int32(field == "act_mean"), np.float64(threshold), count, ids, vals)
        k = np.empty(1, np.int32)
        self.gpu.download_range(count, 0, k, stream=self.stream)
        out_ids, out_vals = np.empty(int(k[0]), np.int32), np.empty(int(k[0]), np.float64)
        if len(out_ids):
            self.gpu.download_range(ids, 0, out_ids, stream=self.stream)
            self.gpu.download_range(vals, 0, out_vals, stream=self.stream)
        return dict(sorted(zip(out_ids.tolist(), out_vals.tolist(), strict=True)))

    def read_scores(self) -> tuple[dict[int, float], dict[int, float]]:
        n = self._sync_ema()
        if self._ema_ids is None or n == 0:
            init = self._ema_init or ({}, {})
            return dict(init[0]), dict(init[1])
        ema = np.empty((n, 2), np.float64)
        seen = np.empty(n, np.int32)
        self.gpu.download_range(self._b("ema"), 0, ema, stream=self.stream)
        self.gpu.download_range(self._b("ema_seen"), 0, seen, stream=self.stream)
        ids = self._ema_ids[seen != 0].tolist()
        return (dict(zip(ids, ema[seen != 0, 0].tolist(), strict=True)),
                dict(zip(ids, ema[seen != 0, 1].tolist(), strict=True)))

    def _sync_ema(self) -> int:
        """Lay the EMA buffers out for the current tables' groups; returns their number."""
        t = self._tables
        if self._ema_decays is None or t is None:
            return 0
        ids = t.group_ids.astype(np.int64)
        n = len(ids)
        if self._ema_init is not None:  # first layout: the values tracking started from
            std, act = self._ema_init
            ema, seen = np.zeros((n, 2), np.float64), np.zeros(n, np.int32)
            for i, g in enumerate(ids.tolist()):
                if g in std:
                    ema[i] = (std[g], act.get(g, 0.0))
                    seen[i] = 1
            self.gpu.upload_range(self._buf("ema", max(ema.nbytes, 8), exact=True), 0, ema,
                                  stream=self.stream)
            self.gpu.upload_range(self._buf("ema_seen", max(seen.nbytes, 4), exact=True), 0,
                                  seen, stream=self.stream)
            self._ema_init, self._ema_ids = None, ids
            self._ema_forget.clear()
        elif self._ema_ids is not None and (self._ema_forget or not np.array_equal(
                ids, self._ema_ids)):
            old = self._ema_ids  # ascending, like ids
            pos = np.minimum(np.searchsorted(old, ids), max(len(old) - 1, 0))
            keep = (old[pos] == ids) if len(old) else np.zeros(n, bool)
            keep &= ~np.isin(ids, np.fromiter(self._ema_forget, np.int64))
            slot_map = np.where(keep, pos, -1).astype(np.int32)
            self._put("ema_map", slot_map)
            new_ema = self._buf("ema_next", max(16 * n, 8))  # the remap writes n entries
            new_seen = self._buf("ema_seen_next", max(4 * n, 4))
            self._launch(self._gk["sd_ema_remap"], (max(1, math.ceil(n / 256)),), (256,), 0,
                         self._b("ema"), self._b("ema_seen"), self._b("ema_map"), np.int32(n),
                         new_ema, new_seen)
            bufs = self._bufs
            bufs["ema"], bufs["ema_next"] = new_ema, bufs["ema"]
            bufs["ema_seen"], bufs["ema_seen_next"] = new_seen, bufs["ema_seen"]
            self._ema_ids = ids
            self._ema_forget.clear()
        return n

    def _launch_ema_update(self) -> None:
        t = self._tables
        assert t is not None and self._ema_decays is not None
        n = len(t.group_ids)
        if n:
            d_std, d_act = self._ema_decays
            self._launch(self._gk["sd_ema_update"], (math.ceil(n / 256),), (256,), 0,
                         self._b("grad_std"), self._b("act_mean"), np.int32(n),
                         self._b("ema"), self._b("ema_seen"), np.float64(d_std),
                         np.float64(d_act))

    def _ensure_batch(self, batch: int) -> None:
        t = self._tables
        assert t is not None
        need = batch * t.row_stride
        if need > self._act_capacity or batch > self._batch_capacity:
            cap = max(need, int(self._act_capacity * 1.25))
            for name in ("act", "dh", "dz"):
                self._buf(name, self._esize * cap, exact=True)
            self._scattered = -1
            self._act_capacity = cap
            bcap = max(batch, self._batch_capacity)
            self._buf("labels", 4 * bcap, exact=True)
            self._buf("loss_rows", self._esize * bcap, exact=True)
            self._buf("correct_rows", 4 * bcap, exact=True)
            self._buf("x", self._esize * bcap * t.n_inputs, exact=True)
            self._batch_capacity = bcap
            self._graph_key = None
        if "x" not in self._bufs or self._bufs["x"].size < self._esize * batch * t.n_inputs:
            self._buf("x", self._esize * self._batch_capacity * t.n_inputs, exact=True)
        self._buf("loss", self._esize)
        self._buf("correct", 4)
        self._buf("hyper", 4 * self._esize)

    def _upload_batch(self, x: np.ndarray, y: np.ndarray | None) -> None:
        t = self._tables
        assert t is not None
        batch, n_in = x.shape
        self.gpu.upload_range(self._b("x"), 0, x, stream=self.stream)
        self._scatter_input(batch, n_in)
        if y is not None:
            if y.min(initial=0) < 0 or y.max(initial=0) >= t.n_classes:
                raise DataError(f"labels must be in [0, {t.n_classes}), got "
                                f"[{y.min()}, {y.max()}]")
            self.gpu.upload_range(self._b("labels"), 0, y.astype(np.int32), stream=self.stream)

    def _scatter_input(self, batch: int, n_in: int) -> None:
        """Copy the batch in ``x`` into the input columns of the activation rows."""
        t = self._tables
        assert t is not None
        self._launch(self._k["sd_scatter_input"], (math.ceil(batch * n_in / 256),), (256,), 0,
                     self._b("x"), self._b("act"), np.int32(batch), np.int32(n_in),
                     np.int32(t.row_stride))
        self._scattered = self._structure

    def _set_hyper(self, lr: float, momentum: float, weight_decay: float) -> None:
        h = (float(lr), float(momentum), float(weight_decay))
        if h != self._hyper:
            self.gpu.upload_range(self._b("hyper"), 0,
                                  np.array([*h, 0.0], dtype=self.dtype), stream=self.stream)
            self._hyper = h

    # ------------------------------------------------------------------ launches
    def _cfg(self, grid: tuple[int, ...], block: tuple[int, ...], shmem: int = 0,
             early: bool = False) -> Any:
        key = (grid, block, shmem, early)
        cfg = self._configs.get(key)
        if cfg is None:
            cfg = self._configs[key] = self._drv.launch_config(grid, block, shmem, early=early)
        return cfg

    def _launch(self, kernel: Any, grid: tuple[int, ...], block: tuple[int, ...], shmem: int,
                *args: Any, stream: Any = None, early: bool = False) -> None:
        self._drv.launch(stream if stream is not None else self.stream,
                         self._cfg(grid, block, shmem, early), kernel, args)

    def _launch_persistent(self, batch: int, *, forward_only: bool) -> None:
        launches = self._persistent_launches(batch, forward_only)
        launch, stream = self._drv.launch, self.stream
        for kernel, cfg, args in launches:
            launch(stream, cfg, kernel, args)

    def _launch_forward_levels(self, batch: int) -> None:
        """The forward alone, one ``sd_forward`` launch per level of the host tables (a
        float64 backend's predict: the persistent step is float32 only), keyed through
        ``level_nodes`` (uploaded with the tables by ``_rebuild``)."""
        t = self._tables
        assert t is not None and t.by_level
        ls = t.level_start
        i32, rows = np.int32, math.ceil(batch / FWD_ROWS)
        for level in range(1, t.n_levels):  # the groups' levels, then the output's
            self._launch(self._k["sd_forward"], (int(ls[level + 1] - ls[level]), rows),
                         (LEVEL_THREADS,), 0, self._b("nodes"), self._b("colmap"),
                         self._b("level_nodes"), i32(level), self._b("weight"),
                         self._b("bias"), self._b("act"), i32(batch))

    #: the buffers the persistent step's launches name ("trace" only while a probe set it)
    _STEP_BUFFERS = ("nodes", "preds", "colmap", "succs", "succ_node", "level_start", "weight",
                     "bias", "act", "dh", "dz", "labels", "loss_rows", "correct_rows", "trace",
                     "weight_t", "tiles", "weight_mom", "bias_mom", "hyper", "grad_std",
                     "act_mean", "loss", "correct")

    def _persistent_launches(self, batch: int, forward_only: bool) -> list[tuple[Any, ...]]:
        """``(kernel, config, args)`` of each launch of a persistent step, made once for the
        tables, the batch size and the buffers they name: a step's host work before its first
        launch is time the GPU waits (~60 µs at M before, of a 1.9 ms step). The cache holds
        the buffers themselves, so a buffer replaced since is never taken for the old one."""
        t, bufs = self._tables, self._bufs
        assert t is not None
        held = tuple(bufs.get(name) for name in self._STEP_BUFFERS)
        c = self._step_launches
        if (c is not None and c[0] is t and c[1] == (batch, forward_only, self._flow_smem)
                and all(a is b for a, b in zip(c[2], held, strict=True))):
            return c[3]
        rows = self._rows_per_block or max(1, math.ceil(batch / self._n_sms))
        n_nodes = t.n_nodes
        partials = (self._step_threads // 32) * rows * t.n_classes * 4
        split = partials <= SMEM_LIMIT // 2
        tail = (np.int32(batch), np.int32(t.row_stride), np.int32(rows), np.int32(split),
                np.int32(forward_only))
        common = (self._b("weight"), self._b("bias"), self._b("act"), self._b("dh"),
                  self._b("dz"), self._b("labels"), self._b("loss_rows"), self._b("correct_rows"))
        flow_smem = 4 * n_nodes + (partials if split else 0)
        if self._dataflow and flow_smem > self._flow_smem:
            try:
                self._drv.allow_shared_memory(self._k["sd_step_flow"], flow_smem, self.gpu)
                self._flow_smem = flow_smem
            except StreamDagError:  # too many nodes for the flags: level barriers instead
                pass
        grid, block = (math.ceil(batch / rows),), (self._step_threads,)
        launches: list[tuple[Any, ...]]
        if self._dataflow and flow_smem <= self._flow_smem:
            launches = [(self._k["sd_step_flow"], self._cfg(grid, block, flow_smem), (
                self._b("nodes"), self._b("preds"), self._b("colmap"), self._b("succs"),
                self._b("succ_node"), np.int32(n_nodes), *common, *tail,
                bufs.get("trace") or 0, self._b("weight_t")))]
        else:  # level-synchronous: flags would not fit in shared memory
            if not t.by_level:  # (_flow_tables makes sure the flags fit)
                raise BackendError("the persistent step's flags do not fit in shared memory")
            launches = [(self._k["sd_step_rows"], self._cfg(grid, block,
                                                            partials if split else 0), (
                self._b("nodes"), self._b("colmap"), self._b("succs"), self._b("level_start"),
                np.int32(t.n_levels), *common, *tail))]
        if not forward_only:
            launches += self._update_launches(batch)
        self._step_launches = (t, (batch, forward_only, self._flow_smem), held, launches)
        return launches

    def _update_launches(self, batch: int) -> list[tuple[Any, ...]]:
        """``(kernel, config, args)`` of the weight update and the loss reduction."""
        t = self._tables
        assert t is not None
        return [
            (self._k["sd_wgrad_update"], self._cfg((t.n_tiles,), (WG_THREADS,)), (
                self._b("nodes"), self._b("tiles"), self._b("colmap"), self._b("weight"),
                self._b("bias"), self._b("weight_mom"), self._b("bias_mom"), self._b("act"),
                self._b("dh"), self._b("dz"), self._b("hyper"), np.int32(batch),
                np.int32(t.row_stride), self._b("grad_std"), self._b("act_mean"),
                self._b("weight_t"), np.int32(0))),
            (self._k["sd_reduce_loss"], self._cfg((1,), (256,)), (
                self._b("loss_rows"), self._b("correct_rows"), np.int32(batch),
                self._b("loss"), self._b("correct")))]

    def _launch_update(self, stream: Any, batch: int) -> None:
        for kernel, cfg, args in self._update_launches(batch):
            self._drv.launch(stream, cfg, kernel, args)

    def _splits(self) -> int:
        """Blocks the output's forward splits its input columns over (``SPLIT_COLS`` each)."""
        t = self._tables
        assert t is not None
        return math.ceil(t.out_fan_in / SPLIT_COLS)

    def _ensure_split_buffer(self, batch: int) -> None:
        """The split-K partials of the output's forward (before a capture: no allocation
        may happen inside one)."""
        t = self._tables
        assert t is not None
        splits = self._splits()
        if splits > 1:
            self._buf("split_part", 4 * splits * batch * t.n_classes)

    def _launch_levels(self, stream: Any, batch: int,
                       runs: list[tuple[int, int, int]] | None = None) -> Any:
        """The ``fused`` sequence: one grouped launch per level and phase (the tiled level
        kernels; the output's forward split over its columns), then the update.

        ``runs`` (a graph capture with the pull backward, ``stream`` its builder): the weight
        gradient in runs of levels (:func:`wgrad_chunks`), each on a branch of the graph
        that starts after the backward of its fork level, the chain going on beside it.
        Returns what to finish the capture with: the builder that joins the branches (else
        ``stream``)."""
        t = self._tables
        assert t is not None
        common = (np.int32(batch), np.int32(t.row_stride))
        starts = t.level_start.tolist()
        out, splits = t.n_levels - 1, self._splits()
        fill = TILE_FILL * self._n_sms
        # A tiled kernel launched early loads its node records, index tables and weights
        # (which no kernel of the step writes before the update) while the kernel ahead of
        # it runs, and waits for that one (`griddepcontrol.wait`) before it reads what the
        # step writes. Waiting on the kernel ahead is enough: that one waited on its own
        # before it finished, and so on back. The other launches start as usual.
        early = self._early

        def rows(nodes: int) -> int:
            return tile_rows(batch, nodes, fill, t.max_width)

        wide = "_wide" if t.max_width >= TILE_WIDE_WIDTH else ""

        def tiled(kernel: str, blocks: int) -> Any:  # its build for this many blocks
            return self._k[kernel + ("_many" if blocks > TILE_MINB * self._n_sms else wide)]

        for lv in range(1, out if splits > 1 else out + 1):  # the output too, if not split
            s, n = starts[lv], starts[lv + 1] - starts[lv]
            tr = rows(n)
            grid = (n, math.ceil(batch / tr))
            self._launch(tiled("sd_forward_tiled", grid[0] * grid[1]), grid,
                         (TILE_THREADS,), 0, self._b("nodes"), self._b("colmap"), np.int32(s),
                         self._b("weight_t"), self._b("bias"), self._b("act"), *common, 0,
                         np.int32(0), np.int32(tr), stream=stream, early=early)
        o = np.int32(starts[out])
        if splits > 1:
            tr = rows(splits)
            self._launch(tiled("sd_forward_tiled", splits * math.ceil(batch / tr)),
                         (1, math.ceil(batch / tr), splits),
                         (TILE_THREADS,), 0, self._b("nodes"), self._b("colmap"), o,
                         self._b("weight_t"), self._b("bias"), self._b("act"), *common,
                         self._b("split_part"), np.int32(SPLIT_COLS), np.int32(tr),
                         stream=stream, early=early)
            self._launch(self._k["sd_splitk_finish"],
                         (math.ceil(batch * t.n_classes / 256),), (256,), 0,
                         self._b("nodes"), o, self._b("split_part"), np.int32(splits),
                         self._b("bias"), self._b("act"), *common, stream=stream)
        self._launch(self._k["sd_softmax_xent"], (math.ceil(batch / 128),), (128,), 0,
                     self._b("nodes"), o, self._b("act"), self._b("dh"),
                     self._b("dz"), self._b("labels"), self._b("loss_rows"),
                     self._b("correct_rows"), *common, stream=stream)
        if self.backward == "pull":
            pending, branches = list(runs or ()), []
            (wgrad, _, wg_args), reduce_loss = self._update_launches(batch)

            def launch_run(first: int, count: int, on: Any) -> None:  # tiles first..+count
                self._launch(wgrad, (count,), (WG_THREADS,), 0, *wg_args[:-1], np.int32(first),
                             stream=on)

            def fork(level: int) -> None:  # the runs that may start once `level` is done
                nonlocal stream
                while pending and pending[0][0] >= level:
                    _, first, count = pending.pop(0)
                    stream, branch = stream.split(2)
                    launch_run(first, count, branch)
                    branches.append(branch)

            fork(out)
            for lv in range(out - 1, 0, -1):
                s, n = starts[lv], starts[lv + 1] - starts[lv]
                tr = rows(n)
                grid = (n, math.ceil(batch / tr))
                self._launch(tiled("sd_backward_tiled", grid[0] * grid[1]), grid,
                             (TILE_THREADS,), 0, self._b("nodes"), self._b("succs"),
                             np.int32(s), self._b("weight"), self._b("act"), self._b("dh"),
                             self._b("dz"), *common, np.int32(tr), stream=stream,
                             early=early)
                if lv > 1:
                    fork(lv)
            if runs is not None:  # the rest after the chain, then the branches joined
                for _, first, count in pending:
                    launch_run(first, count, stream)
                self._wgrad_branches = len(branches)
                if branches:
                    stream = type(stream).join(stream, *branches)
                self._drv.launch(stream, reduce_loss[1], reduce_loss[0], reduce_loss[2])
                return stream
        else:
            bwd_rows = math.ceil(batch / BWD_ROWS)
            self.gpu.memset(self._b("dh"), 0, nbytes=4 * batch * t.row_stride, stream=stream)
            for lv in range(out, 0, -1):
                s, n = starts[lv], starts[lv + 1] - starts[lv]
                self._launch(self._k["sd_backward_push"], (n, bwd_rows), (LEVEL_THREADS,), 0,
                    self._b("nodes"), self._b("colmap"), np.int32(s),
                    self._b("weight"), self._b("act"), self._b("dh"), self._b("dz"), *common,
                    stream=stream)
        self._launch_update(stream, batch)
        return stream

    def _launch_streams(self, batch: int) -> None:
        """The literal design: one scheduler task per group and phase, on several streams
        with an event on every cross-stream edge (see :mod:`streamdag.scheduler`).

        After a mutation batch a group's tasks are the same objects as before (their
        arguments name the group, not its table index). The new plan keeps their order,
        streams and waits and plans only the new tasks and the edges the old plan does not
        order (``make_plan(previous=...)``), and the new executor takes over their checked
        and packed launches, and the streams and events, from the old one: only new
        groups' tasks, the few whose arguments hold a size that changed (softmax, update),
        and tasks naming a buffer that moved are bound again."""
        key = (self._structure, batch)
        if self._executor is None or self._executor_key != key:
            from ..scheduler import CudaExecutor, make_plan

            old = self._executor
            plan = make_plan(self._step_task_graph(batch), streams=self._streams,
                             policy="critical_path",
                             previous=old.plan if old is not None else None)
            self._executor = None  # a failed bind leaves none
            self._executor = CudaExecutor(
                plan, self._bufs, gpu=self.gpu, reuse=old,
                mode="graph" if self.active_mode == "streams-graph" else "streams")
            self._executor_key = key
        self.stream.sync()  # the batch and hyper-parameters are queued on self.stream
        self._executor.run(sync=True)

    def _step_task_graph(self, batch: int) -> Any:
        """The training step as a scheduler task graph over the node tables, reusing the
        task specs of the last one made for this batch size (see _launch_streams)."""
        from ..scheduler import Buf, KernelSpec, TaskGraph

        t, keys = self._host_tables, self._stream_keys
        assert t is not None and keys is not None
        spec = {name: KernelSpec.from_source(self._kernel_file, name) for name in (
            "sd_forward", "sd_softmax_xent", "sd_backward_pull", "sd_wgrad_update",
            "sd_reduce_loss")}
        i32 = np.int32
        bufs: dict[str, Buf] = {}  # one Buf per name, shared by the tasks that name it

        def b(name: str) -> Buf:
            return bufs.get(name) or bufs.setdefault(name, Buf(name))

        common = (i32(batch), i32(t.row_stride))
        n, out = len(t.nodes), len(t.nodes) - 1
        fwd_grid, bwd_grid = (1, math.ceil(batch / FWD_ROWS)), (1, math.ceil(batch / BWD_ROWS))
        held = self._stream_specs if self._stream_specs_batch == batch else {}
        kept: dict[str, Any] = {}
        tg = TaskGraph("training-step")

        def node_task(name: str, kernel: str, table: str, key: int, arrays: tuple[str, ...],
                      grid: tuple[int, int]) -> None:
            old = held.get(name)
            if old is not None:
                tg.add(old, checked=True)  # checked when it was made
            else:
                old = tg.launch(name, spec[kernel], b("nodes"), b(table), b("task_nodes"),
                                i32(key), *map(b, arrays), i32(batch), grid=grid,
                                block=LEVEL_THREADS).spec
            kept[name] = old

        names = [f"g{k - 2}" for k in keys[1:-1].tolist()]
        # tasks 0 .. n-2: the forward of nodes 1 .. n-1; n-1: the loss (the output's
        # backward); n .. 2n-3: the backward of nodes 1 .. n-2; then the update, the loss sum
        for v, name in enumerate(names, start=1):
            node_task(f"fwd:{name}", "sd_forward", "colmap", int(keys[v]),
                      ("weight", "bias", "act"), fwd_grid)
        node_task("fwd:output", "sd_forward", "colmap", 1, ("weight", "bias", "act"), fwd_grid)

        def fixed_task(name: str, kernel: str, *args: Any, grid: int, block: int) -> int:
            old = held.get(name)  # kept while its arguments and grid stay
            if old is not None and old.args == args and old.shape.grid[0] == grid:
                task = tg.add(old, checked=True)
            else:
                task = tg.launch(name, spec[kernel], *args, grid=grid, block=block)
            kept[name] = task.spec
            return task.index

        fixed_task("softmax", "sd_softmax_xent", b("nodes"), i32(out), b("act"), b("dh"),
                   b("dz"), b("labels"), b("loss_rows"), b("correct_rows"), *common,
                   grid=math.ceil(batch / 128), block=128)
        for v, name in enumerate(names, start=1):
            node_task(f"bwd:{name}", "sd_backward_pull", "succs", int(keys[v]),
                      ("weight", "act", "dh", "dz"), bwd_grid)
        update = fixed_task("update", "sd_wgrad_update", b("nodes"), b("tiles"), b("colmap"),
                            b("weight"), b("bias"), b("weight_mom"), b("bias_mom"), b("act"),
                            b("dh"), b("dz"), b("hyper"), *common, b("grad_std"),
                            b("act_mean"), b("weight_t"), i32(0), grid=len(t.tiles),
                            block=WG_THREADS)
        fixed_task("loss", "sd_reduce_loss", b("loss_rows"), b("correct_rows"), i32(batch),
                   b("loss"), b("correct"), grid=1, block=256)
        self._stream_specs, self._stream_specs_batch = kept, batch
        # forward edges p -> v (p a group); backward s -> v (s a successor; the output's
        # backward is the loss task); every backward, and the loss, before the update
        nodes = t.nodes
        owner = np.repeat(np.arange(n), nodes[:, 6])
        preds = t.preds[: len(owner)]
        real = preds > 0
        n_succ = nodes[1:out, 8]
        target = np.repeat(np.arange(1, out), n_succ)
        first = int(nodes[1, 7]) if out > 1 else 0
        succ = t.succ_node[first : first + len(target)]
        bwd_of = np.where(succ == out, n - 1, n - 1 + succ)
        tg.connect(np.concatenate([preds[real] - 1, [n - 2], bwd_of, n - 1 + np.arange(1, out),
                                   [n - 1, n - 1]]),
                   np.concatenate([owner[real] - 1, [n - 1], n - 1 + target,
                                   np.full(out - 1, update), [update, update + 1]]))
        return tg

    def _launch_graph(self, batch: int) -> None:
        """Replay the level sequence as a CUDA graph, captured again after the tables were
        rebuilt (a mutation batch), a buffer it names moved, or for another batch size. A
        new capture of the same shape (as many levels, the weight-gradient runs branching
        off at the same levels: usually a batch that added no level) updates the executable
        graph in place (new grids and arguments) rather than instantiating another."""
        key = (self._structure, batch)
        if self._graph_exe is None or self._graph_key != key:
            t = self._tables
            assert t is not None
            # the captured sequence's nodes and edges follow from these (not the grids,
            # arguments or kernel builds, which an update may change): the levels, the
            # output's split, the backward and where the weight-gradient runs branch off
            runs = self._wgrad_runs() if self.backward == "pull" and WG_CHUNKS > 1 else None
            topology = (t.n_levels, self._splits() > 1, self.backward,
                        tuple(r[0] for r in runs or ()))
            old, self._graph_exe = self._graph_exe, None  # a failed capture leaves none
            builder = self._drv.begin_capture(self.stream)
            builder = self._launch_levels(builder, batch, runs)
            self._graph_exe = self._drv.end_capture(
                builder, self.stream, into=old if topology == self._graph_topology else None)
            self._graph_updates += self._graph_exe is old
            self._graph_key, self._graph_topology = key, topology
        self._drv.graph_launch(self._graph_exe, self.stream)

    def _wgrad_runs(self) -> list[tuple[int, int, int]]:
        """:func:`wgrad_chunks` for the current tables (each node's first tile read back
        from the device, where the tables were built)."""
        t, inp = self._tables, self._table_inputs
        assert t is not None and inp is not None and t.by_level
        tile_start = np.empty(t.n_nodes, np.int32)
        self.gpu.download_range(self._b("tab_tstart"), 0, tile_start, stream=self.stream)
        return wgrad_chunks(t.level_start, reader_levels(inp), np.append(tile_start, t.n_tiles),
                            WG_CHUNKS)

    # ------------------------------------------------------------------ reading back
    def _read_loss(self) -> tuple[float, int]:
        loss = np.empty(1, self.dtype)
        correct = np.empty(1, np.int32)
        self.gpu.download_range(self._b("loss"), 0, loss, stream=self.stream)
        self.gpu.download_range(self._b("correct"), 0, correct, stream=self.stream)
        return float(loss[0]), int(correct[0])

    def _read_stats(self) -> GroupStats:
        t = self._tables
        assert t is not None
        n = len(t.group_ids)
        std = np.empty(n, self.dtype)
        act = np.empty(n, self.dtype)
        self.gpu.download_range(self._b("grad_std"), 0, std, stream=self.stream)
        self.gpu.download_range(self._b("act_mean"), 0, act, stream=self.stream)
        return GroupStats(t.group_ids.astype(np.int64), std.astype(np.float64),
                          act.astype(np.float64))

    # ------------------------------------------------------------------ buffers
    def _b(self, name: str) -> Any:
        return self._bufs[name]

    def _buf(self, name: str, nbytes: int, *, exact: bool = False) -> Any:
        """The device buffer ``name`` of at least ``nbytes`` (exactly, if ``exact``)."""
        nbytes = max(int(nbytes), 4)
        old = self._bufs.get(name)
        if old is not None and (old.size == nbytes or (not exact and old.size >= nbytes)):
            return old
        self.stream.sync()
        if old is not None:
            del self._bufs[name]
            old.close()
        # a quarter spare where any size will do: the tables grow with every mutation batch,
        # and a reallocation costs a synchronisation (and, below, the captured graph)
        self._bufs[name] = buf = self._alloc(name, nbytes if exact else nbytes + nbytes // 4)
        # captured graphs and bound executors hold raw pointers: recapture, and re-bind
        # (the executor's successor re-packs only the launches that name a moved buffer)
        self._graph_key = None  # capture again (updating the graph: see _launch_graph)
        self._executor_key = None
        return buf

    def _alloc(self, name: str, nbytes: int) -> Any:
        try:
            return self.gpu.alloc(nbytes, stream=self.stream)
        except DeviceMemoryError as exc:
            held = sum(b.size for b in self._bufs.values())
            raise DeviceMemoryError(
                f"the network needs {nbytes / 2**20:.1f} MiB more for {name!r} on "
                f"{self.gpu.name} ({held / 2**20:.1f} MiB already held; "
                f"{self.gpu.memory_info()[0] / 2**20:.1f} MiB free)") from exc

    def _put(self, name: str, array: np.ndarray) -> None:
        self._put_many({name: array})

    def _put_many(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Upload each array into its buffer (grown as needed), with one wait for all."""
        self.gpu.upload_many([(self._buf(name, a.nbytes), 0, a) for name, a in arrays.items()],
                             stream=self.stream)
