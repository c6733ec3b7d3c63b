"""The int32 tables the CUDA kernels walk (:class:`NetTables`), built from a graph.

Pure numpy, no GPU: the layout is described in ``kernels/network.cu`` (``struct Node``) and
in :mod:`streamdag.backends.cuda`. :meth:`NetTables.build` is the reference (and what the
``streams`` mode uses); the CUDA backend builds the same tables on the device after every
mutation batch (``kernels/tables.cu``) from :class:`TableInputs`, a dozen numpy calls over
the groups, and keeps their :class:`TableShape` (see docs/cuda-backend.md).

Nodes go level by level (by depth, then id), or — with ``flow=True``, for the persistent
step, which walks them in order and waits on flags — in the graph's flow order
(:meth:`~streamdag.graph.NetworkGraph.flow_order`), a topological order that mutation
batches keep without computing any depth; the tables then hold one "level" of all groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..graph import INPUT, OUTPUT, NetworkGraph
from ..params import ParamStore

__all__ = ["MAX_INT32", "NODE_FIELDS", "WG_CPT", "WG_THREADS", "WG_XCOLS", "NetTables",
           "TableInputs", "TableShape", "width_mix"]

NODE_FIELDS = 12  # ints per Node record; see struct Node in network.cu
WG_THREADS = 256  # SD_WG_THREADS
WG_XCOLS = 32     # SD_WG_XCOLS: columns of a weight-gradient tile at most
MAX_INT32 = 2**31 - 1
WG_CPT = 8        # SD_WG_CPT: columns of a tile one thread owns, at most
# columns of a weight-gradient tile of a node, by min(width, 64): a thread owns one output and
# up to WG_CPT columns of its tile, so up to WG_CPT * (WG_THREADS // outputs) columns (at
# most WG_XCOLS)
_PER_TILE = np.clip(WG_CPT * (WG_THREADS // np.arange(1, 65)), 1, WG_XCOLS).astype(np.int32)
_PER_TILE = np.concatenate([[1], _PER_TILE])  # width 0 (none has it): 1 column, as clip gives
assert INPUT == -1  # NetTables.build indexes by id, INPUT wrapping around to the last entry


@dataclass(frozen=True)
class NetTables:
    """The int32 tables the kernels walk, built from a graph and a parameter layout.

    Attributes:
        nodes: ``(n_nodes, 12)`` Node records (see ``network.cu``).
        preds: predecessor node indices, per node from ``pred_start``.
        succs: ``(n, 4)`` per successor: its activation offset in a row, the weight offset of
            this node's first column in it, its width and its fan-in.
        succ_node: the node index of each successor record.
        colmap: per node from ``col_start``, the offset within a batch row of each input column.
        level_start: nodes are stored level by level; level ``l`` is the index range
            ``level_start[l] .. level_start[l+1]`` (level 0 = input, the last = output).
            In flow order all groups form level 1.
        tiles: ``(n_tiles, 4)`` weight-gradient tiles (node, first column, columns, stats slot).
        group_ids: graph id of each stats slot (groups in ascending id order).
        row_stride: floats per batch row of the activation arenas.
        by_level: whether the nodes go level by level (else in flow order).
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
    by_level: bool = True

    @property
    def n_levels(self) -> int:
        return len(self.level_start) - 1

    @property
    def shape(self) -> TableShape:
        """What the host needs of these tables to launch the kernels that walk them."""
        return TableShape(n_nodes=len(self.nodes), n_tiles=len(self.tiles),
                          row_stride=self.row_stride, n_inputs=int(self.nodes[0, 0]),
                          n_classes=int(self.nodes[-1, 0]), level_start=self.level_start,
                          group_ids=self.group_ids, out_fan_in=int(self.nodes[-1, 1]),
                          max_width=int(self.nodes[1:-1, 0].max(initial=0)),
                          **width_mix(self.nodes[1:-1, 0]), by_level=self.by_level)

    @classmethod
    def build(cls, graph: NetworkGraph, params: ParamStore, *, flow: bool = False
              ) -> NetTables:
        """Vectorised over nodes and edges, from ``graph.level_arrays()`` (or, with
        ``flow``, ``graph.flow_arrays()``) and ``params.offsets()``: no Python loop over the
        groups.

        It runs after every mutation batch, so it keeps numpy calls and temporaries few and
        small (fresh pages for a large temporary cost as much as the arithmetic on it): node
        fields are computed in place in the columns of ``nodes``, in int32 once the sizes are
        checked, and successor and tile records are copies of per-node records.
        """
        lv = graph.flow_arrays() if flow else graph.level_arrays()
        n = len(lv.ids) + 2  # input, the groups level by level, output
        # node index by id; INPUT (-1) reads the last entry: the input's index, 0
        index = np.zeros(graph.next_id + 1, dtype=np.intp)
        index[lv.ids] = np.arange(1, n - 1)
        # edges (pred entry e of node owner[e]), in each node's predecessor order
        out_preds = np.fromiter(graph.output.preds, np.intp, len(graph.output.preds))
        pred_idx = index[np.concatenate([lv.preds, out_preds])]
        n_edges = len(pred_idx)
        counts = np.zeros(n, dtype=np.intp)  # n_preds as np.repeat likes them: contiguous
        counts[1:-1], counts[-1] = lv.n_preds, len(out_preds)
        owner = np.repeat(np.arange(n), counts)
        nodes = np.zeros((n, NODE_FIELDS), dtype=np.int32)
        (width, fan_in, w_off, b_off, act, pred_start, n_preds, succ_start, n_succs, relu,
         col_start) = nodes.T[:11]  # views of its columns (struct Node), filled in place
        width[0], width[1:-1], width[-1] = graph.n_inputs, lv.width, graph.n_classes
        n_preds[:] = counts
        pw = width[pred_idx]
        row_stride = int(lv.width.sum()) + graph.n_inputs + graph.n_classes
        n_cols = int(pw.sum())
        if max(row_stride, params.arenas()["weight"].size, n_cols) > MAX_INT32:
            raise ConfigError("the network is too large for 32-bit kernel tables")
        # from here on every value fits in int32 (above)
        _exclusive_cumsum(width, out=act)
        _exclusive_cumsum(n_preds, out=pred_start)
        entry_col = np.zeros(n_edges + 1, dtype=np.int32)  # global column of entry e; n_cols
        np.cumsum(pw, dtype=np.int32, out=entry_col[1:])
        col_start[1:] = entry_col.take(pred_start[1:])
        np.subtract(col_start[1:], col_start[:-1], out=fan_in[:-1])
        fan_in[-1] = n_cols - col_start[-1]
        colmap = np.repeat(act[pred_idx] - entry_col[:-1], pw)  # the largest table
        colmap += _iota(n_cols)
        w_off[1:], b_off[1:] = params.offsets(np.append(lv.ids, OUTPUT))
        relu[1:-1] = 1
        # successor records, grouped by predecessor, in edge order within one: sort the
        # unique keys (predecessor, edge) packed into one integer (int32 where they fit): a
        # sort, several times faster than an argsort. The input's come first (predecessor
        # 0) and are dropped: it has no records.
        shift = n_edges.bit_length()
        key = pred_idx.astype(np.int32 if n << shift <= 2**31 else np.int64)
        key <<= shift
        key |= _iota(n_edges)
        key.sort()
        n_succs[:] = np.bincount(pred_idx, minlength=n)
        by_pred = (key[n_succs[0]:] & ((1 << shift) - 1)).astype(np.intp)  # edges
        n_succs[0] = 0
        _exclusive_cumsum(n_succs, out=succ_start)
        succ_node = owner.take(by_pred)
        # (act, w_off + the edge's first column within the node, width, fan_in) of succ_node
        per_node = nodes[:, [4, 2, 0, 1]]  # act, w_off, width, fan_in
        per_node[:, 1] -= col_start
        succs = per_node.take(succ_node, axis=0)
        succs[:, 1] += entry_col.take(by_pred)
        # weight-gradient tiles: per node (index, its first tile, fan-in, stats slot), one
        # copy per tile, then the first tile -> the tile's first column and fan-in -> columns
        per_tile = _PER_TILE.take(np.minimum(width, 64))
        # ceil(fan_in / per_tile) in float64, exact (fan_in < 2**31, per_tile <= 32), at
        # half the cost of integer division
        n_tiles = np.ceil(fan_in / per_tile).astype(np.intp)
        n_tiles[0] = 0
        group_ids = np.flatnonzero(index[:-1])  # ascending: stats slot k is group_ids[k]
        node_tile = np.empty((n, 4), dtype=np.int32)
        node_tile[:, 0] = _iota(n)
        _exclusive_cumsum(n_tiles, out=node_tile[:, 1])
        node_tile[:, 2] = fan_in
        stat_slot = node_tile[:, 3]
        stat_slot[:] = -1
        stat_slot[index[group_ids]] = _iota(len(group_ids))
        tiles = np.repeat(node_tile, n_tiles, axis=0)
        t_per = np.repeat(per_tile, n_tiles)
        t_c0 = tiles[:, 1]
        np.multiply(_iota(len(tiles)) - t_c0, t_per, out=t_c0)
        np.minimum(t_per, tiles[:, 2] - t_c0, out=tiles[:, 2])
        # level l is the nodes starts[l] .. starts[l + 1]: the input, the levels, the output
        starts = np.cumsum(np.concatenate([[0, 1], lv.level_sizes, [1]]), dtype=np.int32)
        return cls(
            nodes=nodes,
            preds=pred_idx.astype(np.int32) if len(pred_idx) else np.zeros(1, np.int32),
            succs=succs if len(succs) else np.zeros((1, 4), np.int32),
            succ_node=succ_node.astype(np.int32) if len(succ_node) else np.zeros(1, np.int32),
            colmap=colmap,
            level_start=starts,
            tiles=tiles,
            group_ids=group_ids.astype(np.int32),
            row_stride=row_stride,
            by_level=not flow,
        )


def width_mix(widths: np.ndarray) -> dict[str, float]:
    """``mean_width``, ``share16`` and ``share32`` of :class:`TableShape` for groups of
    ``widths`` (all 0.0 without groups): what the CUDA backend's ``auto`` mode chooses by."""
    if not len(widths):
        return {"mean_width": 0.0, "share16": 0.0, "share32": 0.0}
    return {"mean_width": float(widths.mean()), "share16": float((widths == 16).mean()),
            "share32": float((widths == 32).mean())}


@dataclass(frozen=True)
class TableShape:
    """What the host needs of a network's tables to launch the kernels that walk them, for
    tables that live on the device only (see :class:`TableInputs`).

    Attributes:
        n_nodes, n_tiles: the number of Node records and of weight-gradient tiles.
        row_stride: floats per batch row of the activation arenas.
        n_inputs, n_classes: the widths of the input (node 0) and the output (the last).
        level_start, group_ids: as in :class:`NetTables`.
        out_fan_in: the output's input columns (the level kernels split them over blocks).
        max_width: the widest group's width (0 without groups): which build of the level
            kernels to launch.
        mean_width: the groups' mean width (0.0 without groups).
        share16, share32: the share of groups 16 and 32 neurons wide (0.0 without groups).
        by_level: whether the nodes go level by level (else in flow order: one level).
    """

    n_nodes: int
    n_tiles: int
    row_stride: int
    n_inputs: int
    n_classes: int
    level_start: np.ndarray
    group_ids: np.ndarray
    out_fan_in: int
    max_width: int
    mean_width: float
    share16: float
    share32: float
    by_level: bool = True

    @property
    def n_levels(self) -> int:
        return len(self.level_start) - 1

    @property
    def out_act(self) -> int:
        """The output's first column in a batch row: it is the last node."""
        return self.row_stride - self.n_classes


@dataclass(frozen=True)
class TableInputs:
    """What ``kernels/tables.cu`` builds :class:`NetTables` from, on the device: the groups
    in level order, and the graph's per-id columns and the slot offsets as they are (no pass
    over edges or columns here; the row stride and the edge count come back summed).

    Attributes:
        order: ids of positions ``1 .. n - 2`` (int64), by depth then id (or in flow order).
        perm: the stats slot of each (its rank by id), int64.
        offsets: ``ParamStore.offset_table()``: ``(w_off, b_off)`` by id + 2.
        out_preds: the output's predecessor ids, int64.
        width, start, count, pool: ``graph.id_columns()`` (int64, by id; ``pool`` up to its
            top, garbage included).
        level_start, group_ids, n_inputs, n_classes, by_level: as in :class:`NetTables`.
    """

    order: np.ndarray
    perm: np.ndarray
    offsets: np.ndarray
    out_preds: np.ndarray
    width: np.ndarray
    start: np.ndarray
    count: np.ndarray
    pool: np.ndarray
    level_start: np.ndarray
    group_ids: np.ndarray
    n_inputs: int
    n_classes: int
    by_level: bool = True

    @property
    def n_nodes(self) -> int:
        return len(self.order) + 2

    @classmethod
    def build(cls, graph: NetworkGraph, params: ParamStore, *, flow: bool = False
              ) -> TableInputs:
        """A dozen numpy calls over the groups, none over edges or columns; with ``flow``,
        in the graph's flow order, which reads no depth.

        Raises:
            ConfigError: the weight arena is too large for the kernels' 32-bit tables (the
                row and the column count are checked once the device has summed them).
        """
        if params.arenas()["weight"].size > MAX_INT32:
            raise ConfigError("the network is too large for 32-bit kernel tables")
        if flow:
            order = graph.flow_order()
            cols = graph.id_columns(depths=False)
            ids = np.flatnonzero(cols.alive)
            rank = np.cumsum(cols.alive, dtype=np.int64)  # (a searchsorted costs 5x more)
            rank -= 1
            perm = rank.take(order)  # the rank by id
            sizes = np.array([len(ids)]) if len(ids) else np.zeros(0, np.intp)
        else:
            cols = graph.id_columns()
            ids = np.flatnonzero(cols.alive)
            depth = cols.depth[ids]
            # a depth <= groups < 2**16: radix-sorted on 16 bits; stable, so by id within one
            perm = np.argsort(depth.astype(np.uint16) if len(cols.alive) <= 1 << 16 else depth,
                              kind="stable")
            order = ids[perm]
            sizes = np.bincount(depth)[1:] if len(ids) else np.zeros(0, np.intp)
        return cls(
            order=order, perm=perm.astype(np.int64, copy=False),
            offsets=params.offset_table(),
            out_preds=np.fromiter(graph.output.preds, np.int64, len(graph.output.preds)),
            width=cols.width, start=cols.start, count=cols.count, pool=cols.pool[: cols.top],
            level_start=np.cumsum(np.concatenate([[0, 1], sizes, [1]]), dtype=np.int32),
            group_ids=ids.astype(np.int32), n_inputs=graph.n_inputs,
            n_classes=graph.n_classes, by_level=not flow,
        )

    def shape(self, n_tiles: int, row_stride: int) -> TableShape:
        w_ext = np.append(self.width, self.n_inputs)  # INPUT (-1) reads the last
        widths = self.width.take(self.order)
        return TableShape(n_nodes=self.n_nodes, n_tiles=n_tiles, row_stride=row_stride,
                          n_inputs=self.n_inputs, n_classes=self.n_classes,
                          level_start=self.level_start, group_ids=self.group_ids,
                          out_fan_in=int(w_ext.take(self.out_preds).sum()),
                          max_width=int(widths.max(initial=0)), **width_mix(widths),
                          by_level=self.by_level)


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
