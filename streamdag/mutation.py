"""Structural changes to a network, queued during an iteration and applied between them.

Design note
-----------
A :class:`Mutation` is a small frozen record naming the group it acts on. The trainer (or a
user) pushes mutations onto a :class:`MutationQueue` at any time; :meth:`MutationQueue.apply`
runs the whole batch between two iterations, in order, as one transaction:

1. open a batch on the graph and on the parameters (:meth:`ParamStore.begin`);
2. apply each mutation to the graph and the parameters;
3. validate both — only where the batch touched them: the graph's incremental check accepts
   exactly what ``graph.validate()`` accepts, and ``params.validate(graph, changed=…)``
   checks the weight shapes of the nodes the batch changed (see the design notes of
   :mod:`streamdag.graph` and :mod:`streamdag.params`), so a batch costs what it touches, not
   the size of the network;
4. commit — or, on any error, roll the graph and the parameters back and re-raise the error
   (its message names the mutation), so nothing is half-applied.

What each kind does (DESIGN.md is the contract):

* :class:`DuplicateDepth` ``g``: insert ``g'`` between ``g`` and all its successors with
  ``W = I, b = 0``. Since ``h_g ≥ 0``, ``ReLU(h_g) = h_g``: the function is unchanged.
* :class:`DuplicateWidth` ``g``: add a sibling ``g''`` with ``g``'s predecessors, weights and
  bias; every successor's columns for ``g`` are halved and copied for ``g''`` (momentum
  likewise). Exactly function-preserving unless ``noise > 0`` perturbs ``W_g''`` to break the
  symmetry between the twins.
* :class:`Prune` ``g``: remove ``g`` and its columns from its successors. A successor left
  without input takes over ``g``'s predecessors (with zero weights); a predecessor left
  without successor feeds the output (zero weights). Exact when ``g`` is dead (``h_g = 0``).
* :class:`Connect` ``src → dst``: a new edge with zero weights; refused if it would close a
  cycle. If ``src`` fed the output, it stops (the output reads only groups without another
  successor), which changes the function by the output's columns for ``src``.
* :class:`Disconnect` ``src → dst``: removes an edge (and its columns); refused if ``dst``
  would lose its last input.

New groups start with zero momentum; survivors keep theirs (moved with their columns).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .errors import (
    CapacityError,
    CycleError,
    GraphError,
    MutationError,
    OrphanError,
    StreamDagError,
    UnknownGroupError,
)
from .graph import INPUT, OUTPUT, NetworkGraph, node_name
from .params import ParamOp, ParamStore

__all__ = [
    "Connect",
    "Disconnect",
    "DuplicateDepth",
    "DuplicateWidth",
    "Mutation",
    "MutationQueue",
    "MutationReport",
    "Prune",
    "apply_mutations",
]


@dataclass(frozen=True)
class Mutation:
    """Base class of the structural changes; ``kind`` names it in logs and checkpoints."""

    kind: ClassVar[str] = "mutation"
    adds_group: ClassVar[bool] = False

    def to_dict(self) -> dict[str, int | str]:
        return {"kind": self.kind, **self.__dict__}

    @staticmethod
    def from_dict(d: dict[str, int | str]) -> Mutation:
        kinds = {c.kind: c for c in (DuplicateDepth, DuplicateWidth, Prune, Connect, Disconnect)}
        args = {k: int(v) for k, v in d.items() if k != "kind"}
        try:
            return kinds[str(d["kind"])](**args)
        except (KeyError, TypeError) as exc:
            raise MutationError(f"not a mutation: {d!r} ({exc})") from None


@dataclass(frozen=True)
class DuplicateDepth(Mutation):
    """Insert an identity copy of ``group`` between it and its successors."""

    kind: ClassVar[str] = "depth"
    adds_group: ClassVar[bool] = True
    group: int


@dataclass(frozen=True)
class DuplicateWidth(Mutation):
    """Add a Net2Net-wider twin of ``group``."""

    kind: ClassVar[str] = "width"
    adds_group: ClassVar[bool] = True
    group: int


@dataclass(frozen=True)
class Prune(Mutation):
    """Remove ``group``, reconnecting so that nothing is orphaned."""

    kind: ClassVar[str] = "prune"
    group: int


@dataclass(frozen=True)
class Connect(Mutation):
    """Add the edge ``src → dst`` with zero weights (``src`` may be ``INPUT``)."""

    kind: ClassVar[str] = "connect"
    src: int
    dst: int


@dataclass(frozen=True)
class Disconnect(Mutation):
    """Remove the edge ``src → dst``."""

    kind: ClassVar[str] = "disconnect"
    src: int
    dst: int


@dataclass(frozen=True)
class MutationReport:
    """What a batch did.

    Attributes:
        applied: each mutation with the id of the group it created (or ``None``).
        removed: ids of groups removed.
        param_ops: the recorded parameter changes, for a device mirror to replay.
    """

    applied: tuple[tuple[Mutation, int | None], ...] = ()
    removed: tuple[int, ...] = ()
    param_ops: tuple[ParamOp, ...] = field(default=(), repr=False)

    @property
    def created(self) -> list[int]:
        return [g for _, g in self.applied if g is not None]

    def __len__(self) -> int:
        return len(self.applied)


class MutationQueue:
    """Mutations waiting for the end of the iteration.

    Example:
        >>> import numpy as np
        >>> from streamdag.graph import NetworkGraph
        >>> from streamdag.params import ParamStore
        >>> g = NetworkGraph.chain(n_inputs=4, n_classes=3, widths=[8])
        >>> p = ParamStore.initialize(g, np.random.default_rng(0))
        >>> q = MutationQueue()
        >>> q.push(DuplicateDepth(0))
        >>> report = q.apply(g, p)
        >>> report.created, g.output.preds
        ([1], (1,))
    """

    def __init__(self) -> None:
        self._pending: list[Mutation] = []

    def push(self, *mutations: Mutation) -> None:
        for m in mutations:
            if not isinstance(m, Mutation):
                raise MutationError(f"not a Mutation: {m!r}")
            self._pending.append(m)

    def extend(self, mutations: Iterable[Mutation]) -> None:
        self.push(*mutations)

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[Mutation]:
        return iter(self._pending)

    def clear(self) -> None:
        self._pending.clear()

    def apply(
        self, graph: NetworkGraph, params: ParamStore, *, step: int = 0,
        rng: np.random.Generator | None = None, noise: float = 0.0,
    ) -> MutationReport:
        """Apply and clear the queue as one atomic batch; see :func:`apply_mutations`.

        On error the queue is cleared as well (the refused batch is not retried).
        """
        batch, self._pending = self._pending, []
        return apply_mutations(graph, params, batch, step=step, rng=rng, noise=noise)


def apply_mutations(
    graph: NetworkGraph, params: ParamStore, mutations: Iterable[Mutation], *, step: int = 0,
    rng: np.random.Generator | None = None, noise: float = 0.0,
) -> MutationReport:
    """Apply ``mutations`` in order, atomically.

    Args:
        graph, params: changed in place on success, untouched on failure.
        mutations: the batch.
        step: the training step, recorded as the new groups' birth.
        rng: draws the symmetry-breaking noise of width duplications (needed if noise > 0).
        noise: standard deviation of that noise, relative to the std of the copied weights.

    Raises:
        CycleError, OrphanError, UnknownGroupError, CapacityError, MutationError: the first
            mutation that could not be applied; nothing was changed.
    """
    batch = list(mutations)
    if noise > 0 and rng is None:
        raise MutationError("noise > 0 needs an rng")
    graph._begin()
    params.begin()
    applied: list[tuple[Mutation, int | None]] = []
    removed: list[int] = []
    try:
        for i, m in enumerate(batch):
            try:
                new = _apply_one(graph, params, m, step=step, rng=rng, noise=noise)
            except StreamDagError as exc:
                raise type(exc)(f"mutation #{i} {_describe(m)} refused: {exc}") from exc
            applied.append((m, new))
            if isinstance(m, Prune):
                removed.append(m.group)
        changed = graph._validate_batch()
        params.validate(graph, changed=changed)
    except BaseException:
        graph._rollback()
        params.rollback()
        raise
    graph._commit()
    ops = params.commit()
    return MutationReport(tuple(applied), tuple(removed), tuple(ops))


def _describe(m: Mutation) -> str:
    fields = ", ".join(f"{k}={node_name(v)}" for k, v in m.__dict__.items())
    return f"{m.kind}({fields})"


def _apply_one(
    graph: NetworkGraph, params: ParamStore, m: Mutation, *, step: int,
    rng: np.random.Generator | None, noise: float,
) -> int | None:
    if m.adds_group and graph.max_groups is not None and len(graph) + 1 > graph.max_groups:
        raise CapacityError(f"the network is at its cap of {graph.max_groups} groups")
    if isinstance(m, DuplicateDepth):
        return _duplicate_depth(graph, params, m.group, step)
    if isinstance(m, DuplicateWidth):
        return _duplicate_width(graph, params, m.group, step, rng, noise)
    if isinstance(m, Prune):
        _prune(graph, params, m.group)
        return None
    if isinstance(m, Connect):
        _connect(graph, params, m.src, m.dst)
        return None
    if isinstance(m, Disconnect):
        _disconnect(graph, params, m.src, m.dst)
        return None
    raise MutationError(f"unknown mutation kind {type(m).__name__}")


def _succ_nodes(graph: NetworkGraph, g: int) -> list[int]:
    return graph.succs(g)  # includes OUTPUT when g is a sink


def _duplicate_depth(graph: NetworkGraph, params: ParamStore, g: int, step: int) -> int:
    w = graph.group(g).width
    succs = _succ_nodes(graph, g)
    new = graph._add_group(w, (g,), born=step)
    for s in succs:
        preds = graph.preds(s)
        k = preds.index(g)  # g is listed once: slicing, not a loop over the output's hundreds
        graph._set_preds(s, (*preds[:k], new, *preds[k + 1 :]))
    params.allocate(new, w, w)
    params.set_identity(new)
    return new


def _duplicate_width(
    graph: NetworkGraph, params: ParamStore, g: int, step: int,
    rng: np.random.Generator | None, noise: float,
) -> int:
    grp = graph.group(g)
    succs = _succ_nodes(graph, g)
    new = graph._add_group(grp.width, grp.preds, born=step)
    src = params.slot(g)
    params.allocate_from(new, src.cols, src, ((0, 0, src.cols, 1.0),), src=g)
    if noise > 0:
        assert rng is not None
        params.add_noise(new, rng.standard_normal((src.rows, src.cols)), noise)
    wg = grp.width
    for s in succs:
        old_preds = graph.preds(s)
        k = old_preds.index(g)
        c = graph._width_sum(old_preds[:k])  # g's columns in W_s start here
        graph._set_preds(s, (*old_preds[: k + 1], new, *old_preds[k + 1 :]))
        old = params.slot(s)
        params.allocate_from(s, old.cols + wg, old, (  # empty runs record nothing
            (0, 0, c, 1.0), (c, c, wg, 0.5), (c + wg, c, wg, 0.5),
            (c + 2 * wg, c + wg, old.cols - c - wg, 1.0)), src=s)
    return new


def _set_preds_keeping_columns(
    graph: NetworkGraph, params: ParamStore, node: int, preds: list[int]
) -> None:
    """Give ``node`` a new predecessor list, moving each surviving block of columns along.

    Predecessors new to ``node`` get zero columns; dropped ones lose theirs.
    """
    old_offs = graph.column_offsets(node)
    old = params.slot(node)
    graph._set_preds(node, preds)
    runs: list[list[int]] = []  # [column, old column, columns] of blocks still side by side
    col = 0
    for p in preds:
        wp = graph.width(p)
        if p in old_offs:
            last = runs[-1] if runs else None
            if last and last[0] + last[2] == col and last[1] + last[2] == old_offs[p]:
                last[2] += wp  # the output's hundreds of blocks move in one copy, not hundreds
            else:
                runs.append([col, old_offs[p], wp])
        col += wp
    params.allocate_from(node, col, old, [(d, c, n, 1.0) for d, c, n in runs], src=node)


def _prune(graph: NetworkGraph, params: ParamStore, g: int) -> None:
    grp = graph.group(g)
    if len(graph) == 1:
        raise OrphanError(f"g{g} is the last group; the network cannot be empty")
    succs = _succ_nodes(graph, g)
    for s in succs:
        if s == OUTPUT:
            continue
        rest = [p for p in graph.preds(s) if p != g]
        _set_preds_keeping_columns(graph, params, s, rest or list(grp.preds))
    if OUTPUT in succs:
        rest = [p for p in graph.preds(OUTPUT) if p != g]
        _set_preds_keeping_columns(graph, params, OUTPUT, rest)
    graph._set_preds(g, [])  # detach before removal
    graph._remove_group(g)
    params.release(g)
    _reconnect_sinks(graph, params, grp.preds)
    if not graph.preds(OUTPUT):
        raise OrphanError(f"pruning g{g} would leave the output without input")


def _reconnect_sinks(graph: NetworkGraph, params: ParamStore, changed: Iterable[int]) -> None:
    """After a mutation changed the successors of the nodes ``changed``, the output reads the
    sinks again: groups that lost their last successor feed it (zero weights, appended by
    id), groups that gained one stop.

    The output read exactly the sinks before the mutation, and only the nodes in ``changed``
    can have become or stopped being one.
    """
    groups = {g for g in changed if g in graph}
    sinks = {g for g in groups if not _has_group_succ(graph, g)}
    want = [p for p in graph.preds(OUTPUT) if p in graph and (p not in groups or p in sinks)]
    want += sorted(sinks - set(want))
    if want != list(graph.preds(OUTPUT)):
        _set_preds_keeping_columns(graph, params, OUTPUT, want)


def _has_group_succ(graph: NetworkGraph, g: int) -> bool:
    return any(s != OUTPUT for s in graph.succs(g))


def _check_node(graph: NetworkGraph, node: int, *, allow_input: bool) -> None:
    if node == INPUT and allow_input:
        return
    if node not in graph:
        raise UnknownGroupError(f"no group with id {node} in the graph")


def _connect(graph: NetworkGraph, params: ParamStore, src: int, dst: int) -> None:
    _check_node(graph, src, allow_input=True)
    _check_node(graph, dst, allow_input=False)
    if src == dst:
        raise CycleError(f"g{src} cannot feed itself")
    if src in graph.preds(dst):
        raise GraphError(f"{node_name(src)} already feeds g{dst}")
    if src != INPUT and _reaches(graph, dst, src):
        raise CycleError(f"{node_name(src)} -> g{dst} would close a cycle: g{dst} already "
                         f"reaches {node_name(src)}")
    _set_preds_keeping_columns(graph, params, dst, [*graph.preds(dst), src])
    _reconnect_sinks(graph, params, [src])


def _disconnect(graph: NetworkGraph, params: ParamStore, src: int, dst: int) -> None:
    _check_node(graph, src, allow_input=True)
    _check_node(graph, dst, allow_input=False)
    preds = list(graph.preds(dst))
    if src not in preds:
        raise GraphError(f"there is no edge {node_name(src)} -> g{dst}")
    if len(preds) == 1:
        raise OrphanError(f"removing {node_name(src)} -> g{dst} would orphan g{dst}: it is "
                          "its only input")
    preds.remove(src)
    _set_preds_keeping_columns(graph, params, dst, preds)
    _reconnect_sinks(graph, params, [src])


def _reaches(graph: NetworkGraph, a: int, b: int) -> bool:
    """Whether there is a path ``a → … → b`` between groups."""
    stack, seen = [a], {a}
    while stack:
        n = stack.pop()
        if n == b:
            return True
        for s in graph.succs(n):
            if s != OUTPUT and s not in seen:
                seen.add(s)
                stack.append(s)
    return False
