"""The int32 tables the CUDA kernels walk (:class:`NetTables`), built from a graph.

Pure numpy, no GPU: the layout is described in ``kernels/network.cu`` (``struct Node``) and
in :mod:`streamdag.backends.cuda`. Rebuilt after every mutation batch, so its cost is part of
the cost of growing (see docs/cuda-backend.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..graph import INPUT, OUTPUT, NetworkGraph
from ..params import ParamStore

__all__ = ["MAX_INT32", "NODE_FIELDS", "WG_THREADS", "WG_XCOLS", "NetTables"]

NODE_FIELDS = 12  # ints per Node record; see struct Node in network.cu
WG_THREADS = 256  # SD_WG_THREADS
WG_XCOLS = 128    # SD_WG_XCOLS
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
        """Vectorised over nodes and edges: a few ms at 4,096 groups."""
        levels = graph.levels()
        order = [INPUT, *[g for lv in levels for g in lv], OUTPUT]
        n = len(order)
        index = {node: i for i, node in enumerate(order)}
        width = np.array([graph.width(node) for node in order], dtype=np.int64)
        act = np.concatenate([[0], np.cumsum(width)[:-1]])
        row_stride = int(width.sum())
        # edges (pred entry e of node owner[e]), in each node's predecessor order
        pred_lists = [[index[p] for p in graph.preds(node)] for node in order[1:]]
        n_preds = np.array([0] + [len(ps) for ps in pred_lists], dtype=np.int64)
        pred_idx = np.array([p for ps in pred_lists for p in ps], dtype=np.int64)
        owner = np.repeat(np.arange(n), n_preds)
        pred_start = np.concatenate([[0], np.cumsum(n_preds)[:-1]])
        pw = width[pred_idx]
        fan_in = np.bincount(owner, weights=pw, minlength=n).astype(np.int64)
        col_start = np.concatenate([[0], np.cumsum(fan_in)[:-1]])
        entry_col = np.concatenate([[0], np.cumsum(pw)[:-1]])  # global column of entry e
        col_in_owner = entry_col - col_start[owner]
        colmap = np.repeat(act[pred_idx] - entry_col, pw) + np.arange(int(pw.sum()))
        slots = [params.slot(node) for node in order[1:]]
        w_off = np.array([0] + [sl.w_off for sl in slots], dtype=np.int64)
        b_off = np.array([0] + [sl.b_off for sl in slots], dtype=np.int64)
        # successor records, grouped by predecessor (the input has none)
        keep = pred_idx != 0
        by_pred = np.argsort(pred_idx[keep], kind="stable")
        e_owner, e_pred = owner[keep][by_pred], pred_idx[keep][by_pred]
        succs = np.stack([act[e_owner], w_off[e_owner] + col_in_owner[keep][by_pred],
                          width[e_owner], fan_in[e_owner]], axis=1)
        succ_node = e_owner
        n_succs = np.bincount(e_pred, minlength=n)
        succ_start = np.concatenate([[0], np.cumsum(n_succs)[:-1]])
        relu = np.ones(n, dtype=np.int64)
        relu[-1] = 0
        nodes = np.stack([width, fan_in, w_off, b_off, act, pred_start, n_preds, succ_start,
                          n_succs, relu, col_start, np.zeros(n, np.int64)], axis=1)
        nodes[0, 1:] = 0
        nodes[0, 4] = 0
        # weight-gradient tiles: columns per tile so that outputs x columns <= WG_THREADS
        group_ids = np.array(graph.group_ids(), dtype=np.int32)
        stat_slot = np.full(n, -1, dtype=np.int64)
        stat_slot[[index[int(g)] for g in group_ids]] = np.arange(len(group_ids))
        per_tile = np.clip(WG_THREADS // np.minimum(width, 64), 1, WG_XCOLS)
        n_tiles = -(-fan_in // per_tile)
        n_tiles[0] = 0
        t_node = np.repeat(np.arange(n), n_tiles)
        t_first = np.concatenate([[0], np.cumsum(n_tiles)[:-1]])
        t_c0 = (np.arange(len(t_node)) - t_first[t_node]) * per_tile[t_node]
        tiles = np.stack([t_node, t_c0, np.minimum(per_tile[t_node], fan_in[t_node] - t_c0),
                          stat_slot[t_node]], axis=1)
        starts = np.concatenate([[0, 1], 1 + np.cumsum([len(lv) for lv in levels]), [n]])
        if max(row_stride, params.arenas()["weight"].size, len(colmap)) > MAX_INT32:
            raise ConfigError("the network is too large for 32-bit kernel tables")
        i32 = np.int32
        return cls(
            nodes=nodes.astype(i32),
            preds=(pred_idx if len(pred_idx) else np.zeros(1, np.int64)).astype(i32),
            succs=(succs if len(succs) else np.zeros((1, 4), np.int64)).astype(i32),
            succ_node=(succ_node if len(succ_node) else np.zeros(1, np.int64)).astype(i32),
            colmap=colmap.astype(i32),
            level_start=np.asarray(starts, dtype=i32),
            tiles=tiles.astype(i32),
            group_ids=group_ids,
            row_stride=row_stride,
        )
