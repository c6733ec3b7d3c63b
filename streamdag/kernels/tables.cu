// tables.cu — the node tables of network.cu, built on the device after a mutation batch
// (streamdag.backends.cuda, CudaBackend with device tables; the host reference is
// NetTables.build in streamdag/backends/tables.py, which these kernels must match byte for
// byte: tests/gpu/test_cuda_backend.py compares them).
//
// Why on the device: a batch of 8 duplications at M changes a few dozen records, but node
// indices are positions in level order (or in the graph's flow order, for the persistent
// step), so the tables are rebuilt whole; on the GPU hosts' CPUs that is ~60 numpy calls and
// 1.4–1.7 ms (docs/cuda-backend.md). Here the host only orders the groups (one stable
// argsort by level, or the flow order as the graph keeps it), looks up their slot offsets,
// and uploads the graph's per-id columns as they are (graph._Columns: width, start, count
// and the pool of predecessor ids, int64, garbage included); five launches do the rest.
//
// Inputs. Position 0 is the input, 1..n-2 the groups in that order (order[i-1] is the id at
// position i, perm[i-1] its rank by id = its stats slot), n-1 the output, whose predecessor
// ids are out_preds[0..n_out). offs[2k], offs[2k+1]: the weight and bias offsets of node
// id k - 2 (ParamStore.offset_table: the output at k = 0, -1 where no slot). A predecessor
// id -1 is the input. Outputs: struct Node records (network.cu) and the preds, succs,
// succ_node, colmap and tiles tables, laid out exactly as NetTables.build lays them out.
// Scratch: pos_of_id[id] (the position of a group), n_tiles[i], tile_start[i], cursor[i]
// (successor records placed so far), and totals, int64: columns, tiles, successor records,
// a node without a slot (0 or 1: the caller zeroes it), floats in a batch row, predecessor
// entries; the host reads them to size the last tables.
//   sd_tab_nodes   [1-D over n, block 256]   records: width, n_preds, offsets, relu;
//                                            pos_of_id; zeroed counters; totals[3]
//   sd_tab_edges   [warp per node, block 256] fan_in (sum of predecessor widths), n_tiles,
//                                            successor counts (atomic)
//   sd_tab_scan    [1 block of 1024]         exclusive sums: act, pred_start, col_start,
//                                            succ_start, tile_start; totals
//   sd_tab_fill    [warp per node, block 256] preds, colmap, successor records (placed by an
//                                            atomic cursor: any order), tiles
//   sd_tab_sort    [1-D over n, block 256]   each successor run sorted by successor
//                                            position: the host's edge order, and a
//                                            deterministic one for the pull backward's sums

#include "node.cuh"  // struct Node


// columns of a weight-gradient tile of a node of this width (NetTables' _PER_TILE)
__device__ __forceinline__ int sd_per_tile(int width) {
  const int w = min(max(width, 1), 64);
  return min(max(SD_WG_CPT * (SD_WG_THREADS / w), 1), SD_WG_XCOLS);
}

// the predecessor ids of position i, and how many
__device__ __forceinline__ const long long* sd_pred_ids(int i, int n, const long long* order,
                                                        const long long* start,
                                                        const long long* count,
                                                        const long long* pool,
                                                        const long long* out_preds, int n_out,
                                                        int* n_preds) {
  if (i == n - 1) {
    *n_preds = n_out;
    return out_preds;
  }
  const long long id = order[i - 1];
  *n_preds = (int)count[id];
  return pool + start[id];
}

extern "C" __global__ void sd_tab_nodes(Node* nodes, int n, int n_inputs, int n_classes,
                                        const long long* __restrict__ order,
                                        const long long* __restrict__ width,
                                        const long long* __restrict__ count,
                                        const long long* __restrict__ offs, long long n_offs,
                                        int n_out, int* pos_of_id, int* cursor,
                                        long long* totals) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  Node nd = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  if (i == 0) {
    nd.width = n_inputs;
  } else {
    const long long id = i == n - 1 ? -2 : order[i - 1];  // -2: the output
    if (i == n - 1) {
      nd.width = n_classes;
      nd.n_preds = n_out;
    } else {
      nd.width = (int)width[id];
      nd.n_preds = (int)count[id];
      nd.relu = 1;
      pos_of_id[id] = i;
    }
    const long long k = id + 2;
    if (k < n_offs && offs[2 * k] >= 0) {
      nd.w_off = (int)offs[2 * k];
      nd.b_off = (int)offs[2 * k + 1];
    } else {
      atomicExch(reinterpret_cast<unsigned long long*>(totals + 3), 1ull);
    }
  }
  nodes[i] = nd;
  cursor[i] = 0;
}

extern "C" __global__ void sd_tab_edges(Node* nodes, int n, int n_inputs,
                                        const long long* __restrict__ order,
                                        const long long* __restrict__ width,
                                        const long long* __restrict__ start,
                                        const long long* __restrict__ count,
                                        const long long* __restrict__ pool,
                                        const long long* __restrict__ out_preds, int n_out,
                                        const int* __restrict__ pos_of_id, int* n_tiles) {
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (i >= n) return;
  if (i == 0) {
    if (lane == 0) n_tiles[0] = 0;
    return;
  }
  int np;
  const long long* preds = sd_pred_ids(i, n, order, start, count, pool, out_preds, n_out, &np);
  long long fan_in = 0;
  for (int j = lane; j < np; j += 32) {
    const long long p = preds[j];
    if (p < 0) {
      fan_in += n_inputs;
    } else {
      fan_in += width[p];
      atomicAdd(&nodes[pos_of_id[p]].n_succs, 1);
    }
  }
  for (int o = 16; o > 0; o >>= 1) fan_in += __shfl_xor_sync(0xffffffffu, fan_in, o);
  if (lane == 0) {
    nodes[i].fan_in = (int)fan_in;
    const int per = sd_per_tile(nodes[i].width);
    n_tiles[i] = (int)((fan_in + per - 1) / per);
  }
}

// out[k] = sum of in[j] for j < k, over n values read with a stride (ints); returns the
// total to thread 0. One block of 1024 threads, each owning a contiguous chunk.
__device__ long long sd_block_exclusive_scan(const int* in, int in_stride, int* out,
                                             int out_stride, int n, long long* warp_sums) {
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const int chunk = (n + blockDim.x - 1) / blockDim.x;
  const int a = min(n, t * chunk), b = min(n, a + chunk);
  long long mine = 0;
  for (int k = a; k < b; ++k) mine += in[(long long)k * in_stride];
  long long incl = mine;  // inclusive scan within the warp, then across warps
  for (int o = 1; o < 32; o <<= 1) {
    const long long v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    long long w = lane < (int)(blockDim.x >> 5) ? warp_sums[lane] : 0;
    for (int o = 1; o < 32; o <<= 1) {
      const long long v = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += v;
    }
    warp_sums[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  long long run = incl - mine + (warp ? warp_sums[warp - 1] : 0);
  for (int k = a; k < b; ++k) {
    const int v = in[(long long)k * in_stride];
    out[(long long)k * out_stride] = (int)run;
    run += v;
  }
  const long long total = warp_sums[(blockDim.x >> 5) - 1];
  __syncthreads();  // warp_sums is reused by the next scan
  return total;
}

// Node fields by index (struct Node above)
#define SD_F_WIDTH 0
#define SD_F_FAN_IN 1
#define SD_F_ACT 4
#define SD_F_PRED_START 5
#define SD_F_N_PREDS 6
#define SD_F_SUCC_START 7
#define SD_F_N_SUCCS 8
#define SD_F_COL_START 10

extern "C" __global__ void __launch_bounds__(1024) sd_tab_scan(Node* nodes, int n,
                                                                const int* n_tiles,
                                                                int* tile_start,
                                                                long long* totals) {
  __shared__ long long warp_sums[32];
  int* f = reinterpret_cast<int*>(nodes);
  const long long row =
      sd_block_exclusive_scan(f + SD_F_WIDTH, 12, f + SD_F_ACT, 12, n, warp_sums);
  const long long edges =
      sd_block_exclusive_scan(f + SD_F_N_PREDS, 12, f + SD_F_PRED_START, 12, n, warp_sums);
  const long long cols =
      sd_block_exclusive_scan(f + SD_F_FAN_IN, 12, f + SD_F_COL_START, 12, n, warp_sums);
  const long long succs =
      sd_block_exclusive_scan(f + SD_F_N_SUCCS, 12, f + SD_F_SUCC_START, 12, n, warp_sums);
  const long long tiles = sd_block_exclusive_scan(n_tiles, 1, tile_start, 1, n, warp_sums);
  if (threadIdx.x == 0) {
    totals[0] = cols;
    totals[1] = tiles;
    totals[2] = succs;
    totals[4] = row;
    totals[5] = edges;
  }
}

extern "C" __global__ void sd_tab_fill(const Node* __restrict__ nodes, int n,
                                       const long long* __restrict__ order,
                                       const long long* __restrict__ start,
                                       const long long* __restrict__ count,
                                       const long long* __restrict__ pool,
                                       const long long* __restrict__ out_preds, int n_out,
                                       const long long* __restrict__ perm,
                                       const int* __restrict__ pos_of_id,
                                       const int* __restrict__ n_tiles,
                                       const int* __restrict__ tile_start, int* cursor,
                                       int* preds_out, int* colmap, int4* succs, int* succ_node,
                                       int4* tiles) {
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (i >= n || i == 0) return;
  const Node nd = nodes[i];
  int np;
  const long long* preds = sd_pred_ids(i, n, order, start, count, pool, out_preds, n_out, &np);
  int col = 0;  // columns of the predecessors before this chunk
  for (int j0 = 0; j0 < np; j0 += 32) {
    const int j = j0 + lane;
    int p = 0, wp = 0;
    if (j < np) {
      const long long id = preds[j];
      p = id < 0 ? 0 : pos_of_id[id];
      wp = nodes[p].width;
    }
    int incl = wp;  // this lane's first column: an exclusive scan of widths in the chunk
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const int c0 = col + incl - wp;
    if (j < np) {
      preds_out[nd.pred_start + j] = p;
      const int act = nodes[p].act;
      for (int c = 0; c < wp; ++c) colmap[nd.col_start + c0 + c] = act + c;
      if (p != 0) {
        const int at = nodes[p].succ_start + atomicAdd(&cursor[p], 1);
        succs[at] = make_int4(nd.act, nd.w_off + c0, nd.width, nd.fan_in);
        succ_node[at] = i;
      }
    }
    col += __shfl_sync(0xffffffffu, incl, 31);
  }
  const int per = sd_per_tile(nd.width);
  const int slot = i == n - 1 ? -1 : (int)perm[i - 1];
  for (int t = lane; t < n_tiles[i]; t += 32)
    tiles[tile_start[i] + t] = make_int4(i, t * per, min(per, nd.fan_in - t * per), slot);
}

extern "C" __global__ void sd_tab_sort(const Node* __restrict__ nodes, int n, int4* succs,
                                       int* succ_node) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int s = nodes[i].succ_start, m = nodes[i].n_succs;
  for (int a = 1; a < m; ++a) {  // insertion sort: runs are short (a group's successors)
    const int key = succ_node[s + a];
    const int4 rec = succs[s + a];
    int b = a - 1;
    while (b >= 0 && succ_node[s + b] > key) {
      succ_node[s + b + 1] = succ_node[s + b];
      succs[s + b + 1] = succs[s + b];
      --b;
    }
    succ_node[s + b + 1] = key;
    succs[s + b + 1] = rec;
  }
}
