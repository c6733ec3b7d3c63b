"""The structure of a generalized network: a DAG of neuron groups.

Design note
-----------
A :class:`NetworkGraph` holds the *structure* only; parameters live in
:class:`~streamdag.params.ParamStore`. Nodes are integer ids:

* ``INPUT`` (``-1``): the network input, width = number of features;
* ``OUTPUT`` (``-2``): the linear classifier, width = number of classes;
* groups: ids ``0, 1, 2, …`` in creation order, never reused.

Every node except the input has an *ordered* predecessor list ``P(g)``; its weight matrix
``W_g`` has one block of columns per predecessor, in that order (``fan_in = Σ width(p)``).
The output's predecessors are exactly the groups with no other successor, kept in that
order; :meth:`NetworkGraph.validate` checks this and every other invariant of DESIGN.md.

The graph changes only through the private ``_add_group``/``_set_preds``/``_remove_group``
primitives that :mod:`streamdag.mutation` calls inside an atomic batch; users read it.

Batches: ``_begin`` opens one; each primitive then logs the records it is about to change
(first change wins) and every edge it drops. ``_rollback`` puts the logged records back;
``_validate_batch`` checks only what the batch touched. That check is equivalent to
:meth:`NetworkGraph.validate` — it accepts exactly the graphs ``validate`` accepts — because
the graph was valid when the batch began (every way to build a graph validates it, and every
batch is validated or rolled back) and records the batch did not touch are as they were.

Derived data is cached. The topological order is dropped on every change and recomputed on
demand. The *flow order* (:meth:`NetworkGraph.flow_order`), another topological order, survives
a batch: ``_validate_batch`` inserts each new group right after the last of its predecessors
and checks every edge into a touched group against the new order, which proves the graph
acyclic in time proportional to the batch (duplications and prunes always pass: a copy sits
between its original's predecessors and successors, a prune's successors read groups from
before it). Depths survive a batch too, as lower bounds with the touched groups kept as
seeds, when no depth can have decreased (see ``_depths_can_only_grow``: duplications and new
edges); the first reader repairs them by propagating increases from the seeds (other
batches, prunes and removed edges, recompute them). When the flow order did not prove the
batch acyclic, ``_validate_batch`` runs that repair itself, which proves it or names the
cycle. So a batch that passes the flow check costs no depth work until someone asks for
depths: the persistent CUDA step runs in the flow order and asks for none. The repair works
on the map in place (a batch touches a few of thousands of entries), so graphs never share a
depth map, and a rollback after a repair drops it instead of restoring it. Per-id numpy columns
(width, predecessors) are refreshed for the ids changed since they were last read, so that
:meth:`NetworkGraph.level_arrays` — what the kernels' tables are built from — costs numpy
operations, not a Python loop over every group.
"""

from __future__ import annotations

import heapq
import json
import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple

import networkx as nx
import numpy as np

from .errors import CapacityError, ConfigError, CycleError, InvariantError, UnknownGroupError

__all__ = [
    "INPUT", "MAX_WIDTH", "MIN_WIDTH", "OUTPUT", "LevelArrays", "NetworkGraph", "NeuronGroup",
]

INPUT = -1
OUTPUT = -2
MIN_WIDTH = 1
MAX_WIDTH = 1024

_SPECIAL = {INPUT: "input", OUTPUT: "output"}


def node_name(node: int) -> str:
    """``"input"``, ``"output"`` or ``"g<id>"``."""
    return _SPECIAL.get(node, f"g{node}")


@dataclass(frozen=True)
class NeuronGroup:
    """One dense+ReLU group (or the output layer, which has no ReLU).

    Attributes:
        id: the node id (``OUTPUT`` for the classifier).
        width: number of neurons.
        preds: ordered predecessor ids; ``W`` has one column block per entry.
        born: the training step at which the group was created.
    """

    id: int
    width: int
    preds: tuple[int, ...]
    born: int = 0


@dataclass(frozen=True)
class LevelArrays:
    """The groups as int64 arrays, level by level: by depth, then by id (``levels()`` flat).

    Attributes:
        ids: group ids in that order.
        level_sizes: how many groups each level holds (``len(levels()[k])``).
        width: each group's width.
        n_preds: each group's number of predecessors.
        preds: the predecessor lists (``INPUT`` = -1), in each group's order, concatenated.
    """

    ids: np.ndarray
    level_sizes: np.ndarray
    width: np.ndarray
    n_preds: np.ndarray
    preds: np.ndarray


class NetworkGraph:
    """A DAG of neuron groups between one input and one output.

    Args:
        n_inputs: width of the network input.
        n_classes: width of the output (number of classes).
        max_groups: the global cap on the number of groups (``None``: no cap).

    Example:
        >>> g = NetworkGraph.chain(n_inputs=4, n_classes=3, widths=[8, 8])
        >>> g.group_ids(), g.output.preds
        ([0, 1], (1,))
        >>> g.validate()
    """

    def __init__(self, n_inputs: int, n_classes: int, *, max_groups: int | None = None) -> None:
        if n_inputs < 1 or n_classes < 2:
            raise ConfigError(
                f"a network needs n_inputs >= 1 and n_classes >= 2, got {n_inputs}, {n_classes}"
            )
        if max_groups is not None and max_groups < 1:
            raise CapacityError(f"max_groups must be >= 1, got {max_groups}")
        self.n_inputs = int(n_inputs)
        self.n_classes = int(n_classes)
        self._max_groups = max_groups
        self._groups: dict[int, NeuronGroup] = {}
        # the width of the input and of every group (mirrors _groups): sums of widths over
        # the output's hundreds of predecessors run in C, as map(_widths.__getitem__, …)
        self._widths: dict[int, int] = {INPUT: self.n_inputs}
        self._succs: dict[int, list[int]] = {INPUT: []}
        self._output = NeuronGroup(OUTPUT, self.n_classes, ())
        self._next_id = 0
        self._batch: _Batch | None = None
        self._topo: list[int] | None = None
        self._depth: dict[int, int] | None = None
        # the groups touched by batches since _depth was exact (it then holds lower bounds),
        # and whether one of them removed a group; see _depth_map
        self._depth_seeds: list[int] = []
        self._depth_removed = False
        self._flow: _Flow | None = None
        self._columns: _Columns | None = None
        self._dirty: set[int] = set()  # ids whose record changed since _columns last saw them
        #: counts changes to the structure (a rolled-back batch counts too): a reader that saw
        #: this graph at some version sees the same structure while the version is the same
        self.version = 0
        # (preds, frozenset(preds)) for the output's last two predecessor tuples; see _set_of
        self._output_sets: list[tuple[tuple[int, ...], frozenset[int]]] = []

    # ------------------------------------------------------------------ construction
    @classmethod
    def chain(
        cls, *, n_inputs: int, n_classes: int, widths: Sequence[int],
        max_groups: int | None = None,
    ) -> NetworkGraph:
        """A plain layered network: input → g0 → g1 → … → output."""
        g = cls(n_inputs, n_classes, max_groups=max_groups)
        prev = INPUT
        for w in widths:
            prev = g._add_group(w, (prev,))
        g._rewire_output()
        g.validate()
        return g

    @classmethod
    def from_edges(
        cls, *, n_inputs: int, n_classes: int, widths: Sequence[int],
        preds: Sequence[Sequence[int]], max_groups: int | None = None,
    ) -> NetworkGraph:
        """Groups ``0..n-1`` with the given widths and predecessor lists (``INPUT`` = -1).

        The output is wired to every group without a successor. Raises a
        :class:`~streamdag.errors.GraphError` subclass for a malformed description.
        """
        if len(widths) != len(preds):
            raise ConfigError(f"{len(widths)} widths but {len(preds)} predecessor lists")
        g = cls(n_inputs, n_classes, max_groups=max_groups)
        for i, (w, ps) in enumerate(zip(widths, preds, strict=True)):
            for p in ps:
                if p != INPUT and not 0 <= p < len(widths):
                    raise UnknownGroupError(f"group {i}: predecessor {p} is not a group")
            g._groups[i] = NeuronGroup(i, _check_width(w, where=f"group {i}"), tuple(ps))
            g._widths[i] = g._groups[i].width
            g._succs[i] = []
        g._next_id = len(widths)
        for i, ps in enumerate(preds):
            for p in ps:
                g._succs[p].append(i)
        g._invalidate()
        g.topological_order()  # raises CycleError before anything else is inspected
        g._rewire_output()
        g.validate()
        return g

    # ------------------------------------------------------------------ reading
    @property
    def max_groups(self) -> int | None:
        """The cap on the number of groups, or ``None``."""
        return self._max_groups

    def set_max_groups(self, cap: int | None) -> None:
        """Change the cap; refuses a cap below the current number of groups."""
        if cap is not None and cap < max(1, len(self._groups)):
            raise CapacityError(
                f"max_groups={cap} is below the current size of {len(self._groups)} groups"
            )
        self._max_groups = cap

    @property
    def next_id(self) -> int:
        """The id the next created group will get."""
        return self._next_id

    @property
    def output(self) -> NeuronGroup:
        """The classifier node."""
        return self._output

    def __len__(self) -> int:
        return len(self._groups)

    def __contains__(self, node: object) -> bool:
        return node in self._groups

    def __iter__(self) -> Iterator[NeuronGroup]:
        return iter(self._groups.values())

    def group_ids(self) -> list[int]:
        """Ids of all groups, in creation order."""
        return sorted(self._groups)

    def group(self, gid: int) -> NeuronGroup:
        """The group ``gid`` (``OUTPUT`` gives the classifier)."""
        if gid == OUTPUT:
            return self._output
        try:
            return self._groups[gid]
        except KeyError:
            raise UnknownGroupError(f"no group with id {gid} in the graph") from None

    def width(self, node: int) -> int:
        """Width of a group, of the input or of the output."""
        w = self._widths.get(node)
        return self.group(node).width if w is None else w  # (the output, or raises)

    def preds(self, node: int) -> tuple[int, ...]:
        """Ordered predecessors of a group or of the output."""
        return self.group(node).preds

    def succs(self, node: int) -> list[int]:
        """Successors of the input or of a group; ``OUTPUT`` stands for the classifier."""
        if node != INPUT and node not in self._groups:
            raise UnknownGroupError(f"no group with id {node} in the graph")
        out = list(self._succs[node])
        if self._feeds_output(node):
            out.append(OUTPUT)
        return out

    def _feeds_output(self, node: int) -> bool:
        """``node in self.output.preds``, without scanning the output's hundreds of preds."""
        return node in self._set_of(self._output.preds)

    def _set_of(self, preds: tuple[int, ...]) -> frozenset[int]:
        """``frozenset(preds)``, kept for the last two tuples asked for: the output's
        predecessors as a set, wanted several times between changes (and the batch check
        wants the tuple of ``_begin`` too)."""
        for tup, fs in self._output_sets:
            if tup is preds:
                return fs
        fs = frozenset(preds)
        self._output_sets = [(preds, fs), *self._output_sets[:1]]
        return fs

    def fan_in(self, node: int) -> int:
        """Number of input columns of ``node``'s weight matrix."""
        return self._width_sum(self.preds(node))

    def weight_shape(self, node: int) -> tuple[int, int]:
        """``(width(node), fan_in(node))``: the shape of ``node``'s weight matrix."""
        grp = self._groups.get(node)
        if grp is None:
            grp = self.group(node)  # the output, or raises
        return grp.width, self._width_sum(grp.preds)

    def _width_sum(self, nodes: Iterable[int]) -> int:
        """Total width of ``nodes`` (groups or the input)."""
        return sum(map(self._widths.__getitem__, nodes))  # every one exists: primitives see to it

    def column_offsets(self, node: int) -> dict[int, int]:
        """Where each predecessor's block of columns starts in ``node``'s weight matrix."""
        offs, c = {}, 0
        for p in self.preds(node):
            offs[p] = c
            c += self.width(p)
        return offs

    def topological_order(self) -> list[int]:
        """Group ids so that every group comes after its predecessors (ties by id)."""
        if self._topo is None:
            indeg = {g: sum(1 for p in grp.preds if p != INPUT) for g, grp in self._groups.items()}
            ready = sorted(g for g, d in indeg.items() if d == 0)
            order: list[int] = []
            heapq.heapify(ready)
            while ready:
                g = heapq.heappop(ready)
                order.append(g)
                for s in self._succs[g]:
                    indeg[s] -= 1
                    if indeg[s] == 0:
                        heapq.heappush(ready, s)
            if len(order) != len(self._groups):
                stuck = sorted(set(self._groups) - set(order))[:8]
                raise CycleError(f"the graph has a cycle through groups {stuck}")
            self._topo = order
        return list(self._topo)

    def depths(self) -> dict[int, int]:
        """Longest-path depth of every node: input 0, a group 1 + max over predecessors."""
        return dict(self._depth_map())

    def _depth_map(self) -> dict[int, int]:
        """The cached depths (not a copy: only a repair changes it in place, and tells the
        columns), repaired first if batches left seeds; raises CycleError.

        From scratch: Kahn's algorithm a level at a time: a group becomes ready in the round
        after its deepest predecessor, so the round is its depth (no heap: the order within
        a round does not matter).
        """
        if self._depth is not None and self._depth_seeds:
            self._repair_depths()
        if self._depth is None:
            d = {INPUT: 0}
            waiting = {g: len(grp.preds) for g, grp in self._groups.items()}
            frontier, depth = [INPUT], 0
            while frontier:
                depth += 1
                ready = []
                for n in frontier:
                    for s in self._succs[n]:
                        waiting[s] -= 1
                        if not waiting[s]:
                            d[s] = depth
                            ready.append(s)
                frontier = ready
            if len(d) != len(self._groups) + 1:
                stuck = sorted(set(self._groups) - set(d))[:8]
                raise CycleError(f"the graph has a cycle through groups {stuck}")
            d[OUTPUT] = 1 + max((d[p] for p in self._output.preds), default=0)
            self._depth, self._depth_seeds, self._depth_removed = d, [], False
        return self._depth

    def depth_bound(self, *, compute: bool = False) -> int | None:
        """A lower bound on the output's depth (1 + the deepest group's), known without
        computing any depth: exact unless batches since the depths were last read left them
        to repair. ``None`` when no depths are known — unless ``compute``: then they are
        computed, and the bound is exact."""
        if self._depth is None:
            return self._depth_map()[OUTPUT] if compute else None
        return self._depth[OUTPUT]

    def flow_order(self) -> np.ndarray:
        """Group ids in a topological order that mutation batches keep (read-only).

        Level order (by depth, then id) when first computed; a batch then inserts each group
        it creates right after the last of its predecessors (see the module note), so a
        reader that needs only some topological order — the persistent CUDA step — needs no
        depths after a batch. Recomputed in level order when a batch fails the check.
        """
        if self._flow is None:
            ids = self.level_arrays().ids
            ids.flags.writeable = False
            pos = np.full(self._next_id, -1, np.int64)
            pos[ids] = np.arange(len(ids))
            self._flow = _Flow(ids, pos)
        return self._flow.ids

    def flow_arrays(self) -> LevelArrays:
        """:meth:`level_arrays` in :meth:`flow_order`, as one level (``level_sizes`` holds
        the group count): what the persistent CUDA step's tables are built from."""
        ids = self.flow_order()
        sizes = np.array([len(ids)] if len(ids) else [], np.intp)
        return _arrays_of(ids, self._fresh_columns(), sizes)

    def levels(self) -> list[list[int]]:
        """Groups by depth: ``levels()[k]`` holds the groups of depth ``k + 1``, by id."""
        arrays = self.level_arrays()
        ids = arrays.ids.tolist()
        ends = np.cumsum(arrays.level_sizes).tolist()
        return [ids[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]

    def level_arrays(self) -> LevelArrays:
        """:meth:`levels` with widths and predecessor lists, as numpy arrays (see LevelArrays).

        Built from per-id columns that only the groups changed since the last call update.
        """
        cols = self.id_columns()
        depth = cols.depth
        ids = np.flatnonzero(cols.alive)  # by id; a stable sort by depth keeps that in ties
        key = depth[ids]
        if len(cols.alive) <= 1 << 16:  # a depth <= groups < len(alive): radix-sorted 16 bits
            key = key.astype(np.uint16)
        ids = ids[np.argsort(key, kind="stable")]
        return _arrays_of(ids, cols, np.bincount(depth[ids])[1:])

    def id_columns(self, *, depths: bool = True) -> _Columns:
        """The per-id columns brought up to date, ``depth`` synced with the graph's depths:
        ``alive[id]``, ``width[id]``, ``depth[id]`` and the predecessors ``pool[start[id] :
        start[id] + count[id]]`` (int64; ``pool`` holds garbage between runs). For readers
        that hand them on as they are (the CUDA backend uploads them to build its tables on
        the device). Read-only, and valid until the next change.

        Args:
            depths: sync ``depth`` (``False``: leave it as it is, and compute no depth).
        """
        cols = self._fresh_columns()
        if depths:
            cols.sync_depths(self._depth_map())
        return cols

    def _fresh_columns(self) -> _Columns:
        cols = self._columns
        if cols is None or not cols.update(self._groups, self._dirty, self._next_id):
            cols = self._columns = _Columns(self._groups, self._next_id)
        self._dirty.clear()
        return cols

    def edges(self) -> Iterator[tuple[int, int]]:
        """Every edge ``(pred, node)``, the output's included."""
        for g in self.group_ids():
            for p in self._groups[g].preds:
                yield p, g
        for p in self._output.preds:
            yield p, OUTPUT

    def to_networkx(self) -> nx.DiGraph:
        """A networkx view (a copy) with ``width`` on every node and ``slot`` on every edge."""
        G = nx.DiGraph()
        G.add_node(INPUT, width=self.n_inputs, name="input")
        for grp in self._groups.values():
            G.add_node(grp.id, width=grp.width, name=node_name(grp.id))
        G.add_node(OUTPUT, width=self.n_classes, name="output")
        for node in [*self.group_ids(), OUTPUT]:
            for slot, p in enumerate(self.preds(node)):
                G.add_edge(p, node, slot=slot)
        return G

    def to_dot(self) -> str:
        """Graphviz DOT text: one box per group labelled with id and width."""
        lines = ["digraph network {", "  rankdir=LR;", "  node [shape=box, fontsize=10];"]
        lines.append(f'  "input" [shape=ellipse, label="input\\n{self.n_inputs}"];')
        lines.append(f'  "output" [shape=ellipse, label="output\\n{self.n_classes}"];')
        for g in self.group_ids():
            lines.append(f'  "g{g}" [label="g{g}\\n{self._groups[g].width}"];')
        lines += [f'  "{node_name(p)}" -> "{node_name(n)}";' for p, n in self.edges()]
        lines.append("}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ invariants
    def validate(self) -> None:
        """Check every invariant; raise :class:`InvariantError` naming the first broken one.

        Acyclic; one input, one output; every group reachable from the input and reaching the
        output; predecessor lists without duplicates naming existing nodes; the output fed by
        exactly the groups with no other successor; successor lists consistent; ids below
        ``next_id``; group count within the cap. (Weight shapes are checked by
        :meth:`ParamStore.validate <streamdag.params.ParamStore.validate>`.)

        This is the definition; a mutation batch is checked by the equivalent, incremental
        ``_validate_batch``.
        """
        self._check_size()
        succs: dict[int, list[int]] = {INPUT: [], **{g: [] for g in self._groups}}
        for g, grp in self._groups.items():
            self._check_record(g)
            for p in grp.preds:
                succs[p].append(g)
        for node, lst in succs.items():
            self._check_succs(node, lst)
        self._check_output({g for g, lst in succs.items() if not lst and g != INPUT})
        try:
            order = self.topological_order()
        except CycleError as exc:
            raise InvariantError(str(exc)) from None
        reach = {INPUT}
        for g in order:
            if any(p in reach for p in self._groups[g].preds):
                reach.add(g)
        unreached = sorted(set(self._groups) - reach)
        if unreached:
            raise InvariantError(f"groups {unreached[:8]} are not reachable from the input")
        # Every group reaches a sink in a DAG, and every sink feeds the output (checked above).

    def _check_size(self) -> None:
        if not self._groups:
            raise InvariantError("the network has no groups")
        if self._max_groups is not None and len(self._groups) > self._max_groups:
            raise InvariantError(f"{len(self._groups)} groups exceed the cap of {self._max_groups}")

    def _check_record(self, g: int) -> None:
        """Group ``g``'s own record: id in place, predecessors non-empty, distinct, existing."""
        grp = self._groups[g]
        if grp.id != g or not 0 <= g < self._next_id:
            raise InvariantError(f"group {g}: id {grp.id} out of place (next id {self._next_id})")
        if not grp.preds:
            raise InvariantError(f"group {g} has no predecessor")
        if len(set(grp.preds)) != len(grp.preds):
            raise InvariantError(f"group {g} lists a predecessor twice: {grp.preds}")
        for p in grp.preds:
            if p == g or (p != INPUT and p not in self._groups):
                raise InvariantError(f"group {g}: predecessor {node_name(p)} is not a group")

    def _check_succs(self, node: int, want: list[int]) -> None:
        """The stored successor list of ``node`` holds exactly ``want`` (which has no repeats)."""
        stored = self._succs.get(node, [])
        if len(want) != len(stored) or set(want) != set(stored):
            raise InvariantError(f"successor index of {node_name(node)} is stale")

    def _check_output(self, sinks: AbstractSet[int]) -> None:
        """The output is fed by exactly ``sinks``, the groups without successor, once each."""
        out = self._output.preds
        fed = self._set_of(out)
        if fed != sinks:
            raise InvariantError(f"output is fed by {list(out)} but the groups without "
                                 f"successor are {sorted(sinks)}")
        if len(fed) != len(out):
            raise InvariantError("output lists a predecessor twice")

    # ------------------------------------------------------------------ mutation batches
    # streamdag.mutation changes the graph only between _begin and _commit/_rollback, through
    # the primitives below, and calls _validate_batch before it commits.
    def _begin(self) -> None:
        if self._batch is not None:
            raise RuntimeError("a graph batch is already open")
        seeds = self._depth_seeds
        self._batch = _Batch(self._output, self._next_id, self._topo, self._depth, self._flow,
                             seeds, len(seeds), self._depth_removed)

    def _commit(self) -> None:
        self._open_batch()
        self._batch = None

    def _rollback(self) -> None:
        """Undo every primitive call since :meth:`_begin`."""
        b = self._open_batch()
        for gid, grp in b.groups.items():
            if grp is None:
                self._groups.pop(gid, None)
                self._widths.pop(gid, None)
            else:
                self._groups[gid] = grp
                self._widths[gid] = grp.width
            self._dirty.add(gid)
        if b.order is not None:  # a removed group came back: restore the iteration order too
            self._groups = {g: self._groups[g] for g in b.order if g in self._groups}
        for node, lst in b.succs.items():
            if lst is None:
                self._succs.pop(node, None)
            else:
                self._succs[node] = lst
        self._output, self._next_id = b.output, b.next_id
        # A map a repair changed in place is not the one of _begin any more: drop it.
        self._topo, self._flow = b.topo, b.flow
        if b.depth_changed or b.depth is None:
            self._depth, self._depth_seeds = None, []
        else:
            self._depth, self._depth_seeds, self._depth_removed = b.depth, b.seeds, b.removed
            del b.seeds[b.n_seeds:]
        self._batch = None
        self.version += 1

    def _open_batch(self) -> _Batch:
        if self._batch is None:
            raise RuntimeError("no graph batch is open")
        return self._batch

    def _validate_batch(self) -> set[int]:
        """:meth:`validate`, checking only what the open batch touched; repairs the depths.

        Given that the graph was valid at :meth:`_begin` (see the module note), a record the
        batch did not touch still satisfies every local invariant, so it is enough to check
        the touched groups' records, the successor lists of every node a touched group
        names (or named), the output against the sinks among those nodes, and acyclicity,
        which the depth repair proves. Reachability from the input needs no check: in a DAG
        where every group has a predecessor, following predecessors always ends there.

        Returns:
            the groups the batch created, rewired or removed, with ``OUTPUT`` if its
            predecessors changed: the nodes whose weight shapes may have changed.
        """
        b = self._open_batch()
        self._check_size()
        touched, saved, groups, succs = b.groups, b.succs, self._groups, self._succs
        listing: dict[int, list[int]] = {}  # node -> the touched groups that list it now
        for g in touched:
            grp = groups.get(g)
            if grp is None:
                continue
            self._check_record(g)
            for p in grp.preds:
                if p in listing:
                    listing[p].append(g)
                else:
                    listing[p] = [g]
        nodes = {*touched, *saved, *listing}
        for old in touched.values():
            if old is not None:
                nodes.update(old.preds)
        for n in nodes:
            before = saved[n] if n in saved else succs.get(n)
            kept = [s for s in before if s not in touched] if before else []  # untouched
            if n == INPUT or n in groups:
                want = kept + listing[n] if n in listing else kept
                if want != succs[n]:  # the same list in the same order passes at once
                    self._check_succs(n, want)
            elif kept:
                raise InvariantError(f"group {kept[0]}: predecessor {node_name(n)} is not a group")
        sinks = set(self._set_of(b.output.preds))
        sinks.difference_update(nodes)
        sinks.update(n for n in nodes if n in groups and not succs[n])
        self._check_output(sinks)
        if (b.depth is not None and not b.depth_changed
                and self._depths_can_only_grow(b)):  # lower bounds now, with seeds
            self._depth, self._depth_seeds = b.depth, b.seeds
            self._depth_removed = b.removed
            b.seeds += touched
            if b.order is not None:  # a removed sink can lower the output: bound it again
                self._depth_removed = b.depth_changed = True
                d = b.depth
                d[OUTPUT] = 1 + max([d.get(p, 1) for p in self._output.preds], default=0)
        else:
            self._depth, self._depth_seeds = None, []
        self._flow = None if b.flow is None else self._flow_after(b)
        if self._flow is None:  # not proven acyclic: the depths prove it or name the cycle
            try:
                self._depth_map()
            except CycleError as exc:
                raise InvariantError(str(exc)) from None
        changed = set(touched)
        if self._output.preds != b.output.preds:
            changed.add(OUTPUT)
        return changed

    def _flow_after(self, b: _Batch) -> _Flow | None:
        """The flow order after the batch, or ``None`` if it could not be kept.

        Each group the batch created goes right after the last of its predecessors, as a
        float key between that one's key and the key that followed it; old groups keep
        their positions as keys. Created groups are placed once their predecessors are (one
        may read a group created after it). The new order is topological if every
        predecessor of every touched group comes before it — untouched groups kept their
        predecessors and positions — which proves the graph acyclic. ``None`` when it is not
        (the batch rewired more than duplications and prunes do), when created groups read
        each other in a cycle, or when one gap was split too often for a float.
        """
        assert b.flow is not None
        old_ids, pos = b.flow
        groups, first_new = self._groups, b.next_id
        key: dict[int, float] = {INPUT: -1.0}
        after: dict[int, float] = {INPUT: 0.0}  # the key after a node's, once a group went there
        created = [g for g, rec in b.groups.items() if rec is None and g in groups]
        todo = created
        while todo:
            waiting = []
            for g in todo:
                k0, last = -2.0, INPUT
                for p in groups[g].preds:
                    k = key.get(p)
                    if k is None:
                        if p >= first_new:  # created, not placed yet
                            waiting.append(g)
                            break
                        k = float(pos[p])
                    if k > k0:
                        k0, last = k, p
                else:
                    k1 = after.get(last, k0 + 1.0)  # an old group's key is its position
                    k = (k0 + k1) * 0.5
                    if not k0 < k < k1:
                        return None
                    key[g] = after[last] = k
                    after[g] = k1
            if len(waiting) == len(todo):
                return None
            todo = waiting
        for g in b.groups:
            grp = groups.get(g)
            if grp is None:
                continue
            kg = key[g] if g >= first_new else pos[g]
            for p in grp.preds:
                if not (key[p] if p >= first_new or p == INPUT else pos[p]) < kg:
                    return None
        ids = old_ids
        if created:
            created.sort(key=key.__getitem__)
            at = [math.floor(key[g]) + 1 for g in created]  # before that old position
            ids = np.insert(ids, at, created)
        if b.order is not None:  # groups were removed
            gone = [g for g in b.groups if g < first_new and g not in groups]
            ids = ids[~np.isin(ids, gone)]
        new_pos = np.full(self._next_id, -1, np.int64)
        new_pos[ids] = np.arange(len(ids))
        ids.flags.writeable = False
        return _Flow(ids, new_pos)

    def _repair_depths(self) -> None:
        """Bring the depth map up to date from the seeds that batches left; raises
        CycleError if the graph has a cycle (when no flow order proved it acyclic).

        The map then holds lower bounds (no depth can have decreased), and raising them
        along every edge until each edge ``p → s`` has ``depth[s] > depth[p]`` reaches the
        longest-path depths (the least values with that property); every edge that changed
        ends at a seed. Raises travel level by level: a group raised to ``v`` is looked at
        with the others of level ``v``, so it is usually looked at once — twice when a
        predecessor of the same level raises it after its look, which two waves of raises
        through one region (two depth duplications on one long path) do to most of it.
        Looking at a large level by id avoids most of that: ids follow creation, and a group
        is mostly created after its predecessors.

        Reaching the end proves the graph acyclic; a cycle would raise forever, so past
        ``2 * len(self)`` looks it gives up and drops the map (``_depth_map`` recomputes it,
        and names the cycle) — a look costs about half of what a recomputation spends per
        group, so the repair is the cheaper until then.

        The repair changes the map in place: copying a map as large as the graph cost more
        than the repair of a typical batch. It tells the columns where (or, giving up, that
        their mirror is stale) and an open batch that its map changed.
        """
        d = self._depth
        assert d is not None
        touched, removed = dict.fromkeys(self._depth_seeds), self._depth_removed
        self._depth_seeds, self._depth_removed = [], False
        if self._batch is not None and d is self._batch.depth:
            self._batch.depth_changed = True
        groups = self._groups
        seeds: dict[int, list[int]] = {}  # level -> touched groups starting there
        changed: list[int] = []
        for g in touched:
            grp = groups.get(g)
            if grp is None:
                d.pop(g, None)
                continue
            v = max(d.get(g, 1), 1 + max([d.get(p, 0) for p in grp.preds]))
            d[g] = v
            if v in seeds:
                seeds[v].append(g)
            else:
                seeds[v] = [g]
        succs, budget = self._succs, 2 * len(groups)
        frontier: list[int] = []  # groups raised to `level` (or touched there)
        level = 0
        while frontier or seeds:
            if not frontier:
                level = min(seeds)
            frontier += seeds.pop(level, [])
            changed += frontier
            budget -= len(frontier)
            if budget < 0:
                self._depth = None
                if self._columns is not None and self._columns.depth_of is d:
                    self._columns.depth_of = None  # changed without telling: copy it whole
                return
            if len(frontier) >= 8:  # (small levels seldom hold an edge: not worth a sort)
                frontier.sort()
            up, raised = level + 1, []
            for g in frontier:
                if d[g] == level:  # else raised again since, and looked at from there
                    for s in succs[g]:
                        if d[s] < up:
                            d[s] = up
                            raised.append(s)
            frontier, level = raised, up
        if not removed:
            # The output reads the sinks (checked by each batch) and the deepest group is a
            # sink, so its depth is 1 + the greatest group depth. With no group removed,
            # every group kept its depth or was raised, and the last level the raises reached
            # is one past the greatest raised depth: no need to look up the depths of the
            # output's hundreds of predecessors (scattered in the map: ~30 us at M).
            d[OUTPUT] = max(d[OUTPUT], level)
        else:
            d[OUTPUT] = 1 + max(map(d.__getitem__, self._output.preds), default=0)
        if self._columns is not None:
            self._columns.depths_moved(d, d, changed)

    def _depths_can_only_grow(self, b: _Batch) -> bool:
        """Whether every group's depth is at least what it was before the batch.

        True when every edge ``p → s`` the batch dropped, ``s`` still a group, is back or
        bypassed: some predecessor ``q`` of ``s`` now reads ``p`` (a depth duplication
        replaces ``g → s`` by ``g → g' → s``). Then every path of the old graph that
        ends at a group maps to a path at least as long in the new one — a group on it
        cannot have been removed, since its last edge out would have been dropped without a
        bypass — so no longest path got shorter.
        """
        for p, s in b.dropped:
            grp = self._groups.get(s)
            if grp is None or p in grp.preds:
                continue
            if not any(q != INPUT and p in self._groups[q].preds for q in grp.preds):
                return False
        return True

    # ------------------------------------------------------------------ mutation primitives
    # Only streamdag.mutation calls these, inside a batch it validates and can roll back.
    def _add_group(self, width: int, preds: Iterable[int], *, born: int = 0) -> int:
        gid = self._next_id
        ps = tuple(preds)
        self._check_exist(ps)
        if type(width) is not int or not MIN_WIDTH <= width <= MAX_WIDTH:  # skip the slow check
            width = _check_width(width, where=f"group {gid}")
        grp = _group(gid, width, ps, born)
        self._log(gid, (gid, *ps))
        self._groups[gid] = grp
        self._widths[gid] = width
        self._succs[gid] = []
        for p in ps:
            self._succs[p].append(gid)
        self._next_id += 1
        self._changed(gid)
        return gid

    def _set_preds(self, node: int, preds: Iterable[int]) -> None:
        ps = tuple(preds)
        if node == OUTPUT:
            self._output = _group(OUTPUT, self.n_classes, ps, 0)
            self._invalidate()
            return
        groups, succs = self._groups, self._succs
        old = groups.get(node) or self.group(node)  # (raises for an unknown node)
        self._check_exist(ps)
        if self._batch is not None:
            self._log(node, (*old.preds, *ps))
            self._batch.dropped += [(p, node) for p in old.preds if p not in ps]
        for p in old.preds:
            succs[p].remove(node)
        for p in ps:
            succs[p].append(node)
        groups[node] = _group(node, old.width, ps, old.born)
        self._changed(node)

    def _remove_group(self, gid: int) -> None:
        grp = self.group(gid)
        if self._succs[gid]:
            raise InvariantError(f"group {gid} still has successors {self._succs[gid]}")
        self._log(gid, (gid, *grp.preds))
        if self._batch is not None and self._batch.order is None:
            self._batch.order = list(self._groups)
        for p in grp.preds:
            self._succs[p].remove(gid)
        del self._groups[gid]
        del self._widths[gid]
        del self._succs[gid]
        self._changed(gid)

    def _check_exist(self, preds: tuple[int, ...]) -> None:
        groups = self._groups
        for p in preds:
            if p not in groups and p != INPUT:
                raise UnknownGroupError(f"no group with id {p} in the graph")

    def _log(self, gid: int, succ_lists: Iterable[int]) -> None:
        """In a batch: remember ``gid``'s record and the successor lists of ``succ_lists``
        as they were at :meth:`_begin` (the first change of each wins)."""
        b = self._batch
        if b is None:
            return
        if gid not in b.groups:
            b.groups[gid] = self._groups.get(gid)
        saved, succs = b.succs, self._succs
        for n in succ_lists:
            if n not in saved:
                lst = succs.get(n)
                saved[n] = None if lst is None else lst.copy()

    def _rewire_output(self) -> list[int]:
        """Make the output read exactly the sinks: keep the survivors' order, append new ones.

        Returns the new predecessor list.
        """
        sinks = {g for g in self._groups if not self._succs[g]}
        kept = [p for p in self._output.preds if p in sinks]
        new = sorted(sinks - set(kept))
        preds = kept + new
        if tuple(preds) != self._output.preds:
            self._set_preds(OUTPUT, preds)
        return preds

    def _changed(self, gid: int) -> None:
        self._dirty.add(gid)
        self.version += 1
        self._topo = self._depth = self._flow = None  # _invalidate, inlined: called often

    def _invalidate(self) -> None:
        self._topo = self._depth = self._flow = None
        self.version += 1

    def copy(self) -> NetworkGraph:
        """An independent copy (groups are immutable, so this is cheap); no open batch."""
        new = NetworkGraph(self.n_inputs, self.n_classes, max_groups=self._max_groups)
        new._groups = dict(self._groups)
        new._widths = dict(self._widths)
        new._succs = {k: list(v) for k, v in self._succs.items()}
        new._output = self._output
        new._next_id = self._next_id
        new._topo = self._topo  # replaced, never changed in place: share it
        new._depth = None if self._depth is None else dict(self._depth)  # a repair changes it
        new._depth_seeds, new._depth_removed = list(self._depth_seeds), self._depth_removed
        new._flow = self._flow  # replaced, never changed in place: share it
        return new

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description; :meth:`from_dict` inverts it exactly."""
        return {
            "n_inputs": self.n_inputs,
            "n_classes": self.n_classes,
            "max_groups": self._max_groups,
            "next_id": self._next_id,
            "groups": [[g.id, g.width, list(g.preds), g.born] for g in self._groups.values()],
            "output_preds": list(self._output.preds),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkGraph:
        """Rebuild a graph from :meth:`to_dict`; raises GraphError if it is inconsistent."""
        try:
            g = cls(int(data["n_inputs"]), int(data["n_classes"]), max_groups=data["max_groups"])
            for gid, width, preds, born in data["groups"]:
                g._groups[int(gid)] = NeuronGroup(
                    int(gid), _check_width(int(width), where=f"group {gid}"),
                    tuple(int(p) for p in preds), int(born),
                )
                g._widths[int(gid)] = g._groups[int(gid)].width
                g._succs[int(gid)] = []
            for grp in g._groups.values():
                for p in grp.preds:
                    if p not in g._succs:
                        raise UnknownGroupError(f"group {grp.id}: unknown predecessor {p}")
                    g._succs[p].append(grp.id)
            out_preds = tuple(int(p) for p in data["output_preds"])
            g._output = NeuronGroup(OUTPUT, g.n_classes, out_preds)
            g._next_id = int(data["next_id"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvariantError | UnknownGroupError):
                raise
            raise InvariantError(f"malformed graph description: {exc!r}") from None
        g.validate()
        return g

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NetworkGraph) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n_levels = len(self.levels()) if self._groups else 0
        return (
            f"NetworkGraph(groups={len(self)}, levels={n_levels}, inputs={self.n_inputs}, "
            f"classes={self.n_classes}, max_groups={self._max_groups})"
        )


def _group(gid: int, width: int, preds: tuple[int, ...], born: int) -> NeuronGroup:
    """``NeuronGroup(gid, width, preds, born)``, the same object, for the mutation primitives:
    the generated frozen ``__init__`` sets each field through ``object.__setattr__``, which
    costs three times as much."""
    grp = object.__new__(NeuronGroup)
    grp.__dict__.update(id=gid, width=width, preds=preds, born=born)
    return grp


def _check_width(width: object, *, where: str) -> int:
    if not isinstance(width, numbers.Integral) or isinstance(width, bool):
        raise ConfigError(f"{where}: width must be an integer, got {width!r}")
    if not MIN_WIDTH <= int(width) <= MAX_WIDTH:
        raise ConfigError(f"{where}: width {width} outside [{MIN_WIDTH}, {MAX_WIDTH}]")
    return int(width)


def _arrays_of(ids: np.ndarray, cols: _Columns, level_sizes: np.ndarray) -> LevelArrays:
    """The groups ``ids``, in that order, with their widths and predecessors from ``cols``."""
    n_preds = cols.count[ids]
    first = np.cumsum(n_preds) - n_preds  # where each group's run starts in `preds`
    at = np.repeat(cols.start[ids] - first, n_preds) + np.arange(int(n_preds.sum()))
    return LevelArrays(ids=ids, level_sizes=level_sizes, width=cols.width[ids],
                       n_preds=n_preds, preds=cols.pool[at])


class _Flow(NamedTuple):
    """A flow order: the ids (read-only) and each id's position in it (-1: none), by id up to
    the next id when it was made. Replaced, never changed in place: graphs share it."""

    ids: np.ndarray
    pos: np.ndarray


@dataclass
class _Batch:
    """An open mutation batch: what the graph was at ``_begin`` wherever the batch changed it.

    Attributes:
        output, next_id, topo, depth, flow: the output record, next id and caches at
            ``_begin``.
        seeds, n_seeds, removed: the graph's list of depth seeds at ``_begin``, its length
            then, and whether the batches that left them removed a group.
        depth_changed: whether a repair has changed ``depth`` in place (a rollback then
            drops the depth cache instead of restoring it).
        groups: every id whose record changed, with the record at ``_begin`` (``None``: the
            batch created it).
        succs: every node whose successor list changed, with a copy of that list at
            ``_begin`` (``None``: the batch created it).
        dropped: every edge ``(pred, node)`` a ``_set_preds`` call removed, in order.
        order: the ids in iteration order, saved by the first removal (a rollback re-inserts
            removed groups and must not move them to the end).
    """

    output: NeuronGroup
    next_id: int
    topo: list[int] | None
    depth: dict[int, int] | None
    flow: _Flow | None
    seeds: list[int]
    n_seeds: int
    removed: bool
    depth_changed: bool = False
    groups: dict[int, NeuronGroup | None] = field(default_factory=dict)
    succs: dict[int, list[int] | None] = field(default_factory=dict)
    dropped: list[tuple[int, int]] = field(default_factory=list)
    order: list[int] | None = None


class _Columns:
    """Per-id numpy copies of the group records, for readers that vectorise over groups.

    ``alive[id]``, ``width[id]``, ``depth[id]``, and the predecessors ``pool[start[id] :
    start[id] + count[id]]``. :meth:`update` rewrites the ids whose record changed: a changed
    predecessor list is appended to the pool and its old run left as garbage. When the pool
    or the id range is full it refuses, and the graph builds new columns (twice the size):
    the garbage and the cost of rebuilding stay proportional to what changed.

    ``depth`` mirrors one depth map, ``depth_of``: a map the graph computed from scratch
    is copied whole; when the batch check repairs the mirrored map (in place), only where
    the repair set it (:meth:`depths_moved`). A map a repair changed without telling (one
    that gave up, or was rolled back) is never the graph's map again, so it is copied whole.
    """

    def __init__(self, groups: dict[int, NeuronGroup], next_id: int) -> None:
        n = len(groups)
        ids = np.fromiter(groups, np.int64, n)
        counts = np.fromiter((len(g.preds) for g in groups.values()), np.int64, n)
        n_preds = int(counts.sum())
        size = 2 * max(next_id, 8)
        self.alive = np.zeros(size, bool)
        self.width = np.zeros(size, np.int64)
        self.start = np.zeros(size, np.int64)
        self.count = np.zeros(size, np.int64)
        self.pool = np.zeros(2 * max(n_preds, 64), np.int64)
        self.depth = np.zeros(size, np.int64)
        self.depth_of: dict[int, int] | None = None
        self.depth_stale: list[int] = []  # ids whose depth differs from depth_of's
        self.alive[ids] = True
        self.width[ids] = np.fromiter((g.width for g in groups.values()), np.int64, n)
        self.start[ids] = np.cumsum(counts) - counts
        self.count[ids] = counts
        self.pool[:n_preds] = np.fromiter(
            chain.from_iterable(g.preds for g in groups.values()), np.int64, n_preds)
        self.top = n_preds

    def update(self, groups: dict[int, NeuronGroup], dirty: Iterable[int], next_id: int) -> bool:
        """Rewrite the ``dirty`` ids from ``groups``; ``False`` if these columns are full."""
        if next_id > len(self.alive):
            return False
        for gid in dirty:
            grp = groups.get(gid)
            if grp is None:  # removed, or created by a batch that was rolled back
                if gid < len(self.alive):
                    self.alive[gid] = False
                continue
            k = len(grp.preds)
            if self.top + k > len(self.pool):
                return False
            self.pool[self.top : self.top + k] = grp.preds
            self.alive[gid] = True
            self.width[gid] = grp.width
            self.start[gid] = self.top
            self.count[gid] = k
            self.top += k
        return True

    def depths_moved(self, old: dict[int, int] | None, new: dict[int, int],
                     changed: list[int]) -> None:
        """The graph's depth map went from ``old`` to ``new`` (the same map, repaired in
        place), which differ at ``changed``."""
        if old is not None and self.depth_of is old:
            self.depth_of = new
            self.depth_stale += changed

    def sync_depths(self, d: dict[int, int]) -> np.ndarray:
        """``depth``, made to mirror the map ``d``."""
        if self.depth_of is not d or 4 * len(self.depth_stale) > len(d):  # copy it whole
            nodes = np.fromiter(d.keys(), np.int64, len(d))
            is_group = nodes >= 0
            self.depth[nodes[is_group]] = np.fromiter(d.values(), np.int64, len(d))[is_group]
        elif self.depth_stale:
            stale = [g for g in self.depth_stale if g in d]  # removed groups left the map
            self.depth[stale] = [d[g] for g in stale]
        self.depth_of, self.depth_stale = d, []
        return self.depth
