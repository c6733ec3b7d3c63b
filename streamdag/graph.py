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
Derived data (topological order, depths) is cached and dropped on every change.
"""

from __future__ import annotations

import heapq
import json
import numbers
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from .errors import CapacityError, ConfigError, CycleError, InvariantError, UnknownGroupError

__all__ = ["INPUT", "MAX_WIDTH", "MIN_WIDTH", "OUTPUT", "NetworkGraph", "NeuronGroup"]

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
        self._succs: dict[int, list[int]] = {INPUT: []}
        self._output = NeuronGroup(OUTPUT, self.n_classes, ())
        self._next_id = 0
        self._topo: list[int] | None = None
        self._depth: dict[int, int] | None = None

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
        if node == INPUT:
            return self.n_inputs
        return self.group(node).width

    def preds(self, node: int) -> tuple[int, ...]:
        """Ordered predecessors of a group or of the output."""
        return self.group(node).preds

    def succs(self, node: int) -> list[int]:
        """Successors of the input or of a group; ``OUTPUT`` stands for the classifier."""
        if node != INPUT and node not in self._groups:
            raise UnknownGroupError(f"no group with id {node} in the graph")
        out = list(self._succs[node])
        if node in self._output.preds:
            out.append(OUTPUT)
        return out

    def fan_in(self, node: int) -> int:
        """Number of input columns of ``node``'s weight matrix."""
        return sum(self.width(p) for p in self.preds(node))

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
        if self._depth is None:
            d = {INPUT: 0}
            for g in self.topological_order():
                d[g] = 1 + max(d[p] for p in self._groups[g].preds)
            d[OUTPUT] = 1 + max((d[p] for p in self._output.preds), default=0)
            self._depth = d
        return dict(self._depth)

    def levels(self) -> list[list[int]]:
        """Groups by depth: ``levels()[k]`` holds the groups of depth ``k + 1``, by id."""
        d = self.depths()
        n = max((d[g] for g in self._groups), default=0)
        out: list[list[int]] = [[] for _ in range(n)]
        for g in sorted(self._groups):
            out[d[g] - 1].append(g)
        return out

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
        """
        if not self._groups:
            raise InvariantError("the network has no groups")
        if self._max_groups is not None and len(self._groups) > self._max_groups:
            raise InvariantError(f"{len(self._groups)} groups exceed the cap of {self._max_groups}")
        succs: dict[int, list[int]] = {INPUT: [], **{g: [] for g in self._groups}}
        for g, grp in self._groups.items():
            if grp.id != g or not 0 <= g < self._next_id:
                raise InvariantError(
                    f"group {g}: id {grp.id} out of place (next id {self._next_id})")
            if not grp.preds:
                raise InvariantError(f"group {g} has no predecessor")
            if len(set(grp.preds)) != len(grp.preds):
                raise InvariantError(f"group {g} lists a predecessor twice: {grp.preds}")
            for p in grp.preds:
                if p not in succs or p == g:
                    raise InvariantError(f"group {g}: predecessor {node_name(p)} is not a group")
                succs[p].append(g)
        for node, lst in succs.items():
            stored = self._succs.get(node, [])
            # lst has no duplicates (checked above), so equal length + equal sets = same list
            if len(lst) != len(stored) or set(lst) != set(stored):
                raise InvariantError(f"successor index of {node_name(node)} is stale")
        sinks = [g for g in sorted(self._groups) if not succs[g]]
        if sorted(self._output.preds) != sinks:
            raise InvariantError(
                f"output is fed by {list(self._output.preds)} but the groups without "
                f"successor are {sinks}"
            )
        if len(set(self._output.preds)) != len(self._output.preds):
            raise InvariantError("output lists a predecessor twice")
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

    # ------------------------------------------------------------------ mutation primitives
    # Only streamdag.mutation calls these, inside a batch it validates and can roll back.
    def _add_group(self, width: int, preds: Iterable[int], *, born: int = 0) -> int:
        gid = self._next_id
        ps = tuple(preds)
        for p in ps:
            if p != INPUT and p not in self._groups:
                raise UnknownGroupError(f"no group with id {p} in the graph")
        self._groups[gid] = NeuronGroup(gid, _check_width(width, where=f"group {gid}"), ps, born)
        self._succs[gid] = []
        for p in ps:
            self._succs[p].append(gid)
        self._next_id += 1
        self._invalidate()
        return gid

    def _set_preds(self, node: int, preds: Iterable[int]) -> None:
        ps = tuple(preds)
        if node == OUTPUT:
            self._output = NeuronGroup(OUTPUT, self.n_classes, ps)
            self._invalidate()
            return
        old = self.group(node)
        for p in old.preds:
            self._succs[p].remove(node)
        for p in ps:
            if p != INPUT and p not in self._groups:
                raise UnknownGroupError(f"no group with id {p} in the graph")
            self._succs[p].append(node)
        self._groups[node] = NeuronGroup(node, old.width, ps, old.born)
        self._invalidate()

    def _remove_group(self, gid: int) -> None:
        grp = self.group(gid)
        if self._succs[gid]:
            raise InvariantError(f"group {gid} still has successors {self._succs[gid]}")
        for p in grp.preds:
            self._succs[p].remove(gid)
        del self._groups[gid]
        del self._succs[gid]
        self._invalidate()

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

    def _invalidate(self) -> None:
        self._topo = None
        self._depth = None

    def copy(self) -> NetworkGraph:
        """An independent copy (groups are immutable, so this is cheap)."""
        new = NetworkGraph.__new__(NetworkGraph)
        new.n_inputs, new.n_classes = self.n_inputs, self.n_classes
        new._max_groups = self._max_groups
        new._groups = dict(self._groups)
        new._succs = {k: list(v) for k, v in self._succs.items()}
        new._output = self._output
        new._next_id = self._next_id
        new._topo = self._topo
        new._depth = self._depth
        return new

    def _restore(self, other: NetworkGraph) -> None:
        """Become ``other`` (used to roll back a failed batch in place)."""
        self.__dict__.update(other.copy().__dict__)

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


def _check_width(width: object, *, where: str) -> int:
    if not isinstance(width, numbers.Integral) or isinstance(width, bool):
        raise ConfigError(f"{where}: width must be an integer, got {width!r}")
    if not MIN_WIDTH <= int(width) <= MAX_WIDTH:
        raise ConfigError(f"{where}: width {width} outside [{MIN_WIDTH}, {MAX_WIDTH}]")
    return int(width)
