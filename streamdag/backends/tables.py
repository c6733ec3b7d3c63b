"""The int32 tables the CUDA kernels walk (:class:`NetTables`), kept up to date across
mutation batches by :class:`TableBuilder`.

Pure numpy, no GPU: the layout is described in ``kernels/network.cu`` (``struct Node``) and
in :mod:`streamdag.backends.cuda`.

Design note
-----------
The kernels index nodes by *position*: the input, the groups level by level, the output.
A depth duplication moves every node after it, so anything that names a position must be
rewritten after a batch. What is expensive to build does not have to name one:

* every node has a *key* for as long as it lives (``id + 2``; the output 0, the input 1:
  the keys of ``ParamStore.offsets``), and its record (width, arena offsets, where its runs
  start in the pools) is kept by key;
* a node's activations keep their columns in a batch row for as long as it lives: a new
  node's are appended to the row, a removed node's left unused;
* the column map, the predecessor lists (as keys) and the successor records are pools of
  per-node runs: a node whose inputs changed gets new runs appended and its old runs are
  left as garbage, like ``graph._Columns``.

So a batch rewrites the records and runs of the nodes it changed — found by comparing the
graph's per-id columns and the parameter offsets with what the tables were built from —
and the successor runs of their predecessors. What names positions is then derived in a
few vectorised passes over nodes and edges: the records in level order, the predecessor
and successor keys translated to positions, the weight-gradient tiles and the levels. The
column map (at M ~140,000 entries, 16 per edge) is never rebuilt, and the device receives
only its new tail. When garbage outweighs what lives (or a batch changed a quarter of the
network, or the graph rebuilt its columns) the tables are built from scratch, compactly.

A successor run lists a predecessor's successors by ascending key, the output's first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..graph import INPUT, OUTPUT, NetworkGraph
from ..params import ParamStore

__all__ = ["MAX_INT32", "NODE_FIELDS", "WG_THREADS", "WG_XCOLS", "NetTables", "TableBuilder"]

NODE_FIELDS = 12  # ints per Node record; see struct Node in network.cu
# the fields of struct Node, by column
(WIDTH, FAN_IN, W_OFF, B_OFF, ACT, PRED_START, N_PREDS, SUCC_START, N_SUCCS, RELU,
 COL_START, PAD) = range(NODE_FIELDS)
WG_THREADS = 256  # SD_WG_THREADS
WG_XCOLS = 32     # SD_WG_XCOLS: columns of a weight-gradient tile at most
MAX_INT32 = 2**31 - 1
# columns of a weight-gradient tile of a node, by min(width, 64): a thread owns one output and
# two columns of its tile, so up to 2 * (WG_THREADS // outputs) columns (at most WG_XCOLS)
_PER_TILE = np.clip(2 * (WG_THREADS // np.arange(1, 65)), 1, WG_XCOLS).astype(np.int32)
_PER_TILE = np.concatenate([[1], _PER_TILE])  # width 0 (none has it): 1 column, as clip gives
OUT_KEY, IN_KEY = OUTPUT + 2, INPUT + 2  # 0 and 1: a group's key is its id + 2
assert (OUT_KEY, IN_KEY) == (0, 1)


@dataclass(frozen=True)
class NetTables:
    """The int32 tables the kernels walk, built from a graph and a parameter layout.

    Attributes:
        nodes: ``(n_nodes, 12)`` Node records (see ``network.cu``) by position: the input,
            the groups level by level (by id within a level), the output.
        preds: the predecessor positions of node ``i`` are ``preds[pred_start : pred_start
            + n_preds]`` (runs of other, removed or rewritten, nodes lie in between).
        succs: ``(n, 4)`` per successor record: its activation offset in a row, the weight
            offset of this node's first column in it, its width and its fan-in; node ``i``'s
            are ``succs[succ_start : succ_start + n_succs]``, by ascending successor key.
        succ_node: the position of the successor of each record.
        colmap: from ``col_start``, per input column of a node, its offset within a batch row.
        level_start: level ``l`` is the positions ``level_start[l] .. level_start[l+1]``
            (level 0 = input, the last = output).
        tiles: ``(n_tiles, 4)`` weight-gradient tiles (position, first column, columns,
            stats slot).
        group_ids: graph id of each stats slot (groups in ascending id order).
        row_stride: floats per batch row of the activation arenas (the input's columns
            first; columns of removed nodes stay unused until the tables are rebuilt).
        live_row: of those, the floats live nodes use.
        fresh: per table, how many leading entries are the same as in the tables the same
            :class:`TableBuilder` returned before (``colmap`` and ``succs``, the pools
            that only grow; 0 when rebuilt): what a device copy need not upload again.
    """

    nodes: np.ndarray
    preds: np.ndarray
    succs: np.ndarray
    succ_node: np.ndarray
    colmap: np.ndarray
    level_start: np.ndarray
    tiles: np.ndarray
    group_ids: np.ndarray
    row_stride: int
    live_row: int = 0
    fresh: dict[str, int] = field(default_factory=dict)

    @property
    def n_levels(self) -> int:
        return len(self.level_start) - 1

    @classmethod
    def build(cls, graph: NetworkGraph, params: ParamStore) -> NetTables:
        """The tables of ``graph`` and ``params``, built from scratch."""
        return TableBuilder().update(graph, params)


class TableBuilder:
    """Keeps :class:`NetTables` for a graph and a parameter store as they change: each
    :meth:`update` patches what changed since the last (see the module's design note)."""

    def __init__(self) -> None:
        self._s: _State | None = None

    def update(self, graph: NetworkGraph, params: ParamStore) -> NetTables:
        """The tables of ``graph`` and ``params`` as they are now.

        Raises:
            ConfigError: an offset does not fit the kernels' 32-bit tables.
        """
        cols = graph.id_columns()
        s = self._s
        if s is not None and s.fits(graph, cols):
            try:
                if s.patch(graph, params, cols):
                    return s.tables(graph, cols)
            except BaseException:
                self._s = None  # half patched: start over next time
                raise
        self._s = None
        s = _State(graph, cols)
        s.patch(graph, params, cols)
        self._s = s
        return s.tables(graph, cols)


class _State:
    """A builder's tables by key, and the pools their runs live in."""

    def __init__(self, graph: NetworkGraph, cols: Any) -> None:
        self.cols = cols
        self.n_io = (graph.n_inputs, graph.n_classes)
        size = len(cols.alive)
        self.seen_alive = np.zeros(size, bool)
        self.seen_start = np.zeros(size, np.int64)
        # by key, the offsets records were written with (a moved slot rewrites its node)
        self.seen_w = np.full(size + 2, -1, np.int64)
        self.seen_b = np.full(size + 2, -1, np.int64)
        self.ids = np.zeros(0, np.intp)  # the live groups' ids at the last patch
        self.out_preds: tuple[int, ...] | None = None
        self.rec = np.zeros((size + 2, NODE_FIELDS), np.int32)
        self.rec[IN_KEY, WIDTH] = graph.n_inputs
        n_edges = int(cols.count[cols.alive].sum()) + len(graph.output.preds)
        # per edge (predecessor key, the first of its columns in its owner's inputs)
        self.pred_pool = _Pool(n_edges + 64, 2)
        self.succ_pool = _Pool(n_edges + 64, 4)  # successor records, and their keys:
        self.succ_key = _Pool(n_edges + 64)       # reserved together, always the same top
        self.colmap = _Pool(16 * n_edges + 256)
        self.row_top = graph.n_inputs  # the input's columns come first
        self.row_garbage = 0
        self.built = False

    def fits(self, graph: NetworkGraph, cols: Any) -> bool:
        """Whether patching can follow: the same graph columns (the graph builds new ones,
        with a larger id range, when they are full) and the same input and output."""
        return cols is self.cols and self.n_io == (graph.n_inputs, graph.n_classes)

    # ------------------------------------------------------------------ patching
    def patch(self, graph: NetworkGraph, params: ParamStore, cols: Any) -> bool:
        """Rewrite the records and runs of what changed; ``False`` if that is too much
        (the caller builds afresh, compactly)."""
        c = cols
        alive, start = c.alive, c.start
        rec = self.rec
        ids = np.flatnonzero(alive)
        w_off, b_off = params.offsets(np.append(ids, OUTPUT))
        if max(int(w_off.max(initial=0)), params.arenas()["weight"].size) > MAX_INT32:
            raise ConfigError("the network is too large for 32-bit kernel tables")
        keys = ids + 2
        moved = self.seen_w.take(keys) != w_off[:-1]
        moved |= self.seen_b.take(keys) != b_off[:-1]
        changed = alive != self.seen_alive
        changed |= alive & (start != self.seen_start)
        changed[ids[moved]] = True
        removed = np.flatnonzero(changed & ~alive) + 2
        new = np.flatnonzero(changed & alive) + 2
        out_preds = graph.output.preds
        out_changed = (out_preds != self.out_preds or self.seen_w[OUT_KEY] != w_off[-1]
                       or self.seen_b[OUT_KEY] != b_off[-1])
        if self.built and 4 * (len(new) + len(removed)) > len(ids):
            return False
        touched = np.concatenate([removed, new, [OUT_KEY] if out_changed else []]
                                 ).astype(np.intp)
        # their old predecessors lose (or change) a successor record
        old_preds = self._pred_keys(touched)
        self._drop(touched)
        self.row_garbage += int(rec[removed, WIDTH].sum())  # a removed node's columns
        self.succ_pool.garbage += int(rec[removed, N_SUCCS].sum())
        rec[removed] = 0
        self.seen_w[removed] = self.seen_b[removed] = -1
        if len(new) or out_changed:
            self._write(graph, new, out_changed, c, w_off, b_off, ids)
        self.seen_alive[:] = alive
        self.seen_start[new - 2] = start[new - 2]
        self.out_preds = out_preds
        self.ids = ids
        # predecessors whose successor runs changed: of every node written or removed
        stale = np.zeros(len(rec), bool)
        stale[old_preds] = True
        stale[self._pred_keys(new)] = True
        if out_changed:
            stale[self._pred_keys(np.array([OUT_KEY]))] = True
        stale[IN_KEY] = False  # the input has no successor records (nothing pulls into it)
        stale[removed] = False
        if self.built:  # an edge out of a stale node is old (and listed) or into a new one
            stale_keys = np.flatnonzero(stale)
            owned = np.zeros(len(rec), bool)
            owned[self.succ_key.data[_runs(rec[stale_keys, SUCC_START],
                                           rec[stale_keys, N_SUCCS])]] = True
            owned[touched] = True
            owners = np.flatnonzero(owned)
        else:
            stale_keys, owners = np.flatnonzero(stale), np.append(ids + 2, OUT_KEY)
        self._write_succs(stale_keys, owners)
        if self.built and self._garbage_outweighs():
            return False
        self.built = True
        return True

    def _pred_keys(self, keys: np.ndarray) -> np.ndarray:
        """The predecessor keys of ``keys``, run after run."""
        rec = self.rec
        return self.pred_pool.data[_runs(rec[keys, PRED_START], rec[keys, N_PREDS]), 0]

    def _drop(self, keys: np.ndarray) -> None:
        """Count the predecessor and column-map runs of ``keys`` as garbage (their
        successor runs stay: they change only where a successor did, see :meth:`patch`)."""
        rec = self.rec
        self.pred_pool.garbage += int(rec[keys, N_PREDS].sum())
        self.colmap.garbage += int(rec[keys, FAN_IN].sum())
        rec[keys, N_PREDS] = rec[keys, FAN_IN] = 0

    def _write(self, graph: NetworkGraph, new: np.ndarray, out_changed: bool, cols: Any,
               w_off: np.ndarray, b_off: np.ndarray, ids: np.ndarray) -> None:
        """Records and runs of the groups ``new`` (keys) and, if ``out_changed``, of the
        output; predecessor and column-map runs appended to the pools."""
        c = cols
        rec = self.rec
        gids = new - 2
        widths = c.width[gids]
        counts = c.count[gids]
        pk = c.pool[_runs(c.start[gids], counts)] + 2
        keys = new
        if out_changed:
            keys = np.append(new, OUT_KEY)
            widths = np.append(widths, graph.n_classes)
            out = np.fromiter(graph.output.preds, np.intp, len(graph.output.preds))
            counts = np.append(counts, len(out))
            pk = np.concatenate([pk, out + 2])
        # columns in the row: a node keeps its own for as long as it lives, a new one (its
        # record is cleared, or was never written) gets fresh ones at the end of the row
        fresh = rec[keys, WIDTH] != widths
        if fresh.any():
            self.row_garbage += int(rec[keys[fresh], WIDTH].sum())  # (none: widths are fixed)
            fw = widths[fresh]
            at = np.empty(len(fw), np.int64)
            _exclusive_cumsum(fw, out=at)
            rec[keys[fresh], ACT] = self.row_top + at
            self.row_top += int(fw.sum())
            rec[keys[fresh], WIDTH] = fw
        if self.row_top > MAX_INT32:
            raise ConfigError("the network is too large for 32-bit kernel tables")
        n_edges = len(pk)
        pw = rec[pk, WIDTH].astype(np.int64)
        entry = np.empty(n_edges + 1, np.int64)  # first column of edge e, over all of them
        entry[0] = 0
        np.cumsum(pw, out=entry[1:])
        first_edge = np.empty(len(keys), np.int64)
        _exclusive_cumsum(counts, out=first_edge)
        node_col = entry[first_edge]  # first column of each node, over all of them
        n_cols = int(entry[-1])
        if self.colmap.top + n_cols > MAX_INT32:
            raise ConfigError("the network is too large for 32-bit kernel tables")
        col0 = self.colmap.reserve(n_cols)
        pred0 = self.pred_pool.reserve(n_edges)
        edges = self.pred_pool.data[pred0 : pred0 + n_edges]
        edges[:, 0] = pk
        edges[:, 1] = entry[:-1] - np.repeat(node_col, counts)  # first column in its owner
        run = np.repeat(rec[pk, ACT] - entry[:-1], pw)
        run += _iota(n_cols)
        self.colmap.data[col0 : col0 + n_cols] = run
        rec[keys, FAN_IN] = np.append(node_col[1:], n_cols) - node_col
        rec[keys, COL_START] = col0 + node_col
        rec[keys, PRED_START] = pred0 + first_edge
        rec[keys, N_PREDS] = counts
        rec[keys, RELU] = 1
        if out_changed:
            rec[OUT_KEY, RELU] = 0
        pos = np.searchsorted(ids, gids)  # offsets of the groups, from those of all
        self.seen_w[new], self.seen_b[new] = w_off[pos], b_off[pos]
        self.seen_w[OUT_KEY], self.seen_b[OUT_KEY] = w_off[-1], b_off[-1]
        rec[keys, W_OFF], rec[keys, B_OFF] = self.seen_w[keys], self.seen_b[keys]

    def _write_succs(self, stale: np.ndarray, owners: np.ndarray) -> None:
        """New successor runs for the nodes ``stale`` (keys): their edges among those into
        ``owners`` (ascending keys; removed ones have no edges left), by successor key."""
        if not len(stale):
            return
        rec = self.rec
        self.succ_pool.garbage += int(rec[stale, N_SUCCS].sum())
        n_preds = rec[owners, N_PREDS]
        at = _runs(rec[owners, PRED_START], n_preds)
        pk = self.pred_pool.data[at, 0]
        mine = np.zeros(len(rec), bool)
        mine[stale] = True
        sel = np.flatnonzero(mine[pk])
        owner = np.repeat(owners, n_preds)[sel]
        pk, at = pk[sel], at[sel]
        # by predecessor, then owner: owners come in ascending order, so a stable sort by
        # predecessor (radix, on 16 bits where keys fit) keeps them so within one
        order = np.argsort(pk.astype(np.uint16) if len(rec) <= 1 << 16 else pk, kind="stable")
        owner, pk, at = owner[order], pk[order], at[order]
        n = len(owner)
        s0 = self.succ_pool.reserve(n)
        self.succ_key.reserve(n)
        recs = self.succ_pool.data[s0 : s0 + n]
        recs[:, 0] = rec[owner, ACT]
        recs[:, 1] = rec[owner, W_OFF] + self.pred_pool.data[at, 1]
        recs[:, 2] = rec[owner, WIDTH]
        recs[:, 3] = rec[owner, FAN_IN]
        self.succ_key.data[s0 : s0 + n] = owner
        counts = np.bincount(pk, minlength=len(rec))[stale]
        first = np.empty(len(stale), np.int64)
        _exclusive_cumsum(counts, out=first)
        rec[stale, SUCC_START] = s0 + first
        rec[stale, N_SUCCS] = counts

    def _garbage_outweighs(self) -> bool:
        live_row = self.row_top - self.row_garbage
        return (any(p.garbage > max(p.top - p.garbage, 1024) for p in (
            self.pred_pool, self.succ_pool, self.colmap)) or self.row_garbage > live_row // 4)

    # ------------------------------------------------------------------ by position
    def tables(self, graph: NetworkGraph, cols: Any) -> NetTables:
        """The tables by position, from the records by key."""
        c = cols
        rec = self.rec
        ids = self.ids
        depth = c.depth[ids]
        if len(c.alive) <= 1 << 16:
            depth = depth.astype(np.uint16)  # a depth <= groups: radix-sorted 16 bits
        by_level = np.argsort(depth, kind="stable")  # by depth, then id
        n = len(ids) + 2
        order = np.empty(n, np.intp)
        order[0], order[-1] = IN_KEY, OUT_KEY
        np.add(ids.take(by_level), 2, out=order[1:-1])
        pos = np.zeros(len(rec), np.int32)
        pos[order] = _iota(n)
        nodes = rec.take(order, axis=0)
        # weight-gradient tiles: per node (position, its first tile, fan-in, stats slot),
        # one copy per tile, then the first tile -> the tile's first column and fan-in ->
        # columns. The stats slot of a group is its rank by id: by_level names it.
        width, fan_in = nodes[:, WIDTH], nodes[:, FAN_IN]
        per_tile = _PER_TILE.take(np.minimum(width, 64))
        # ceil(fan_in / per_tile) in float64, exact (fan_in < 2**31, per_tile <= 32), at
        # half the cost of integer division
        n_tiles = np.ceil(fan_in / per_tile).astype(np.intp)
        n_tiles[0] = 0
        node_tile = np.empty((n, 4), dtype=np.int32)
        node_tile[:, 0] = _iota(n)
        _exclusive_cumsum(n_tiles, out=node_tile[:, 1])
        node_tile[:, 2] = fan_in
        node_tile[0, 3] = node_tile[-1, 3] = -1
        node_tile[1:-1, 3] = by_level
        tiles = np.repeat(node_tile, n_tiles, axis=0)
        t_per = np.repeat(per_tile, n_tiles)
        t_c0 = tiles[:, 1]
        np.multiply(_iota(len(tiles)) - t_c0, t_per, out=t_c0)
        np.minimum(t_per, tiles[:, 2] - t_c0, out=tiles[:, 2])
        sizes = np.bincount(depth)[1:] if len(ids) else np.zeros(0, np.intp)
        starts = np.cumsum(np.concatenate([[0, 1], sizes, [1]]), dtype=np.int32)
        p, s = self.pred_pool, self.succ_pool
        fresh = {"colmap": self.colmap.fresh, "succs": s.fresh}
        for pool in (self.colmap, s):
            pool.fresh = pool.top
        return NetTables(
            nodes=nodes,
            preds=pos.take(p.data[: max(p.top, 1), 0]),
            succs=s.data[: max(s.top, 1)],
            succ_node=pos.take(self.succ_key.data[: max(s.top, 1)]),
            colmap=self.colmap.data[: max(self.colmap.top, 1)],
            level_start=starts,
            tiles=tiles,
            group_ids=ids.astype(np.int32),
            row_stride=self.row_top,
            live_row=self.row_top - self.row_garbage,
            fresh=fresh,
        )


class _Pool:
    """An int32 array that runs are appended to: ``data[:top]`` in use, ``garbage`` of it
    left by runs rewritten elsewhere. ``fresh``: entries unchanged since the last
    :meth:`mark` (they never change in place; 0 after a reallocation)."""

    def __init__(self, size: int, cols: int = 0) -> None:
        self.data = np.zeros((size, cols) if cols else size, np.int32)
        self.top = self.garbage = self.fresh = 0

    def reserve(self, n: int) -> int:
        """Room for ``n`` more entries; returns where they go (and moves ``top`` past them)."""
        if self.top + n > len(self.data):
            size = max(2 * len(self.data), (self.top + n) * 5 // 4)
            grown = np.zeros((size, *self.data.shape[1:]), np.int32)
            grown[: self.top] = self.data[: self.top]
            self.data = grown
            self.fresh = 0
        at = self.top
        self.top += n
        return at


def _runs(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The indices ``starts[k] .. starts[k] + counts[k] - 1`` of every ``k``, in order."""
    counts = np.asarray(counts, np.intp)
    first = np.empty(len(counts), np.intp)
    _exclusive_cumsum(counts, out=first)
    total = int(first[-1] + counts[-1]) if len(counts) else 0
    return np.repeat(np.asarray(starts, np.intp) - first, counts) + _iota(total)


def _exclusive_cumsum(counts: np.ndarray, out: np.ndarray) -> None:
    """Where each run starts when runs of ``counts`` are laid end to end, written to ``out``
    in its dtype (the caller vouches that the sums fit)."""
    out[:1] = 0
    np.cumsum(counts[:-1], dtype=out.dtype, out=out[1:])


# np.arange(k, dtype=np.int32) for every k up to its length: see _iota
_IOTA = [np.arange(0, dtype=np.int32)]


def _iota(k: int) -> np.ndarray:
    """``np.arange(k, dtype=np.int32)``, read-only: a view of one cached array, grown as the
    network grows (filling a fresh colmap-sized one costs more than the add that uses it)."""
    if len(_IOTA[0]) < k:
        _IOTA[0] = np.arange(max(k, 2 * len(_IOTA[0])), dtype=np.int32)
        _IOTA[0].flags.writeable = False
    return _IOTA[0][:k]
