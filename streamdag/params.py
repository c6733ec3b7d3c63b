"""Parameters and optimizer state of every group, in flat arenas.

Design note
-----------
One arena per tensor kind: ``weight`` and ``weight_mom`` (SGD momentum) share one layout,
``bias`` and ``bias_mom`` another. A group (or the output) owns a :class:`Slot`: an offset
into each layout plus its shape; ``W_g`` is the row-major ``(width, fan_in)`` block at
``weight[w_off : w_off + rows*cols]``. A GPU backend mirrors the arenas one-to-one and keeps
the slot table as its index table.

Allocation is a bump pointer; freeing leaves a hole. When an arena is full it grows
geometrically (×2), compacting live slots when at least half of it is holes — so most
mutations allocate nothing. Inside a batch offsets must stay put, so a batch only grows;
:meth:`ParamStore.begin` compacts first when the arena is three quarters used and half of
that is holes, which bounds an arena at about 4× its live size (400 batches of 8
duplications at M: 79 MB of arenas for 36 MB live, where only growing reached 315 MB).
:attr:`ParamStore.layout_version` counts layout changes; a compaction moves slots, and
:meth:`ParamStore.moves_since` tells a device mirror where each one went, so the mirror
moves its own (newer) values instead of re-uploading the host's.

Mutations never write into a live slot: a group whose weights change (a successor of a
width-duplicated group gets more columns) gets a *fresh* slot, and the old one is freed when
the batch commits. That makes a batch transactional at the cost of a copy:
:meth:`begin` opens a log that keeps, for each node the batch allocates or releases, its
slot as it was (a cost proportional to the batch, not to the table), :meth:`rollback` puts
those back, and after :meth:`commit` the replaced and released slots are holes. Every
change inside a batch is also recorded as a :class:`ParamOp` so a device mirror can replay
the batch without the parameters leaving the device.

While such a mirror trains, its values are newer than the host's and the host's are stale
until it writes them back. It says so in :attr:`ParamStore.values_elsewhere`; then changes
keep the layout and record their ops exactly as before (the same draws, the same op
values) but write no values into the host arenas — work the mirror does itself, and that
on the H100 hosts was ~0.2–0.4 ms of a batch of 8 duplications at M (numpy call overhead
of the column copies). An arena that grows or is compacted meanwhile is made anew with
zeros, its stale values not copied and its pages not touched until the values come back
(growing the arenas at M took ~140 ms of page faults and copies on the dev VM). The mirror
clears the flag when it writes the values back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CheckpointError, InvariantError, UnknownGroupError
from .graph import INPUT, OUTPUT, NetworkGraph, node_name

__all__ = ["ParamOp", "ParamStore", "Slot"]

_MIN_CAPACITY = 1024
_MOVES_KEPT = 8  # compactions remembered for a mirror that has not followed them yet


@dataclass(frozen=True)
class Slot:
    """Where a node's parameters live: ``rows × cols`` weights at ``w_off``, bias at ``b_off``."""

    w_off: int
    b_off: int
    rows: int
    cols: int

    @property
    def w_size(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class ParamOp:
    """One recorded change to the arenas, in the order applied.

    Kinds and fields:
        ``alloc``: ``dst`` gets a zeroed slot of ``rows × cols`` (weights, bias, momenta).
        ``free``: ``dst``'s slot is released at commit.
        ``copy_cols``: ``W[dst][:, dst_col:dst_col+ncols] = scale * W[src][:, src_col:…]``,
            and the same for the weight momentum.
        ``copy_bias``: ``b[dst] = b[src]`` and the same for the bias momentum.
        ``identity``: ``W[dst] = I``.
        ``set``: ``W[dst] = values[0]``, ``b[dst] = values[1]`` (host-provided values).
        ``add_weights``: ``W[dst] += values[0]`` (host-provided values).
        ``add_noise``: ``W[dst] += values[0] * scale * (std(W[dst]) or 1)`` — noise relative
            to the weights' own spread, which a device mirror computes from its own values.

    ``slot`` is ``dst``'s slot when the op was applied and ``src_slot`` the source's (which
    may be a slot replaced earlier in the batch): a mirror replays ops by offset, in order.
    """

    kind: str
    dst: int
    src: int | None = None
    rows: int = 0
    cols: int = 0
    dst_col: int = 0
    src_col: int = 0
    ncols: int = 0
    scale: float = 1.0
    values: tuple[np.ndarray, ...] = field(default=(), compare=False, repr=False)
    slot: Slot | None = None
    src_slot: Slot | None = None


def _op(kind: str, dst: int, src: int | None = None, rows: int = 0, cols: int = 0,
        dst_col: int = 0, src_col: int = 0, ncols: int = 0, scale: float = 1.0,
        values: tuple[np.ndarray, ...] = (), slot: Slot | None = None,
        src_slot: Slot | None = None) -> ParamOp:
    """``ParamOp(...)``, the same object, at a third of the cost: the generated frozen
    ``__init__`` sets each of the twelve fields through ``object.__setattr__`` (~2 µs), and a
    batch records dozens of ops. Same parameters, in the same order (a test checks)."""
    op = object.__new__(ParamOp)
    op.__dict__.update(kind=kind, dst=dst, src=src, rows=rows, cols=cols, dst_col=dst_col,
                       src_col=src_col, ncols=ncols, scale=scale, values=values, slot=slot,
                       src_slot=src_slot)
    return op


class ParamStore:
    """Weights, biases and their SGD momenta for every group and the output.

    Args:
        dtype: ``np.float32`` (training) or ``np.float64`` (gradient checks).
        capacity: initial number of weight elements (bias capacity scales with it).

    Example:
        >>> import numpy as np
        >>> from streamdag.graph import NetworkGraph
        >>> g = NetworkGraph.chain(n_inputs=4, n_classes=3, widths=[8])
        >>> p = ParamStore.initialize(g, np.random.default_rng(0))
        >>> p.weight(0).shape, p.weight(-2).shape
        ((8, 4), (3, 8))
    """

    def __init__(self, *, dtype: Any = np.float32, capacity: int = _MIN_CAPACITY) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"ParamStore dtype must be float32 or float64, got {self.dtype}")
        cap = max(int(capacity), _MIN_CAPACITY)
        self._w = _arena(cap, self.dtype)
        self._vw = _arena(cap, self.dtype)
        self._b = _arena(max(cap // 8, 64), self.dtype)
        self._vb = _arena(self._b.size, self.dtype)
        self._slots: dict[int, Slot] = {}
        # (w_off, b_off) by node id + 2 (the output at 0), -1 where no slot: a vectorised
        # view of _slots for the kernel tables, rebuilt lazily when the slots move wholesale
        self._offs: np.ndarray | None = None
        self._w_top = 0
        self._b_top = 0
        self.layout_version = 0
        #: the layout_version of the last compaction (the last time slots moved); versions
        #: after it only grew arenas, which a mirror can follow without the host's values
        self.moved_version = 0
        # weights and bias rows in live slots (a slot replaced in a batch counts as freed)
        self._live_w = 0
        self._live_b = 0
        # the last compactions, (layout_version after, moves), and the newest one forgotten
        self._moves: deque[tuple[int, np.ndarray]] = deque(maxlen=_MOVES_KEPT)
        self._moves_forgotten = 0
        self._txn: _Txn | None = None
        #: a device mirror owns the values (see the module's note): changes keep the layout
        #: and record their ops, and write no values into the host arenas
        self.values_elsewhere = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def initialize(
        cls, graph: NetworkGraph, rng: np.random.Generator, *, dtype: Any = np.float32
    ) -> ParamStore:
        """Fresh parameters for every node of ``graph``: He-normal weights, zero biases.

        The output layer (no ReLU) uses ``std = sqrt(1 / fan_in)``; momenta start at zero.
        """
        p = cls(dtype=dtype, capacity=2 * sum(graph.fan_in(n) * graph.width(n)
                                              for n in [*graph.group_ids(), OUTPUT]))
        for node in [*graph.topological_order(), OUTPUT]:
            p.init_random(node, graph.width(node), graph.fan_in(node), rng, relu=node != OUTPUT)
        return p

    def init_random(
        self, node: int, rows: int, cols: int, rng: np.random.Generator, *, relu: bool = True
    ) -> None:
        """Allocate ``node`` and fill it with He-normal (or LeCun for ``relu=False``) weights."""
        std = np.sqrt((2.0 if relu else 1.0) / cols)
        w = rng.standard_normal((rows, cols)) * std
        self.allocate(node, rows, cols)
        self.set_values(node, w, np.zeros(rows))

    # ------------------------------------------------------------------ reading
    def __contains__(self, node: object) -> bool:
        return node in self._slots

    def nodes(self) -> list[int]:
        """Nodes that own a slot (groups and the output)."""
        return sorted(self._slots)

    def slot(self, node: int) -> Slot:
        try:
            return self._slots[node]
        except KeyError:
            raise UnknownGroupError(f"no parameters for {node_name(node)}") from None

    def offsets(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weight and bias offsets of each of ``nodes`` (ids, ``OUTPUT`` included), at once.

        Raises:
            UnknownGroupError: a node without parameters.
        """
        offs = self.offset_table()
        idx = np.asarray(nodes, dtype=np.int64) + 2
        bad = (idx < 0) | (idx >= len(offs))
        found = offs.take(np.where(bad, 0, idx), axis=0)  # 10x faster than [idx]
        missing = bad | (found[:, 0] < 0)
        if missing.any():
            self.slot(int(idx[np.argmax(missing)]) - 2)  # raises, naming the node
        return found[:, 0], found[:, 1]

    def offset_table(self) -> np.ndarray:
        """``(w_off, b_off)`` of every node by id + 2 (the output at row 0), ``-1`` where a
        node has no slot, int64: for a device mirror that looks offsets up itself. The
        store's own table, not a copy: read it before the next change."""
        if self._offs is None:
            offs = np.full((max(self._slots, default=0) + 3, 2), -1, dtype=np.int64)
            for node, sl in self._slots.items():
                offs[node + 2] = (sl.w_off, sl.b_off)
            self._offs = offs
        return self._offs

    def _set_offsets(self, node: int, slot: Slot | None) -> None:
        offs = self._offs
        if offs is None:
            return
        if node + 2 >= len(offs):
            grown = np.full((max(2 * len(offs), node + 3), 2), -1, dtype=np.int64)
            grown[: len(offs)] = offs
            self._offs = offs = grown
        offs[node + 2] = (-1, -1) if slot is None else (slot.w_off, slot.b_off)

    def weight(self, node: int) -> np.ndarray:
        """``W`` of ``node``: a writable ``(width, fan_in)`` view into the arena."""
        s = self.slot(node)
        return self._w[s.w_off : s.w_off + s.w_size].reshape(s.rows, s.cols)

    def bias(self, node: int) -> np.ndarray:
        s = self.slot(node)
        return self._b[s.b_off : s.b_off + s.rows]

    def weight_momentum(self, node: int) -> np.ndarray:
        s = self.slot(node)
        return self._vw[s.w_off : s.w_off + s.w_size].reshape(s.rows, s.cols)

    def bias_momentum(self, node: int) -> np.ndarray:
        s = self.slot(node)
        return self._vb[s.b_off : s.b_off + s.rows]

    def arenas(self) -> dict[str, np.ndarray]:
        """The four arenas (the live region and spare capacity), by kind."""
        return {"weight": self._w, "weight_mom": self._vw, "bias": self._b, "bias_mom": self._vb}

    def nbytes(self) -> dict[str, int]:
        """``{"capacity": …, "live": …}`` bytes over all four arenas."""
        live_w = sum(s.w_size for s in self._slots.values())
        live_b = sum(s.rows for s in self._slots.values())
        item = self.dtype.itemsize
        return {
            "capacity": 2 * item * (self._w.size + self._b.size),
            "live": 2 * item * (live_w + live_b),
        }

    def n_parameters(self) -> int:
        """Trainable scalars (weights + biases), momenta not counted."""
        return sum(s.w_size + s.rows for s in self._slots.values())

    def validate(self, graph: NetworkGraph, *, changed: set[int] | None = None) -> None:
        """Every group and the output own a slot whose shape matches width × fan-in.

        Args:
            graph: the structure the slots must match.
            changed: inside a batch, the nodes whose predecessors the graph changed since
                :meth:`begin` (what ``NetworkGraph._validate_batch`` returns). Then only
                those and the nodes the batch allocated or released are checked: any other
                node matched the graph at ``begin`` (a batch starts from a validated store)
                and has changed on neither side — widths never change. ``None``, or no open
                batch: every node is checked.
        """
        if changed is None or self._txn is None:
            nodes = {*self._slots, *graph.group_ids(), OUTPUT}
        else:
            nodes = {*changed, *self._txn.saved}  # what the batch allocated or released
        expected = {n for n in nodes if n == OUTPUT or n in graph}
        have = {n for n in nodes if n in self._slots}
        if have != expected:
            raise InvariantError(f"parameters out of step with the graph: extra "
                                 f"{sorted(have - expected)}, missing {sorted(expected - have)}")
        for node in expected:
            s = self._slots[node]
            want = graph.weight_shape(node)
            if (s.rows, s.cols) != want:
                raise InvariantError(
                    f"{node_name(node)}: weight shape {(s.rows, s.cols)} but the graph says {want}"
                )

    # ------------------------------------------------------------------ changing
    def allocate(self, node: int, rows: int, cols: int) -> Slot:
        """Give ``node`` a fresh zeroed slot (replacing any slot it had, freed at commit)."""
        return self._allocate(node, rows, cols, zero=True)

    def _allocate(self, node: int, rows: int, cols: int, *, zero: bool) -> Slot:
        """:meth:`allocate`; ``zero=False`` leaves the memory as it was, for a caller that
        overwrites all of it before anyone reads it (the ``alloc`` op still says zeroed)."""
        if node == INPUT:
            raise ValueError("the input has no parameters")
        w_size = rows * cols
        if self._w_top + w_size > self._w.size or self._b_top + rows > self._b.size:
            self._reserve(w_size, rows)
        w_off, b_off = self._w_top, self._b_top
        slot = Slot(w_off, b_off, rows, cols)
        self._save(node)
        old = self._slots.get(node)
        self._live_w += w_size - (old.w_size if old is not None else 0)
        self._live_b += rows - (old.rows if old is not None else 0)
        if zero and not self.values_elsewhere:
            self._w[w_off : w_off + w_size] = 0
            self._vw[w_off : w_off + w_size] = 0
            self._b[b_off : b_off + rows] = 0
            self._vb[b_off : b_off + rows] = 0
        self._w_top += w_size
        self._b_top += rows
        self._slots[node] = slot
        self._set_offsets(node, slot)
        self._record(_op("alloc", node, rows=rows, cols=cols, slot=slot))
        return slot

    def allocate_from(self, node: int, cols: int, src_slot: Slot,
                      runs: Sequence[tuple[int, int, int, float]], *, src: int | None) -> Slot:
        """A fresh slot for ``node`` with ``src_slot``'s rows and ``cols`` columns, filled from
        ``src_slot``: what :meth:`allocate`, a :meth:`copy_columns` per run ``(dst_col,
        src_col, ncols, scale)`` and :meth:`copy_bias` do, recording the same ops.

        One call instead of those: the arena views are made once, the slot is not zeroed first
        where the runs (disjoint column ranges) cover every column, and a run that repeats the
        one before it (the two halves of a width duplication) copies that one's result.
        """
        rows = src_slot.rows
        runs = [run for run in runs if run[2]]  # empty runs copy and record nothing
        d = self._allocate(node, rows, cols, zero=sum([run[2] for run in runs]) < cols)
        for arena in () if self.values_elsewhere else (self._w, self._vw):
            dv = arena[d.w_off : d.w_off + d.w_size].reshape(rows, cols)
            sv = arena[src_slot.w_off : src_slot.w_off + src_slot.w_size].reshape(
                rows, src_slot.cols)
            prev, done = None, dv
            for dst_col, src_col, ncols, scale in runs:
                out = dv[:, dst_col : dst_col + ncols]
                if prev == (src_col, ncols, scale):
                    np.copyto(out, done)
                elif scale == 1.0:  # x * 1.0 == x: a plain copy
                    np.copyto(out, sv[:, src_col : src_col + ncols])
                else:
                    np.multiply(sv[:, src_col : src_col + ncols], scale, out=out)
                prev, done = (src_col, ncols, scale), out
        b0, s0 = d.b_off, src_slot.b_off
        if not self.values_elsewhere:
            self._b[b0 : b0 + rows] = self._b[s0 : s0 + rows]  # copy_bias
            self._vb[b0 : b0 + rows] = self._vb[s0 : s0 + rows]
        if self._txn is not None:
            self._txn.ops += [_op("copy_cols", node, src=src, dst_col=dst_col, src_col=src_col,
                                  ncols=ncols, scale=scale, rows=rows, cols=cols, slot=d,
                                  src_slot=src_slot)
                              for dst_col, src_col, ncols, scale in runs]
            self._txn.ops.append(_op("copy_bias", node, src=src, rows=rows, slot=d,
                                     src_slot=src_slot))
        return d

    def release(self, node: int) -> None:
        """Drop ``node``'s slot; its memory becomes a hole (reused after a compaction)."""
        self.slot(node)
        self._save(node)
        txn = self._txn
        if txn is not None and txn.order is None:
            txn.order = list(self._slots)
        old = self._slots.pop(node)
        self._live_w -= old.w_size
        self._live_b -= old.rows
        self._set_offsets(node, None)
        self._record(_op("free", node))

    def copy_columns(
        self, dst: int, dst_col: int, src_slot: Slot, src_col: int, ncols: int,
        *, scale: float = 1.0, src: int | None = None,
    ) -> None:
        """``W[dst][:, dst_col:+n] = scale * W(src_slot)[:, src_col:+n]``, and for momentum.

        ``src_slot`` may be a slot already replaced inside this batch (its memory stays
        untouched until commit); ``src`` names its node for the op log.
        """
        d = self.slot(dst)
        if ncols == 0:
            return
        if d.rows != src_slot.rows:
            raise InvariantError(f"copy_columns: {d.rows} rows into {src_slot.rows}")
        for arena in () if self.values_elsewhere else (self._w, self._vw):
            dv = arena[d.w_off : d.w_off + d.w_size].reshape(d.rows, d.cols)
            sv = arena[src_slot.w_off : src_slot.w_off + src_slot.w_size].reshape(
                src_slot.rows, src_slot.cols)
            dv[:, dst_col : dst_col + ncols] = sv[:, src_col : src_col + ncols] * scale
        self._record(_op("copy_cols", dst, src=src, dst_col=dst_col, src_col=src_col,
                         ncols=ncols, scale=scale, rows=d.rows, cols=d.cols, slot=d,
                         src_slot=src_slot))

    def copy_bias(self, dst: int, src_slot: Slot, *, src: int | None = None) -> None:
        """``b[dst] = b(src_slot)``, and the same for the bias momentum."""
        d = self.slot(dst)
        b0, s0, n = d.b_off, src_slot.b_off, d.rows
        if not self.values_elsewhere:
            self._b[b0 : b0 + n] = self._b[s0 : s0 + n]
            self._vb[b0 : b0 + n] = self._vb[s0 : s0 + n]
        self._record(_op("copy_bias", dst, src=src, rows=d.rows, slot=d, src_slot=src_slot))

    def set_identity(self, node: int) -> None:
        """``W[node] = I`` (square slots only)."""
        s = self.slot(node)
        if s.rows != s.cols:
            raise InvariantError(
                f"{node_name(node)}: identity needs a square slot, {(s.rows, s.cols)}")
        if not self.values_elsewhere:
            w = self._w[s.w_off : s.w_off + s.w_size]
            w[:] = 0
            w[:: s.rows + 1] = 1  # the diagonal of the row-major square (no np.eye temporary)
        self._record(_op("identity", node, rows=s.rows, cols=s.cols, slot=s))

    def set_values(self, node: int, w: np.ndarray, b: np.ndarray) -> None:
        """Overwrite ``node``'s weights and bias with host values (momenta untouched)."""
        wv, bv = np.empty_like(self.weight(node)), np.empty_like(self.bias(node))
        wv[...], bv[...] = w, b  # the values as the arenas hold them
        if not self.values_elsewhere:
            self.weight(node)[...], self.bias(node)[...] = wv, bv
        self._record(_op("set", node, values=(wv, bv), slot=self.slot(node)))

    def add_to_weights(self, node: int, delta: np.ndarray) -> None:
        """``W[node] += delta`` (symmetry-breaking noise)."""
        if not self.values_elsewhere:
            self.weight(node)[...] += delta
        self._record(_op("add_weights", node, values=(np.asarray(delta, self.dtype),),
                         slot=self.slot(node)))

    def add_noise(self, node: int, z: np.ndarray, relative: float) -> None:
        """``W[node] += z * relative * (std(W[node]) or 1)``: noise scaled to the weights.

        Recorded as one ``add_noise`` op, so that a device mirror scales ``z`` by the std of
        *its* copy of the weights (the host copy may be stale while the device trains).
        """
        w = self.weight(node)
        z = np.asarray(z, dtype=self.dtype)
        if z.shape != w.shape:
            raise InvariantError(f"{node_name(node)}: noise of shape {z.shape} for {w.shape}")
        if not self.values_elsewhere:
            w += z * (relative * (float(w.std(dtype=np.float64)) or 1.0))
        self._record(_op("add_noise", node, rows=w.shape[0], cols=w.shape[1],
                         scale=float(relative), values=(z,), slot=self.slot(node)))

    # ------------------------------------------------------------------ transactions
    def begin(self) -> None:
        """Start a batch: until :meth:`commit` or :meth:`rollback`, no memory is reused.

        Compacts first (capacity kept) when an arena is three quarters used and at least
        half of what is used is holes: a batch cannot reclaim holes, so without this an
        arena that only ever sees batches would grow without bound.
        """
        if self._txn is not None:
            raise RuntimeError("a parameter batch is already open")
        if ((4 * self._w_top > 3 * self._w.size and 2 * self._live_w <= self._w_top)
                or (4 * self._b_top > 3 * self._b.size and 2 * self._live_b <= self._b_top)):
            self._compact(self._w.size, self._b.size)
        self._txn = _Txn(self._w_top, self._b_top, self.layout_version)

    def commit(self) -> list[ParamOp]:
        """End the batch; returns the ops it recorded, in order."""
        txn = self._require_txn()
        self._txn = None
        return txn.ops

    def rollback(self) -> None:
        """Undo the batch: the slot table, and so every live value, is as at :meth:`begin`."""
        txn = self._require_txn()
        for node, slot in txn.saved.items():
            if slot is None:
                self._slots.pop(node, None)
            else:
                self._slots[node] = slot
            self._set_offsets(node, slot)
        if txn.order is not None:  # a released slot came back: restore the table's order too
            self._slots = {n: self._slots[n] for n in txn.order if n in self._slots}
        self._w_top, self._b_top = txn.w_top, txn.b_top
        self._live_w = sum(s.w_size for s in self._slots.values())
        self._live_b = sum(s.rows for s in self._slots.values())
        self._txn = None

    def moves_since(self, version: int) -> list[tuple[int, np.ndarray]] | None:
        """Where the slots went in every compaction after layout ``version``, oldest first,
        as ``(layout_version after it, moves)``.

        ``moves`` is an int64 ``(n, 6)`` array, a row per live slot: old weight offset, new
        weight offset, weight size, old bias offset, new bias offset, bias size. ``None``
        when one of those compactions is no longer remembered (the last 8 are).
        """
        if self._moves_forgotten > version:
            return None
        return [(v, moves) for v, moves in self._moves if v > version]

    def _require_txn(self) -> _Txn:
        if self._txn is None:
            raise RuntimeError("no parameter batch is open")
        return self._txn

    def _save(self, node: int) -> None:
        """In a batch: remember ``node``'s slot as it was at :meth:`begin` (first change wins)."""
        txn = self._txn
        if txn is not None and node not in txn.saved:
            txn.saved[node] = self._slots.get(node)

    def _record(self, op: ParamOp) -> None:
        if self._txn is not None:
            self._txn.ops.append(op)

    # ------------------------------------------------------------------ capacity
    def _reserve(self, w_size: int, b_size: int) -> None:
        if self._w_top + w_size <= self._w.size and self._b_top + b_size <= self._b.size:
            return
        live_w = sum(s.w_size for s in self._slots.values())
        live_b = sum(s.rows for s in self._slots.values())
        if self._txn is None and 2 * live_w <= self._w_top and 2 * live_b <= self._b_top:
            self._compact(max(self._w.size, 2 * (live_w + w_size)),
                          max(self._b.size, 2 * (live_b + b_size)))
        else:
            # Inside a batch offsets must stay put (rollback restores the old table): grow only.
            self._grow(max(2 * self._w.size, self._w_top + w_size),
                       max(2 * self._b.size, self._b_top + b_size))

    def _grow(self, w_cap: int, b_cap: int) -> None:
        def bigger(a: np.ndarray, cap: int) -> np.ndarray:
            if self.values_elsewhere:  # stale values: nothing to keep, no page to touch now
                return np.zeros(cap, self.dtype)
            out = _arena(cap, self.dtype)
            out[: a.size] = a
            return out

        self._w, self._vw = bigger(self._w, w_cap), bigger(self._vw, w_cap)
        self._b, self._vb = bigger(self._b, b_cap), bigger(self._vb, b_cap)
        self.layout_version += 1

    def _compact(self, w_cap: int, b_cap: int) -> None:
        # values elsewhere: the mirror moves its own (moves_since); the stale ones stay behind
        copy = not self.values_elsewhere
        new = _arena if copy else (lambda n, dtype: np.zeros(n, dtype))
        w, vw = new(w_cap, self.dtype), new(w_cap, self.dtype)
        b, vb = new(b_cap, self.dtype), new(b_cap, self.dtype)
        wt = bt = 0
        order = sorted(self._slots, key=lambda n: self._slots[n].w_off)
        moves = np.empty((len(order), 6), np.int64)
        for i, node in enumerate(order):
            s = self._slots[node]
            moves[i] = (s.w_off, wt, s.w_size, s.b_off, bt, s.rows)
            if copy:
                w[wt : wt + s.w_size] = self._w[s.w_off : s.w_off + s.w_size]
                vw[wt : wt + s.w_size] = self._vw[s.w_off : s.w_off + s.w_size]
                b[bt : bt + s.rows] = self._b[s.b_off : s.b_off + s.rows]
                vb[bt : bt + s.rows] = self._vb[s.b_off : s.b_off + s.rows]
            self._slots[node] = Slot(wt, bt, s.rows, s.cols)
            wt += s.w_size
            bt += s.rows
        self._w, self._vw, self._b, self._vb = w, vw, b, vb
        self._w_top, self._b_top = wt, bt
        self._live_w, self._live_b = wt, bt
        self._offs = None
        self.layout_version += 1
        self.moved_version = self.layout_version
        if len(self._moves) == self._moves.maxlen:
            self._moves_forgotten = self._moves[0][0]
        self._moves.append((self.layout_version, moves))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Compact arrays that :meth:`from_state_dict` turns back into an equal store."""
        nodes = self.nodes()
        shapes = np.array([[n, self._slots[n].rows, self._slots[n].cols] for n in nodes],
                          dtype=np.int64).reshape(-1, 3)

        def cat(get: Any) -> np.ndarray:
            parts = [get(n).ravel() for n in nodes]
            return np.concatenate(parts) if parts else np.zeros(0, self.dtype)

        return {
            "param_shapes": shapes,
            "param_weight": cat(self.weight),
            "param_bias": cat(self.bias),
            "param_weight_mom": cat(self.weight_momentum),
            "param_bias_mom": cat(self.bias_momentum),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> ParamStore:
        """Rebuild from :meth:`state_dict`; raises CheckpointError on inconsistent arrays."""
        try:
            shapes = np.asarray(state["param_shapes"], dtype=np.int64)
            arrays = [np.asarray(state[k]) for k in
                      ("param_weight", "param_bias", "param_weight_mom", "param_bias_mom")]
        except KeyError as exc:
            raise CheckpointError(f"parameter array {exc} is missing") from None
        dtype = arrays[0].dtype
        if shapes.ndim != 2 or shapes.shape[1] != 3 or (shapes[:, 1:] < 1).any():
            raise CheckpointError(f"param_shapes is malformed: shape {shapes.shape}")
        nodes = shapes[:, 0].tolist()
        if INPUT in nodes or len(set(nodes)) != len(nodes):
            raise CheckpointError(f"param_shapes names the input or a node twice: {nodes[:16]}")
        n_w = int((shapes[:, 1] * shapes[:, 2]).sum())
        n_b = int(shapes[:, 1].sum())
        for name, arr, n in zip(("weight", "bias", "weight_mom", "bias_mom"), arrays,
                                (n_w, n_b, n_w, n_b), strict=True):
            if arr.shape != (n,) or arr.dtype != dtype or dtype.kind != "f":
                raise CheckpointError(
                    f"param_{name}: expected {n} {dtype} values, got {arr.shape} {arr.dtype}")
        p = cls(dtype=dtype, capacity=2 * n_w)
        wo = bo = 0
        for node, rows, cols in shapes.tolist():
            p.allocate(int(node), rows, cols)
            p.weight(node).ravel()[:] = arrays[0][wo : wo + rows * cols]
            p.weight_momentum(node).ravel()[:] = arrays[2][wo : wo + rows * cols]
            p.bias(node)[:] = arrays[1][bo : bo + rows]
            p.bias_momentum(node)[:] = arrays[3][bo : bo + rows]
            wo += rows * cols
            bo += rows
        return p

    def copy(self) -> ParamStore:
        """A deep copy with the same layout."""
        new = ParamStore.__new__(ParamStore)
        new.__dict__.update(self.__dict__)
        new._w, new._vw, new._b, new._vb = (a.copy() for a in (self._w, self._vw, self._b,
                                                                self._vb))
        new._slots = dict(self._slots)
        new._moves = deque(self._moves, maxlen=_MOVES_KEPT)
        new._offs = None
        new._txn = None
        return new

    def items(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(node, W, b)`` for every node, by id."""
        for n in self.nodes():
            yield n, self.weight(n), self.bias(n)


def _arena(n: int, dtype: np.dtype) -> np.ndarray:
    """``n`` zeros with every page written now: ``np.zeros`` maps pages lazily, and the first
    write to each would then fault inside whichever mutation batch allocates there (a batch
    bump-allocates ~1 MB at M, ~250 faults), instead of once, here, when the arena is made."""
    out = np.empty(n, dtype)
    out.fill(0)
    return out


@dataclass
class _Txn:
    """An open batch: what the store was at :meth:`ParamStore.begin` wherever it changed.

    Attributes:
        w_top, b_top, layout_version: the tops and layout version at ``begin``.
        saved: every node the batch allocated or released, with its slot at ``begin``
            (``None``: it had none).
        order: the nodes in the slot table's order, saved by the first release (a rollback
            puts released slots back and must not move them to the end).
        ops: the ops recorded so far.
    """

    w_top: int
    b_top: int
    layout_version: int
    saved: dict[int, Slot | None] = field(default_factory=dict)
    order: list[int] | None = None
    ops: list[ParamOp] = field(default_factory=list)
