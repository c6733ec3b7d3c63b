// network.cu — the training step of a generalized network (streamdag.backends.cuda).
//
// Math (must match streamdag/backends/reference.py):
//   forward   z_g = W_g · concat(h_p, p in P(g)) + b_g,  h_g = ReLU(z_g) (output: no ReLU)
//   loss      mean softmax cross-entropy                         (softmax_xent_ref)
//   backward  dh_g = Σ_s dz_s · W_s[:, cols(g)],  dz_g = dh_g ⊙ [h_g > 0]  (backward in ref)
//   update    v ← μ v + (dW + λ W),  W ← W − η v;  b likewise without λ  (sgd_momentum_ref)
//   stats     std(dh_g) and mean(h_g) over batch × neurons          (group_stats_ref)
//
// Layout. Node tables are built by streamdag/backends/cuda.py. Node 0 is the input, the last
// node is the output; groups sit in between in topological-level order. Activations, dh and
// dz are one arena each, row-major over the batch: element (b, o) of node n lives at
// [b * row_stride + node.act + o], so a batch row of the whole network is contiguous and the
// tables do not depend on the batch size. Weights are the ParamStore arenas: W_n is the
// row-major (width × fan_in) block at weight[node.w_off]; biases at bias[node.b_off].
// weight_t holds W_n^T (fan_in × width) at the same offset, for the dataflow forward, whose
// lanes run over a node's outputs (coalesced reads); the update kernel writes both.
//
// Nodes are stored level by level, so a level is the index range [level_start[l],
// level_start[l+1]). Kernels (launch shapes in brackets; "slice" = nodes start..start+count):
//   sd_forward        [grid (count, ceil(B/FWD_ROWS)), block 128]  forward of the slice that
//                     starts at task_nodes[key] (streams mode: one task per node, named by a
//                     key that survives mutations — 1 the output, 2 + id a group — with the
//                     row stride in task_nodes[0], so that a task's arguments stay the same
//                     while the tables move and grow under it)
//   sd_softmax_xent   [grid ceil(B/128), block 128]             loss rows, dz of the output
//   sd_backward_pull  [grid (count, ceil(B/BWD_ROWS)), block 128] dh, dz of a slice (gather;
//                     streams; the slice named as for sd_forward)
//   sd_forward_tiled  [grid (count, ceil(B/tile_rows), splits), block 256]  the same, tiled
//                     (fused and graph modes; the output split over its columns, then
//                     sd_splitk_finish; tile_rows <= 32)
//   sd_backward_tiled [grid (count, ceil(B/tile_rows)), block 256]  sd_backward_pull, tiled
//   sd_forward_tiled_many, sd_backward_tiled_many  the same for launches of many blocks
//   sd_forward_tiled_wide, sd_backward_tiled_wide  the same for groups 32 wide or more
//   sd_backward_push  [grid (count, ceil(B/BWD_ROWS)), block 128]  dz of a slice from its
//                     complete dh, then atomicAdd dz·W into the predecessors' dh (zeroed first)
//   sd_wgrad_update   [grid tiles, block WG_THREADS]  dW, db, SGD step, stats per tile, for
//                     tiles tile0 .. tile0 + tiles (graph mode launches runs of levels)
//   sd_transpose_weights [grid n_nodes - 1, block 256]  weight_t from weight (after a mutation)
//   sd_reduce_loss    [grid 1, block 256]               mean loss and correct count
//   sd_scatter_input / sd_gather_output  [1-D, block 256]  batch in, logits out
//   sd_step_rows      [grid ceil(B/rows), block SD_STEP_THREADS, dyn smem]  forward + loss + pull
//                     backward of the whole DAG for a slice of batch rows, in one launch:
//                     rows are independent until the weight gradient, so blocks never wait
//                     on each other; levels are separated by __syncthreads only.
// Every kernel serves widths 1..1024, any fan-in (ragged, through the tables) and any batch.

#ifndef SD_STEP_THREADS  // block size of sd_step_rows / sd_step_flow (bounds their registers)
#define SD_STEP_THREADS 512
#endif
#ifndef SD_DYNAMIC  // dataflow: warps take the next task in order as they free up
#define SD_DYNAMIC 1
#endif
#ifndef SD_SPIN_NS  // back-off of a warp waiting for a flag (0: spin)
#define SD_SPIN_NS 0
#endif
#define SD_FWD_ROWS 8
#define SD_BWD_ROWS 8
#ifndef SD_WG_ROWCHUNK  // batch rows staged per round by the weight-gradient kernel
#ifdef SD_F64
#define SD_WG_ROWCHUNK 32  // float64: the staged rows in the 48 KiB of static shared memory
#else
#define SD_WG_ROWCHUNK 64
#endif
#endif
#define SD_WG_STAGE_U 4  // rows staged at a time (2 or 8: slower)

#include "node.cuh"  // struct Node

// The element type. SD_F64 (network64.cu) builds the kernels the streams modes run in
// float64, for runs whose grown structure must not depend on the summation order (see
// docs/cuda-backend.md, "Digits"); the tiled level kernels and the persistent step are
// float32 only. SD_FMA etc. are the float32 functions this file always used, or their
// float64 counterparts (exp and log exact to an ulp instead of the fast intrinsics).
#ifdef SD_F64
typedef double sd_real;
#define SD_FMA fma
#define SD_FMAX fmax
#define SD_EXP exp
#define SD_LOG log
#else
typedef float sd_real;
#define SD_FMA fmaf
#define SD_FMAX fmaxf
#define SD_EXP __expf
#define SD_LOG __logf
#endif

// ---------------------------------------------------------------- per-item device functions

// Both inner loops are latency-bound (a few dozen loads per item): they gather 8 columns'
// addresses first, then 8 values, then 8 FMAs into two accumulators, so the loads of a chunk
// are in flight together instead of one round trip each.
#define SD_CHUNK 8

// h (or z, for the output) of node nd at one batch row, output o. colmap gives, per input
// column, its offset within a batch row; weights are read-only for the whole kernel.
__device__ __forceinline__ sd_real sd_fwd_one(const int* __restrict__ colmap,
                                              const sd_real* __restrict__ weight,
                                              const sd_real* __restrict__ bias,
                                              const sd_real* act_row, const Node& nd, int o) {
  const sd_real* w = weight + nd.w_off + (long long)o * nd.fan_in;
  const int* cm = colmap + nd.col_start;
  sd_real acc0 = 0.f, acc1 = 0.f;
  int c = 0;
  for (; c + SD_CHUNK <= nd.fan_in; c += SD_CHUNK) {
    int idx[SD_CHUNK];
    sd_real xv[SD_CHUNK], wv[SD_CHUNK];
#pragma unroll
    for (int j = 0; j < SD_CHUNK; ++j) idx[j] = __ldg(cm + c + j);
#pragma unroll
    for (int j = 0; j < SD_CHUNK; ++j) { wv[j] = __ldg(w + c + j); xv[j] = act_row[idx[j]]; }
#pragma unroll
    for (int j = 0; j < SD_CHUNK; j += 2) {
      acc0 = SD_FMA(wv[j], xv[j], acc0);
      acc1 = SD_FMA(wv[j + 1], xv[j + 1], acc1);
    }
  }
  for (; c < nd.fan_in; ++c) acc0 = SD_FMA(__ldg(w + c), act_row[__ldg(cm + c)], acc0);
  const sd_real z = __ldg(bias + nd.b_off + o) + (acc0 + acc1);
  return nd.relu ? SD_FMAX(z, (sd_real)0) : z;
}

// dh of node nd at one batch row, neuron k: gathered from its successors' dz. A successor
// record is (its activation offset in a row, weight offset of nd's first column in it, its
// width, its fan-in).
__device__ __forceinline__ sd_real sd_pull_one(const int4* __restrict__ succs,
                                               const sd_real* __restrict__ weight,
                                               const sd_real* dz_row, const Node& nd, int k) {
  sd_real acc0 = 0.f, acc1 = 0.f;
  for (int i = 0; i < nd.n_succs; ++i) {
    const int4 sc = __ldg(succs + nd.succ_start + i);
    const sd_real* d = dz_row + sc.x;
    const sd_real* w = weight + sc.y + k;
    int o = 0;
    for (; o + SD_CHUNK <= sc.z; o += SD_CHUNK) {
      sd_real dv[SD_CHUNK], wv[SD_CHUNK];
#pragma unroll
      for (int j = 0; j < SD_CHUNK; ++j) {
        dv[j] = d[o + j];
        wv[j] = __ldg(w + (long long)(o + j) * sc.w);
      }
#pragma unroll
      for (int j = 0; j < SD_CHUNK; j += 2) {
        acc0 = SD_FMA(dv[j], wv[j], acc0);
        acc1 = SD_FMA(dv[j + 1], wv[j + 1], acc1);
      }
    }
    for (; o < sc.z; ++o) acc0 = SD_FMA(d[o], __ldg(w + (long long)o * sc.w), acc0);
  }
  return acc0 + acc1;
}

// ---------------------------------------------------------------- level-sliced kernels

extern "C" __global__ void sd_forward(const Node* __restrict__ nodes, const int* __restrict__ colmap,
                                      const int* __restrict__ task_nodes, int key,
                                      const sd_real* __restrict__ weight,
                                      const sd_real* __restrict__ bias, sd_real* act, int batch) {
  const Node nd = nodes[task_nodes[key] + blockIdx.x];
  const int row_stride = task_nodes[0];
  const int b0 = blockIdx.y * SD_FWD_ROWS;
  const int items = SD_FWD_ROWS * nd.width;
  for (int it = threadIdx.x; it < items; it += blockDim.x) {
    const int b = b0 + it / nd.width, o = it % nd.width;
    if (b >= batch) break;
    sd_real* row = act + (long long)b * row_stride;
    row[nd.act + o] = sd_fwd_one(colmap, weight, bias, row, nd, o);
  }
}

#ifndef SD_F64  // the tiled level kernels: float32 only

// ---------------------------------------------------------------- tiled level kernels
// The fused and graph modes' forward and pull backward: a block computes one node for
// SD_TR batch rows, staging what every thread reads in shared memory — a chunk of SD_TK
// input columns of those rows (gathered once through colmap) and the matching rows of W^T
// (forward), or a successor's dz rows and the slice of its W that reads the node (pull) —
// so a weight is loaded once per SD_TR rows instead of once per (row, neuron). Outputs go
// in chunks of 64 neurons; thread t owns neuron o0 + t % n and rows t / n + j * (256 / n)
// of the tile (n = the chunk's width), one accumulator each, summed in column order.
#define SD_TR 32
#define SD_TK 64
#define SD_BQ 256  // successor neurons a pull backward tile lists at most (sd_stage: <= threads)
#define SD_TILE_THREADS 256
#define SD_TILE_ITEMS 8  // rows per thread at most: 256 / 64 = 4 row groups, 32 rows
#ifndef SD_TILE_MINB  // blocks per SM the tiled kernels' registers must allow
#define SD_TILE_MINB 4
#endif

// Programmatic dependent launch (sm_90+; the host sets it on the tiled level launches, see
// CudaBackend._launch_levels): sd_let_next_start lets the next kernel of the stream start
// once every block of this one ran it; sd_wait_previous waits until the kernel before this
// one has finished and its writes are visible (at once when launched without the flag).
__device__ __forceinline__ void sd_let_next_start() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void sd_wait_previous() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Stages a rows × cols block (cols <= SD_TILE_THREADS) into shared memory: store(r, c,
// load(r, c)). Thread t keeps column t % cols and steps rows from t / cols, so no index is
// divided per element; U of its rows at a time, every load issued before any store (a plain
// loop issues each load after the previous element's store, one memory latency apiece).
// U = 4 where a thread stages 8 rows or more (a 64-wide node's weights), else 2 (H100,
// graph mode: 4 everywhere cost M 4% (3.59 -> 3.72 ms), 2 everywhere cost S64 15%).
template <int U, class Load, class Store>
__device__ __forceinline__ void sd_stage_rows(int rows, int r_first, int step, int c, Load load,
                                              Store store) {
  for (int r0 = r_first; r0 < rows; r0 += U * step) {
    float v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int r = r0 + u * step;
      v[u] = r < rows ? load(r, c) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (r0 + u * step < rows) store(r0 + u * step, c, v[u]);
  }
}
// Where this thread stages in a block of `cols` columns (1..SD_TILE_THREADS): its column, its
// first row (SD_TILE_THREADS, past every block staged, which is at most that many rows, for a
// thread it has no column for) and the row step. Divisions by a runtime value are
// ~25 dependent instructions each, so a kernel makes the plans of what it stages after its
// wait (sd_wait_previous) before it.
struct StagePlan {
  int c, r_first, step;
};
__device__ __forceinline__ StagePlan sd_plan(int cols) {
  const int t = threadIdx.x, step = SD_TILE_THREADS / cols;
  return {t % cols, t < step * cols ? t / cols : SD_TILE_THREADS, step};
}
template <class Load, class Store>
__device__ __forceinline__ void sd_stage(int rows, StagePlan p, Load load, Store store) {
  if (rows >= 8 * p.step) sd_stage_rows<4>(rows, p.r_first, p.step, p.c, load, store);
  else sd_stage_rows<2>(rows, p.r_first, p.step, p.c, load, store);
}
template <class Load, class Store>
__device__ __forceinline__ void sd_stage(int rows, int cols, Load load, Store store) {
  sd_stage(rows, sd_plan(cols), load, store);
}

// Makes v here: volatile asm statements keep their order, and the value out of this one is
// opaque, so the compiler front end neither computes a value pinned before sd_wait_previous
// after it (on the chain of levels) nor rematerialises it there from the kernel's
// parameters. (ptxas, which never sees the empty statement, may still schedule some of the
// arithmetic after the wait; see docs/cuda-backend.md, eighth session.)
__device__ __forceinline__ void sd_pin(long long& v) { asm volatile("" : "+l"(v)); }
template <class T>
__device__ __forceinline__ void sd_pin(T*& v) { asm volatile("" : "+l"(v)); }

// A column staged after the wait whose rows are evenly spaced in memory (sd_stage_col): this
// thread's first row of it, source and destination, and the steps to its next row.
struct ColCopy {
  const float* src;
  float* dst;
  long long src_step;
  int dst_step, r_first, step;
};
// Row r of this thread's column (plan p) goes from src[r * src_ld] to dst[r * dst_ld]; made,
// and pinned, before the kernel's wait, so that only loads and stores follow it.
__device__ __forceinline__ ColCopy sd_col(StagePlan p, const float* src, long long src_ld,
                                          float* dst, int dst_ld) {
  ColCopy cc{src + p.r_first * src_ld, dst + p.r_first * dst_ld, p.step * src_ld,
             p.step * dst_ld, p.r_first, p.step};
  sd_pin(cc.src);
  sd_pin(cc.dst);
  sd_pin(cc.src_step);
  return cc;
}
template <int U>
__device__ __forceinline__ void sd_stage_col_rows(int rows, ColCopy cc) {
  for (int r = cc.r_first; r < rows; r += U * cc.step) {
    float v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = r + u * cc.step < rows ? cc.src[u * cc.src_step] : 0.f;
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (r + u * cc.step < rows) cc.dst[u * cc.dst_step] = v[u];
    cc.src += U * cc.src_step;
    cc.dst += U * cc.dst_step;
  }
}
// sd_stage of the rows < rows of a column planned by sd_col.
__device__ __forceinline__ void sd_stage_col(int rows, ColCopy cc) {
  if (rows >= 8 * cc.step) sd_stage_col_rows<4>(rows, cc);
  else sd_stage_col_rows<2>(rows, cc);
}

// sd_stage of a weight slab whose rows are runs of cols floats (cols % 4 == 0) starting
// 16-byte aligned, from row(r) into the 16-byte aligned shared rows dst(r): float4 loads and
// stores, 4 of them in flight per thread (a 64 × 64 slab: one round instead of four).
template <class Row, class Dst>
__device__ __forceinline__ void sd_stage_vec(int rows, int cols, Row row, Dst dst) {
  const int quads = cols >> 2, t = threadIdx.x, step = SD_TILE_THREADS / quads;
  if (t >= step * quads) return;
  const int c = (t % quads) << 2;
  for (int r0 = t / quads; r0 < rows; r0 += 4 * step) {
    float4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (r0 + u * step < rows) v[u] = __ldg(reinterpret_cast<const float4*>(row(r0 + u * step) + c));
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (r0 + u * step < rows) *reinterpret_cast<float4*>(dst(r0 + u * step) + c) = v[u];
  }
}

// Stages rows × cols of the row-major matrix at src (ld floats a row) into ws (64 floats a
// row): with float4 loads (sd_stage_vec) where VEC, the slab is 8 floats or more per thread,
// and every row starts 16-byte aligned; else a float a load (sd_stage).
template <bool VEC>
__device__ __forceinline__ void sd_stage_slab(int rows, int cols, const float* __restrict__ src,
                                              int ld, float* ws) {
  if (VEC && rows * cols >= 8 * SD_TILE_THREADS &&
      (reinterpret_cast<unsigned long long>(src) & 15) == 0 && (ld & 3) == 0 && (cols & 3) == 0)
    sd_stage_vec(rows, cols, [&](int r) { return src + (long long)r * ld; },
                 [&](int r) { return &ws[r * 64]; });
  else
    sd_stage(rows, cols, [&](int r, int k) { return __ldg(src + (long long)r * ld + k); },
             [&](int r, int k, float v) { ws[r * 64 + k] = v; });
}

// acc[j] += sum over c < kc of w[c * w_stride] * x[row_j * x_row + c], in c order, for the NJ
// rows row_j = r0 + j * groups of the tile (rows past nb read row nb - 1: their sums are
// never stored). The weight is loaded once for the NJ rows.
template <int NJ>
__device__ __forceinline__ void sd_tile_fma(float* acc, const float* w, int w_stride,
                                            const float* x, int x_row, int r0, int groups,
                                            int nb, int kc) {
  const float* xr[NJ];
#pragma unroll
  for (int j = 0; j < NJ; ++j) xr[j] = x + min(r0 + j * groups, nb - 1) * x_row;
  int c = 0;
  for (; c + 4 <= kc; c += 4) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const float wv = w[(c + u) * w_stride];
#pragma unroll
      for (int j = 0; j < NJ; ++j) acc[j] = fmaf(wv, xr[j][c + u], acc[j]);
    }
  }
  for (; c < kc; ++c) {
    const float wv = w[c * w_stride];
#pragma unroll
    for (int j = 0; j < NJ; ++j) acc[j] = fmaf(wv, xr[j][c], acc[j]);
  }
}

// This thread's count of rows in a tile of nb rows (a division: see StagePlan).
__device__ __forceinline__ int sd_tile_count(int nb, int r0, int groups) {
  return (nb - r0 + groups - 1) / groups;
}

// sd_tile_fma for this thread's nj rows of the tile (sd_tile_count), with NJ the next power
// of two of nj (the inner loop specialised on it: guarding every row in one loop made the
// tiled kernels issue-bound).
__device__ __forceinline__ void sd_tile_rows(float* acc, const float* w, int w_stride,
                                             const float* x, int x_row, int r0, int groups,
                                             int nb, int kc, int nj) {
  if (nj > 4) sd_tile_fma<8>(acc, w, w_stride, x, x_row, r0, groups, nb, kc);
  else if (nj > 2) sd_tile_fma<4>(acc, w, w_stride, x, x_row, r0, groups, nb, kc);
  else if (nj > 1) sd_tile_fma<2>(acc, w, w_stride, x, x_row, r0, groups, nb, kc);
  else if (nj > 0) sd_tile_fma<1>(acc, w, w_stride, x, x_row, r0, groups, nb, kc);
}

// Forward of nodes start + blockIdx.x, rows blockIdx.y * tile_rows.. (+tile_rows, 1..SD_TR:
// the host makes the tiles shorter where a level has too few blocks to fill the GPU). With
// part null: every column, then bias and ReLU into act. Otherwise (split-K, the output's
// thousands of columns) columns [blockIdx.z * split_cols, +split_cols), raw sums into
// part[(blockIdx.z * batch + b) * width + o], added up by sd_splitk_finish.
// [grid (count, ceil(B/tile_rows), splits), block SD_TILE_THREADS]
// ROOMY (the sd_*_tiled builds, not *_many, whose smaller register budget it would spill):
// the bias is loaded before the wait (sd_wait_previous), not after the sums. VEC (the
// *_wide build, for networks of groups 32 wide or more): weight slabs of 8 floats or more
// per thread, when aligned, are staged with float4 loads (sd_stage_vec); the code for it
// cost 16-wide networks 2% where it sat in the kernel they use, unused.
template <bool ROOMY, bool VEC>
__device__ __forceinline__ void sd_forward_tile(
    const Node* __restrict__ nodes, const int* __restrict__ colmap, int start,
    const float* __restrict__ weight_t, const float* __restrict__ bias, float* act,
    int batch, int row_stride, float* part, int split_cols, int tile_rows) {
  __shared__ float xs[SD_TR][SD_TK + 1];
  __shared__ __align__(16) float ws[SD_TK * 64];
  __shared__ int cm[SD_TK];
  const Node nd = nodes[start + blockIdx.x];
  const int b0 = blockIdx.y * tile_rows, nb = min(tile_rows, batch - b0);
  const int c_begin = part ? blockIdx.z * split_cols : 0;
  const int c_end = part ? min(nd.fan_in, c_begin + split_cols) : nd.fan_in;
  const int t = threadIdx.x;
  sd_let_next_start();
  for (int o0 = 0; o0 < nd.width; o0 += 64) {
    const int n = min(64, nd.width - o0), groups = SD_TILE_THREADS / n;
    const int o = o0 + t % n, r0 = t / n;
    const bool active = t < groups * n;
    const int nj = sd_tile_count(nb, r0, groups);
    // the bias before the wait too (no kernel of the step writes it before the update)
    const float bv = !ROOMY || part || !active ? 0.f : __ldg(bias + nd.b_off + o);
    float acc[SD_TILE_ITEMS];
#pragma unroll
    for (int j = 0; j < SD_TILE_ITEMS; ++j) acc[j] = 0.f;
    for (int c0 = c_begin; c0 < c_end; c0 += SD_TK) {
      const int kc = min(SD_TK, c_end - c0);
      const StagePlan x_plan = sd_plan(kc);
      __syncthreads();  // the previous chunk's reads are done
      if (t < kc) cm[t] = __ldg(colmap + nd.col_start + c0 + t);
      sd_stage_slab<VEC>(kc, n, weight_t + nd.w_off + o0 + (long long)c0 * nd.width, nd.width, ws);
      __syncthreads();
      const ColCopy x_copy = sd_col(x_plan, act + (long long)b0 * row_stride + cm[x_plan.c],
                                    row_stride, &xs[0][x_plan.c], SD_TK + 1);
      sd_wait_previous();  // what came before: the tables and weights; from here the activations
      sd_stage_col(nb, x_copy);
      __syncthreads();
      if (active)
        sd_tile_rows(acc, &ws[o - o0], 64, &xs[0][0], SD_TK + 1, r0, groups, nb, kc, nj);
    }
    sd_wait_previous();  // (already, unless the node has no input column)
    if (active) {
#pragma unroll
      for (int j = 0; j < SD_TILE_ITEMS; ++j) {
        const int r = r0 + j * groups;
        if (r >= nb) break;  // (rows go up with j)
        if (part) {
          part[((long long)blockIdx.z * batch + b0 + r) * nd.width + o] = acc[j];
        } else {
          const float z = (ROOMY ? bv : __ldg(bias + nd.b_off + o)) + acc[j];
          act[(long long)(b0 + r) * row_stride + nd.act + o] = nd.relu ? fmaxf(z, 0.f) : z;
        }
      }
    }
  }
}

// The kernels: the same code under two register budgets. sd_*_tiled (SD_TILE_MINB blocks
// per SM) for launches the GPU holds at once, where a block's latency is what counts, and
// sd_*_tiled_wide, the same with float4 weight staging, for networks of groups 32 wide or
// more; sd_*_tiled_many (SD_TILE_MINB_MANY: fewer registers, spilling some) for launches of
// more blocks than that (a wide level), where more blocks in flight hide their latency.
#ifndef SD_TILE_MINB_MANY
#define SD_TILE_MINB_MANY 6
#endif
#define SD_FORWARD_TILED_ARGS                                                                 \
  const Node *__restrict__ nodes, const int *__restrict__ colmap, int start,                  \
      const float *__restrict__ weight_t, const float *__restrict__ bias, float *act,         \
      int batch, int row_stride, float *part, int split_cols, int tile_rows
extern "C" __global__ void __launch_bounds__(SD_TILE_THREADS, SD_TILE_MINB)
    sd_forward_tiled(SD_FORWARD_TILED_ARGS) {
  sd_forward_tile<true, false>(nodes, colmap, start, weight_t, bias, act, batch, row_stride,
                               part, split_cols, tile_rows);
}
extern "C" __global__ void __launch_bounds__(SD_TILE_THREADS, SD_TILE_MINB)
    sd_forward_tiled_wide(SD_FORWARD_TILED_ARGS) {
  sd_forward_tile<true, true>(nodes, colmap, start, weight_t, bias, act, batch, row_stride,
                              part, split_cols, tile_rows);
}
extern "C" __global__ void __launch_bounds__(SD_TILE_THREADS, SD_TILE_MINB_MANY)
    sd_forward_tiled_many(SD_FORWARD_TILED_ARGS) {
  sd_forward_tile<false, false>(nodes, colmap, start, weight_t, bias, act, batch, row_stride,
                                part, split_cols, tile_rows);
}

// act of node `node` from sd_forward_tiled's split-K partials: bias + the splits' sums in
// split order (ReLU unless the output). [grid ceil(B*width/256), block 256]
extern "C" __global__ void sd_splitk_finish(const Node* __restrict__ nodes, int node,
                                            const float* __restrict__ part, int splits,
                                            const float* __restrict__ bias, float* act,
                                            int batch, int row_stride) {
  const Node nd = nodes[node];
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)batch * nd.width) return;
  const int b = (int)(i / nd.width), o = (int)(i % nd.width);
  float z = 0.f;
  for (int s = 0; s < splits; ++s) z += part[((long long)s * batch + b) * nd.width + o];
  z += __ldg(bias + nd.b_off + o);
  act[(long long)b * row_stride + nd.act + o] = nd.relu ? fmaxf(z, 0.f) : z;
}

// Pull backward of nodes start + blockIdx.x, rows blockIdx.y * tile_rows..: dh from the
// successors' dz (successor by successor in edge order, each one's neurons in order), then
// dz = dh where h > 0. [grid (count, ceil(B/tile_rows)), block SD_TILE_THREADS]
// ROOMY, VEC: as sd_forward_tile's.
template <bool ROOMY, bool VEC>
__device__ __forceinline__ void sd_backward_tile(
    const Node* __restrict__ nodes, const int4* __restrict__ succs, int start,
    const float* __restrict__ weight, const float* act, float* dh, float* dz, int batch,
    int row_stride, int tile_rows) {
  __shared__ float ds[SD_TR][64 + 1];
  __shared__ __align__(16) float ws[64 * 64];
  __shared__ int qa[SD_BQ], qw[SD_BQ], q_all;
  const Node nd = nodes[start + blockIdx.x];
  const int b0 = blockIdx.y * tile_rows, nb = min(tile_rows, batch - b0);
  const int t = threadIdx.x;
  // Successors (at most 32 of them, SD_BQ neurons in all: a 16-wide group's usual case) are
  // listed together, as columns q (their neurons, in edge order: the same order of sums as
  // one successor at a time): qa[q] is the dz column's offset in a row and qw[q] the weight
  // row's offset. The list is staged 64 columns at a time: a 16-wide group with 5-10
  // 16-wide successors takes 2-3 rounds instead of one per successor, for which the level
  // waited (dag-bench M: 154 of 270 levels hold such a group). In the *_wide build the list
  // holds 64 neurons at most. Otherwise q_all stays -1 and successors go one by one.
  if (t < 32) {
    const bool few = nd.n_succs <= 32;
    const int cap = VEC ? 64 : SD_BQ;  // (the *_wide build stages wide successors' weights
                                       // one by one, with float4 loads)
    int4 sc = make_int4(0, 0, 0, 0);
    if (few && t < nd.n_succs) sc = __ldg(succs + nd.succ_start + t);
    int end = sc.z;  // inclusive scan of the widths
    for (int d = 1; d < 32; d <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, end, d);
      if (t >= d) end += v;
    }
    const int total = __shfl_sync(0xffffffffu, end, 31);
    if (few && total <= cap) {
      for (int q = 0; q < sc.z; ++q) {
        qa[end - sc.z + q] = sc.x + q;
        qw[end - sc.z + q] = sc.y + q * sc.w;
      }
    }
    if (t == 0) q_all = few && total <= cap ? total : -1;
  }
  __syncthreads();
  sd_let_next_start();
  const int m_all = q_all;
  for (int k0 = 0; k0 < nd.width; k0 += 64) {
    const int n = min(64, nd.width - k0), groups = SD_TILE_THREADS / n;
    const int k = k0 + t % n, r0 = t / n;
    const bool active = t < groups * n;
    const int nj = sd_tile_count(nb, r0, groups);
    // Which of this thread's outputs passed the ReLU (bit j: row r0 + j * groups), read
    // before the wait: the forward wrote h before the backward's first kernel started.
    // (Not in the *_many build: read after the sums there, where it costs less.)
    unsigned on = 0;
    if (ROOMY && active) {
      float h[SD_TILE_ITEMS];
#pragma unroll
      for (int j = 0; j < SD_TILE_ITEMS; ++j) {
        const int r = min(r0 + j * groups, nb - 1);
        h[j] = act[(long long)(b0 + r) * row_stride + nd.act + k];
      }
#pragma unroll
      for (int j = 0; j < SD_TILE_ITEMS; ++j) on |= (h[j] > 0.f ? 1u : 0u) << j;
    }
    float acc[SD_TILE_ITEMS];
#pragma unroll
    for (int j = 0; j < SD_TILE_ITEMS; ++j) acc[j] = 0.f;
    // The list goes 64 columns a chunk, as many chunks at a time as ws and ds hold (ROOMY
    // builds; else one): chunk c's weights in ws columns [c * n, c * n + n), its dz in ds
    // rows [c * nb, c * nb + nb). A 16-wide group in 8-row tiles (dag-bench M) stages its
    // whole list, up to 256 columns, before the wait and its successors' dz in one round.
    const int per = ROOMY ? max(1, min(64 / n, SD_TR / nb)) : 1;
    for (int q0 = 0; q0 < m_all; q0 += per * 64) {
      const int mm = min(per * 64, m_all - q0);
      const StagePlan d_plan = sd_plan(mm);
      __syncthreads();  // the previous chunks' reads are done
      sd_stage(mm, n, [&](int q, int kk) { return __ldg(weight + qw[q0 + q] + k0 + kk); },
               [&](int q, int kk, float v) {
                 ws[(ROOMY ? (q & 63) * 64 + (q >> 6) * n : q * 64) + kk] = v;
               });
      const int q = d_plan.c;
      const ColCopy d_copy = sd_col(d_plan, dz + (long long)b0 * row_stride + qa[q0 + q],
                                    row_stride, ROOMY ? &ds[(q >> 6) * nb][q & 63] : &ds[0][q],
                                    64 + 1);
      sd_wait_previous();  // the weights before, the successors' dz after
      sd_stage_col(nb, d_copy);
      __syncthreads();
      if (active && !ROOMY)
        sd_tile_rows(acc, &ws[k - k0], 64, &ds[0][0], 64 + 1, r0, groups, nb, mm, nj);
      if (active && ROOMY)
        for (int c = 0; c * 64 < mm; ++c)  // chunk by chunk: the sums in column order
          sd_tile_rows(acc, &ws[c * n + k - k0], 64, &ds[c * nb][0], 64 + 1, r0, groups, nb,
                       min(64, mm - c * 64), nj);
    }
    for (int si = 0; m_all < 0 && si < nd.n_succs; ++si) {
      const int4 sc = __ldg(succs + nd.succ_start + si);  // act, w_off of our column 0, width, fan_in
      for (int q0 = 0; q0 < sc.z; q0 += 64) {
        const int m = min(64, sc.z - q0);
        const StagePlan d_plan = sd_plan(m);
        __syncthreads();
        sd_stage_slab<VEC>(m, n, weight + sc.y + k0 + (long long)q0 * sc.w, sc.w, ws);
        const ColCopy d_copy =
            sd_col(d_plan, dz + (long long)b0 * row_stride + sc.x + q0 + d_plan.c, row_stride,
                   &ds[0][d_plan.c], 64 + 1);
        sd_wait_previous();
        sd_stage_col(nb, d_copy);
        __syncthreads();
        if (active) sd_tile_rows(acc, &ws[k - k0], 64, &ds[0][0], 64 + 1, r0, groups, nb, m, nj);
      }
    }
    sd_wait_previous();  // (already, unless no successor column was staged)
    if (active) {
#pragma unroll
      for (int j = 0; j < SD_TILE_ITEMS; ++j) {
        const int r = r0 + j * groups;
        if (r >= nb) break;  // (rows go up with j)
        const long long i = (long long)(b0 + r) * row_stride + nd.act + k;
        dh[i] = acc[j];
        dz[i] = (ROOMY ? on >> j & 1u : act[i] > 0.f) ? acc[j] : 0.f;
      }
    }
  }
}

#define SD_BACKWARD_TILED_ARGS                                                                \
  const Node *__restrict__ nodes, const int4 *__restrict__ succs, int start,                  \
      const float *__restrict__ weight, const float *act, float *dh, float *dz, int batch,    \
      int row_stride, int tile_rows
extern "C" __global__ void __launch_bounds__(SD_TILE_THREADS, SD_TILE_MINB)
    sd_backward_tiled(SD_BACKWARD_TILED_ARGS) {
  sd_backward_tile<true, false>(nodes, succs, start, weight, act, dh, dz, batch, row_stride,
                                tile_rows);
}
extern "C" __global__ void __launch_bounds__(SD_TILE_THREADS, SD_TILE_MINB)
    sd_backward_tiled_wide(SD_BACKWARD_TILED_ARGS) {
  sd_backward_tile<true, true>(nodes, succs, start, weight, act, dh, dz, batch, row_stride,
                               tile_rows);
}
extern "C" __global__ void __launch_bounds__(SD_TILE_THREADS, SD_TILE_MINB_MANY)
    sd_backward_tiled_many(SD_BACKWARD_TILED_ARGS) {
  sd_backward_tile<false, false>(nodes, succs, start, weight, act, dh, dz, batch, row_stride,
                                 tile_rows);
}

#endif  // SD_F64

// Softmax cross-entropy of the output node; writes loss/correct per row and dz (= dh) of the
// output: (softmax − onehot) / batch.
__device__ __forceinline__ void sd_softmax_row(const Node& out, const sd_real* act_row,
                                               sd_real* dh_row, sd_real* dz_row, int label,
                                               int batch, sd_real* loss_row, int* correct_row) {
  const sd_real* z = act_row + out.act;
  sd_real m = z[0];
  int arg = 0;
  for (int c = 1; c < out.width; ++c)
    if (z[c] > m) { m = z[c]; arg = c; }
  sd_real s = 0.f;
  for (int c = 0; c < out.width; ++c) s += SD_EXP(z[c] - m);
  const sd_real inv = 1.f / s, scale = 1.f / (sd_real)batch;
  *loss_row = SD_LOG(s) - (z[label] - m);
  *correct_row = arg == label;
  for (int c = 0; c < out.width; ++c) {
    const sd_real g = (SD_EXP(z[c] - m) * inv - (c == label ? 1.f : 0.f)) * scale;
    dh_row[out.act + c] = g;
    dz_row[out.act + c] = g;
  }
}

extern "C" __global__ void sd_softmax_xent(const Node* __restrict__ nodes, int out_node,
                                           const sd_real* act, sd_real* dh, sd_real* dz,
                                           const int* __restrict__ labels, sd_real* loss_rows,
                                           int* correct_rows, int batch, int row_stride) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const long long r = (long long)b * row_stride;
  sd_softmax_row(nodes[out_node], act + r, dh + r, dz + r, labels[b], batch, loss_rows + b,
                 correct_rows + b);
}

extern "C" __global__ void sd_backward_pull(const Node* __restrict__ nodes,
                                            const int4* __restrict__ succs,
                                            const int* __restrict__ task_nodes, int key,
                                            const sd_real* __restrict__ weight, const sd_real* act,
                                            sd_real* dh, sd_real* dz, int batch) {
  const Node nd = nodes[task_nodes[key] + blockIdx.x];
  const int row_stride = task_nodes[0];
  const int b0 = blockIdx.y * SD_BWD_ROWS;
  const int items = SD_BWD_ROWS * nd.width;
  for (int it = threadIdx.x; it < items; it += blockDim.x) {
    const int b = b0 + it / nd.width, k = it % nd.width;
    if (b >= batch) break;
    const long long r = (long long)b * row_stride;
    const sd_real g = sd_pull_one(succs, weight, dz + r, nd, k);
    dh[r + nd.act + k] = g;
    dz[r + nd.act + k] = act[r + nd.act + k] > 0.f ? g : 0.f;
  }
}

// Push: dh of the slice is complete (all successors pushed). dz = dh ⊙ mask (the output's
// dz is already set), then every predecessor group receives dz · W[:, its columns].
extern "C" __global__ void sd_backward_push(const Node* __restrict__ nodes,
                                            const int* __restrict__ colmap,
                                            int start,
                                            const sd_real* __restrict__ weight, const sd_real* act,
                                            sd_real* dh, sd_real* dz, int batch, int row_stride) {
  const Node nd = nodes[start + blockIdx.x];
  const int n_input = nodes[0].width;  // columns [0, n_input) of a row are the network input
  const int b0 = blockIdx.y * SD_BWD_ROWS;
  const int nb = min(SD_BWD_ROWS, batch - b0);
  if (nd.relu) {
    for (int it = threadIdx.x; it < nb * nd.width; it += blockDim.x) {
      const long long i = (long long)(b0 + it / nd.width) * row_stride + nd.act + it % nd.width;
      dz[i] = act[i] > 0.f ? dh[i] : 0.f;
    }
    __syncthreads();
  }
  for (int it = threadIdx.x; it < nb * nd.fan_in; it += blockDim.x) {
    const int b = b0 + it / nd.fan_in, c = it % nd.fan_in;
    const int target = colmap[nd.col_start + c];  // where input column c lives in a row
    if (target < n_input) continue;               // the network input needs no gradient
    const long long r = (long long)b * row_stride;
    const sd_real* w = weight + nd.w_off + c;
    const sd_real* d = dz + r + nd.act;
    sd_real acc = 0.f;
    for (int o = 0; o < nd.width; ++o) acc = SD_FMA(d[o], w[(long long)o * nd.fan_in], acc);
    atomicAdd(dh + r + target, acc);
  }
}

// ---------------------------------------------------------------- batch in, logits out

// x is (batch × n_input) row-major; it becomes columns [0, n_input) of each activation row.
extern "C" __global__ void sd_scatter_input(const sd_real* __restrict__ x, sd_real* act, int batch,
                                            int n_input, int row_stride) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < (long long)batch * n_input)
    act[(i / n_input) * row_stride + i % n_input] = x[i];
}

// The output node's activations (at column out_act of each row) as a (batch × classes) array.
extern "C" __global__ void sd_gather_output(const sd_real* act, sd_real* out, int out_act,
                                            int classes, int batch, int row_stride) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < (long long)batch * classes)
    out[i] = act[(i / classes) * row_stride + out_act + i % classes];
}

// ---------------------------------------------------------------- weight gradient + update

// acc[m] += sum over rows r < nb of d[r][0] * x[r][m * tp], for m < cnt <= CPT (d and x are
// the rows of sd_wgrad_update's staged ds and xs, at this thread's output and first column):
// one dz load feeds cnt FMAs. cnt == 0: nothing (a thread past the tile's outputs).
template <int CPT>
__device__ __forceinline__ void sd_wg_rows(sd_real* acc, const sd_real* d, const sd_real* x, int tp,
                                           int cnt, int nb) {
  if (cnt == 0) return;
#pragma unroll 4
  for (int r = 0; r < nb; ++r) {
    const sd_real dv = d[r * 64];
    const sd_real* xr = x + r * (SD_WG_XCOLS + 1);
#pragma unroll
    for (int m = 0; m < CPT; ++m)
      if (m < cnt) acc[m] = SD_FMA(dv, xr[m * tp], acc[m]);
  }
}

// One tile = (node, first column c0, columns tc, stats slot): dW[o][c0..c0+tc) for every
// output o, then the SGD step on those weights. The tile with c0 == 0 also does the bias and
// (for groups, stats slot >= 0) the statistics. Rows are streamed through shared memory in
// chunks of SD_WG_ROWCHUNK: x (gathered through colmap) and dz; the first tile folds dz into
// per-thread bias partials and dh, h into the statistics as it stages them.
// A thread owns one output and cpt columns of the tile (1, 2, 4 or 8: the fewest that let
// the block's threads cover min(width, 64) outputs), so a wide node's tile is still 32
// columns wide and its dz is staged once per 32 columns, not once per 8.
// Host guarantees tc <= SD_WG_XCOLS and min(width, 64) * ceil(tc / SD_WG_CPT) <=
// SD_WG_THREADS (both in node.cuh).
extern "C" __global__ void __launch_bounds__(SD_WG_THREADS) sd_wgrad_update(
    const Node* __restrict__ nodes, const int4* __restrict__ tiles,
    const int* __restrict__ colmap, sd_real* weight, sd_real* bias, sd_real* weight_mom,
    sd_real* bias_mom, const sd_real* act, const sd_real* dh, const sd_real* dz,
    const sd_real* __restrict__ hyper, int batch, int row_stride, sd_real* grad_std,
    sd_real* act_mean, sd_real* weight_t, int tile0) {
  __shared__ sd_real xs[SD_WG_ROWCHUNK][SD_WG_XCOLS + 1];  // + 1: no bank conflicts
  __shared__ sd_real ds[SD_WG_ROWCHUNK][64];
  __shared__ sd_real dbs[SD_WG_THREADS];
  __shared__ double red[3][SD_WG_THREADS];
  const int4 t = tiles[tile0 + blockIdx.x];
  const Node nd = nodes[t.x];
  const sd_real lr = hyper[0], mu = hyper[1], wd = hyper[2];
  const int tc = t.z, wdt = nd.width;
  const bool first = t.y == 0, stats = first && t.w >= 0;
  // Each thread stages fixed (row, column) positions of a chunk, stepping rows: no integer
  // division per element, and its column's activation offset read once.
  const int xr = threadIdx.x / tc, xc = threadIdx.x % tc, xstep = blockDim.x / tc;
  const int xoff = __ldg(colmap + nd.col_start + t.y + xc);
  double s = 0.0, s2 = 0.0, a = 0.0;  // statistics, folded in while staging (first tile)
  for (int o0 = 0; o0 < wdt; o0 += 64) {
    const int no = min(64, wdt - o0);
    // A thread owns output oo and columns c1 + m * tp (m < cnt) of the tile: one dz read
    // for cnt FMAs.
    int cpt = 1;
    while (cpt < SD_WG_CPT && no * ((tc + cpt - 1) / cpt) > SD_WG_THREADS) cpt <<= 1;
    const int tp = (tc + cpt - 1) / cpt;
    const bool mine = threadIdx.x < no * tp;
    const int oo = threadIdx.x / tp, c1 = threadIdx.x % tp;
    const int cnt = mine ? (tc - c1 + tp - 1) / tp : 0;
    const int dr = threadIdx.x / no, dc = threadIdx.x % no, dstep = blockDim.x / no;
    sd_real acc[SD_WG_CPT], dbp = 0.f;
#pragma unroll
    for (int m = 0; m < SD_WG_CPT; ++m) acc[m] = 0.f;
    for (int b0 = 0; b0 < batch; b0 += SD_WG_ROWCHUNK) {
      const int nb = min(SD_WG_ROWCHUNK, batch - b0);
      __syncthreads();
      // SD_WG_STAGE_U rows at a time, every load before any store (see sd_stage).
      if (xr < xstep)
        for (int r0 = xr; r0 < nb; r0 += SD_WG_STAGE_U * xstep) {
          sd_real v[SD_WG_STAGE_U];
#pragma unroll
          for (int u = 0; u < SD_WG_STAGE_U; ++u) {
            const int r = r0 + u * xstep;
            v[u] = r < nb ? act[(long long)(b0 + r) * row_stride + xoff] : 0.f;
          }
#pragma unroll
          for (int u = 0; u < SD_WG_STAGE_U; ++u)
            if (r0 + u * xstep < nb) xs[r0 + u * xstep][xc] = v[u];
        }
      if (dr < dstep)
        for (int r0 = dr; r0 < nb; r0 += SD_WG_STAGE_U * dstep) {
          sd_real d[SD_WG_STAGE_U], g[SD_WG_STAGE_U], h[SD_WG_STAGE_U];
#pragma unroll
          for (int u = 0; u < SD_WG_STAGE_U; ++u) {
            const int r = r0 + u * dstep;
            const long long j = (long long)(b0 + min(r, nb - 1)) * row_stride + nd.act + o0 + dc;
            d[u] = dz[j];
            if (stats) {
              g[u] = dh[j];
              h[u] = act[j];
            }
          }
#pragma unroll
          for (int u = 0; u < SD_WG_STAGE_U; ++u) {
            const int r = r0 + u * dstep;
            if (r >= nb) break;
            ds[r][dc] = d[u];
            dbp += d[u];
            if (stats) {
              s += (double)g[u];
              s2 += (double)g[u] * g[u];
              a += h[u];
            }
          }
        }
      __syncthreads();
      if (cpt == 1) sd_wg_rows<1>(acc, &ds[0][oo], &xs[0][c1], tp, cnt, nb);
      else if (cpt == 2) sd_wg_rows<2>(acc, &ds[0][oo], &xs[0][c1], tp, cnt, nb);
      else if (cpt == 4) sd_wg_rows<4>(acc, &ds[0][oo], &xs[0][c1], tp, cnt, nb);
      else sd_wg_rows<SD_WG_CPT>(acc, &ds[0][oo], &xs[0][c1], tp, cnt, nb);
    }
#pragma unroll
    for (int m = 0; m < SD_WG_CPT; ++m) {
      const int cc = c1 + m * tp;
      if (m >= cnt) break;
      const long long wi = nd.w_off + (long long)(o0 + oo) * nd.fan_in + t.y + cc;
      const sd_real w = weight[wi];
      const sd_real v = mu * weight_mom[wi] + (acc[m] + wd * w);
      weight_mom[wi] = v;
      weight[wi] = w - lr * v;
      weight_t[nd.w_off + (long long)(t.y + cc) * wdt + o0 + oo] = w - lr * v;
    }
    if (first) {  // bias: the staging threads' partial sums of dz, in a fixed order
      dbs[threadIdx.x] = dbp;
      __syncthreads();
      if (threadIdx.x < no) {
        sd_real db = 0.f;
        for (int r = 0; r < dstep; ++r) db += dbs[r * no + threadIdx.x];
        const int bi = nd.b_off + o0 + threadIdx.x;
        const sd_real v = mu * bias_mom[bi] + db;
        bias_mom[bi] = v;
        bias[bi] = bias[bi] - lr * v;
      }
    }
  }
  if (!stats) return;
  // std of dh and mean of h over batch x width (float64, fixed-order tree reduction)
  red[0][threadIdx.x] = s;
  red[1][threadIdx.x] = s2;
  red[2][threadIdx.x] = a;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w)
      for (int k = 0; k < 3; ++k) red[k][threadIdx.x] += red[k][threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double n = (double)batch * wdt, m = red[0][0] / n;
    grad_std[t.w] = (sd_real)sqrt(fmax(red[1][0] / n - m * m, 0.0));
    act_mean[t.w] = (sd_real)(red[2][0] / n);
  }
}

// weight_t = per node W^T (fan_in × width at the same offset) of weight: the layout the
// dataflow forward reads; sd_wgrad_update keeps it current, this rebuilds it after a
// mutation or an upload.  [grid n_nodes - 1 (node 1 + blockIdx.x), block 256]
extern "C" __global__ void sd_transpose_weights(const Node* __restrict__ nodes,
                                                const sd_real* __restrict__ weight,
                                                sd_real* weight_t) {
  const Node nd = nodes[1 + blockIdx.x];
  for (int i = threadIdx.x; i < nd.width * nd.fan_in; i += blockDim.x) {
    const int o = i / nd.fan_in, c = i % nd.fan_in;
    weight_t[nd.w_off + (long long)c * nd.width + o] = weight[nd.w_off + i];
  }
}

extern "C" __global__ void sd_reduce_loss(const sd_real* loss_rows, const int* correct_rows,
                                          int batch, sd_real* out_loss, int* out_correct) {
  __shared__ double ls[256];
  __shared__ int cs[256];
  double l = 0.0;
  int c = 0;
  for (int b = threadIdx.x; b < batch; b += 256) { l += loss_rows[b]; c += correct_rows[b]; }
  ls[threadIdx.x] = l;
  cs[threadIdx.x] = c;
  __syncthreads();
  for (int w = 128; w > 0; w >>= 1) {
    if (threadIdx.x < w) { ls[threadIdx.x] += ls[threadIdx.x + w]; cs[threadIdx.x] += cs[threadIdx.x + w]; }
    __syncthreads();
  }
  if (threadIdx.x == 0) { *out_loss = (sd_real)(ls[0] / batch); *out_correct = cs[0]; }
}

#ifndef SD_F64  // the persistent step: float32 only

// ---------------------------------------------------------------- the whole DAG per row slice

// The output node's forward for a block's rows (all threads of the block call it; it ends
// with __syncthreads). Its fan-in (every sink group) is much larger than a group's, so with
// split its columns are cut into one chunk per warp: a work item is (chunk, row, 4 classes),
// the lanes stride over the chunk's columns (colmap and W_out rows read coalesced) with 4
// accumulators, reduce by shuffles, and lane 0 writes part[chunk][row][class]; the chunks are
// then summed in a fixed order (deterministic). Walking the predecessors' Node records
// instead serialised ~560 dependent loads per warp at M (~200 µs).
#define SD_OUT_CLASSES 4
__device__ __forceinline__ void sd_output_rows(const Node* __restrict__ nodes,
                                               const int* __restrict__ colmap,
                                               const float* __restrict__ weight,
                                               const float* __restrict__ bias, float* act,
                                               float* part, int out, int b0, int nb, int rows,
                                               int row_stride, int split) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const Node nd = nodes[out];
  if (split) {
    const int groups = (nd.width + SD_OUT_CLASSES - 1) / SD_OUT_CLASSES;
    const int chunk = (nd.fan_in + nwarps - 1) / nwarps;
    const int* cm = colmap + nd.col_start;
    for (int item = warp; item < nwarps * nb * groups; item += nwarps) {
      const int k = item % nwarps, r = item / nwarps % nb, o0 = item / nwarps / nb * SD_OUT_CLASSES;
      const int c_end = min(nd.fan_in, (k + 1) * chunk);
      const float* x = act + (long long)(b0 + r) * row_stride;
      float acc[SD_OUT_CLASSES] = {};
      for (int c = k * chunk + lane; c < c_end; c += 32) {
        const float xv = x[__ldg(cm + c)];
#pragma unroll
        for (int j = 0; j < SD_OUT_CLASSES; ++j)
          if (o0 + j < nd.width)
            acc[j] = fmaf(__ldg(weight + nd.w_off + (long long)(o0 + j) * nd.fan_in + c), xv,
                          acc[j]);
      }
#pragma unroll
      for (int j = 0; j < SD_OUT_CLASSES; ++j) {
        for (int off = 16; off > 0; off >>= 1)
          acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], off);
        if (lane == 0 && o0 + j < nd.width) part[(k * rows + r) * nd.width + o0 + j] = acc[j];
      }
    }
    __syncthreads();
    for (int it = threadIdx.x; it < nb * nd.width; it += blockDim.x) {
      float acc = bias[nd.b_off + it % nd.width];
      for (int k = 0; k < nwarps; ++k) acc += part[k * rows * nd.width + it];
      act[(long long)(b0 + it / nd.width) * row_stride + nd.act + it % nd.width] = acc;
    }
  } else {
    for (int it = threadIdx.x; it < nb * nd.width; it += blockDim.x) {
      float* row = act + (long long)(b0 + it / nd.width) * row_stride;
      row[nd.act + it % nd.width] = sd_fwd_one(colmap, weight, bias, row, nd, it % nd.width);
    }
  }
  __syncthreads();
}

// Softmax cross-entropy of the block's rows (all threads call it; ends with __syncthreads).
__device__ __forceinline__ void sd_softmax_rows(const Node& out, const float* act, float* dh,
                                                float* dz, const int* __restrict__ labels,
                                                float* loss_rows, int* correct_rows, int b0,
                                                int nb, int batch, int row_stride) {
  for (int r = threadIdx.x; r < nb; r += blockDim.x) {
    const long long o = (long long)(b0 + r) * row_stride;
    sd_softmax_row(out, act + o, dh + o, dz + o, labels[b0 + r], batch, loss_rows + b0 + r,
                   correct_rows + b0 + r);
  }
  __syncthreads();
}

// Forward (levels 1..n_levels-1, the last level being the output), softmax, and pull backward
// (levels n_levels-1 .. 1) for batch rows [blockIdx.x*rows, +rows). One warp per (node, row)
// task, lanes over outputs. The output level splits its fan-in over all warps and reduces in
// shared memory (dynamic smem: warps × rows × classes floats) when it fits, since its fan-in
// (every sink group) is much larger than a group's. forward_only skips loss and backward.
extern "C" __global__ void __launch_bounds__(SD_STEP_THREADS) sd_step_rows(
                                        const Node* __restrict__ nodes,
                                        const int* __restrict__ colmap,
                                        const int4* __restrict__ succs,
                                        const int* __restrict__ level_start, int n_levels,
                                        const float* __restrict__ weight,
                                        const float* __restrict__ bias, float* act, float* dh,
                                        float* dz, const int* __restrict__ labels,
                                        float* loss_rows, int* correct_rows, int batch,
                                        int row_stride, int rows, int split_output,
                                        int forward_only) {
  extern __shared__ float part[];  // [warps][rows][classes]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int b0 = blockIdx.x * rows;
  const int nb = min(rows, batch - b0);
  if (nb <= 0) return;
  const int out_level = n_levels - 1;
  for (int lv = 1; lv < out_level; ++lv) {
    const int s = level_start[lv], n = level_start[lv + 1] - s;
    for (int task = warp; task < n * nb; task += nwarps) {
      const Node nd = nodes[s + task / nb];
      float* row = act + (long long)(b0 + task % nb) * row_stride;
      for (int o = lane; o < nd.width; o += 32)
        row[nd.act + o] = sd_fwd_one(colmap, weight, bias, row, nd, o);
    }
    __syncthreads();
  }
  sd_output_rows(nodes, colmap, weight, bias, act, part, level_start[out_level], b0, nb,
                 rows, row_stride, split_output);
  if (forward_only) return;
  sd_softmax_rows(nodes[level_start[out_level]], act, dh, dz, labels, loss_rows, correct_rows,
                  b0, nb, batch, row_stride);
  for (int lv = out_level - 1; lv >= 1; --lv) {
    const int s = level_start[lv], n = level_start[lv + 1] - s;
    for (int task = warp; task < n * nb; task += nwarps) {
      const Node nd = nodes[s + task / nb];
      const long long r = (long long)(b0 + task % nb) * row_stride;
      for (int k = lane; k < nd.width; k += 32) {
        const float g = sd_pull_one(succs, weight, dz + r, nd, k);
        dh[r + nd.act + k] = g;
        dz[r + nd.act + k] = act[r + nd.act + k] > 0.f ? g : 0.f;
      }
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------- warp-cooperative items

// Forward of node nd for nb rows starting at act_rows, by one whole warp (all 32 lanes must
// call it): lane l computes items base+l (item = row * width + neuron). Column addresses are
// loaded once per 32 columns, coalesced, and passed around with shuffles, so an item's
// loads are all in flight together. Weights come from the transposed copy (W^T, fan_in ×
// width at the same offset), so the lanes of one column read consecutive floats: one L1
// wavefront per load instead of one per neuron (the row-major loads made each forward task
// ~3 µs of L1 traffic when 16 warps shared an SM). first_idx is lane's entry of the first 32
// columns' addresses, loaded by the caller (before it waits for the inputs).
__device__ __forceinline__ void sd_fwd_warp(const int* __restrict__ colmap,
                                            const float* __restrict__ weight_t,
                                            const float* __restrict__ bias, float* act,
                                            const Node& nd, int b0, int nb, int row_stride,
                                            int lane, int first_idx) {
  const int items = nb * nd.width;
  for (int base = 0; base < items; base += 32) {
    const int it = min(base + lane, items - 1);  // idle lanes redo the last item, unstored
    const int r = it / nd.width, o = it % nd.width;
    const float* row = act + (long long)(b0 + r) * row_stride;
    const float* w = weight_t + nd.w_off + o;  // column c at w[c * width]
    const long long ws = nd.width;
    float acc0 = 0.f, acc1 = 0.f;
    for (int c0 = 0; c0 < nd.fan_in; c0 += 32) {
      const int nc = min(32, nd.fan_in - c0);
      const int my_idx = c0 == 0 ? first_idx
                                 : (lane < nc ? __ldg(colmap + nd.col_start + c0 + lane) : 0);
      int j = 0;
      if (nc == 32) {  // the whole chunk's loads in flight at once
        float xv[32], wv[32];
#pragma unroll
        for (int q = 0; q < 32; ++q) {
          xv[q] = row[__shfl_sync(0xffffffffu, my_idx, q)];
          wv[q] = __ldg(w + (c0 + q) * ws);
        }
#pragma unroll
        for (int q = 0; q < 32; q += 2) {
          acc0 = fmaf(wv[q], xv[q], acc0);
          acc1 = fmaf(wv[q + 1], xv[q + 1], acc1);
        }
        j = 32;
      }
      for (; j + 8 <= nc; j += 8) {
        float xv[8], wv[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          xv[q] = row[__shfl_sync(0xffffffffu, my_idx, j + q)];
          wv[q] = __ldg(w + (c0 + j + q) * ws);
        }
#pragma unroll
        for (int q = 0; q < 8; q += 2) {
          acc0 = fmaf(wv[q], xv[q], acc0);
          acc1 = fmaf(wv[q + 1], xv[q + 1], acc1);
        }
      }
      for (; j < nc; ++j)
        acc0 = fmaf(__ldg(w + (c0 + j) * ws), row[__shfl_sync(0xffffffffu, my_idx, j)], acc0);
    }
    if (base + lane < items) {
      const float z = __ldg(bias + nd.b_off + o) + (acc0 + acc1);
      act[(long long)(b0 + r) * row_stride + nd.act + o] = nd.relu ? fmaxf(z, 0.f) : z;
    }
  }
}

// Pull backward of node nd for nb rows by one whole warp: lane l computes items base+l
// (item = row * width + neuron k): dh from the successors, dz = dh where h > 0. first is
// lane's record among the first 32 successors, loaded by the caller.
__device__ __forceinline__ void sd_pull_warp(const int4* __restrict__ succs,
                                             const float* __restrict__ weight, const float* act,
                                             float* dh, float* dz, const Node& nd, int b0,
                                             int nb, int row_stride, int lane, int4 first) {
  const int items = nb * nd.width;
  for (int base = 0; base < items; base += 32) {
    const int it = min(base + lane, items - 1);
    const int r = it / nd.width, k = it % nd.width;
    const long long ro = (long long)(b0 + r) * row_stride;
    const float h = act[ro + nd.act + k];  // ready since the forward: loaded alongside
    float acc0 = 0.f, acc1 = 0.f;
    for (int s0 = 0; s0 < nd.n_succs; s0 += 32) {
      const int ns = min(32, nd.n_succs - s0);
      const int4 mine = s0 == 0 ? first
                                : (lane < ns ? __ldg(succs + nd.succ_start + s0 + lane)
                                             : make_int4(0, 0, 0, 0));
      for (int i = 0; i < ns; ++i) {
        const int s_act = __shfl_sync(0xffffffffu, mine.x, i);
        const int s_w = __shfl_sync(0xffffffffu, mine.y, i);
        const int s_width = __shfl_sync(0xffffffffu, mine.z, i);
        const int s_fan = __shfl_sync(0xffffffffu, mine.w, i);
        const float* d = dz + ro + s_act;
        const float* w = weight + s_w + k;
        int o = 0;
        for (; o + 16 <= s_width; o += 16) {
          float dv[16], wv[16];
#pragma unroll
          for (int q = 0; q < 16; ++q) {
            dv[q] = d[o + q];
            wv[q] = __ldg(w + (long long)(o + q) * s_fan);
          }
#pragma unroll
          for (int q = 0; q < 16; q += 2) {
            acc0 = fmaf(dv[q], wv[q], acc0);
            acc1 = fmaf(dv[q + 1], wv[q + 1], acc1);
          }
        }
        for (; o < s_width; ++o) acc0 = fmaf(d[o], __ldg(w + (long long)o * s_fan), acc0);
      }
    }
    if (base + lane < items) {
      const float g = acc0 + acc1;
      dh[ro + nd.act + k] = g;
      dz[ro + nd.act + k] = h > 0.f ? g : 0.f;
    }
  }
}

// ---------------------------------------------------------------- the DAG as a dataflow

// A forward task's W^T block (fan_in × width floats) into L1, one 128-byte line per lane,
// before the task waits for its inputs: nothing writes weights during the step, and a
// prefetch holds no registers (loading them into registers before the wait was slower).
// At M this took a forward task from 2.0 to 1.6 µs; the same for a backward task's
// successor weights saved nothing.
__device__ __forceinline__ void sd_fwd_prefetch(const float* weight_t, const Node& nd,
                                                int lane) {
  const long long n = (long long)nd.width * nd.fan_in;
  for (long long i = lane * 32LL; i < n; i += 32 * 32)
    asm volatile("prefetch.global.L1 [%0];" ::"l"(weight_t + nd.w_off + i));
}

// Like sd_step_rows, without level barriers: a warp that is free takes the next group in
// topological order (forward) or in reverse (backward) from a counter in shared memory
// (SD_DYNAMIC; else warp w takes groups w+1, w+1+warps, ...: ~3% slower at M, a slow group
// held up its warp's later ones); a group waits, by spinning on a per-node flag in shared
// memory, only for its own predecessors (forward) or successors (backward), then computes
// every (row, neuron) of the block's rows with the warp's lanes and raises its flag. Groups
// are taken in index order and every dependency has a smaller (forward) or larger
// (backward) index, so the smallest unfinished group taken can always run: no deadlock. Visibility: data stores, __threadfence_block, atomic flag
// store; atomic flag read, __threadfence_block, data loads (atomics, so compute-sanitizer's
// racecheck sees synchronisation, not races). Dynamic smem: n_nodes ints of flags, then the
// output's split-K partials (warps × rows × classes floats) when split_output. trace, when
// not null, receives for block 0 and every task (forward at 4*v, backward at 4*(n_nodes+v))
// the SM clock when the task began, when its inputs were ready and when it ended, and the
// warp that ran it, and at 4*out (out = n_nodes - 1) the clock before the output layer,
// after it and after the softmax: a development probe of where the time goes.
// succ_node[i] is the node index of successor record i.
extern "C" __global__ void __launch_bounds__(SD_STEP_THREADS) sd_step_flow(
    const Node* __restrict__ nodes, const int* __restrict__ preds,
    const int* __restrict__ colmap, const int4* __restrict__ succs,
    const int* __restrict__ succ_node, int n_nodes, const float* __restrict__ weight,
    const float* __restrict__ bias, float* act, float* dh, float* dz,
    const int* __restrict__ labels, float* loss_rows, int* correct_rows, int batch,
    int row_stride, int rows, int split_output, int forward_only, long long* trace,
    const float* __restrict__ weight_t) {
  extern __shared__ int smem_i[];
  __shared__ int next_task[2];  // SD_DYNAMIC: forward and backward tasks handed out so far
  int* flag = smem_i;
  const bool tracing = trace != nullptr && blockIdx.x == 0;
  float* part = reinterpret_cast<float*>(smem_i + n_nodes);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int b0 = blockIdx.x * rows;
  const int nb = min(rows, batch - b0);
  if (nb <= 0) return;
  const int out = n_nodes - 1;
  for (int i = threadIdx.x; i < n_nodes; i += blockDim.x) flag[i] = i == 0 ? 1 : 0;
  if (threadIdx.x < 2) next_task[threadIdx.x] = 0;
  __syncthreads();
  // What a task reads that no other task writes (its column addresses, its predecessor
  // list) is loaded, and its weights prefetched, before it waits.
  for (int kf = 0;; ++kf) {
#if SD_DYNAMIC
    int v = lane == 0 ? 1 + atomicAdd(next_task, 1) : 0;
    v = __shfl_sync(0xffffffffu, v, 0);
#else
    const int v = 1 + warp + kf * nwarps;
#endif
    if (v >= out) break;
    const long long t0 = tracing ? clock64() : 0;
    const Node nd = nodes[v];
    const int first_idx = lane < min(32, nd.fan_in) ? __ldg(colmap + nd.col_start + lane) : 0;
    const int my_pred = lane < nd.n_preds ? __ldg(preds + nd.pred_start + lane) : 0;
    sd_fwd_prefetch(weight_t, nd, lane);
    for (int i = lane; i < nd.n_preds; i += 32) {
      const int p = i < 32 ? my_pred : __ldg(preds + nd.pred_start + i);
      while (atomicAdd(flag + p, 0) < 1) if (SD_SPIN_NS) __nanosleep(SD_SPIN_NS);
    }
    __syncwarp();
    const long long t1 = tracing ? clock64() : 0;
    __threadfence_block();
    sd_fwd_warp(colmap, weight_t, bias, act, nd, b0, nb, row_stride, lane, first_idx);
    __threadfence_block();
    __syncwarp();
    if (lane == 0) atomicExch(flag + v, 1);
    if (tracing && lane == 0) {
      trace[4 * v] = t0;
      trace[4 * v + 1] = t1;
      trace[4 * v + 2] = clock64();
      trace[4 * v + 3] = warp;
    }
  }
  __syncthreads();
  if (tracing && threadIdx.x == 0) trace[4 * out] = clock64();
  sd_output_rows(nodes, colmap, weight, bias, act, part, out, b0, nb, rows, row_stride,
                 split_output);
  if (tracing && threadIdx.x == 0) trace[4 * out + 1] = clock64();
  if (forward_only) return;
  sd_softmax_rows(nodes[out], act, dh, dz, labels, loss_rows, correct_rows, b0, nb, batch,
                  row_stride);
  if (tracing && threadIdx.x == 0) trace[4 * out + 2] = clock64();
  for (int kb = 0;; ++kb) {
#if SD_DYNAMIC
    int k = lane == 0 ? atomicAdd(next_task + 1, 1) : 0;
    k = __shfl_sync(0xffffffffu, k, 0);
#else
    const int k = warp + kb * nwarps;
#endif
    if (k >= out - 1) break;
    const int v = out - 1 - k;
    const long long t0 = tracing ? clock64() : 0;
    const Node nd = nodes[v];
    const int4 first = lane < min(32, nd.n_succs) ? __ldg(succs + nd.succ_start + lane)
                                                  : make_int4(0, 0, 0, 0);
    const int my_succ = lane < nd.n_succs ? __ldg(succ_node + nd.succ_start + lane) : out;
    for (int i = lane; i < nd.n_succs; i += 32) {
      const int s = i < 32 ? my_succ : __ldg(succ_node + nd.succ_start + i);
      if (s != out)
        while (atomicAdd(flag + s, 0) < 2) if (SD_SPIN_NS) __nanosleep(SD_SPIN_NS);
    }
    __syncwarp();
    const long long t1 = tracing ? clock64() : 0;
    __threadfence_block();
    sd_pull_warp(succs, weight, act, dh, dz, nd, b0, nb, row_stride, lane, first);
    __threadfence_block();
    __syncwarp();
    if (lane == 0) atomicExch(flag + v, 2);
    if (tracing && lane == 0) {
      long long* tb = trace + 4 * (n_nodes + v);
      tb[0] = t0;
      tb[1] = t1;
      tb[2] = clock64();
      tb[3] = warp;
    }
  }
}

#endif  // SD_F64
