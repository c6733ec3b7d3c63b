"""The int32 tables the CUDA kernels walk (:class:`NetTables`), built from a graph.

Pure numpy, no GPU: the layout is described in ``kernels/network.cu`` (``struct Node``) and
in :mod:`streamdag.backends.cuda`. Rebuilt after every mutation batch, so its cost is part of
the cost of growing (see docs/cuda-backend.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..graph import OUTPUT, NetworkGraph
from ..params import ParamStore

__all__ = ["MAX_INT32", "NODE_FIELDS", "WG_THREADS", "WG_XCOLS", "NetTables"]

NODE_FIELDS = 12  # ints per Node record; see struct Node in network.cu
WG_THREADS = 256  # SD_WG_THREADS
WG_XCOLS = 32     # SD_WG_XCOLS: columns of a weight-gradient tile at most
MAX_INT32 = 2**31 - 1


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
        tiles: ``(n_tiles, 4)`` weight-gradient tiles (node, first column, columns, stats slot).
        group_ids: graph id of each stats slot (groups in ascending id order).
        row_stride: floats per batch row of the activation arenas.
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

    @property
    def n_levels(self) -> int:
        return len(self.level_start) - 1

    @classmethod
    def build(cls, graph: NetworkGraph, params: ParamStore) -> NetTables:
        """Vectorised over nodes and edges, from ``graph.level_arrays()`` and
        ``params.offsets()``: no Python loop over the groups."""
        lv = graph.level_arrays()
        n = len(lv.ids) + 2  # input, the groups level by level, output
        out_preds = np.asarray(graph.output.preds, dtype=np.int64)
        index = np.zeros(graph.next_id + 1, dtype=np.int64)  # node index by id + 1 (input: 0)
        index[lv.ids + 1] = np.arange(1, n - 1)
        width = np.concatenate([[graph.n_inputs], lv.width, [graph.n_classes]])
        act = _starts(width)
        row_stride = int(width.sum())
        # edges (pred entry e of node owner[e]), in each node's predecessor order
        n_preds = np.concatenate([[0], lv.n_preds, [len(out_preds)]])
        pred_idx = index[np.concatenate([lv.preds, out_preds]) + 1]
        owner = np.repeat(np.arange(n), n_preds)
        pw = width[pred_idx]
        n_cols = int(pw.sum())
        if max(row_stride, params.arenas()["weight"].size, n_cols) > MAX_INT32:
            raise ConfigError("the network is too large for 32-bit kernel tables")
        fan_in = np.bincount(owner, weights=pw, minlength=n).astype(np.int64)
        col_start = _starts(fan_in)
        entry_col = _starts(pw)  # global column of entry e
        col_in_owner = entry_col - col_start[owner]
        # int32 from the start, added in place (the largest table): every value fits (above)
        colmap = np.repeat((act[pred_idx] - entry_col).astype(np.int32), pw)
        colmap += np.arange(n_cols, dtype=np.int32)
        w_off, b_off = (np.concatenate([[0], o]) for o in params.offsets(
            np.concatenate([lv.ids, [OUTPUT]])))
        # successor records, grouped by predecessor (the input has none); the keys
        # (predecessor, edge) are unique, so a quicksort orders them as a stable sort would
        keep = np.flatnonzero(pred_idx)
        by_pred = keep[np.argsort(pred_idx[keep] * len(pred_idx) + keep)]
        e_owner = owner[by_pred]
        succs = _int32_columns(act[e_owner], w_off[e_owner] + col_in_owner[by_pred],
                               width[e_owner], fan_in[e_owner])
        n_succs = np.bincount(pred_idx[by_pred], minlength=n)
        relu = np.ones(n, dtype=np.int64)
        relu[-1] = 0
        nodes = _int32_columns(width, fan_in, w_off, b_off, act, _starts(n_preds), n_preds,
                               _starts(n_succs), n_succs, relu, col_start, np.zeros(n, np.int64))
        nodes[0, 1:] = 0
        # weight-gradient tiles: a thread owns one output and two columns of its tile, so
        # a tile has up to 2 * (WG_THREADS // outputs) columns (and at most WG_XCOLS)
        group_ids = np.sort(lv.ids)
        stat_slot = np.full(n, -1, dtype=np.int64)
        stat_slot[index[group_ids + 1]] = np.arange(len(group_ids))
        per_tile = np.clip(2 * (WG_THREADS // np.minimum(width, 64)), 1, WG_XCOLS)
        n_tiles = -(-fan_in // per_tile)
        n_tiles[0] = 0
        t_node = np.repeat(np.arange(n), n_tiles)
        t_c0 = (np.arange(len(t_node)) - _starts(n_tiles)[t_node]) * per_tile[t_node]
        tiles = _int32_columns(t_node, t_c0, np.minimum(per_tile[t_node], fan_in[t_node] - t_c0),
                               stat_slot[t_node])
        starts = np.concatenate([[0, 1], 1 + np.cumsum(lv.level_sizes), [n]])
        return cls(
            nodes=nodes,
            preds=pred_idx.astype(np.int32) if len(pred_idx) else np.zeros(1, np.int32),
            succs=succs if len(succs) else np.zeros((1, 4), np.int32),
            succ_node=e_owner.astype(np.int32) if len(e_owner) else np.zeros(1, np.int32),
            colmap=colmap,
            level_start=starts.astype(np.int32),
            tiles=tiles,
            group_ids=group_ids.astype(np.int32),
            row_stride=row_stride,
        )


def _starts(counts: np.ndarray) -> np.ndarray:
    """Where each run starts when runs of ``counts`` are laid end to end (exclusive cumsum)."""
    out = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def _int32_columns(*cols: np.ndarray) -> np.ndarray:
    """The 1-D arrays ``cols`` side by side, as one ``(len, len(cols))`` int32 array."""
    out = np.empty((len(cols[0]), len(cols)), dtype=np.int32)
    for j, col in enumerate(cols):
        out[:, j] = col
    return out
