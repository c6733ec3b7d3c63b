// node.cuh — the layout of the node tables (streamdag/backends/tables.py), read by
// network.cu and built by tables.cu: struct Node, one record (NetTables.nodes, NODE_FIELDS
// ints), and the shape of a weight-gradient tile (NetTables.tiles): the threads of its
// block and its columns at most (tables.WG_THREADS, WG_XCOLS).
#pragma once

#define SD_WG_THREADS 256
#define SD_WG_CPT 8  // columns of a tile one thread of sd_wgrad_update owns, at most
#ifndef SD_WG_XCOLS
#define SD_WG_XCOLS 32
#endif

struct Node {
  int width, fan_in, w_off, b_off;
  int act, pred_start, n_preds, succ_start;
  int n_succs, relu, col_start, pad;
};
