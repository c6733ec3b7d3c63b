"""Planning: from a task graph to a frozen :class:`Plan` (launches, streams, events).

Design note. Planning is pure Python and numpy and runs on every re-plan, so it is
linear-ish in the number of tasks and edges (16,384 tasks plan in tens of ms; see
docs/scheduler.md):

1. **Levels.** ``level(v) = 1 + max(level(preds))``. Tasks of one level are independent,
   and sorting launches by (level, topological index) gives the *plan order*, a topological
   order every executor issues in. Kahn's FIFO order (``validate()``) dequeues the tasks
   level by level, so it *is* that order, and it yields the levels on the way.
2. **Fusion** (optional). Tasks of the same level with the same fusion key (same grouped
   kernel and launch shape, or same host ``fuse_key``) become one launch over an index
   table. Levels strictly increase along every edge, so merging within a level cannot make
   a cycle.
3. **Stream assignment.** ``round_robin``: within each level, launches are dealt to streams
   in order. ``critical_path``: list scheduling with unit (or given) costs; a launch goes to
   the stream that can start it first, preferring the stream whose tail is its latest-
   finishing predecessor, so chains along the critical path stay on one stream.
   ``random``: seeded, for tests. All are deterministic for a given seed. A re-plan after
   a change (``previous=``) keeps the streams of the tasks that stayed and places only the
   new ones, on their latest predecessor's stream (tasks matched by spec identity).
4. **Events, none redundant.** A vector clock per stream holds, for every other stream, the
   position of the last launch it is already ordered after. Walking launches in plan order,
   a cross-stream predecessor ``u`` of ``v`` needs a wait only if ``v``'s stream's clock
   does not already cover ``u``; predecessors are visited latest first, and a wait merges
   ``u``'s clock. A recorded wait therefore is never implied by stream order plus the other
   waits (an earlier launch cannot happen after a later one), which the property tests
   check against a brute-force happens-before closure. A clock is one int, a bit field per
   stream, so that a merge is a handful of int operations rather than a loop.

Steps 1-2 (and the costs ``critical_path`` needs) depend on the graph alone: the graph keeps
them until a task or dependency is added (``TaskGraph._cached``), so a re-plan of an
unchanged graph, with other streams or another policy, starts at step 3. Edge lists,
fusion and round-robin dealing are array work (numpy); the walks in which each step depends
on the ones before (Kahn, list scheduling, the clocks) are Python loops of a few operations
per edge.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from heapq import heapify, heapreplace
from itertools import repeat
from typing import Literal, NamedTuple

import numpy as np

from streamdag.errors import ConfigError
from streamdag.scheduler.taskgraph import TaskGraph, TaskSpec

__all__ = ["EventSpec", "Launch", "Plan", "Policy", "StreamSpec", "make_plan"]

Policy = Literal["round_robin", "critical_path", "random"]
POLICIES: tuple[str, ...] = ("round_robin", "critical_path", "random")
MAX_GROUP = 65535  # gridDim.y limit: a grouped launch holds at most this many tasks


class Launch(NamedTuple):
    """One launch: a task, or several fused tasks run as one grouped launch.

    An immutable record (a ``NamedTuple``: 16,384 frozen-dataclass inits alone cost ~30 ms,
    a third of the planning budget).

    Attributes:
        id: position in plan order.
        tasks: member task indices (one unless fused).
        stream: the stream it is issued on.
        position: its position within that stream.
        preds: launches it depends on (task-graph edges, mapped to launches).
        waits: events the stream waits on right before this launch.
        record: the event recorded right after it, or -1.
    """

    id: int
    tasks: tuple[int, ...]
    stream: int
    position: int
    preds: tuple[int, ...]
    waits: tuple[int, ...]
    record: int

    @property
    def fused(self) -> bool:
        return len(self.tasks) > 1


class EventSpec(NamedTuple):
    """An event recorded after launch ``launch`` on stream ``stream``."""

    id: int
    launch: int
    stream: int


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """The launches issued on one stream, in order."""

    id: int
    launches: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """A schedule of a task graph: data only; executors run it.

    Attributes:
        name: the task graph's name.
        tasks: the task specs, indexed by task index.
        launches: in plan order (a topological order).
        streams: per stream, its launches.
        events: every event; each has at least one wait that nothing else implies.
        policy, seed, fused: how the plan was made.
    """

    name: str
    tasks: tuple[TaskSpec, ...]
    launches: tuple[Launch, ...]
    streams: tuple[StreamSpec, ...]
    events: tuple[EventSpec, ...]
    policy: str
    seed: int
    fused: bool

    @property
    def num_streams(self) -> int:
        return len(self.streams)

    def task_launch(self) -> list[int]:
        """For each task index, the index of the launch that runs it."""
        where = [0] * len(self.tasks)
        for lau in self.launches:
            for t in lau.tasks:
                where[t] = lau.id
        return where

    def cross_stream_waits(self) -> Iterator[tuple[int, int]]:
        """(producer launch, consumer launch) for every wait in the plan."""
        for lau in self.launches:
            for e in lau.waits:
                yield self.events[e].launch, lau.id

    def summary(self) -> str:
        """One line: counts of tasks, launches, streams, events."""
        return (
            f"plan {self.name!r}: {len(self.tasks)} tasks, {len(self.launches)} launches, "
            f"{len(self.streams)} streams, {len(self.events)} events, "
            f"{sum(len(lau.waits) for lau in self.launches)} waits ({self.policy})"
        )

    def to_dot(self) -> str:
        """Launches clustered by stream; solid edges = dependencies, dashed red = waits."""
        colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
                  "#ff9da7"]
        lines = [f'digraph "{self.name}" {{', "  rankdir=LR; node [shape=box, style=filled];"]
        for st in self.streams:
            lines.append(f'  subgraph cluster_s{st.id} {{ label="stream {st.id}";')
            for li in st.launches:
                lau = self.launches[li]
                label = "\\n".join(self.tasks[t].name for t in lau.tasks)
                col = colors[st.id % len(colors)]
                lines.append(f'    L{li} [label="{label}", fillcolor="{col}"];')
            lines.append("  }")
        waits = set(self.cross_stream_waits())
        for lau in self.launches:
            for p in lau.preds:
                cross = (p, lau.id) in waits
                style = ' [color=red, style=dashed, label="event"]' if cross else ""
                lines.append(f"  L{p} -> L{lau.id}{style};")
        lines.append("}")
        return "\n".join(lines) + "\n"


def make_plan(
    graph: TaskGraph,
    *,
    streams: int = 4,
    policy: Policy = "critical_path",
    fuse: bool = False,
    seed: int = 0,
    previous: Plan | None = None,
) -> Plan:
    """Plan ``graph`` onto ``streams`` streams.

    Args:
        graph: the task graph (validated here).
        streams: number of streams, at least 1.
        policy: ``"round_robin"`` (by level), ``"critical_path"`` or ``"random"``.
        fuse: merge independent tasks of the same level and fusion key into grouped launches.
        seed: seeds the ``random`` policy; plans are deterministic for a given seed.
        previous: a plan of an earlier version of ``graph`` on as many streams, whose
            tasks that stayed are the same :class:`TaskSpec` objects (the CUDA backend's
            ``streams`` mode after a mutation batch). Only what changed is assigned a
            stream: a launch whose first task was in ``previous`` stays on that task's
            stream, and a new one goes on the stream of its latest predecessor in plan
            order (a chain that grew keeps to one stream, with no event), or, with none,
            round robin; ``policy`` places nothing then. Plan order and events are still
            made for the whole graph (both follow from every edge). Ignored on another
            number of streams.

    Raises:
        ConfigError: ``streams < 1`` or an unknown policy.
        TaskCycleError, UnknownTaskError: from ``graph.validate()``.
    """
    if not isinstance(streams, int) or streams < 1:
        raise ConfigError(f"streams must be an integer >= 1, got {streams!r}")
    if policy not in POLICIES:
        raise ConfigError(f"policy must be one of {POLICIES}, got {policy!r}")
    # planning allocates ~100k small objects, none cyclic; the cyclic collector would
    # otherwise walk the whole task graph a few times per plan (~30% of the time)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _plan(graph, streams, policy, fuse, seed, previous)
    finally:
        if was_enabled:
            gc.enable()


def _plan(graph: TaskGraph, streams: int, policy: str, fuse: bool, seed: int,
          previous: Plan | None) -> Plan:
    # 1-2. plan order and launches: the same for every plan of an unchanged graph
    layout: _Layout = graph._cached(("layout", fuse), lambda: _layout(graph, fuse))
    tasks, preds, _, producer, consumer, ids, latest_first = layout
    m = len(preds)

    # 3. stream assignment: whole, or only the new launches' after a change
    if previous is not None and previous.num_streams == streams:
        stream_of = _keep_streams(graph, layout, previous, streams)
    else:
        stream_of = _assign(graph, layout, fuse, streams, policy, seed)

    # the narrowest dtype: numpy sorts 8- and 16-bit integers stably by radix
    stream_array = np.array(stream_of, dtype=np.min_scalar_type(streams - 1))

    # 4. events by vector clocks; none where every edge stays on its stream
    if (stream_array[producer] != stream_array[consumer]).any():
        waits, record, recorded = _events(latest_first, stream_of, streams)
    else:
        waits, record, recorded = [()] * m, [-1] * m, []

    # a stable sort by stream keeps plan order within each stream
    by_stream = np.argsort(stream_array, kind="stable")
    per_stream = np.bincount(stream_array, minlength=streams)
    position = np.empty(m, np.intp)
    position[by_stream] = np.arange(m) - np.repeat(np.cumsum(per_stream) - per_stream, per_stream)
    # tuple.__new__(cls, fields) is what NamedTuple._make does, less its length check
    launches = tuple(map(tuple.__new__, repeat(Launch), zip(
        ids, tasks, stream_of, position.tolist(), preds, waits, record, strict=True)))
    events = tuple(map(tuple.__new__, repeat(EventSpec), zip(
        map(record.__getitem__, recorded), recorded, map(stream_of.__getitem__, recorded),
        strict=True)))
    return Plan(
        name=graph.name,
        tasks=tuple(graph.specs),
        launches=launches,
        streams=tuple(map(StreamSpec, range(streams), _split(by_stream.tolist(), per_stream))),
        events=events,
        policy=policy,
        seed=seed,
        fused=fuse,
    )


class _Layout(NamedTuple):
    """The launches of a graph before stream assignment (kept by the graph: read only)."""

    tasks: list[tuple[int, ...]]  # per launch, in plan order
    preds: list[tuple[int, ...]]  # per launch, ascending
    level: np.ndarray  # per launch
    producer: np.ndarray  # every launch-level edge, sorted by (consumer, producer)
    consumer: np.ndarray
    ids: list[int]  # range(len(preds)): int objects all plans share, not new ones each
    latest_first: list[tuple[int, ...]]  # preds, reversed


def _layout(graph: TaskGraph, fuse: bool) -> _Layout:
    order, task_level, sources, targets = graph._toposort()
    n = len(order)

    # 1. plan order: Kahn's FIFO order is already sorted by level (see TaskGraph._toposort)
    order_array = np.array(order, dtype=np.intp)
    level = np.array(task_level, dtype=np.intp)[order_array]  # per plan position
    plan_pos = np.empty(n, np.intp)  # of each task
    plan_pos[order_array] = np.arange(n)

    # 2. launches: fusion groups plan positions; launches are numbered by their first task
    if fuse:
        launch_at = _fuse(order, level, graph.specs)
        m = int(launch_at.max()) + 1 if n else 0
    else:
        m = n
    if m == n:  # nothing fused
        tasks: list[tuple[int, ...]] = list(zip(order))
        launch_of = plan_pos
    else:
        members = np.argsort(launch_at, kind="stable")  # by launch, in plan order
        size = np.bincount(launch_at, minlength=m)
        tasks = _split(order_array[members].tolist(), size)
        launch_of = launch_at[plan_pos]
        level = level[members[np.cumsum(size) - size]]
    # launch-level edges, sorted by (consumer, producer); a fused launch repeats some
    edge = launch_of[targets].astype(np.int64) * m + launch_of[sources]
    edge.sort()
    if m < n:
        edge = edge[np.diff(edge, prepend=-1) != 0]
    consumer, producer = np.divmod(edge, m) if m else (edge, edge)
    preds = _split(producer.tolist(), np.bincount(consumer, minlength=m))
    for a in (level, producer, consumer):
        a.flags.writeable = False
    return _Layout(tasks, preds, level, producer, consumer, list(range(m)),
                   [ps[::-1] for ps in preds])


def _split(flat: list[int], counts: np.ndarray) -> list[tuple[int, ...]]:
    """``flat`` cut into consecutive tuples of ``counts[i]`` items."""
    items = tuple(flat)  # slicing a tuple makes the tuple directly
    ends = np.cumsum(counts).tolist()
    return [items[a:b] for a, b in zip([0, *ends], ends, strict=False)]


def _fuse(order: list[int], level: np.ndarray, specs: Sequence[TaskSpec]) -> np.ndarray:
    """The launch of each plan position, launches numbered by their first position.

    Tasks of one level with the same fusion key share a launch, at most MAX_GROUP of them:
    a full launch is closed and the next such task opens a new one.
    """
    n = len(order)
    key_ids: dict[object, int] = {}
    key = np.array([-1 if k is None else key_ids.setdefault(k, len(key_ids))
                    for k in (specs[t].fusion_key for t in order)], np.int64)
    fusable = np.flatnonzero(key >= 0)
    # one class per (level, key); members in plan order, cut into chunks of MAX_GROUP
    cls = level[fusable].astype(np.int64) * max(len(key_ids), 1) + key[fusable]
    by_class = np.argsort(cls, kind="stable")
    members, cls = fusable[by_class], cls[by_class]
    i = np.arange(len(members))
    class_start = np.maximum.accumulate(np.where(np.diff(cls, prepend=-1) != 0, i, 0))
    chunk_start = class_start + (i - class_start) // MAX_GROUP * MAX_GROUP
    at = np.arange(n)
    leader = at.copy()  # the first position of each position's launch
    leader[members] = members[chunk_start]
    is_leader = leader == at
    return (np.cumsum(is_leader) - 1)[leader]


def _assign(graph: TaskGraph, layout: _Layout, fuse: bool, streams: int, policy: str,
            seed: int) -> list[int]:
    m = len(layout.preds)
    if streams == 1:
        return [0] * m
    if policy == "random":
        randrange = random.Random(seed).randrange
        return [randrange(streams) for _ in range(m)]
    if policy == "round_robin":  # the k-th launch of a level goes to stream k % streams
        first = np.flatnonzero(np.diff(layout.level, prepend=-1))
        rank = np.arange(m) - np.repeat(first, np.diff(first, append=m))
        out: list[int] = (rank % streams).tolist()
        return out
    costs: _Costs = graph._cached(("costs", fuse), lambda: _costs(layout, graph.specs))
    return _critical_path(layout.preds, costs, streams)


def _keep_streams(graph: TaskGraph, layout: _Layout, previous: Plan, streams: int
                  ) -> list[int]:
    """Stream assignment after a change (``make_plan(previous=...)``): a launch whose first
    task's spec was planned in ``previous`` keeps that task's stream; a new launch takes its
    latest predecessor's (preds are ascending: the last one was planned last), or, with no
    predecessor, the next stream round robin. Specs are matched by identity, as arrays
    (sorted ids, ``searchsorted``); only the new launches go through a Python loop."""
    kept = np.full(len(layout.tasks), -1, np.intp)  # per launch: its lead's old stream
    if previous.tasks:
        launch_stream = np.fromiter((lau.stream for lau in previous.launches), np.intp,
                                    len(previous.launches))
        task_stream = launch_stream[previous.task_launch()]  # fused members too
        ids = np.fromiter(map(id, previous.tasks), np.int64, len(previous.tasks))
        by_id = np.argsort(ids)
        sorted_ids = ids[by_id]
        lead = np.fromiter((id(graph.specs[ts[0]]) for ts in layout.tasks), np.int64,
                           len(layout.tasks))
        at = np.minimum(np.searchsorted(sorted_ids, lead), len(ids) - 1)
        kept = np.where(sorted_ids[at] == lead, task_stream[by_id[at]], -1)
    out: list[int] = kept.tolist()
    deal = 0
    for li in np.flatnonzero(kept < 0).tolist():  # the new launches, in plan order
        ps = layout.preds[li]
        if ps:
            out[li] = out[ps[-1]]
        else:
            out[li], deal = deal % streams, deal + 1
    return out


class _Costs(NamedTuple):
    """What critical_path needs of a layout besides its edges (kept by the graph)."""

    cost: list[float]  # per launch: its task's cost, or a fused launch's dearest
    rest: list[float]  # per launch: the longest path from its end to the exit
    ordered: bool  # no sum of costs can be NaN or overflow: the sums are totally ordered


def _costs(layout: _Layout, specs: Sequence[TaskSpec]) -> _Costs:
    cost = [specs[g[0]].cost if len(g) == 1 else max(specs[t].cost for t in g)
            for g in layout.tasks]
    m = len(cost)
    rest = [0.0] * m
    for li, ps in zip(range(m - 1, -1, -1), reversed(layout.preds), strict=True):
        b = rest[li] + cost[li]
        for u in ps:
            if rest[u] < b:
                rest[u] = b
    return _Costs(cost, rest, sum(map(abs, cost)) < 1e300)


def _critical_path(preds: list[tuple[int, ...]], costs: _Costs, streams: int) -> list[int]:
    """List scheduling. A launch goes to the stream that can start it first; among equal
    starts, one whose tail has the shortest path left to the exit (a finished chain), and the
    stream whose tail is its latest-finishing predecessor wins any tie, so chains along the
    critical path stay on one stream and carry no events."""
    cost, rest, ordered = costs
    m = len(preds)
    out = [0] * m
    finish = [0.0] * m
    ready = [0.0] * streams
    tail = [-1] * streams
    tail_rest = [0.0] * streams
    rs = range(streams)
    # while fresh, a heap of (ready, tail_rest, stream) over all streams: its top is the
    # stream the scan below picks when every stream is busy past a launch's earliest start
    # (only with ordered costs: a heap needs a total order)
    heap: list[tuple[float, float, int]] = []
    fresh = False
    for li, ps in enumerate(preds):
        est, crit = 0.0, -1  # earliest start; the first latest-finishing predecessor
        for u in ps:
            f = finish[u]
            if crit < 0 or f > est:
                est, crit = f, u
        if crit >= 0:
            best = out[crit]
            # crit's stream ends with crit, so it is ready at est (unless est is NaN): no
            # stream starts earlier, and crit's wins the ties
            if tail[best] == crit and ready[best] <= est:
                fresh = False
                finish[li] = ready[best] = est + cost[li]
                tail[best] = li
                tail_rest[best] = rest[li]
                out[li] = best
                continue
        if ordered:
            if not fresh:
                heap = list(zip(ready, tail_rest, rs, strict=True))
                heapify(heap)
                fresh = True
            start, _, best = heap[0]
            if start > est:  # every stream is busy past est
                finish[li] = ready[best] = end = start + cost[li]
                tail[best] = li
                tail_rest[best] = left = rest[li]
                heapreplace(heap, (end, left, best))
                out[li] = best
                continue
        fresh = False
        best, bs, br = 0, float("inf"), 0.0
        for s in rs:
            st = ready[s] if ready[s] > est else est
            if st < bs or (st == bs and tail_rest[s] < br):
                best, bs, br = s, st, tail_rest[s]
        if crit >= 0:
            cs = out[crit]
            if tail[cs] == crit and ready[cs] <= bs:
                best = cs
        start = ready[best] if ready[best] > est else est
        finish[li] = ready[best] = start + cost[li]
        tail[best] = li
        tail_rest[best] = rest[li]
        out[li] = best
    return out


def _events(
    latest_first: list[tuple[int, ...]], stream_of: list[int], streams: int
) -> tuple[list[tuple[int, ...]], list[int], list[int]]:
    """Waits per launch, the event each launch records (or -1), the launch of each event,
    from each launch's predecessors, latest first (a later wait can imply an earlier one).

    A clock is one int: for each stream ``t`` a field of ``width`` bits holding 1 + the
    id of the last launch on ``t`` known to happen before (ids are in plan order, so on one
    stream they order like positions), 0 for none; the top bit of each field is a guard,
    always 0 in a clock, that lets one subtraction compare every field at once. Clocks are
    immutable, so launches share them freely; a launch's field for its own stream is stale
    and stands for the launch itself.
    """
    m = len(latest_first)
    width = m.bit_length() + 1
    low = width - 1
    one_field = (1 << low) - 1
    field = [one_field << (width * t) for t in range(streams)]
    all_fields = sum(field)
    guard = all_fields + sum(1 << (width * t) for t in range(streams))  # top bits alone
    others = [all_fields ^ f for f in field]
    mark = [(u + 1) << (width * t) for u, t in enumerate(stream_of)]  # u in its own field
    clock = [0] * streams
    snap = [0] * m  # each launch's stream clock right after its waits
    record = [-1] * m
    recorded: list[int] = []
    waits: list[tuple[int, ...]] = [()] * m
    for v, s, ps in zip(range(m), stream_of, latest_first, strict=True):
        c = clock[s]
        w: tuple[int, ...] = ()
        for u in ps:
            t = stream_of[u]
            if t == s or c & field[t] >= mark[u]:
                continue
            # c = fieldwise max(c, snap[u]), then u in t's field. A field of
            # (c | guard) - su keeps its guard bit where c >= su; ge spreads that bit over
            # the field's value bits, d & ge is then c - su there and 0 elsewhere
            su = snap[u]
            d = (c | guard) - su
            ge = d & guard
            ge -= ge >> low
            c = (su + (d & ge)) & others[t] | mark[u]
            e = record[u]
            if e < 0:
                e = record[u] = len(recorded)
                recorded.append(u)
            w += (e,)
        if w:
            waits[v] = w
            clock[s] = c
        snap[v] = c
    return waits, record, recorded
