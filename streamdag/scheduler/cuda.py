"""The CUDA executor: a plan on cuda.core streams and events, or as one CUDA graph.

Design note. Binding (``CudaExecutor(plan, buffers)``) does every check and allocation up
front: launch shapes against the device's limits, buffer names, kernels compiled and
loaded, one stream per plan stream, one event per plan event, and for each fused launch an
index table (one ``<kernel>_args`` record per member, see ``kernels/grouped.cuh``) on the
device. A run then only issues work.

- ``mode="streams"``: launches are issued in plan order from this thread; before a launch
  its stream waits on the plan's events, after it records its event if any. Every run
  starts behind the previous one (streams wait on stream 0's start) and joins back into
  stream 0, so runs may be queued back to back.
- ``reuse=``: a new plan of a graph that changed a little (the CUDA backend's ``streams``
  mode after a mutation batch) takes over the previous executor's streams, events, kernels
  and the packed launches of the task specs it shares with it (``rebound`` counts the
  launches bound anew).
- ``mode="graph"``: the plan is captured into a CUDA graph and instantiated once; a run
  replays it on stream 0. The launches are captured on one stream, each after setting the
  stream's capture dependencies to the nodes of its ``preds`` less those another of them
  already follows (:func:`reduced_preds`): a kernel node per launch, the launch DAG's
  transitive reduction as edges, no join nodes. Not the plan's stream order, which replayed
  as a graph serialises what the DAG leaves parallel (2.3x slower at dag-bench M); not every
  edge, with which the graph of a dag-bench M step (8,244 launches, one after 4,121 others)
  took 0.5-0.75 s to instantiate instead of 55-120 ms.
  :meth:`CudaExecutor.update_args` captures again with the new arguments and updates the
  executable graph in place (``Graph.update``); ``instantiations`` stays 1.

Observer records come from timing events, read after the run's sync: in streams mode
recorded around each launch; in graph mode by a *profiled* copy of the graph (instantiated on
the first observed run) with an event-record node before and after every kernel node, so a
record per launch too (``stream`` -1: a graph has no streams; ``waited`` empty: its edges are
the plan's ``preds``). Unobserved runs replay the plain graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from streamdag import driver, kernels
from streamdag.errors import ConfigError, SchedulerError
from streamdag.scheduler.plan import Plan
from streamdag.scheduler.records import Observer, TaskRecord
from streamdag.scheduler.taskgraph import Buf, KernelSpec, TaskSpec

__all__ = ["CudaExecutor", "reduced_preds"]

Mode = Literal["streams", "graph"]


def reduced_preds(preds: list[tuple[int, ...]]) -> list[list[int]]:
    """For launches in a topological order with direct predecessors ``preds``, the
    predecessors each must wait for that none of its other predecessors already waits for
    (transitively): the DAG's transitive reduction. A graph instantiates far faster without
    the implied edges (H100, dag-bench M's step, 8,244 launches: with all 21,751 edges, one
    launch after 4,121 others, 0.5-0.75 s; reduced, 54-100 ms). Ancestor sets are Python
    ints used as bit sets (a numpy row per launch cost ~20 µs a launch in calls alone)."""
    anc: list[int] = []
    out: list[list[int]] = []
    for ps in preds:
        covered = 0  # everything ordered before some predecessor
        for p in ps:
            covered |= anc[p]
        out.append([p for p in ps if not covered >> p & 1])
        for p in ps:
            covered |= 1 << p
        anc.append(covered)
    return out


class CudaExecutor:
    """Runs one plan on a GPU.

    Args:
        plan: the plan (kernel tasks only).
        buffers: buffer name -> device buffer (from :class:`~streamdag.driver.Gpu`).
        gpu: the device; opened (device 0) if not given.
        mode: ``"streams"`` or ``"graph"``.
        observer: receives each run's records after the run.
        cache_dir: kernel cache directory (default: the user cache).
        reuse: the executor of a previous plan, which this one replaces: its streams,
            events, loaded kernels and — for every unfused launch whose task spec is the
            very object of this plan's, with the same device buffers bound to the names it
            uses — its checked and packed launch are taken over instead of made again, so
            re-planning a graph that changed a little re-binds only what changed. It must
            not run again (it raises SchedulerError if asked to); ``gpu`` defaults to its.

    Raises:
        LaunchConfigError: a launch past this device's limits.
        SchedulerError: a host task, or a buffer name with nothing bound.
        BackendError: no GPU.
        CompileError: a kernel that does not compile.
    """

    gpu: driver.Gpu
    _retired: bool  # replaced by an executor made with reuse=self

    def __init__(
        self,
        plan: Plan,
        buffers: Mapping[str, Any],
        *,
        gpu: driver.Gpu | None = None,
        mode: Mode = "streams",
        observer: Observer | None = None,
        cache_dir: str | None = None,
        reuse: CudaExecutor | None = None,
    ) -> None:
        if mode not in ("streams", "graph"):
            raise ConfigError(f"mode must be 'streams' or 'graph', got {mode!r}")
        if reuse is not None and reuse._retired:
            raise SchedulerError("reuse: that executor was replaced already")
        self.plan = plan
        self.mode = mode
        self.observer = observer
        self.gpu = gpu or (reuse.gpu if reuse is not None else driver.Gpu(0))
        self.instantiations = 0
        self.updates = 0
        self._retired = False
        self._buffers = dict(buffers)
        self._args: list[tuple[Any, ...]] = [spec.args for spec in plan.tasks]
        kept = self._kept_launches(reuse)
        limits = self.gpu.limits()
        for spec in plan.tasks:
            if id(spec) in kept:
                continue  # checked and bound when the previous executor took it
            if spec.kernel is None or spec.shape is None:
                raise SchedulerError(f"task {spec.name!r} is a host task: the cuda executor "
                                     "runs kernel tasks only")
            spec.shape.check(limits)
            self._pack(spec, spec.args)  # every buffer bound
        self._modules: dict[str, Any] = {}
        self._kernels: dict[tuple[str, str], Any] = {}
        self._tables: dict[int, tuple[Any, np.ndarray]] = {}
        self._configs: dict[tuple[Any, ...], Any] = {}
        self._launch_args: list[tuple[Any, Any, tuple[Any, ...]]] = []
        self._cache_dir = cache_dir
        streams, events = max(plan.num_streams, 1), len(plan.events)
        self._streams: list[Any] = []
        self._events: list[Any] = []
        self._join: list[Any] = []
        if reuse is not None:
            reuse._retired = True
            self._modules, self._kernels = reuse._modules, reuse._kernels
            self._configs = reuse._configs
            self._streams, self._events = reuse._streams[:streams], reuse._events[:events]
            self._join = reuse._join[:streams]
        self.rebound = 0  # launches bound here rather than taken over from ``reuse``
        for lau in plan.launches:
            held = None if lau.fused else kept.get(id(plan.tasks[lau.tasks[0]]))
            self.rebound += held is None
            self._launch_args.append(held[1] if held else self._prepare(lau.id))
        self._streams += [self.gpu.stream() for _ in range(streams - len(self._streams))]
        self._events += [self.gpu.event() for _ in range(events - len(self._events))]
        self._join += [self.gpu.event() for _ in range(streams - len(self._join))]
        self._graph: Any = None
        self._reduced_preds: list[list[int]] | None = None
        self._profiled: tuple[Any, Any, list[tuple[Any, Any]]] | None = None
        if mode == "graph":
            self._graph = driver.end_capture(self._capture(), self._streams[0])
            self.instantiations = 1

    # -- binding ----------------------------------------------------------------------

    def _kept_launches(self, reuse: CudaExecutor | None
                       ) -> dict[int, tuple[TaskSpec, tuple[Any, Any, tuple[Any, ...]]]]:
        """id(spec) -> (spec, packed launch) of ``reuse``'s unfused launches that this
        executor can take over: the spec is this plan's (the same object) and every buffer
        it names is bound to the same device buffer here. The spec is held with its launch,
        so its id cannot be recycled while the map lives."""
        if reuse is None:
            return {}
        ours = {id(spec) for spec in self.plan.tasks}
        moved = {name for name, buf in self._buffers.items()
                 if reuse._buffers.get(name) is not buf}
        kept = {}
        for lau, launch in zip(reuse.plan.launches, reuse._launch_args, strict=True):
            if lau.fused:
                continue
            spec = reuse.plan.tasks[lau.tasks[0]]
            if id(spec) not in ours or reuse._args[lau.tasks[0]] is not spec.args:
                continue  # not in this plan, or its arguments were updated since
            if moved and any(isinstance(a, Buf) and a.name in moved for a in spec.args):
                continue
            kept[id(spec)] = (spec, launch)
        return kept

    def _kernel(self, file: str, name: str) -> Any:
        k = self._kernels.get((file, name))
        if k is None:
            mod = self._modules.get(file)
            if mod is None:
                mod = self._modules[file] = kernels.load(file, self.gpu, cache_dir=self._cache_dir)
            k = self._kernels[(file, name)] = self.gpu.kernel(mod, name)
        return k

    def _pack(self, spec: TaskSpec, args: tuple[Any, ...]) -> tuple[Any, ...]:
        out = []
        for a in args:
            if isinstance(a, Buf):
                try:
                    a = self._buffers[a.name]
                except KeyError:
                    raise SchedulerError(
                        f"task {spec.name!r}: no device buffer bound to {a.name!r}") from None
            out.append(a)
        return tuple(out)

    def _table(self, kernel: KernelSpec, tasks: tuple[int, ...]) -> np.ndarray:
        rec = np.zeros(len(tasks), kernel.record_dtype())
        for row, t in enumerate(tasks):
            spec = self.plan.tasks[t]
            for i, a in enumerate(self._pack(spec, self._args[t])):
                is_ptr = kernel.params[i].endswith("*")
                rec[f"p{i}"][row] = driver.device_pointer(a) if is_ptr else a
        return rec

    def _config(self, grid: tuple[int, ...], block: tuple[int, ...], shmem: int) -> Any:
        key = (grid, block, shmem)
        cfg = self._configs.get(key)
        if cfg is None:
            cfg = self._configs[key] = driver.launch_config(grid, block, shmem)
        return cfg

    def _prepare(self, li: int) -> tuple[Any, Any, tuple[Any, ...]]:
        """(kernel, launch config, packed args) of launch ``li``."""
        lau = self.plan.launches[li]
        first = self.plan.tasks[lau.tasks[0]]
        assert first.kernel is not None and first.shape is not None
        shape, kernel = first.shape, first.kernel
        if not lau.fused:
            return (self._kernel(kernel.file, kernel.name),
                    self._config(shape.grid, shape.block, shape.shmem_bytes),
                    self._pack(first, self._args[lau.tasks[0]]))
        rec = self._table(kernel, lau.tasks)
        table = self._tables[li][0] if li in self._tables else self.gpu.alloc(rec.nbytes)
        self.gpu.upload(table, rec)
        self._tables[li] = (table, rec)
        grid = (shape.grid[0], len(lau.tasks), 1)
        return (self._kernel(kernel.file, f"{kernel.name}_grouped"),
                self._config(grid, shape.block, shape.shmem_bytes),
                (table, np.uint32(len(lau.tasks))))

    def _reduced(self) -> list[list[int]]:
        """:func:`reduced_preds` of the plan's launches (the plan never changes: made once)."""
        if self._reduced_preds is None:
            self._reduced_preds = reduced_preds([lau.preds for lau in self.plan.launches])
        return self._reduced_preds

    def _capture(self) -> Any:
        """The plan's launches captured on one stream, each made to depend on exactly the
        nodes of its ``preds`` that no other of them is ordered after (a root where it has
        none): the launch DAG's transitive reduction, not the plan's stream order; returns
        the builder to finish the capture with."""
        builder = driver.begin_capture(self._streams[0])
        s = driver.capture_stream(builder)
        launch, depend, tail = driver.launcher(), driver.capture_depend, driver.capture_tail
        nodes: list[Any] = []
        try:
            for preds, (k, cfg, args) in zip(self._reduced(), self._launch_args, strict=True):
                depend(s, [nodes[p] for p in preds])
                launch(s, cfg, k, *args)
                nodes.append(tail(s))
        except BaseException:
            builder.end_building()  # the streams usable again; the capture is dropped
            raise
        return builder

    def _profiled_graph(self) -> tuple[Any, Any, list[tuple[Any, Any]]]:
        """(executable, origin event, (start, end) events per launch): the graph with a
        timing event recorded right before and right after every kernel node."""
        if self._profiled is None:
            gd = driver.graph_definition()
            origin = self.gpu.event(timing=True)
            root = driver.graph_record_node(gd, [], origin)
            stamps: list[tuple[Any, Any]] = []
            ends: list[Any] = []
            for ps, (k, cfg, args) in zip(self._reduced(), self._launch_args, strict=True):
                a, b = self.gpu.event(timing=True), self.gpu.event(timing=True)
                before = driver.graph_record_node(gd, [ends[p] for p in ps] or [root], a)
                node = driver.graph_kernel_node(gd, [before], cfg, k, args)
                ends.append(driver.graph_record_node(gd, [node], b))
                stamps.append((a, b))
            exe = driver.instantiate(gd)
            exe.upload(self._streams[0])
            self._profiled = (exe, origin, stamps)
        return self._profiled

    # -- running ----------------------------------------------------------------------

    def run(self, *, sync: bool = True) -> None:
        """Run the plan once (``sync=False``: queue it and return; runs stay ordered)."""
        if self._retired:
            raise SchedulerError("this executor was replaced (reuse=) by another: run that one")
        observe = self.observer is not None and sync
        s0 = self._streams[0]
        if self.mode == "graph":
            self._run_graph(observe, sync)
            return
        streams, events = self._streams, self._events
        driver.record(s0, self._join[0])
        for s in streams[1:]:
            driver.wait(s, self._join[0])
        stamps: list[tuple[Any, Any]] = []
        if observe:
            origin = self.gpu.event(timing=True)
            driver.record(s0, origin)
        launch = driver.launcher()
        for lau, (k, cfg, args) in zip(self.plan.launches, self._launch_args, strict=True):
            s = streams[lau.stream]
            for e in lau.waits:
                s.wait(events[e])
            if observe:
                a, b = self.gpu.event(timing=True), self.gpu.event(timing=True)
                driver.record(s, a)
            launch(s, cfg, k, *args)
            if observe:
                driver.record(s, b)
                stamps.append((a, b))
            if lau.record >= 0:
                s.record(events[lau.record])
        for i, s in enumerate(streams[1:], start=1):
            driver.record(s, self._join[i])
            driver.wait(s0, self._join[i])
        if sync:
            s0.sync()
        if observe and self.observer is not None:
            self.observer.on_run(self._records("cuda-streams", origin, stamps))

    def _run_graph(self, observe: bool, sync: bool) -> None:
        s0 = self._streams[0]
        if not observe:
            driver.graph_launch(self._graph, s0)
            if sync:
                s0.sync()
            return
        exe, origin, stamps = self._profiled_graph()
        driver.graph_launch(exe, s0)
        s0.sync()
        assert self.observer is not None
        self.observer.on_run(self._records("cuda-graph", origin, stamps))

    def _records(self, executor: str, origin: Any, stamps: list[tuple[Any, Any]]
                 ) -> list[TaskRecord]:
        """One record per launch from its (start, end) events; graph mode has no streams."""
        graph = executor == "cuda-graph"
        return [
            TaskRecord(executor, lau.id, tuple(self.plan.tasks[t].name for t in lau.tasks),
                       -1 if graph else lau.stream, driver.elapsed_ms(origin, a) * 1e3,
                       driver.elapsed_ms(a, b) * 1e3, () if graph else lau.waits)
            for lau, (a, b) in zip(self.plan.launches, stamps, strict=True)
        ]

    def sync(self) -> None:
        """Wait until every queued run has finished."""
        self._streams[0].sync()

    def update_args(self, updates: Mapping[str, tuple[Any, ...]]) -> None:
        """Change the arguments of tasks (by name); shapes and dependencies stay.

        In graph mode the executable graph is updated in place, not re-instantiated.

        Raises:
            UnknownTaskError: a name not in the plan.
            KernelArgumentError: arguments that do not match the kernel's declaration.
            SchedulerError: a buffer name with nothing bound.
        """
        from streamdag.errors import UnknownTaskError

        index = {spec.name: i for i, spec in enumerate(self.plan.tasks)}
        touched: set[int] = set()
        where = self.plan.task_launch()
        staged = dict(enumerate(self._args))
        for name, args in updates.items():
            if name not in index:
                raise UnknownTaskError(f"plan {self.plan.name!r} has no task {name!r}")
            t = index[name]
            spec = self.plan.tasks[t]
            assert spec.kernel is not None
            spec.kernel.check_args(tuple(args))
            self._pack(spec, tuple(args))
            staged[t] = tuple(args)
            touched.add(where[t])
        self.sync()
        self._args = [staged[i] for i in range(len(self._args))]
        for li in sorted(touched):
            self._launch_args[li] = self._prepare(li)
        if self.mode == "graph" and touched:
            driver.graph_update(self._graph, self._capture().end_building())
            self._profiled = None  # rebuilt with the new arguments at the next observed run
            self.updates += 1
