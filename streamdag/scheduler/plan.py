"""Planning: from a task graph to a frozen :class:`Plan` (launches, streams, events).

Design note. Planning is pure Python and runs on every re-plan, so it is linear-ish in the
number of tasks and edges (16,384 tasks plan in tens of ms; see docs/scheduler.md):

1. **Levels.** ``level(v) = 1 + max(level(preds))``. Tasks of one level are independent,
   and sorting launches by (level, topological index) gives the *plan order*, a topological
   order every executor issues in.
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
   check against a brute-force happens-before closure.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

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
) -> Plan:
    """Plan ``graph`` onto ``streams`` streams.

    Args:
        graph: the task graph (validated here).
        streams: number of streams, at least 1.
        policy: ``"round_robin"`` (by level), ``"critical_path"`` or ``"random"``.
        fuse: merge independent tasks of the same level and fusion key into grouped launches.
        seed: seeds the ``random`` policy; plans are deterministic for a given seed.

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
        return _plan(graph, streams, policy, fuse, seed)
    finally:
        if was_enabled:
            gc.enable()


def _plan(graph: TaskGraph, streams: int, policy: str, fuse: bool, seed: int) -> Plan:
    order = graph.validate()
    specs = tuple(graph.specs)
    n = len(specs)
    succ = graph._succ

    # 1. levels and plan order
    level = [0] * n
    for u in order:
        lu = level[u] + 1
        for v in succ[u]:
            if level[v] < lu:
                level[v] = lu
    buckets: list[list[int]] = [[] for _ in range(max(level, default=0) + 1)]
    for u in order:
        buckets[level[u]].append(u)
    plan_order = [t for b in buckets for t in b]

    # 2. fusion into groups (launches), in plan order
    groups: list[list[int]] = []
    if fuse:
        open_groups: dict[object, list[int]] = {}
        cur_level = -1
        for t in plan_order:
            if level[t] != cur_level:
                open_groups = {}
                cur_level = level[t]
            key = specs[t].fusion_key
            g = open_groups.get(key) if key is not None else None
            if g is not None and len(g) < MAX_GROUP:
                g.append(t)
            else:
                g = [t]
                groups.append(g)
                if key is not None:
                    open_groups[key] = g
    else:
        groups = [[t] for t in plan_order]
    m = len(groups)
    launch_of = [0] * n
    for li, g in enumerate(groups):
        for t in g:
            launch_of[t] = li
    preds: list[list[int]] = [[] for _ in range(m)]
    for li, g in enumerate(groups):  # li ascending: every preds list comes out sorted, and
        for t in g:  # the duplicates a fused group makes are adjacent
            for v in succ[t]:
                p = preds[launch_of[v]]
                if not p or p[-1] != li:
                    p.append(li)

    # 3. stream assignment
    stream_of = _assign(groups, preds, [level[g[0]] for g in groups], specs, streams, policy, seed)

    # 4. events by vector clocks
    pos = [0] * m
    count = [0] * streams
    for li in range(m):
        s = stream_of[li]
        pos[li] = count[s]
        count[s] += 1
    # clock lists are shared between launches and never mutated once shared; a launch's
    # entry for its own stream is stale and stands for pos[launch]
    stream_clock = [[-1] * streams for _ in range(streams)]
    snap: list[list[int]] = [stream_clock[0]] * m
    event_of = [-1] * m
    events: list[EventSpec] = []
    waits: list[tuple[int, ...]] = [()] * m
    for li in range(m):
        s = stream_of[li]
        c = stream_clock[s]
        ps = preds[li]
        if ps:
            w: list[int] = []
            for u in reversed(ps):  # latest first: a later wait can imply an earlier one
                t = stream_of[u]
                pu = pos[u]
                if t == s or c[t] >= pu:
                    continue
                c = [a if a > b else b for a, b in zip(c, snap[u], strict=True)]
                c[t] = pu
                e = event_of[u]
                if e < 0:
                    e = event_of[u] = len(events)
                    events.append(EventSpec(e, u, t))
                w.append(e)
            if w:
                waits[li] = tuple(w)
                stream_clock[s] = c
        snap[li] = c

    mk = Launch._make
    launches = tuple(
        mk((li, tuple(groups[li]), stream_of[li], pos[li], tuple(preds[li]), waits[li],
            event_of[li]))
        for li in range(m)
    )
    per_stream: list[list[int]] = [[] for _ in range(streams)]
    for li in range(m):
        per_stream[stream_of[li]].append(li)
    return Plan(
        name=graph.name,
        tasks=specs,
        launches=launches,
        streams=tuple(StreamSpec(i, tuple(ls)) for i, ls in enumerate(per_stream)),
        events=tuple(events),
        policy=policy,
        seed=seed,
        fused=fuse,
    )


def _assign(
    groups: list[list[int]],
    preds: list[list[int]],
    level: list[int],
    specs: tuple[TaskSpec, ...],
    streams: int,
    policy: str,
    seed: int,
) -> list[int]:
    m = len(groups)
    if streams == 1:
        return [0] * m
    if policy == "random":
        rng = random.Random(seed)
        return [rng.randrange(streams) for _ in range(m)]
    if policy == "round_robin":
        out = [0] * m
        cur, k = -1, 0
        for li in range(m):
            if level[li] != cur:
                cur, k = level[li], 0
            out[li] = k % streams
            k += 1
        return out
    # critical_path: list scheduling. A launch goes to the stream that can start it first;
    # among equal starts, one whose tail has the shortest path left to the exit (a finished
    # chain), and the stream whose tail is its latest-finishing predecessor wins any tie, so
    # chains along the critical path stay on one stream and carry no events.
    cost = [specs[g[0]].cost if len(g) == 1 else max(specs[t].cost for t in g) for g in groups]
    rest = [0.0] * m  # longest path from a launch's end to the exit
    for li in range(m - 1, -1, -1):
        b = rest[li] + cost[li]
        for u in preds[li]:
            if rest[u] < b:
                rest[u] = b
    out = [0] * m
    finish = [0.0] * m
    ready = [0.0] * streams
    tail = [-1] * streams
    tail_rest = [0.0] * streams
    rs = range(streams)
    for li in range(m):
        est, crit = 0.0, -1
        for u in preds[li]:
            if crit < 0 or finish[u] > est:
                est, crit = finish[u], u
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
