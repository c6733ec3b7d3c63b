// node.cuh — struct Node, one record of the node tables (NetTables.nodes in
// streamdag/backends/tables.py, NODE_FIELDS ints): read by network.cu, built by tables.cu.
#pragma once

struct Node {
  int width, fan_in, w_off, b_off;
  int act, pred_start, n_preds, succ_start;
  int n_succs, relu, col_start, pad;
};
