"""Task graphs: named tasks (kernel launches or host callables) and their dependencies.

Design note. A :class:`TaskGraph` is the user's description of work, written the way
Taskflow reads: ``a.precede(b, c)``, ``d.succeed(b, c)``. It holds *specs* only — no device
state — so planning stays pure Python. Each task is one of

- a **kernel task**: a :class:`KernelSpec` (file, ``extern "C"`` name, declared parameter
  types), a :class:`LaunchShape` and arguments. Buffers are named symbolically with
  :class:`Buf`; scalars must be numpy scalars of the parameter's exact type, because the
  launcher packs a Python ``float`` as a double and a Python ``int`` as a pointer without
  complaint. Everything is checked when the task is added, long before anything launches.
- a **host task**: a Python callable over numpy arrays, for the CPU executors (and as the
  reference a kernel task is compared with: a kernel spec may carry ``ref``).

Buffers are bound only by an executor (``{"x": ndarray}`` on the CPU, ``{"x": Buffer}`` on
the GPU), so one plan runs on every executor. ``validate()`` resolves names given to
``precede``/``succeed`` and finds cycles; it raises :class:`~streamdag.errors.UnknownTaskError`
and :class:`~streamdag.errors.TaskCycleError`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple

import numpy as np

from streamdag.errors import (
    KernelArgumentError,
    LaunchConfigError,
    SchedulerError,
    TaskCycleError,
    UnknownTaskError,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Buf",
    "DeviceLimits",
    "KernelSpec",
    "LaunchShape",
    "Task",
    "TaskGraph",
    "TaskSpec",
]

#: C parameter type -> the numpy scalar type that packs to exactly that width.
SCALAR_TYPES: dict[str, type[np.generic]] = {
    "float": np.float32,
    "double": np.float64,
    "int": np.int32,
    "int32_t": np.int32,
    "unsigned": np.uint32,
    "unsigned int": np.uint32,
    "uint32_t": np.uint32,
    "long long": np.int64,
    "long long int": np.int64,
    "int64_t": np.int64,
    "unsigned long long": np.uint64,
    "unsigned long long int": np.uint64,
    "uint64_t": np.uint64,
    "size_t": np.uint64,
}


@dataclass(frozen=True, slots=True)
class Buf:
    """A buffer argument, by name; executors bind names to arrays or device buffers."""

    name: str


@dataclass(frozen=True, slots=True)
class DeviceLimits:
    """Launch limits; defaults are those of every GPU since Volta (sm_70 .. sm_90).

    ``shmem_bytes`` is the dynamic shared memory a launch may use without opting in to
    more through a function attribute (48 KiB), which streamdag does not do.
    """

    threads_per_block: int = 1024
    block: tuple[int, int, int] = (1024, 1024, 64)
    grid: tuple[int, int, int] = (2**31 - 1, 65535, 65535)
    shmem_bytes: int = 48 * 1024


DEFAULT_LIMITS = DeviceLimits()


def _dims(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, int | np.integer) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, int | np.integer) for d in dims):
        raise LaunchConfigError(f"{what} must be 1 to 3 integers, got {value!r}")
    full = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    return full  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class LaunchShape:
    """Grid, block (each padded to 3 dims) and dynamic shared memory of one launch."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shmem_bytes: int = 0

    @classmethod
    def of(
        cls,
        grid: int | Sequence[int],
        block: int | Sequence[int],
        shmem_bytes: int = 0,
        *,
        limits: DeviceLimits = DEFAULT_LIMITS,
    ) -> LaunchShape:
        """Build a shape and check it against ``limits``.

        Raises:
            LaunchConfigError: a dimension below 1 or past a limit.
        """
        try:  # a task graph asks for the same few shapes thousands of times
            return _shape_of(grid, block, shmem_bytes, limits)
        except TypeError:  # unhashable dims (a list): made and checked afresh
            shape = cls(_dims(grid, "grid"), _dims(block, "block"), int(shmem_bytes))
            shape.check(limits)
            return shape

    def check(self, limits: DeviceLimits = DEFAULT_LIMITS) -> None:
        """Raise :class:`LaunchConfigError` if this shape exceeds ``limits``."""
        pairs = (("grid", self.grid, limits.grid), ("block", self.block, limits.block))
        for what, dims, lim in pairs:
            for axis, d, m in zip("xyz", dims, lim, strict=True):
                if not 1 <= d <= m:
                    raise LaunchConfigError(f"{what}.{axis} = {d} is outside 1..{m}")
        threads = self.block[0] * self.block[1] * self.block[2]
        if threads > limits.threads_per_block:
            raise LaunchConfigError(
                f"block {self.block} has {threads} threads, the limit is {limits.threads_per_block}"
            )
        if not 0 <= self.shmem_bytes <= limits.shmem_bytes:
            raise LaunchConfigError(
                f"dynamic shared memory {self.shmem_bytes} B is outside 0..{limits.shmem_bytes} B"
            )


@functools.lru_cache(maxsize=4096)
def _shape_of(grid: int | tuple[int, ...], block: int | tuple[int, ...], shmem_bytes: int,
              limits: DeviceLimits) -> LaunchShape:
    """:meth:`LaunchShape.of` for hashable arguments, remembered (shapes are immutable;
    a shape past the limits raises, and is not remembered)."""
    shape = LaunchShape(_dims(grid, "grid"), _dims(block, "block"), int(shmem_bytes))
    shape.check(limits)
    return shape


@dataclass(frozen=True)
class KernelSpec:
    """An ``extern "C"`` kernel: where it lives and its declared parameter types.

    Args:
        file: source file name in ``streamdag/kernels`` (e.g. ``"scheduler.cu"``).
        name: the kernel's ``extern "C"`` name.
        params: C parameter types in order, e.g. ``("float", "const float*", "unsigned int")``.
        grouped: the file also defines ``<name>_grouped(const <name>_args* table,
            unsigned int count)``, which runs task ``blockIdx.y`` of the table; such
            kernels can be fused (see docs/scheduler.md, "Writing a fusable kernel").
        ref: optional host reference over numpy arrays, same arguments; the CPU executors
            run it in place of the kernel.
    """

    file: str
    name: str
    params: tuple[str, ...]
    grouped: bool = False
    ref: Callable[..., None] | None = field(default=None, compare=False)
    _types: tuple[type, ...] = field(init=False, compare=False, repr=False)
    """The argument type each parameter takes exactly (``Buf`` for a pointer)."""

    def __post_init__(self) -> None:
        for p in self.params:
            if not p.endswith("*") and p not in SCALAR_TYPES:
                raise KernelArgumentError(
                    f"kernel {self.name}: parameter type {p!r} is not supported "
                    f"(pointers or one of {sorted(SCALAR_TYPES)})"
                )
        object.__setattr__(self, "_types", tuple(
            Buf if p.endswith("*") else SCALAR_TYPES[p] for p in self.params))

    @classmethod
    def from_source(
        cls, file: str, name: str, *, ref: Callable[..., None] | None = None
    ) -> KernelSpec:
        """Read the parameter types (and whether a grouped variant exists) from the source."""
        from streamdag.kernels import signatures

        sigs = signatures(file)
        if name not in sigs:
            raise SchedulerError(f"{file} defines no extern \"C\" kernel {name!r}")
        grouped = f"{name}_grouped" in sigs
        return cls(file, name, sigs[name], grouped=grouped, ref=ref)

    def check_args(self, args: tuple[Any, ...]) -> None:
        """Raise :class:`KernelArgumentError` unless ``args`` pack exactly as declared."""
        if tuple(map(type, args)) == self._types:  # the usual case, in one comparison
            return
        if len(args) != len(self.params):
            raise KernelArgumentError(
                f"kernel {self.name} takes {len(self.params)} arguments, got {len(args)}"
            )
        for i, (p, a) in enumerate(zip(self.params, args, strict=True)):
            if p.endswith("*"):
                if not isinstance(a, Buf):
                    raise KernelArgumentError(
                        f"kernel {self.name} argument {i} ({p}) must be a Buf, "
                        f"got {type(a).__name__}"
                    )
            elif type(a) is not SCALAR_TYPES[p]:
                raise KernelArgumentError(
                    f"kernel {self.name} argument {i} ({p}) must be "
                    f"np.{SCALAR_TYPES[p].__name__}, got {type(a).__name__} {a!r}"
                )

    def record_dtype(self) -> np.dtype[Any]:
        """The numpy layout of one ``<name>_args`` table record (C struct, natural alignment)."""
        fields = [
            (f"p{i}", np.uint64 if p.endswith("*") else SCALAR_TYPES[p])
            for i, p in enumerate(self.params)
        ]
        return np.dtype(fields, align=True)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task as planned: immutable, shared between a task graph and its plans."""

    name: str
    args: tuple[Any, ...]
    kernel: KernelSpec | None = None
    shape: LaunchShape | None = None
    fn: Callable[..., None] | None = None
    fuse_key: Any = None
    cost: float = 1.0
    fusion_key: Any = field(init=False, compare=False, repr=False)
    """Tasks with equal non-None keys may share one grouped launch (computed once, here,
    so that re-planning does not pay for it)."""

    def __post_init__(self) -> None:
        key: Any = None
        if self.kernel is not None:
            shape = self.shape
            if self.kernel.grouped and shape is not None and shape.grid[1:] == (1, 1):
                key = ("kernel", self.kernel.file, self.kernel.name, shape)
        elif self.fuse_key is not None:
            key = ("host", self.fuse_key)
        object.__setattr__(self, "fusion_key", key)

    @property
    def is_kernel(self) -> bool:
        return self.kernel is not None


class Task:
    """A handle on a task of a :class:`TaskGraph`, for wiring dependencies."""

    __slots__ = ("_graph", "index", "name")

    def __init__(self, graph: TaskGraph, index: int, name: str) -> None:
        self._graph = graph
        self.index = index
        self.name = name

    def precede(self, *others: Task | str) -> Task:
        """Make each of ``others`` run after this task. Returns self."""
        for o in others:
            self._graph._add_edge(self, o)
        return self

    def succeed(self, *others: Task | str) -> Task:
        """Make this task run after each of ``others``. Returns self."""
        for o in others:
            self._graph._add_edge(o, self)
        return self

    @property
    def spec(self) -> TaskSpec:
        return self._graph.specs[self.index]

    def __repr__(self) -> str:
        return f"Task({self.name!r})"


class _Sorted(NamedTuple):
    """A valid task graph, sorted (see TaskGraph._toposort)."""

    order: list[int]  # validate()'s order
    level: list[int]  # per task: 0 with no predecessor, else 1 + its predecessors' largest
    sources: np.ndarray  # the edges: sources ascending, each one's targets in added order
    targets: np.ndarray


class TaskGraph:
    """A DAG of named tasks.

    Example:
        >>> import numpy as np
        >>> from streamdag.scheduler import TaskGraph, Buf
        >>> tg = TaskGraph("demo")
        >>> def inc(x): x += 1
        >>> a = tg.host("a", inc, Buf("x"))
        >>> b = tg.host("b", inc, Buf("x"))
        >>> _ = a.precede(b)
        >>> tg.validate()
        [0, 1]
    """

    def __init__(self, name: str = "taskgraph") -> None:
        self.name = name
        self.specs: list[TaskSpec] = []
        self._index: dict[str, int] = {}
        self._succ: list[dict[int, None]] = []  # ordered sets
        self._pending: list[tuple[Task | str, Task | str]] = []
        self._version = 0  # bumped by every task or dependency added
        self._derived: dict[object, Any] = {}  # see _cached
        self._derived_version = 0

    # -- building ---------------------------------------------------------------------

    def _add(self, spec: TaskSpec) -> Task:
        if not isinstance(spec.name, str) or not spec.name:
            raise SchedulerError(f"task names are non-empty strings, got {spec.name!r}")
        if spec.name in self._index:
            raise SchedulerError(f"task graph {self.name!r} already has a task {spec.name!r}")
        idx = len(self.specs)
        self._version += 1
        self.specs.append(spec)
        self._index[spec.name] = idx
        self._succ.append({})
        return Task(self, idx, spec.name)

    def launch(
        self,
        name: str,
        kernel: KernelSpec,
        *args: Any,
        grid: int | Sequence[int],
        block: int | Sequence[int],
        shmem_bytes: int = 0,
        cost: float = 1.0,
        limits: DeviceLimits = DEFAULT_LIMITS,
    ) -> Task:
        """Add a kernel task.

        Raises:
            KernelArgumentError: an argument that does not match the kernel's declared types.
            LaunchConfigError: a launch shape past ``limits``.
        """
        kernel.check_args(args)
        shape = LaunchShape.of(grid, block, shmem_bytes, limits=limits)
        return self._add(TaskSpec(name, tuple(args), kernel=kernel, shape=shape, cost=cost))

    def host(
        self,
        name: str,
        fn: Callable[..., None],
        *args: Any,
        fuse_key: Any = None,
        cost: float = 1.0,
    ) -> Task:
        """Add a host task: ``fn(*args)`` with each :class:`Buf` replaced by its array.

        Host tasks with the same non-None ``fuse_key`` may be fused into one launch that
        runs the members one after another (they must be independent, which fusion ensures).
        """
        if not callable(fn):
            raise SchedulerError(f"host task {name!r}: fn is not callable")
        return self._add(TaskSpec(name, tuple(args), fn=fn, fuse_key=fuse_key, cost=cost))

    def add(self, spec: TaskSpec, *, limits: DeviceLimits = DEFAULT_LIMITS,
            checked: bool = False) -> Task:
        """Add a task from its spec — typically one of another graph, kept by a caller that
        rebuilds a graph most of whose tasks it had before (specs are immutable, so graphs
        may share them; the checks are those of :meth:`launch` and :meth:`host`).
        ``checked=True`` skips those checks, for a spec the caller had added to a graph
        with the same ``limits`` before (the CUDA backend's step graph after a mutation
        batch: ~1 µs a task less); the name is checked either way.

        Raises:
            KernelArgumentError, LaunchConfigError: as :meth:`launch`.
            SchedulerError: a duplicate name, or a host task whose ``fn`` is not callable.
        """
        if checked:
            return self._add(spec)
        if spec.kernel is not None:
            spec.kernel.check_args(spec.args)
            if spec.shape is None:
                raise SchedulerError(f"kernel task {spec.name!r} has no launch shape")
            sh = spec.shape  # checked as launch() checks it: once per distinct shape
            LaunchShape.of(sh.grid, sh.block, sh.shmem_bytes, limits=limits)
        elif not callable(spec.fn):
            raise SchedulerError(f"host task {spec.name!r}: fn is not callable")
        return self._add(spec)

    def connect(self, sources: Sequence[int] | np.ndarray,
                targets: Sequence[int] | np.ndarray) -> None:
        """Make task ``targets[i]`` run after task ``sources[i]``, for every ``i`` (task
        indices, as :attr:`Task.index`): :meth:`Task.precede` for many edges at once.

        Raises:
            SchedulerError: lengths that differ, or an index that names no task.
        """
        src: list[int] = np.asarray(sources, dtype=np.intp).ravel().tolist()
        dst: list[int] = np.asarray(targets, dtype=np.intp).ravel().tolist()
        if len(src) != len(dst):
            raise SchedulerError(f"connect: {len(src)} sources but {len(dst)} targets")
        n = len(self.specs)
        if src and (min(src) < 0 or max(src) >= n or min(dst) < 0 or max(dst) >= n):
            raise SchedulerError(f"connect: a task index outside 0..{n - 1}")
        succ = self._succ
        for u, v in zip(src, dst, strict=True):
            succ[u][v] = None
        self._version += 1

    def _add_edge(self, src: Task | str, dst: Task | str) -> None:
        if type(src) is Task and type(dst) is Task and src._graph is self is dst._graph:
            self._version += 1  # the usual case: two tasks of this graph
            self._succ[src.index][dst.index] = None
            return
        for t in (src, dst):
            if isinstance(t, Task) and (t._graph is not self):
                raise UnknownTaskError(f"task {t.name!r} belongs to another task graph")
            if not isinstance(t, Task | str):
                raise SchedulerError(f"a dependency is a Task or a task name, got {t!r}")
        self._version += 1
        if isinstance(src, Task) and isinstance(dst, Task):
            self._succ[src.index][dst.index] = None
        else:
            self._pending.append((src, dst))

    def task(self, name: str) -> Task:
        """The handle of task ``name``."""
        try:
            return Task(self, self._index[name], name)
        except KeyError:
            raise UnknownTaskError(f"task graph {self.name!r} has no task {name!r}") from None

    # -- queries ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.specs)

    def successors(self, index: int) -> list[int]:
        return list(self._succ[index])

    def edges(self) -> list[tuple[int, int]]:
        """All dependency edges as (task index, task index), after validate()."""
        return [(u, v) for u, s in enumerate(self._succ) for v in s]

    def validate(self) -> list[int]:
        """Resolve named dependencies and check for cycles.

        Returns:
            A topological order of task indices (Kahn's algorithm, FIFO; deterministic).
            The graph keeps it until a task or dependency is added.

        Raises:
            UnknownTaskError: a dependency names a task that does not exist.
            TaskCycleError: the dependencies form a cycle (the message lists one).
        """
        return list(self._toposort().order)

    def _cached(self, key: object, make: Callable[[], Any]) -> Any:
        """``make()``, kept under ``key`` until a task or dependency is added, so that
        re-planning an unchanged graph does not redo it. The result is shared: read it,
        never change it."""
        if self._derived_version != self._version or self._pending:
            self._derived = {}
            self._derived_version = self._version
        if key not in self._derived:
            value = make()  # may resolve pending names, or fail and keep nothing
            self._derived[key] = value
        return self._derived[key]

    def _toposort(self) -> _Sorted:
        """validate(), also returning each task's level and the edges as arrays (cached)."""
        return self._cached("toposort", self._sort)

    def _sort(self) -> _Sorted:
        pending, self._pending = self._pending, []
        for i, (src, dst) in enumerate(pending):
            try:
                s = src.index if isinstance(src, Task) else self.task(src).index
                d = dst.index if isinstance(dst, Task) else self.task(dst).index
            except UnknownTaskError:
                self._pending = pending[i:]  # unresolved edges stay pending
                raise
            self._succ[s][d] = None
        succ = self._succ
        n = len(succ)
        out_degree = np.fromiter(map(len, succ), np.intp, n)
        targets = np.fromiter(chain.from_iterable(succ), np.intp, int(out_degree.sum()))
        indeg_array = np.bincount(targets, minlength=n)
        order: list[int] = np.flatnonzero(indeg_array == 0).tolist()
        indeg: list[int] = indeg_array.tolist()
        level = [0] * n
        for u in order:  # Kahn, FIFO (the list grows while it is walked): ties by insertion
            below = level[u] + 1
            for v in succ[u]:
                remaining = indeg[v] - 1
                indeg[v] = remaining
                if not remaining:
                    order.append(v)
                    # FIFO dequeues tasks in level order, so v's last predecessor to be
                    # dequeued, u, has the highest level among them
                    level[v] = below
        if len(order) != n:
            raise TaskCycleError(
                f"task graph {self.name!r} has a cycle: {' -> '.join(self._find_cycle(indeg))}"
            )
        sources = np.repeat(np.arange(n), out_degree)
        sources.flags.writeable = targets.flags.writeable = False
        return _Sorted(order, level, sources, targets)

    def _find_cycle(self, indeg: list[int]) -> list[str]:
        left = {i for i, d in enumerate(indeg) if d > 0}
        pred: dict[int, int] = {}
        for u in left:  # every node left has a predecessor left: walking them must loop
            for v in self._succ[u]:
                if v in left:
                    pred.setdefault(v, u)
        path: list[int] = [min(left)]
        seen = {path[0]: 0}
        while True:
            nxt = pred[path[-1]]
            if nxt in seen:
                cyc = [nxt, *reversed(path[seen[nxt]:])]
                return [self.specs[i].name for i in cyc]
            seen[nxt] = len(path)
            path.append(nxt)

    def to_dot(self) -> str:
        """The task graph in Graphviz DOT."""
        lines = [f'digraph "{self.name}" {{', "  rankdir=LR;"]
        for s in self.specs:
            label = f"{s.name}\\n{s.kernel.name}" if s.kernel else s.name
            lines.append(f'  "{s.name}" [label="{label}"];')
        lines += [f'  "{self.specs[u].name}" -> "{self.specs[v].name}";' for u, v in self.edges()]
        lines.append("}")
        return "\n".join(lines) + "\n"
