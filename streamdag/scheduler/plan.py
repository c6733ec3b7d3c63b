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
   ``random``: seeded, for tests. All are deterministic for a given seed.
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

**Re-planning a change** (``previous=``: the CUDA backend's ``streams`` mode after a
mutation batch; tasks that stayed are the same spec objects, or specs of the same name).
Unfused, :func:`_replan` decides only what changed: the kept launches keep their order,
streams, events and waits; a new task goes right after its latest predecessor and on its
stream; the old clocks, renumbered, are checked against every edge at once (array work),
and only the edges they do not cover get a wait. Waits that a whole plan would find implied
may stay (up to ``REPLAN_WAITS`` times the last whole plan's), and a change against the old
order (an edge that would run backwards) is planned whole, keeping the streams of the tasks
that stayed. What is linear in the graph there is bookkeeping: edge arrays, renumbering,
and the :class:`Launch` records themselves (8,209 tasks: ~11 ms on the development VM, a
whole plan ~19).
"""

from __future__ import annotations

import dataclasses
import gc
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from heapq import heapify, heapreplace
from itertools import chain, repeat
from typing import Any, Literal, NamedTuple

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
    # what a re-plan reads (see _memo): each launch's clock after its waits as _events made
    # them (packed ints, field width) in a whole plan, the arrays a re-plan made in one
    memo: Any = dataclasses.field(default=None, repr=False, compare=False)

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
            tasks that stayed are the same :class:`TaskSpec` objects or specs of the same
            name (the CUDA backend's ``streams`` mode after a mutation batch). Only what
            changed is planned (see "Re-planning a change" above): kept tasks keep their
            order, stream and waits; a new one goes right after its latest predecessor,
            on its stream (a chain that grew keeps to one stream, with no event), or, with
            none, first and round robin; only edges the old plan does not already order
            get a wait. ``policy`` places nothing then. Fused, or for a change against
            the old order, the order and events are made whole and only the streams kept.
            Ignored on another number of streams.

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
        if previous is None or previous.num_streams != streams or not previous.launches:
            return _plan(graph, streams, policy, fuse, seed, None)
        if not (fuse or previous.fused):
            plan = _replan(graph, previous)
            if plan is not None:
                return plan
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
    if previous is not None:
        stream_of = _keep_streams(graph, layout, previous, streams)
    else:
        stream_of = _assign(graph, layout, fuse, streams, policy, seed)

    # the narrowest dtype: numpy sorts 8- and 16-bit integers stably by radix
    stream_array = np.array(stream_of, dtype=np.min_scalar_type(streams - 1))

    # 4. events by vector clocks; none where every edge stays on its stream
    if (stream_array[producer] != stream_array[consumer]).any():
        waits, record, recorded, clocks = _events(latest_first, stream_of, streams)
    else:  # no launch knows of another stream: every clock 0
        waits, record, recorded, clocks = [()] * m, [-1] * m, [], ([0] * m, 8)

    by_stream, per_stream, position = _positions(stream_array, streams)
    return _assemble(graph, (ids, tasks, stream_of, position.tolist(), preds, waits, record),
                     recorded, by_stream, per_stream, policy=policy, seed=seed, fused=fuse,
                     memo=clocks)


def _positions(stream_array: np.ndarray, streams: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(launches by stream, launches per stream, each launch's position on its stream): a
    stable sort by stream keeps plan order within each stream."""
    by_stream = np.argsort(stream_array, kind="stable")
    per_stream = np.bincount(stream_array, minlength=streams)
    position = np.empty(len(stream_array), np.intp)
    position[by_stream] = np.arange(len(stream_array)) - np.repeat(
        np.cumsum(per_stream) - per_stream, per_stream)
    return by_stream, per_stream, position


def _assemble(graph: TaskGraph, fields: tuple[Sequence[Any], ...], event_launch: list[int],
              by_stream: np.ndarray, per_stream: np.ndarray, *, policy: str, seed: int,
              fused: bool, memo: Any) -> Plan:
    """The plan of ``graph``: launches from their ``fields`` (per launch, in
    :class:`Launch`'s order), event ``i`` recorded after launch ``event_launch[i]``."""
    # tuple.__new__(cls, fields) is what NamedTuple._make does, less its length check
    launches = tuple(map(tuple.__new__, repeat(Launch), zip(*fields, strict=True)))
    stream_of = fields[2]
    events = tuple(map(tuple.__new__, repeat(EventSpec), zip(
        range(len(event_launch)), event_launch, map(stream_of.__getitem__, event_launch),
        strict=True)))
    return Plan(
        name=graph.name,
        tasks=tuple(graph.specs),
        launches=launches,
        streams=tuple(map(StreamSpec, range(len(per_stream)),
                          _split(by_stream.tolist(), per_stream))),
        events=events,
        policy=policy,
        seed=seed,
        fused=fused,
        memo=memo,
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


def _match(previous: Plan, specs: Sequence[TaskSpec]) -> np.ndarray:
    """For each of ``specs``, the index of the very same spec object among ``previous``'s
    tasks, or -1 (as arrays: sorted ids and ``searchsorted``, no per-task dict)."""
    if not previous.tasks:
        return np.full(len(specs), -1, np.intp)
    ids = np.fromiter(map(id, previous.tasks), np.int64, len(previous.tasks))
    by_id = np.argsort(ids)
    sorted_ids = ids[by_id]
    ours = np.fromiter(map(id, specs), np.int64, len(specs))
    at = np.minimum(np.searchsorted(sorted_ids, ours), len(ids) - 1)
    out: np.ndarray = np.where(sorted_ids[at] == ours, by_id[at], -1)
    return out


def _match_names(previous: Plan, specs: Sequence[TaskSpec], old_task: np.ndarray) -> None:
    """:func:`_match`'s result, in place, plus the specs that replace a task of
    ``previous`` of the same name (a new spec for new arguments, e.g. a size)."""
    unmatched = np.flatnonzero(old_task < 0).tolist()
    if unmatched:
        gone = np.ones(len(previous.tasks), bool)
        gone[old_task[old_task >= 0]] = False
        names = {previous.tasks[t].name: t for t in np.flatnonzero(gone).tolist()}
        for t in unmatched:
            old_task[t] = names.get(specs[t].name, -1)


def _keep_streams(graph: TaskGraph, layout: _Layout, previous: Plan, streams: int
                  ) -> list[int]:
    """Stream assignment after a change that :func:`_replan` could not place: a launch
    whose first task's spec (or one of its name) was planned in ``previous`` keeps that
    task's stream; a new launch takes its latest predecessor's (preds are ascending: the
    last one was planned last), or, with no predecessor, the next stream round robin. Only
    the new launches go through a Python loop."""
    launch_stream = np.fromiter((lau.stream for lau in previous.launches), np.intp,
                                len(previous.launches))
    task_stream = launch_stream[previous.task_launch()]  # fused members too
    leads = [graph.specs[ts[0]] for ts in layout.tasks]
    was = _match(previous, leads)
    _match_names(previous, leads, was)
    kept = np.where(was >= 0, task_stream[was], -1)
    out: list[int] = kept.tolist()
    deal = 0
    for li in np.flatnonzero(kept < 0).tolist():  # the new launches, in plan order
        ps = layout.preds[li]
        if ps:
            out[li] = out[ps[-1]]
        else:
            out[li], deal = deal % streams, deal + 1
    return out


#: A re-plan keeps waits that a whole plan might find implied; once they pass this many
#: times the last whole plan's (plus 16), the graph is planned whole again.
REPLAN_WAITS = 1.25
_KEY = 1 << 20  # order keys of a re-plan: a kept launch's old id times this, new ones between


class _Memo(NamedTuple):
    """A plan as arrays, per launch: what a re-plan reads of the plan before it."""

    task: np.ndarray  # its (first) task
    stream: np.ndarray
    record: np.ndarray  # its event, or -1
    waits: np.ndarray  # its waits (tuples, an object array)
    clocks: np.ndarray  # (launches, streams): its clock after its waits, 1 + launch ids
    base: int  # the waits of the last whole plan these re-plans started from


def _memo(plan: Plan) -> _Memo:
    """``plan``'s :class:`_Memo`: kept by a re-plan, made here from a whole plan."""
    if isinstance(plan.memo, _Memo):
        return plan.memo
    launches, m, s = plan.launches, len(plan.launches), plan.num_streams
    snap, width = plan.memo  # cut the packed clocks apart: their fields are whole bytes
    nbytes = width // 8
    raw = b"".join(c.to_bytes(s * nbytes, "little") for c in snap)
    clocks = np.frombuffer(raw, f"<u{nbytes}").reshape(m, s).astype(np.intp)
    waits = np.fromiter((lau.waits for lau in launches), object, m)
    return _Memo(np.fromiter((lau.tasks[0] for lau in launches), np.intp, m),
                 np.fromiter((lau.stream for lau in launches), np.intp, m),
                 np.fromiter((lau.record for lau in launches), np.intp, m),
                 waits, clocks, sum(map(len, waits)))


def _replan(graph: TaskGraph, previous: Plan, max_waits: float = REPLAN_WAITS
            ) -> Plan | None:
    """``make_plan(previous=...)`` for an unfused plan: what changed is placed, the rest
    kept; or None where the change does not fit the old plan (the caller plans whole).

    A task whose spec is another of the same name (new arguments) counts as kept.

    - **Order.** The kept tasks keep their order; a new task goes right after its latest
      predecessor (new tasks taken in a topological order of their own edges), or first
      with none. If an edge then runs backwards (a new edge against the old order) this
      gives up.
    - **Streams.** A kept task keeps its stream; a new one takes its latest predecessor's,
      or with none the next stream round robin.
    - **Events.** Every wait of a kept launch stays, so what the old plan ordered stays
      ordered. A removed launch hands its waits on to the next kept launch on its stream,
      and a wait on its event becomes a wait on those waits' events and on one recorded
      after the kept launch before it on its stream (everything it was ordered after). The
      old clocks, renumbered, then still hold for the kept launches (they may know less than
      is true, never more), so every edge is checked against them at once (array work) and
      only the edges they do not cover are walked as :func:`_events` walks them. Waits that
      a whole plan would find implied may stay, up to ``max_waits`` times the last whole
      plan's (then this gives up).
    """
    n, m_old, streams = len(graph.specs), len(previous.launches), previous.num_streams
    if graph._pending or not n:
        return None
    succ = graph._succ
    out_degree = np.fromiter(map(len, succ), np.intp, n)
    targets = np.fromiter(chain.from_iterable(succ), np.intp, int(out_degree.sum()))
    sources = np.repeat(np.arange(n), out_degree)

    # 1. order keys (kept: old id * _KEY) and streams, per task
    memo = _memo(previous)
    launch_of = np.empty(len(previous.tasks), np.intp)
    launch_of[memo.task] = np.arange(m_old)
    old_task = _match(previous, graph.specs)
    _match_names(previous, graph.specs, old_task)
    kept = old_task >= 0
    was = np.where(kept, launch_of[old_task], -1)  # per task: its old launch, or -1
    key: list[int] = (was * _KEY).tolist()
    stream_of: list[int] = np.where(kept, memo.stream[was], -1).tolist()
    new = np.flatnonzero(~kept).tolist()
    if len(new) >= _KEY:
        return None
    if new and not _place_new(new, kept, sources, targets, key, stream_of, streams):
        return None  # a cycle among the new tasks: the whole plan names it
    order = np.argsort(np.asarray(key, np.int64), kind="stable")
    pos = np.empty(n, np.intp)  # each task's launch
    pos[order] = np.arange(n)
    producer, consumer = pos[sources], pos[targets]
    if (producer >= consumer).any():
        return None

    # 2. launches: ids are positions in the new order
    m = n
    stream_array = np.asarray(stream_of, np.intp)[order]
    launch_stream: list[int] = stream_array.tolist()
    edge = consumer.astype(np.int64) * m + producer
    edge.sort()
    consumer, producer = np.divmod(edge, m)
    preds = _split(producer.tolist(), np.bincount(consumer, minlength=m))
    by_stream, per_stream, position = _positions(stream_array, streams)
    stream_start = np.cumsum(per_stream) - per_stream

    # 3. events, first what the removed launches leave behind
    new_of = np.full(m_old, -1, np.intp)  # per old launch: its new id, or -1 if removed
    new_of[was[kept]] = pos[kept]
    alive_old = np.flatnonzero(new_of >= 0)
    record = np.full(m, -1, np.intp)  # per launch: its event (old ids, new ones appended)
    record[new_of[alive_old]] = memo.record[alive_old]
    event_stream: list[int] = memo.stream[[e.launch for e in previous.events]].tolist()
    waits = np.empty(m, object)  # per launch: its waits (old event ids)
    waits[:] = [()]
    waits[new_of[alive_old]] = memo.waits[alive_old]
    changed: dict[int, list[int]] = {}  # per launch whose waits change: the new ones

    def event_after(li: int) -> int:
        if record[li] < 0:
            record[li] = len(event_stream)
            event_stream.append(launch_stream[li])
        return int(record[li])

    kept_before = np.full(m_old, -1, np.intp)  # per old launch: the nearest kept one at or
    subst: dict[int, list[int]] = {}  # before it on its stream; a removed launch's event ->
    new_of_list: list[int] = new_of.tolist()  # the events that replace it
    for spec in previous.streams:
        ids = np.asarray(spec.launches, np.intp)
        alive = new_of[ids] >= 0
        at = np.maximum.accumulate(np.where(alive, np.arange(len(ids)), -1))
        kept_before[ids] = np.where(at >= 0, new_of[ids[np.maximum(at, 0)]], -1)
        if alive.all():
            continue
        carry: list[int] = []
        last = -1
        for x in spec.launches:
            li = new_of_list[x]
            if li >= 0:
                if carry:  # handed on to the next kept launch
                    changed[li], carry = carry + list(waits[li]), []
                last = li
                continue
            carry = carry + list(memo.waits[x])
            e = int(memo.record[x])
            if e >= 0:
                subst[e] = carry + ([event_after(last)] if last >= 0 else [])

    def resolve(es: Iterable[int]) -> list[int]:  # events of removed launches replaced
        out: list[int] = []
        for e in es:
            out += resolve(subst[e]) if e in subst else [e]  # earlier events: it ends
        return out

    if subst:
        lengths = np.fromiter(map(len, waits), np.intp, m)
        flat = np.fromiter(chain.from_iterable(waits), np.intp, int(lengths.sum()))
        hit = np.zeros(len(event_stream), bool)
        hit[list(subst)] = True
        for li in _owners(lengths, hit[flat]):
            changed.setdefault(li, list(waits[li]))
    for li, es in changed.items():
        changed[li] = resolve(es)

    # the old clocks, renumbered (a field naming a removed launch names the kept one
    # before it on its stream); new launches' are made below
    clocks = np.zeros((m, streams), np.intp)
    renumber = np.concatenate([[0], kept_before + 1])
    clocks[new_of[alive_old]] = renumber[memo.clocks[alive_old]]
    fresh = np.zeros(m, bool)
    fresh[pos[~kept]] = True
    p_stream = stream_array[producer]
    uncovered = (p_stream != stream_array[consumer]) & (clocks[consumer, p_stream] <= producer)
    walk = fresh.copy()
    walk[consumer[uncovered]] = True
    for v in np.flatnonzero(walk).tolist():
        s = launch_stream[v]
        if fresh[v] and position[v]:  # it knows what the launch before it on s knew
            before = int(by_stream[stream_start[s] + position[v] - 1])
            clocks[v] = clocks[before]
            clocks[v, s] = before + 1
        c = clocks[v]
        for u in reversed(preds[v]):  # latest first, as _events
            t = launch_stream[u]
            if t == s or c[t] > u:
                continue
            np.maximum(c, clocks[u], out=c)
            c[t] = u + 1
            if v not in changed:
                changed[v] = list(waits[v])
            changed[v].append(event_after(u))

    # 4. waits made final (no repeats, none on the waiter's own stream); events numbered
    # anew without those of removed launches and those nobody waits on any more
    for li, es in changed.items():
        s = launch_stream[li]
        waits[li] = tuple(e for e in dict.fromkeys(es) if event_stream[e] != s)
    lengths = np.fromiter(map(len, waits), np.intp, m)
    if lengths.sum() > max_waits * memo.base + 16:
        return None  # past the bound on implied waits kept: plan whole again
    flat = np.fromiter(chain.from_iterable(waits), np.intp, int(lengths.sum()))
    used = np.zeros(len(event_stream), bool)
    used[flat] = True
    has = record >= 0
    record[has] = np.where(used[record[has]], record[has], -1)
    # ids stay where they can: an event past the new count takes the place of one gone
    recorded = np.flatnonzero(record >= 0)  # launches, in plan order
    k = len(recorded)
    alive_e = np.zeros(len(event_stream), bool)
    alive_e[record[recorded]] = True
    holes = np.flatnonzero(~alive_e[:k])
    movers = np.flatnonzero(alive_e[k:]) + k
    if len(movers):
        lookup = np.arange(len(event_stream))
        lookup[movers] = holes
        for li in _owners(lengths, lookup[flat] != flat):
            waits[li] = tuple(lookup[list(waits[li])].tolist())
        record[recorded] = lookup[record[recorded]]
    by_event = np.empty(k, np.intp)
    by_event[record[recorded]] = recorded
    return _assemble(graph, (range(m), list(zip(order.tolist())), launch_stream,
                             position.tolist(), preds, waits.tolist(), record.tolist()),
                     by_event.tolist(), by_stream, per_stream, policy=previous.policy,
                     seed=previous.seed, fused=False,
                     memo=_Memo(order, stream_array, record, waits, clocks, memo.base))


def _owners(lengths: np.ndarray, mask: np.ndarray) -> list[int]:
    """The launches (ascending) that own an item of ``mask``, the items of per-launch
    lists of ``lengths`` laid end to end."""
    owner = np.zeros(len(lengths), bool)
    owner[np.repeat(np.arange(len(lengths)), lengths)[mask]] = True
    out: list[int] = np.flatnonzero(owner).tolist()
    return out


def _place_new(new: list[int], kept: np.ndarray, sources: np.ndarray, targets: np.ndarray,
               key: list[int], stream_of: list[int], streams: int) -> bool:
    """Order keys and streams of the new tasks, in place (see :func:`_replan`); False if
    the new tasks' own edges have a cycle. The latest kept predecessor of each is found by
    array work; only edges between new tasks go through Python."""
    into_new = ~kept[targets]
    src, dst = sources[into_new], targets[into_new]
    keys = np.asarray(key, np.int64)
    from_kept = kept[src]
    best = np.full(len(key), -1, np.int64)  # per new task: its latest kept predecessor
    if from_kept.any():
        ks, kd = src[from_kept], dst[from_kept]
        by = np.lexsort((keys[ks], kd))  # by task, then key: the last of a run is latest
        last = np.flatnonzero(np.diff(kd[by], append=-1) != 0)
        best[kd[by][last]] = ks[by][last]
    latest: list[int] = best.tolist()
    after: dict[int, list[int]] = {v: [] for v in new}
    preds_new: dict[int, list[int]] = {v: [] for v in new}
    for u, v in zip(src[~from_kept].tolist(), dst[~from_kept].tolist(), strict=True):
        after[u].append(v)
        preds_new[v].append(u)
    waiting = {v: len(preds_new[v]) for v in new}
    ready = [v for v in new if not waiting[v]]
    deal = 0
    # Kahn over the new tasks (the list grows while it is walked); the given-th key goes
    # after every key given before it in its latest predecessor's slot
    for given, v in enumerate(ready, start=1):
        lp = latest[v]
        for u in preds_new[v]:
            if lp < 0 or key[u] > key[lp]:
                lp = u
        if lp >= 0:
            key[v] = key[lp] - key[lp] % _KEY + given
            stream_of[v] = stream_of[lp]
        else:
            key[v] = -_KEY + given
            stream_of[v], deal = deal % streams, deal + 1
        for w in after[v]:
            waiting[w] -= 1
            if not waiting[w]:
                ready.append(w)
    return len(ready) == len(new)


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
) -> tuple[list[tuple[int, ...]], list[int], list[int], tuple[list[int], int]]:
    """Waits per launch, the event each launch records (or -1), the launch of each event,
    from each launch's predecessors, latest first (a later wait can imply an earlier one);
    and each launch's clock right after its waits with the field width (for a re-plan,
    :func:`_memo`).

    A clock is one int: for each stream ``t`` a field of ``width`` bits (1, 2, 4 or 8
    bytes, so that _memo can cut them apart as numpy integers) holding 1 + the id of the
    last launch on ``t`` known to happen before (ids are in plan order, so on one stream
    they order like positions), 0 for none; the top bit of each field is a guard, always 0
    in a clock, that lets one subtraction compare every field at once. Clocks are
    immutable, so launches share them freely; a launch's field for its own stream is stale
    and stands for the launch itself.
    """
    m = len(latest_first)
    width = 8
    while width <= m.bit_length():  # 1, 2, 4 or 8 whole bytes: a numpy integer each
        width *= 2
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
    return waits, record, recorded, (snap, width)
